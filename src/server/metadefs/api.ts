/**
 * The metadata definitions API (/v2/metadefs/*) and its schemas (/v2/schemas/metadefs/*), as
 * Glance 25 answers them: glance/api/v2/metadef_{namespaces,objects,properties,
 * resource_types,tags}.py with their request deserializers (body, read-only attributes,
 * schema, WSME model), the repositories under them (glance/db/__init__.py) and the default
 * policies (glance/policies/metadef.py with enforce_new_defaults off: reading is open and
 * filtered by namespace visibility, every write is `role:admin`).
 *
 * Statuses and messages are Glance's; where Glance answers 500 (a body its WSME models
 * refuse, an unknown sort key, a non-integer limit) this answers 400. A namespace created with
 * its contents is one transaction: nothing is left of a refused one (Glance may leave the
 * namespace behind).
 */
import type { IncomingMessage } from 'node:http';
import type { AuthContext, Services } from '../context.js';
import { type Ctx, HttpError, type Router, readBody, sendEmpty, sendJson } from '../http.js';
import { baseUrl, type Identity } from '../identity/keystone.js';
import { isotime } from '../util.js';
import {
  type AssociationRow,
  associationDoc,
  associationsOf,
  type Db,
  findNamespace,
  isUniqueViolation,
  isVisible,
  type NamespaceRow,
  namespaceDoc,
  notFound,
  objectDoc,
  objectHref,
  objectsOf,
  paginate,
  propertiesDoc,
  propertiesOf,
  propertyDoc,
  resourceTypeDoc,
  resourceTypeId,
  tagDoc,
  tagsOf,
  visibleNamespaces,
} from './db.js';
import {
  associationBody,
  check4Byte,
  type Doc,
  namespaceBody,
  objectBody,
  propertyType,
  tagBody,
  tagsBody,
} from './model.js';
import { pyRepr, urlencode } from './pyrepr.js';
import {
  METADEF_SCHEMAS,
  namespaceSchema,
  objectSchema,
  propertySchema,
  resourceTypeSchema,
  tagSchema,
  tagsBodySchema,
} from './schemas.js';
import { check, type Schema } from './validate.js';

/** Glance's [DEFAULT] limit_param_default and api_limit_max. */
const LIMIT_DEFAULT = 25;
const LIMIT_MAX = 1000;
/** Deeper JSON is refused (Python's json gives up at ~1000 levels, with a 500). */
const MAX_DEPTH = 64;

const NAMESPACE_COLUMNS = [
  'id',
  'namespace',
  'display_name',
  'description',
  'visibility',
  'protected',
  'owner',
  'created_at',
  'updated_at',
];
const TAG_COLUMNS = ['id', 'namespace_id', 'name', 'created_at', 'updated_at'];

/** Names are keys of unique indexes, 80 characters at most as in Glance's columns. */
const NAME_MAX = 80;
function checkName(kind: string, name: string): void {
  if ([...name].length > NAME_MAX)
    throw new HttpError(
      400,
      `The metadata definition ${kind} name is longer than ${NAME_MAX} characters: ${[...name].slice(0, NAME_MAX).join('')}…`,
    );
}

const forbidden = (action: string) =>
  new HttpError(403, `You are not authorized to complete ${action} action.`);
const nsNotFound = (name: string) => new HttpError(404, `Namespace ${name} not found`);
const nsMissing = (name: string) =>
  new HttpError(404, `Metadata definition namespace=${name} was not found.`);
const isObj = (v: unknown): v is Doc => typeof v === 'object' && v !== null && !Array.isArray(v);

/** webob's has_body as Glance's JSONRequestDeserializer sees it. */
function hasBody(req: IncomingMessage): boolean {
  const te = (req.headers['transfer-encoding'] ?? '').toLowerCase();
  if (
    ['chunked', 'compress', 'deflate', 'gzip', 'identity'].includes(te) &&
    ['POST', 'PUT', 'PATCH'].includes((req.method ?? '').toUpperCase())
  )
    return true;
  const len = Number(req.headers['content-length'] ?? '0');
  return Number.isFinite(len) && len > 0;
}

/** How deep a JSON value nests (stops counting past MAX_DEPTH), and whether a string holds NUL. */
function scan(v: unknown): { depth: number; nul: boolean } {
  let depth = 0;
  const stack: [unknown, number][] = [[v, 1]];
  while (stack.length > 0) {
    const [x, d] = stack.pop()!;
    if (typeof x === 'string') {
      if (x.includes('\u0000')) return { depth, nul: true };
      continue;
    }
    if (typeof x !== 'object' || x === null) continue;
    if (d > depth) depth = d;
    if (depth > MAX_DEPTH) return { depth, nul: false };
    if (Array.isArray(x)) for (const y of x) stack.push([y, d + 1]);
    else
      for (const [k, y] of Object.entries(x)) {
        if (k.includes('\u0000')) return { depth, nul: true };
        stack.push([y, d + 1]);
      }
  }
  return { depth, nul: false };
}

/** PostgreSQL text holds no NUL character: refused wherever a request carries one. */
const NUL = 'Null characters are not allowed in metadata definitions.';

/** JSONRequestDeserializer: the body, a JSON object or array. */
async function readGlanceJson(req: IncomingMessage): Promise<unknown> {
  if (!hasBody(req)) throw new HttpError(400, 'Body expected in request.');
  const raw = await readBody(req);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    throw new HttpError(
      400,
      'Error decoding your request. Either the URL or the request body contained characters that could not be decoded by Glance',
    );
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new HttpError(400, 'Malformed JSON in request body.');
  }
  if (typeof v !== 'object' || v === null)
    throw new HttpError(400, 'Unexpected body type. Expected list/dict.');
  const { depth, nul } = scan(v);
  if (depth > MAX_DEPTH) throw new HttpError(400, 'Malformed JSON in request body.');
  if (nul) throw new HttpError(400, NUL);
  return v;
}

