/**
 * Metadef rows: reads, visibility (glance/db/sqlalchemy/metadef_api/namespace.py
 * _is_namespace_visible), Glance's pagination (oslo_db paginate_query, done here over the rows
 * since namespaces and tags are few), inserts that report a duplicate instead of failing,
 * and the documents Glance shows for each row.
 */
import { type Kysely, type Selectable, sql, type Transaction } from 'kysely';
import type { AuthContext } from '../context.js';
import type {
  Database,
  MetadefNamespaceTable,
  MetadefObjectTable,
  MetadefPropertyTable,
  MetadefTagTable,
} from '../db/schema.js';
import { HttpError } from '../http.js';
import { isotime } from '../util.js';
import { type Doc, setKey, storedProperties, storedProperty } from './model.js';

export type Db = Kysely<Database> | Transaction<Database>;
export type NamespaceRow = Selectable<MetadefNamespaceTable>;
export type ObjectRow = Selectable<MetadefObjectTable>;
export type PropertyRow = Selectable<MetadefPropertyTable>;
export type TagRow = Selectable<MetadefTagTable>;

export interface AssociationRow {
  id: number;
  namespace_id: number;
  name: string;
  prefix: string | null;
  properties_target: string | null;
  created_at: Date;
  updated_at: Date | null;
}

/** Admin, public, or owned by the caller's project. */
export function isVisible(ctx: AuthContext, ns: NamespaceRow): boolean {
  if (ctx.isAdmin) return true;
  if (ns.visibility === 'public') return true;
  return ctx.projectId !== null && ctx.projectId === ns.owner;
}

export async function findNamespace(db: Db, name: string): Promise<NamespaceRow | undefined> {
  return db.selectFrom('metadef_namespaces').selectAll().where('namespace', '=', name).executeTakeFirst();
}

/** The namespaces the caller sees, before filters of the list. */
export async function visibleNamespaces(
  db: Db,
  ctx: AuthContext,
  visibility: string | undefined,
  resourceTypes: string[] | undefined,
): Promise<NamespaceRow[]> {
  let q = db.selectFrom('metadef_namespaces').selectAll();
  if (!ctx.isAdmin)
    q = q.where((eb) =>
      eb.or([eb('visibility', '=', 'public'), eb('owner', '=', ctx.projectId ?? '\u0000')]),
    );
  if (visibility !== undefined) q = q.where('visibility', '=', visibility);
  if (resourceTypes !== undefined)
    q = q.where('id', 'in', (eb) =>
      eb
        .selectFrom('metadef_namespace_resource_types as a')
        .innerJoin('metadef_resource_types as r', 'r.id', 'a.resource_type_id')
        .select('a.namespace_id')
        .where('r.name', 'in', resourceTypes.length > 0 ? resourceTypes : ['']),
    );
  return q.execute();
}

export async function associationsOf(db: Db, namespaceIds: number[]): Promise<AssociationRow[]> {
  if (namespaceIds.length === 0) return [];
  return db
    .selectFrom('metadef_namespace_resource_types as a')
    .innerJoin('metadef_resource_types as r', 'r.id', 'a.resource_type_id')
    .select([
      'a.id',
      'a.namespace_id',
      'r.name',
      'a.prefix',
      'a.properties_target',
      'a.created_at',
      'a.updated_at',
    ])
    .where('a.namespace_id', 'in', namespaceIds)
    .orderBy('a.id')
    .execute();
}

/**
 * A namespace's objects and properties come in name order (bytes): Glance does not sort them,
 * its database reads them through the (namespace_id, name) unique index.
 */
const byName = sql`name collate "C"`;

export const objectsOf = (db: Db, nsId: number) =>
  db.selectFrom('metadef_objects').selectAll().where('namespace_id', '=', nsId).orderBy(byName).execute();

export const propertiesOf = (db: Db, nsId: number) =>
  db.selectFrom('metadef_properties').selectAll().where('namespace_id', '=', nsId).orderBy(byName).execute();

export const tagsOf = (db: Db, nsId: number) =>
  db.selectFrom('metadef_tags').selectAll().where('namespace_id', '=', nsId).orderBy('id').execute();

/**
 * The resource type's id, created if missing: through the API unprotected, by the loader
 * protected and without updated_at (as glance-manage db_load_metadefs writes them).
 */
export async function resourceTypeId(db: Db, name: string, now: Date, loaded = false): Promise<number> {
  const inserted = await db
    .insertInto('metadef_resource_types')
    .values({ name, protected: loaded, created_at: now, updated_at: loaded ? null : now })
    .onConflict((oc) => oc.column('name').doNothing())
    .returning('id')
    .executeTakeFirst();
  if (inserted !== undefined) return inserted.id;
  const row = await db
    .selectFrom('metadef_resource_types')
    .select('id')
    .where('name', '=', name)
    .executeTakeFirstOrThrow();
  return row.id;
}

/** PostgreSQL's unique_violation, from pg or PGlite. */
export const isUniqueViolation = (err: unknown): boolean =>
  typeof err === 'object' && err !== null && (err as { code?: unknown }).code === '23505';

// ---------------------------------------------------------------------------------------------
// Pagination (oslo_db.sqlalchemy.utils.paginate_query over SQLite's ordering: NULL first)

type Value = string | number | boolean | Date | null;