/**
 * The deserializer of a create/update: body, then the read-only attributes (403), then the
 * JSON schema (400); returns the body, an object (a list passes Glance's schemas and breaks its
 * models: 400 here).
 */
async function deserialize(c: Ctx, readOnly: string[], schema: Schema): Promise<Doc> {
  const body = await readGlanceJson(c.req);
  for (const k of readOnly) {
    const present = Array.isArray(body) ? body.includes(k) : Object.hasOwn(body as Doc, k);
    if (present) throw new HttpError(403, `Attribute '${k}' is read-only.`);
  }
  const err = check(schema['name'] as string, schema, body);
  if (err !== null) throw new HttpError(400, err);
  if (!isObj(body))
    throw new HttpError(
      400,
      `Invalid input for field/attribute ${schema['name']}. Value: '${pyRepr(body)}'. Value not a valid dict`,
    );
  return body;
}

/** routes' body_reject: GETs and DELETEs of single resources take no body. */
function rejectBody(c: Ctx): void {
  if (hasBody(c.req)) throw new HttpError(400, 'A body is not expected with this request.');
}

/** The query parameters as Python's dict(request.params): first position, last value. */
function paramsOf(q: URLSearchParams): Map<string, string> {
  const m = new Map<string, string>();
  for (const [k, v] of q) m.set(k, v);
  return m;
}

/** Python's int() of a query parameter. */
function pyInt(s: string): number | null {
  const t = s.trim().replaceAll('_', '');
  if (!/^[-+]?\d+$/.test(t)) return null;
  const n = Number(t);
  return Number.isSafeInteger(n) ? n : null;
}

function limitParam(s: string, zeroOk: boolean): number {
  const n = pyInt(s);
  if (n === null) throw new HttpError(400, 'limit param must be an integer');
  if (n < 0 || (!zeroOk && n === 0)) throw new HttpError(400, 'limit param must be positive');
  return n;
}

function sortDirParam(s: string | undefined): 'asc' | 'desc' {
  const d = s ?? 'desc';
  if (d !== 'asc' && d !== 'desc') throw new HttpError(400, `Invalid sort direction: ${d}`);
  return d;
}

function visibilityParam(p: Map<string, string>, allowed: string[]): void {
  const v = p.get('visibility');
  if (v && !allowed.includes(v)) throw new HttpError(400, `Invalid visibility value: ${v}`);
}

/** oslo.utils strutils.bool_from_string (default False). */
const boolFromString = (v: string | undefined): boolean =>
  v !== undefined && ['1', 't', 'true', 'on', 'y', 'yes'].includes(v.trim().toLowerCase());

/** A Location header value: the path's characters outside visible ASCII percent-encoded. */
const headerSafe = (s: string): string =>
  s.replace(/[^\x21-\x7e]/gu, (ch) =>
    [...Buffer.from(ch, 'utf8')].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join(''),
  );

export class MetadefApi {
  constructor(
    private readonly svc: Services,
    private readonly identity: Identity,
    /** Resolves once the definition files are loaded (index.ts); awaited by every route. */
    private readonly loaded: () => Promise<void> = async () => {},
  ) {}

  private get db() {
    return this.svc.db;
  }

  /** ns_repo.get: the namespace, or 'missing' / 'hidden'. */
  private async lookup(ctx: AuthContext, name: string, db: Db = this.db) {
    const ns = await findNamespace(db, name);
    if (ns === undefined) return 'missing' as const;
    if (!isVisible(ctx, ns)) return 'hidden' as const;
    return ns;
  }

  /** The namespace, 404 `Namespace X not found` when missing or not visible. */
  private async namespace(ctx: AuthContext, name: string): Promise<NamespaceRow> {
    const ns = await this.lookup(ctx, name);
    if (typeof ns === 'string') throw nsNotFound(name);
    return ns;
  }

  /** As the object controller: a missing namespace says so, a hidden one is not found. */
  private async namespaceForObjects(ctx: AuthContext, name: string): Promise<NamespaceRow> {
    const ns = await this.lookup(ctx, name);
    if (ns === 'missing') throw nsMissing(name);
    if (ns === 'hidden') throw nsNotFound(name);
    return ns;
  }

  /** Writes are `rule:metadef_admin`. */
  private admin(ctx: AuthContext, action: string): void {
    if (!ctx.isAdmin) throw forbidden(action);
  }

  routes(router: Router): void {
    const auth = (c: Ctx) => this.identity.authenticate(c.req);
    const on = (method: string, path: string, h: (c: Ctx, ctx: AuthContext) => Promise<void>) =>
      router.on(method, path, async (c) => {
        const ctx = await auth(c);
        const strings = [...Object.values(c.params), ...c.query.keys(), ...c.query.values()];
        if (strings.some((x) => x.includes('\u0000'))) throw new HttpError(400, NUL);
        await this.loaded();
        await h(c, ctx);
      });

    on('GET', '/v2/schemas/metadefs/:name', async (c) => {
      const s = Object.hasOwn(METADEF_SCHEMAS, c.params['name']!)
        ? METADEF_SCHEMAS[c.params['name']!]
        : undefined;
      if (s === undefined) throw notFound();
      sendJson(c.res, 200, s());
    });

    const NS = '/v2/metadefs/namespaces/:ns';
    on('GET', '/v2/metadefs/namespaces', (c, ctx) => this.listNamespaces(c, ctx));
    on('POST', '/v2/metadefs/namespaces', (c, ctx) => this.createNamespace(c, ctx));
    on('GET', NS, (c, ctx) => this.showNamespace(c, ctx));
    on('PUT', NS, (c, ctx) => this.updateNamespace(c, ctx));
    on('DELETE', NS, (c, ctx) => this.deleteNamespace(c, ctx));

    on('GET', `${NS}/objects`, (c, ctx) => this.listObjects(c, ctx));
    on('POST', `${NS}/objects`, (c, ctx) => this.createObject(c, ctx));
    on('DELETE', `${NS}/objects`, (c, ctx) => this.deleteContents(c, ctx, 'metadef_objects'));
    on('GET', `${NS}/objects/:name`, (c, ctx) => this.showObject(c, ctx));
    on('PUT', `${NS}/objects/:name`, (c, ctx) => this.updateObject(c, ctx));
    on('DELETE', `${NS}/objects/:name`, (c, ctx) => this.deleteObject(c, ctx));

    on('GET', `${NS}/properties`, (c, ctx) => this.listProperties(c, ctx));
    on('POST', `${NS}/properties`, (c, ctx) => this.createProperty(c, ctx));
    on('DELETE', `${NS}/properties`, (c, ctx) => this.deleteContents(c, ctx, 'metadef_properties'));
    on('GET', `${NS}/properties/:name`, (c, ctx) => this.showProperty(c, ctx));
    on('PUT', `${NS}/properties/:name`, (c, ctx) => this.updateProperty(c, ctx));
    on('DELETE', `${NS}/properties/:name`, (c, ctx) => this.deleteProperty(c, ctx));

    on('GET', `${NS}/tags`, (c, ctx) => this.listTags(c, ctx));
    on('POST', `${NS}/tags`, (c, ctx) => this.createTags(c, ctx));
    on('DELETE', `${NS}/tags`, (c, ctx) => this.deleteContents(c, ctx, 'metadef_tags'));
    on('GET', `${NS}/tags/:name`, (c, ctx) => this.showTag(c, ctx));
    on('POST', `${NS}/tags/:name`, (c, ctx) => this.createTag(c, ctx));
    on('PUT', `${NS}/tags/:name`, (c, ctx) => this.updateTag(c, ctx));
    on('DELETE', `${NS}/tags/:name`, (c, ctx) => this.deleteTag(c, ctx));

    on('GET', '/v2/metadefs/resource_types', (c) => this.listResourceTypes(c));
    on('GET', `${NS}/resource_types`, (c, ctx) => this.listAssociations(c, ctx));
    on('POST', `${NS}/resource_types`, (c, ctx) => this.associate(c, ctx));
    on('DELETE', `${NS}/resource_types/:rt`, (c, ctx) => this.dissociate(c, ctx));
  }

  // ------------------------------------------------------------------------------- namespaces

  private async listNamespaces(c: Ctx, ctx: AuthContext): Promise<void> {
    const p = paramsOf(c.query);
    const rawLimit = p.get('limit');
    const marker = p.get('marker');
    const dir = sortDirParam(p.get('sort_dir'));
    const sortKey = p.get('sort_key') ?? 'created_at';
    visibilityParam(p, ['public', 'private']);
    let limit = rawLimit === undefined ? LIMIT_DEFAULT : limitParam(rawLimit, true);
    limit = Math.min(LIMIT_MAX, limit);
    let markerRow: NamespaceRow | undefined;
    if (marker !== undefined) {
      const m = await this.lookup(ctx, marker);
      if (m === 'missing') throw nsMissing(marker);
      if (m === 'hidden')
        throw new HttpError(
          403,
          `Forbidding request, metadata definition namespace=${marker} is not visible.`,
        );
      markerRow = m;
    }
    if (!NAMESPACE_COLUMNS.includes(sortKey))
      throw new HttpError(400, `Sort key supplied is invalid: ${sortKey}`);
    const rts = p.has('resource_types') ? (p.get('resource_types') ?? '').split(',') : undefined;
    const rows = await visibleNamespaces(this.db, ctx, p.get('visibility'), rts);
    const page = paginate(rows, sortKey, dir, markerRow, limit);
    const assoc = await associationsOf(
      this.db,
      page.map((n) => n.id),
    );
    const namespaces = page.map((ns) => {
      const a = assoc.filter((x) => x.namespace_id === ns.id).map(associationDoc);
      return namespaceDoc(ns, a.length > 0 ? { resource_type_associations: a } : {});
    });
    p.delete('marker');
    const query = urlencode([...p]);
    const body: Doc = { namespaces };
    if (namespaces.length !== 0 && namespaces.length === limit) {
      p.set('marker', page[page.length - 1]!.namespace);
      body['next'] = `/v2/metadefs/namespaces?${urlencode([...p])}`;
    }
    body['schema'] = '/v2/schemas/metadefs/namespaces';
    body['first'] = query === '' ? '/v2/metadefs/namespaces' : `/v2/metadefs/namespaces?${query}`;
    sendJson(c.res, 200, body);
  }