function cmp(a: Value, b: Value): number {
  if (a === null || b === null) return a === b ? 0 : a === null ? -1 : 1;
  if (a instanceof Date && b instanceof Date) return a.getTime() - b.getTime();
  if (typeof a === 'string' && typeof b === 'string') return Buffer.compare(Buffer.from(a), Buffer.from(b));
  return Number(a) - Number(b);
}

/**
 * Rows sorted by `[sortKey, created_at, id]` in one direction, those after the marker (the
 * marker's criteria as paginate_query builds them: a NULL key of the marker is skipped), at
 * most `limit`.
 */
export function paginate<T extends Record<string, unknown>>(
  rows: T[],
  sortKey: string,
  dir: 'asc' | 'desc',
  marker: T | undefined,
  limit: number | undefined,
): T[] {
  const keys = [sortKey, 'created_at', 'id'].filter((k, i, a) => a.indexOf(k) === i);
  const sign = dir === 'asc' ? 1 : -1;
  const val = (r: T, k: string) => (r[k] ?? null) as Value;
  let out = [...rows].sort((a, b) => {
    for (const k of keys) {
      const c = cmp(val(a, k), val(b, k));
      if (c !== 0) return sign * c;
    }
    return 0;
  });
  if (marker !== undefined) {
    const mv = keys.map((k) => val(marker, k));
    out = out.filter((r) =>
      keys.some((k, i) => {
        if (mv[i] === null) return false;
        for (let j = 0; j < i; j++) {
          if (mv[j] === null) continue;
          const v = val(r, keys[j]!);
          if (v === null || cmp(v, mv[j]!) !== 0) return false;
        }
        const v = val(r, k);
        if (v === null) return false;
        return sign * cmp(v, mv[i]!) > 0;
      }),
    );
  }
  return limit === undefined ? out : out.slice(0, limit);
}

// ---------------------------------------------------------------------------------------------
// Documents (WSMEModelTransformer.to_wsme_model: attributes in the model's order, None left out)

const put = (d: Doc, k: string, v: unknown) => {
  if (v !== null && v !== undefined) d[k] = v instanceof Date ? isotime(v) : v;
};

export const namespaceHref = (name: string) => `/v2/metadefs/namespaces/${name}`;
export const objectHref = (ns: string, name: string) => `/v2/metadefs/namespaces/${ns}/objects/${name}`;

export interface NamespaceParts {
  resource_type_associations?: unknown;
  properties?: unknown;
  objects?: unknown;
  tags?: unknown;
}

/** A namespace as Glance's domain object shows it (visibility `private`, protected false by default). */
export function namespaceDoc(ns: NamespaceRow, parts: NamespaceParts = {}, updatedAt = ns.updated_at): Doc {
  const d: Doc = { namespace: ns.namespace };
  put(d, 'display_name', ns.display_name);
  put(d, 'description', ns.description);
  put(d, 'visibility', ns.visibility || 'private');
  put(d, 'protected', ns.protected ?? false);
  put(d, 'owner', ns.owner);
  put(d, 'created_at', ns.created_at);
  put(d, 'updated_at', updatedAt);
  put(d, 'resource_type_associations', parts.resource_type_associations);
  put(d, 'properties', parts.properties);
  put(d, 'objects', parts.objects);
  put(d, 'tags', parts.tags);
  d['self'] = namespaceHref(ns.namespace);
  d['schema'] = '/v2/schemas/metadefs/namespace';
  return d;
}

export function associationDoc(a: Omit<AssociationRow, 'id' | 'namespace_id'>): Doc {
  const d: Doc = { name: a.name };
  put(d, 'prefix', a.prefix);
  put(d, 'properties_target', a.properties_target);
  put(d, 'created_at', a.created_at);
  put(d, 'updated_at', a.updated_at);
  return d;
}

/** An object read back from the database (required [] when none, properties {} when none). */
export function objectDoc(ns: string, o: ObjectRow, prefix: string | null = null): Doc {
  let properties = storedProperties(o.properties);
  let required = o.required ?? [];
  if (prefix) {
    const renamed: Doc = {};
    for (const [k, v] of Object.entries(properties)) setKey(renamed, prefix + k, v);
    properties = renamed;
    required = required.map((r) => prefix + r);
  }
  const d: Doc = { name: o.name, required };
  put(d, 'description', o.description);
  d['properties'] = properties;
  put(d, 'created_at', o.created_at);
  put(d, 'updated_at', o.updated_at);
  d['self'] = objectHref(ns, o.name);
  d['schema'] = '/v2/schemas/metadefs/object';
  return d;
}

/** A namespace's properties map (definitions as stored, no `name` added). */
export function propertiesDoc(rows: PropertyRow[], prefix: string | null = null): Doc {
  const d: Doc = {};
  for (const p of rows) setKey(d, (prefix || '') + p.name, storedProperty(p.schema));
  return d;
}

/** One property (GET/POST/PUT …/properties/{name}): `name` is the row's. */
export function propertyDoc(p: { name: string; schema: unknown }): Doc {
  const { name: _stored, ...rest } = storedProperty(p.schema);
  return { name: p.name, ...rest };
}

export function tagDoc(t: { name: string; created_at: Date; updated_at: Date | null }): Doc {
  const d: Doc = { name: t.name };
  put(d, 'created_at', t.created_at);
  put(d, 'updated_at', t.updated_at);
  return d;
}

export function resourceTypeDoc(r: { name: string; created_at: Date; updated_at: Date | null }): Doc {
  return tagDoc(r);
}

export const notFound = (msg = 'The resource could not be found.') => new HttpError(404, msg);