  private async createNamespace(c: Ctx, ctx: AuthContext): Promise<void> {
    const raw = await deserialize(c, ['self', 'schema', 'created_at', 'updated_at'], namespaceSchema());
    const body = namespaceBody(raw);
    this.admin(ctx, 'add_metadef_namespace');
    const a = body.attrs;
    const now = new Date();
    const values = {
      namespace: a['namespace'] as string,
      display_name: (a['display_name'] as string | null | undefined) ?? null,
      description: (a['description'] as string | null | undefined) ?? null,
      visibility: (a['visibility'] as string | null | undefined) || 'private',
      protected: (a['protected'] as boolean | null | undefined) || false,
      owner: Object.hasOwn(a, 'owner') ? (a['owner'] as string) : (ctx.projectId ?? ''),
    };
    const name = values.namespace;
    const fail4 = (vals: Doc) => {
      const e = check4Byte(vals);
      if (e !== null) throw new HttpError(400, `Couldn't create metadata namespace: ${e}`);
    };
    fail4(values);
    for (const rt of body.resourceTypes ?? []) checkName('resource-type', rt['name'] as string);
    for (const o of body.objects ?? []) checkName('object', o['name'] as string);
    for (const t of body.tags ?? []) checkName('tag', t['name'] as string);
    for (const k of Object.keys(body.properties ?? {})) checkName('property', k);
    const row = await this.db.transaction().execute(async (trx) => {
      const inserted = await trx
        .insertInto('metadef_namespaces')
        .values({ ...values, created_at: now, updated_at: now })
        .onConflict((oc) => oc.column('namespace').doNothing())
        .returningAll()
        .executeTakeFirst();
      if (inserted === undefined)
        throw new HttpError(409, `The metadata definition namespace=${name} already exists.`);
      for (const rt of body.resourceTypes ?? []) {
        const rtName = rt['name'] as string;
        const rtId = await resourceTypeId(trx, rtName, now);
        const r = await trx
          .insertInto('metadef_namespace_resource_types')
          .values({
            namespace_id: inserted.id,
            resource_type_id: rtId,
            prefix: (rt['prefix'] as string | null | undefined) ?? null,
            properties_target: (rt['properties_target'] as string | null | undefined) ?? null,
            created_at: now,
            updated_at: now,
          })
          .onConflict((oc) => oc.columns(['namespace_id', 'resource_type_id']).doNothing())
          .executeTakeFirst();
        if (r.numInsertedOrUpdatedRows === 0n)
          throw new HttpError(
            409,
            `The metadata definition resource-type association of resource-type=${rtName} to namespace=${name} already exists.`,
          );
      }
      for (const o of body.objects ?? []) {
        const v = objectValues(o);
        fail4(objectCheckValues(v));
        const r = await trx
          .insertInto('metadef_objects')
          .values({ namespace_id: inserted.id, ...stored(v), created_at: now, updated_at: now })
          .onConflict((oc) => oc.columns(['namespace_id', 'name']).doNothing())
          .executeTakeFirst();
        if (r.numInsertedOrUpdatedRows === 0n)
          throw new HttpError(
            409,
            `A metadata definition object with name=${v.name} already exists in namespace=${name}.`,
          );
      }
      for (const t of body.tags ?? []) {
        const tagName = t['name'] as string;
        fail4({ name: tagName });
        const r = await trx
          .insertInto('metadef_tags')
          .values({ namespace_id: inserted.id, name: tagName, created_at: now, updated_at: now })
          .onConflict((oc) => oc.columns(['namespace_id', 'name']).doNothing())
          .executeTakeFirst();
        if (r.numInsertedOrUpdatedRows === 0n) throw duplicateTag(tagName, name);
      }
      for (const [pname, def] of Object.entries(body.properties ?? {})) {
        const schema = (def ?? {}) as Doc;
        fail4({ name: pname, json_schema: schema });
        await trx
          .insertInto('metadef_properties')
          .values({
            namespace_id: inserted.id,
            name: pname,
            schema: JSON.stringify(schema),
            created_at: now,
            updated_at: now,
          })
          .execute();
      }
      return inserted;
    });
    const parts: Doc = {};
    if (body.resourceTypes !== null) parts['resource_type_associations'] = body.resourceTypes;
    if (body.properties !== null) parts['properties'] = body.properties;
    if (body.objects !== null) parts['objects'] = body.objects;
    if (body.tags !== null) parts['tags'] = body.tags;
    sendJson(c.res, 201, namespaceDoc(row, parts), {
      Location: headerSafe(`${baseUrl(this.svc, c.req)}/v2/metadefs/namespaces/${name}`),
    });
  }

  private async showNamespace(c: Ctx, ctx: AuthContext): Promise<void> {
    rejectBody(c);
    const name = c.params['ns']!;
    const p = paramsOf(c.query);
    visibilityParam(p, ['public', 'private']);
    const ns = await this.lookup(ctx, name);
    if (ns === 'missing') throw nsMissing(name);
    if (ns === 'hidden') throw notFound();
    const assoc = await associationsOf(this.db, [ns.id]);
    const rt = p.get('resource_type');
    const prefix = rt ? (assoc.find((a) => a.name === rt)?.prefix ?? null) : null;
    const objects = (await objectsOf(this.db, ns.id)).map((o) => objectDoc(ns.namespace, o, prefix));
    const props = await propertiesOf(this.db, ns.id);
    // Tags as their list gives them: newest first.
    const tags = paginate(await tagsOf(this.db, ns.id), 'created_at', 'desc', undefined, undefined).map(
      (t) => ({ name: t.name }),
    );
    const parts: Doc = {};
    if (assoc.length > 0) parts['resource_type_associations'] = assoc.map(associationDoc);
    if (props.length > 0) parts['properties'] = propertiesDoc(props, prefix);
    if (objects.length > 0) parts['objects'] = objects;
    if (tags.length > 0) parts['tags'] = tags;
    sendJson(c.res, 200, namespaceDoc(ns, parts));
  }

  private async updateNamespace(c: Ctx, ctx: AuthContext): Promise<void> {
    const raw = await deserialize(c, ['self', 'schema', 'created_at', 'updated_at'], namespaceSchema());
    const a = namespaceBody(raw).attrs;
    const name = c.params['ns']!;
    const ns = await this.namespace(ctx, name);
    this.admin(ctx, 'modify_metadef_namespace');
    const values = {
      namespace: a['namespace'] as string,
      display_name: (a['display_name'] as string | null | undefined) ?? null,
      description: (a['description'] as string | null | undefined) ?? null,
      visibility: (a['visibility'] as string | null | undefined) || 'private',
      protected: (a['protected'] as boolean | null | undefined) || false,
      owner: (a['owner'] as string | null | undefined) || (ctx.projectId ?? ''),
    };
    const e = check4Byte(values);
    if (e !== null) throw new HttpError(400, `Couldn't update metadata namespace: ${e}`);
    let updated: NamespaceRow | undefined;
    try {
      updated = await this.db
        .updateTable('metadef_namespaces')
        .set({ ...values, updated_at: new Date() })
        .where('id', '=', ns.id)
        .returningAll()
        .executeTakeFirst();
    } catch (err) {
      if (isUniqueViolation(err))
        throw new HttpError(
          409,
          `Invalid update. It would result in a duplicate metadata definition namespace with the same name of ${values.namespace}`,
        );
      throw err;
    }
    if (updated === undefined) throw nsNotFound(name);
    // Glance answers with the object it saved, whose updated_at is the one it had read.
    sendJson(c.res, 200, namespaceDoc(updated, {}, ns.updated_at));
  }

  private async deleteNamespace(c: Ctx, ctx: AuthContext): Promise<void> {
    rejectBody(c);
    const ns = await this.namespace(ctx, c.params['ns']!);
    this.admin(ctx, 'delete_metadef_namespace');
    protectedNamespace(ns);
    await this.db.deleteFrom('metadef_namespaces').where('id', '=', ns.id).execute();
    sendEmpty(c.res, 204);
  }

  /** DELETE …/objects, …/properties, …/tags: all of one kind (the namespace's delete rule). */
  private async deleteContents(
    c: Ctx,
    ctx: AuthContext,
    table: 'metadef_objects' | 'metadef_properties' | 'metadef_tags',
  ): Promise<void> {
    const ns = await this.namespace(ctx, c.params['ns']!);
    this.admin(ctx, 'delete_metadef_namespace');
    if (table === 'metadef_tags') this.admin(ctx, 'delete_metadef_tags');
    protectedNamespace(ns);
    await this.db.deleteFrom(table).where('namespace_id', '=', ns.id).execute();
    sendEmpty(c.res, 204);
  }

  // ---------------------------------------------------------------------------------- objects

  private async listObjects(c: Ctx, ctx: AuthContext): Promise<void> {
    const p = paramsOf(c.query);
    if (p.has('limit')) limitParam(p.get('limit')!, false);
    sortDirParam(p.get('sort_dir'));
    visibilityParam(p, ['public', 'private', 'shared']);
    const ns = await this.namespaceForObjects(ctx, c.params['ns']!);
    const objects = (await objectsOf(this.db, ns.id)).map((o) => objectDoc(ns.namespace, o));
    // (sic: Glance's link has no leading slash)
    sendJson(c.res, 200, { objects, schema: 'v2/schemas/metadefs/objects' });
  }

  private async createObject(c: Ctx, ctx: AuthContext): Promise<void> {
    const raw = await deserialize(c, ['self', 'schema', 'created_at', 'updated_at'], objectSchema());
    if (isObj(raw['properties'])) {
      const ps = propertySchema(false);
      for (const def of Object.values(raw['properties'])) {
        const err = check('property', ps, def);
        if (err !== null) throw new HttpError(400, err);
      }
    }
    const v = objectValues(objectBody(raw));
    const nsName = c.params['ns']!;
    const ns = await this.namespaceForObjects(ctx, nsName);
    this.admin(ctx, 'add_metadef_object');
    const e = check4Byte(objectCheckValues(v));
    if (e !== null) throw new HttpError(400, `Couldn't create metadata object: ${e}`);
    const now = new Date();
    const r = await this.insertOr404(nsName, () =>
      this.db
        .insertInto('metadef_objects')
        .values({ namespace_id: ns.id, ...stored(v), created_at: now, updated_at: now })
        .onConflict((oc) => oc.columns(['namespace_id', 'name']).doNothing())
        .executeTakeFirst(),
    );
    if (r.numInsertedOrUpdatedRows === 0n)
      throw new HttpError(
        409,
        `A metadata definition object with name=${v.name} already exists in namespace=${nsName}.`,
      );
    sendJson(c.res, 201, objectResponse(nsName, v, now, now));
  }

  private async objectRow(ns: NamespaceRow, name: string) {
    const o = await this.db
      .selectFrom('metadef_objects')
      .selectAll()
      .where('namespace_id', '=', ns.id)
      .where('name', '=', name)
      .executeTakeFirst();
    if (o === undefined) throw notFound(`Could not find metadata object ${name}`);
    return o;
  }

  private async showObject(c: Ctx, ctx: AuthContext): Promise<void> {
    rejectBody(c);
    const ns = await this.namespaceForObjects(ctx, c.params['ns']!);
    const o = await this.objectRow(ns, c.params['name']!);
    sendJson(c.res, 200, objectDoc(ns.namespace, o));
  }

  private async updateObject(c: Ctx, ctx: AuthContext): Promise<void> {
    const raw = await deserialize(c, ['self', 'schema', 'created_at', 'updated_at'], objectSchema());
    const v = objectValues(objectBody(raw));
    const nsName = c.params['ns']!;
    const ns = await this.namespaceForObjects(ctx, nsName);
    this.admin(ctx, 'modify_metadef_object');
    const o = await this.objectRow(ns, c.params['name']!);
    const e = check4Byte(objectCheckValues(v));
    if (e !== null) throw new HttpError(400, `Couldn't update metadata object: ${e}`);
    try {
      await this.db
        .updateTable('metadef_objects')
        .set({ ...stored(v), updated_at: new Date() })
        .where('id', '=', o.id)
        .execute();
    } catch (err) {
      if (isUniqueViolation(err))
        throw new HttpError(
          409,
          // (the name Glance reads back after its failed flush: the object's current one)
          `Invalid update. It would result in a duplicate metadata definition object with the same name=${o.name} in namespace=${nsName}.`,
        );
      throw err;
    }
    sendJson(c.res, 200, objectResponse(nsName, v, o.created_at, o.updated_at));
  }

  private async deleteObject(c: Ctx, ctx: AuthContext): Promise<void> {
    rejectBody(c);
    const ns = await this.namespaceForObjects(ctx, c.params['ns']!);
    this.admin(ctx, 'delete_metadef_object');
    const o = await this.objectRow(ns, c.params['name']!);
    if (ns.protected)
      throw new HttpError(403, `Metadata definition object ${o.name} is protected and cannot be deleted.`);
    await this.db.deleteFrom('metadef_objects').where('id', '=', o.id).execute();
    sendEmpty(c.res, 204);
  }

  // ------------------------------------------------------------------------------- properties

  private async listProperties(c: Ctx, ctx: AuthContext): Promise<void> {
    rejectBody(c);
    const ns = await this.namespace(ctx, c.params['ns']!);
    sendJson(c.res, 200, { properties: propertiesDoc(await propertiesOf(this.db, ns.id)) });
  }

  private async propertyRow(ns: NamespaceRow, name: string) {
    const p = await this.db
      .selectFrom('metadef_properties')
      .selectAll()
      .where('namespace_id', '=', ns.id)
      .where('name', '=', name)
      .executeTakeFirst();
    if (p === undefined) throw notFound(`Could not find property ${name}`);
    return p;
  }

  private async showProperty(c: Ctx, ctx: AuthContext): Promise<void> {
    const nsName = c.params['ns']!;
    const ns = await this.namespace(ctx, nsName);
    let name = c.params['name']!;
    const rt = c.query.get('resource_type');
    if (rt) {
      const a = await this.association(ns, rt);
      if (a.prefix && name.startsWith(a.prefix)) name = name.slice(a.prefix.length);
      else
        throw notFound(
          `Property ${name} does not start with the expected resource type association prefix of '${a.prefix ?? 'None'}'.`,
        );
    }
    sendJson(c.res, 200, propertyDoc(await this.propertyRow(ns, name)));
  }

  /** metadef_resource_type_association_get: the resource type, then its association. */
  private async association(ns: NamespaceRow, rt: string): Promise<AssociationRow> {
    const r = await this.db
      .selectFrom('metadef_resource_types')
      .select('id')
      .where('name', '=', rt)
      .executeTakeFirst();
    if (r === undefined)
      throw notFound(`The metadata definition resource-type with name=${rt}, was not found.`);
    const a = (await associationsOf(this.db, [ns.id])).find((x) => x.name === rt);
    if (a === undefined)
      throw notFound(
        `The metadata definition resource-type association of resource-type=${rt} to namespace=${ns.namespace}, was not found.`,
      );
    return a;
  }

  private async createProperty(c: Ctx, ctx: AuthContext): Promise<void> {
    const raw = await deserialize(c, ['created_at', 'updated_at'], propertySchema());
    const def = propertyType(raw);
    const nsName = c.params['ns']!;
    const ns = await this.namespace(ctx, nsName);
    this.admin(ctx, 'add_metadef_property');
    const name = def['name'] as string;
    const e = check4Byte({ name, json_schema: def });
    if (e !== null) throw new HttpError(400, `Couldn't create metadata property: ${e}`);
    const now = new Date();
    const r = await this.insertOr404(nsName, () =>
      this.db
        .insertInto('metadef_properties')
        .values({ namespace_id: ns.id, name, schema: JSON.stringify(def), created_at: now, updated_at: now })
        .onConflict((oc) => oc.columns(['namespace_id', 'name']).doNothing())
        .executeTakeFirst(),
    );
    if (r.numInsertedOrUpdatedRows === 0n)
      throw new HttpError(
        409,
        `A metadata definition property with name=${name} already exists in namespace=${nsName}.`,
      );
    sendJson(c.res, 201, propertyDoc({ name, schema: def }));
  }

  private async updateProperty(c: Ctx, ctx: AuthContext): Promise<void> {
    const raw = await deserialize(c, ['created_at', 'updated_at'], propertySchema());
    const def = propertyType(raw);
    const nsName = c.params['ns']!;
    const ns = await this.namespace(ctx, nsName);
    this.admin(ctx, 'modify_metadef_property');
    const p = await this.propertyRow(ns, c.params['name']!);
    const name = def['name'] as string;
    const e = check4Byte({ name, json_schema: def });
    if (e !== null) throw new HttpError(400, `Couldn't update metadata property: ${e}`);
    try {
      await this.db
        .updateTable('metadef_properties')
        .set({ name, schema: JSON.stringify(def), updated_at: new Date() })
        .where('id', '=', p.id)
        .execute();
    } catch (err) {
      if (isUniqueViolation(err))
        throw new HttpError(
          409,
          `Invalid update. It would result in a duplicate metadata definition property with the same name=${p.name} in namespace=${nsName}.`,
        );
      throw err;
    }
    sendJson(c.res, 200, propertyDoc({ name, schema: def }));
  }

  private async deleteProperty(c: Ctx, ctx: AuthContext): Promise<void> {
    const ns = await this.namespace(ctx, c.params['ns']!);
    this.admin(ctx, 'remove_metadef_property');
    const p = await this.propertyRow(ns, c.params['name']!);
    if (ns.protected)
      throw new HttpError(403, `Metadata definition property ${p.name} is protected and cannot be deleted.`);
    await this.db.deleteFrom('metadef_properties').where('id', '=', p.id).execute();
    sendEmpty(c.res, 204);
  }

  // ------------------------------------------------------------------------------------- tags

  private async listTags(c: Ctx, ctx: AuthContext): Promise<void> {
    const p = paramsOf(c.query);
    const rawLimit = p.get('limit');
    const marker = p.get('marker');
    const dir = sortDirParam(p.get('sort_dir'));
    const sortKey = p.get('sort_key') ?? 'created_at';
    visibilityParam(p, ['public', 'private', 'shared']);
    const limit = rawLimit ? limitParam(rawLimit, true) : undefined;
    const ns = await this.namespace(ctx, c.params['ns']!);
    let markerRow: Awaited<ReturnType<typeof tagsOf>>[number] | undefined;
    if (marker) markerRow = await this.tagRow(ns, marker);
    if (!TAG_COLUMNS.includes(sortKey)) throw new HttpError(400, `Sort key supplied is invalid: ${sortKey}`);
    const rows = paginate(await tagsOf(this.db, ns.id), sortKey, dir, markerRow, limit);
    sendJson(c.res, 200, { tags: rows.map((t) => ({ name: t.name })) });
  }

  private async tagRow(ns: NamespaceRow, name: string) {
    const t = await this.db
      .selectFrom('metadef_tags')
      .selectAll()
      .where('namespace_id', '=', ns.id)
      .where('name', '=', name)
      .executeTakeFirst();
    if (t === undefined) throw notFound(`Could not find metadata tag ${name}`);
    return t;
  }

  private async createTags(c: Ctx, ctx: AuthContext): Promise<void> {
    const raw = await deserialize(c, ['created_at', 'updated_at'], tagsBodySchema());
    const tags = tagsBody(raw);
    const nsName = c.params['ns']!;
    const ns = await this.namespace(ctx, nsName);
    this.admin(ctx, 'add_metadef_tags');
    if (tags === null)
      throw new HttpError(
        400,
        "Invalid input for field/attribute tags. Value: 'None'. Mandatory field missing.",
      );
    const append = boolFromString(c.req.headers['x-openstack-append'] as string | undefined);
    const names = tags.map((t) => t['name'] as string);
    for (const n of names) checkName('tag', n);
    if (names.length > 0) {
      await this.db.transaction().execute(async (trx) => {
        if (!append) await trx.deleteFrom('metadef_tags').where('namespace_id', '=', ns.id).execute();
        for (const name of names) {
          const now = new Date();
          const r = await trx
            .insertInto('metadef_tags')
            .values({ namespace_id: ns.id, name, created_at: now, updated_at: now })
            .onConflict((oc) => oc.columns(['namespace_id', 'name']).doNothing())
            .executeTakeFirst();
          if (r.numInsertedOrUpdatedRows === 0n) throw duplicateTag(name, nsName);
        }
      });
    }
    sendJson(c.res, 201, { tags: names.map((name) => ({ name })) });
  }

  private async showTag(c: Ctx, ctx: AuthContext): Promise<void> {
    rejectBody(c);
    const ns = await this.namespace(ctx, c.params['ns']!);
    sendJson(c.res, 200, tagDoc(await this.tagRow(ns, c.params['name']!)));
  }

  private async createTag(c: Ctx, ctx: AuthContext): Promise<void> {
    rejectBody(c);
    const nsName = c.params['ns']!;
    const name = c.params['name']!;
    const ns = await this.namespace(ctx, nsName);
    const err = check('tag', tagSchema(), { name });
    if (err !== null) throw new HttpError(400, err);
    this.admin(ctx, 'add_metadef_tag');
    const e = check4Byte({ name });
    if (e !== null) throw new HttpError(400, `Couldn't create metadata tag: ${e}`);
    const now = new Date();
    const r = await this.insertOr404(nsName, () =>
      this.db
        .insertInto('metadef_tags')
        .values({ namespace_id: ns.id, name, created_at: now, updated_at: now })
        .onConflict((oc) => oc.columns(['namespace_id', 'name']).doNothing())
        .executeTakeFirst(),
    );
    if (r.numInsertedOrUpdatedRows === 0n) throw duplicateTag(name, nsName);
    sendJson(c.res, 201, tagDoc({ name, created_at: now, updated_at: now }));
  }

  private async updateTag(c: Ctx, ctx: AuthContext): Promise<void> {
    const raw = await deserialize(c, ['created_at', 'updated_at'], tagSchema());
    const name = tagBody(raw)['name'] as string;
    const nsName = c.params['ns']!;
    const ns = await this.namespace(ctx, nsName);
    this.admin(ctx, 'modify_metadef_tag');
    const t = await this.tagRow(ns, c.params['name']!);
    const e = check4Byte({ name });
    if (e !== null) throw new HttpError(400, `Couldn't update metadata tag: ${e}`);
    try {
      await this.db
        .updateTable('metadef_tags')
        .set({ name, updated_at: new Date() })
        .where('id', '=', t.id)
        .execute();
    } catch (err) {
      if (isUniqueViolation(err)) throw duplicateTag(name, nsName);
      throw err;
    }
    sendJson(c.res, 200, tagDoc({ name, created_at: t.created_at, updated_at: t.updated_at }));
  }

  private async deleteTag(c: Ctx, ctx: AuthContext): Promise<void> {
    rejectBody(c);
    const ns = await this.namespace(ctx, c.params['ns']!);
    this.admin(ctx, 'delete_metadef_tag');
    const t = await this.tagRow(ns, c.params['name']!);
    if (ns.protected)
      throw new HttpError(403, `Metadata definition tag ${t.name} is protected and cannot be deleted.`);
    await this.db.deleteFrom('metadef_tags').where('id', '=', t.id).execute();
    sendEmpty(c.res, 204);
  }

  // --------------------------------------------------------------------------- resource types

  private async listResourceTypes(c: Ctx): Promise<void> {
    rejectBody(c);
    const rows = await this.db.selectFrom('metadef_resource_types').selectAll().orderBy('id').execute();
    sendJson(c.res, 200, { resource_types: rows.map(resourceTypeDoc) });
  }

  private async listAssociations(c: Ctx, ctx: AuthContext): Promise<void> {
    rejectBody(c);
    const ns = await this.namespace(ctx, c.params['ns']!);
    const rows = await associationsOf(this.db, [ns.id]);
    sendJson(c.res, 200, { resource_type_associations: rows.map(associationDoc) });
  }

  private async associate(c: Ctx, ctx: AuthContext): Promise<void> {
    const raw = await deserialize(c, ['created_at', 'updated_at'], resourceTypeSchema());
    const body = associationBody(raw);
    const nsName = c.params['ns']!;
    const ns = await this.namespace(ctx, nsName);
    this.admin(ctx, 'add_metadef_resource_type_association');
    const name = body['name'] as string;
    const prefix = (body['prefix'] as string | null | undefined) ?? null;
    const target = (body['properties_target'] as string | null | undefined) ?? null;
    const now = new Date();
    const r = await this.insertOr404(nsName, async () => {
      const rtId = await resourceTypeId(this.db, name, now);
      return this.db
        .insertInto('metadef_namespace_resource_types')
        .values({
          namespace_id: ns.id,
          resource_type_id: rtId,
          prefix,
          properties_target: target,
          created_at: now,
          updated_at: now,
        })
        .onConflict((oc) => oc.columns(['namespace_id', 'resource_type_id']).doNothing())
        .executeTakeFirst();
    });
    if (r.numInsertedOrUpdatedRows === 0n)
      throw new HttpError(
        409,
        `The metadata definition resource-type association of resource-type=${name} to namespace=${nsName} already exists.`,
      );
    sendJson(
      c.res,
      201,
      associationDoc({ name, prefix, properties_target: target, created_at: now, updated_at: now }),
    );
  }

  private async dissociate(c: Ctx, ctx: AuthContext): Promise<void> {
    rejectBody(c);
    const ns = await this.namespace(ctx, c.params['ns']!);
    this.admin(ctx, 'remove_metadef_resource_type_association');
    const rt = c.params['rt']!;
    const a = (await associationsOf(this.db, [ns.id])).find((x) => x.name === rt);
    if (a === undefined) throw notFound(`Failed to find resource type ${rt} to delete`);
    if (ns.protected)
      throw new HttpError(
        403,
        `Metadata definition resource-type-association ${rt} is protected and cannot be deleted.`,
      );
    await this.db.deleteFrom('metadef_namespace_resource_types').where('id', '=', a.id).execute();
    sendEmpty(c.res, 204);
  }

  /** An insert under a namespace that may have been deleted meanwhile (foreign key): 404. */
  private async insertOr404<T>(nsName: string, f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (err) {
      if (typeof err === 'object' && err !== null && (err as { code?: unknown }).code === '23503')
        throw nsMissing(nsName);
      throw err;
    }
  }
}

function protectedNamespace(ns: NamespaceRow): void {
  if (ns.protected)
    throw new HttpError(
      403,
      `Metadata definition namespace ${ns.namespace} is protected and cannot be deleted.`,
    );
}

const duplicateTag = (name: string, ns: string) =>
  new HttpError(
    409,
    `A metadata tag with name=${name} already exists in namespace=${ns}. (Please note that metadata tag names are case insensitive).`,
  );

interface ObjectValues {
  name: string;
  description: string | null;
  required: string[] | null;
  properties: Doc | null;
}

function objectValues(o: Doc): ObjectValues {
  return {
    name: o['name'] as string,
    description: (o['description'] as string | null | undefined) ?? null,
    required: (o['required'] as string[] | null | undefined) ?? null,
    properties: (o['properties'] as Doc | null | undefined) ?? null,
  };
}

/** What Glance's no_4byte_params sees of an object, in its order. */
const objectCheckValues = (v: ObjectValues): Doc => ({
  name: v.name,
  required: v.required === null || v.required.length === 0 ? null : v.required.join(','),
  description: v.description,
  json_schema: v.properties ?? {},
});

/** The columns of an object (required as Glance keeps it: none when empty). */
const stored = (v: ObjectValues) => ({
  name: v.name,
  description: v.description,
  required: v.required === null || v.required.length === 0 ? null : JSON.stringify(v.required),
  properties: JSON.stringify(v.properties ?? {}),
});

/** The object a create or update answers: Glance's domain object, not a re-read. */
function objectResponse(ns: string, v: ObjectValues, createdAt: Date, updatedAt: Date | null): Doc {
  const d: Doc = { name: v.name };
  if (v.required !== null) d['required'] = v.required;
  if (v.description !== null) d['description'] = v.description;
  if (v.properties !== null) d['properties'] = v.properties;
  d['created_at'] = isotime(createdAt);
  if (updatedAt !== null) d['updated_at'] = isotime(updatedAt);
  d['self'] = objectHref(ns, v.name);
  d['schema'] = '/v2/schemas/metadefs/object';
  return d;
}
