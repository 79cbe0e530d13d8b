/**
 * Loading the metadata definition files (Glance's /etc/glance/metadefs/*.json) as
 * `glance-manage db_load_metadefs` does (glance/db/sqlalchemy/metadata.py, no merge):
 * each file is a namespace with its resource type associations, properties, objects and
 * tags; a namespace already there is skipped; resource types are created as needed
 * (protected); the owner is the file's or `admin`; rows get created_at, no updated_at.
 *
 * Beyond Glance: one transaction per file, and a file must be a valid namespace document
 * (the namespace schema and models of the API): a bad file is skipped with one log line,
 * never loaded in part. Objects keep their `required` list (Glance's loader drops it).
 *
 * It runs once per database: on a start that finds the metadef tables empty, recorded in
 * vdisk_meta (`metadefs_loaded`) so that deleting every namespace later does not bring the
 * files back on the next start.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { type Db, resourceTypeId } from './db.js';
import { type Doc, namespaceBody } from './model.js';
import { namespaceSchema } from './schemas.js';
import { check } from './validate.js';

const MARKER = 'metadefs_loaded';
/** A definition file larger than this is not one (the largest of Glance's is ~30 KiB). */
const MAX_FILE = 4 << 20;

export interface LoadResult {
  files: number;
  loaded: string[];
  skipped: { file: string; reason: string }[];
}

/** Load `dir` into an empty metadef database, once; returns null when nothing was to be done. */
export async function loadMetadefsOnce(
  db: Kysely<Database>,
  dir: string,
  log: (line: string) => void,
): Promise<LoadResult | null> {
  const marker = await db
    .selectFrom('vdisk_meta')
    .select('value')
    .where('key', '=', MARKER)
    .executeTakeFirst();
  if (marker !== undefined) return null;
  const any = await db.selectFrom('metadef_namespaces').select('id').limit(1).executeTakeFirst();
  const anyRt = await db.selectFrom('metadef_resource_types').select('id').limit(1).executeTakeFirst();
  let result: LoadResult | null = null;
  if (any === undefined && anyRt === undefined) {
    let names: string[];
    try {
      names = (await readdir(dir, { withFileTypes: true }))
        .filter((e) => e.isFile() && e.name.endsWith('.json'))
        .map((e) => e.name)
        .sort();
    } catch (err) {
      log(`metadefs: cannot read ${dir}: ${(err as Error).message}; nothing loaded`);
      return null;
    }
    result = await loadMetadefs(db, dir, names, log);
    log(
      `metadefs: loaded ${result.loaded.length} namespace(s) from ${result.files} file(s) in ${dir}` +
        (result.skipped.length > 0 ? `, ${result.skipped.length} skipped` : ''),
    );
  }
  await db
    .insertInto('vdisk_meta')
    .values({ key: MARKER, value: new Date().toISOString() })
    .onConflict((oc) => oc.column('key').doNothing())
    .execute();
  return result;
}

/** Load the named files of `dir` (each in its own transaction). */
export async function loadMetadefs(
  db: Kysely<Database>,
  dir: string,
  files: string[],
  log: (line: string) => void,
): Promise<LoadResult> {
  const result: LoadResult = { files: files.length, loaded: [], skipped: [] };
  for (const file of files) {
    // PGlite runs its queries on this thread, and an await on it resolves without returning to
    // the event loop: a pause per file lets the server answer requests while a first start
    // loads (~10 ms per file) instead of after all of them (~330 ms).
    await new Promise<void>((r) => setImmediate(r));
    const path = join(dir, file);
    const skip = (reason: string) => {
      result.skipped.push({ file, reason });
      log(`metadefs: skipped ${path}: ${reason}`);
    };
    let doc: Doc;
    try {
      const buf = await readFile(path);
      if (buf.length > MAX_FILE) {
        skip(`larger than ${MAX_FILE} bytes`);
        continue;
      }
      const v: unknown = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf));
      if (typeof v !== 'object' || v === null || Array.isArray(v)) {
        skip('not a JSON object');
        continue;
      }
      doc = v as Doc;
    } catch (err) {
      skip((err as Error).message.split('\n')[0]!);
      continue;
    }
    const invalid = check('namespace', namespaceSchema(), doc);
    if (invalid !== null) {
      skip(invalid.split('\n')[0]!);
      continue;
    }
    try {
      namespaceBody(doc);
    } catch (err) {
      skip((err as Error).message);
      continue;
    }
    try {
      const ok = await db.transaction().execute((trx) => loadOne(trx, doc));
      if (ok) result.loaded.push(doc['namespace'] as string);
      else log(`metadefs: namespace ${doc['namespace']} of ${path} already exists; skipped`);
    } catch (err) {
      skip(`database: ${(err as Error).message}`);
    }
  }
  return result;
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const list = (v: unknown): Doc[] => (Array.isArray(v) ? (v as Doc[]) : []);

/** One namespace document; false when the namespace exists already. */
async function loadOne(db: Db, doc: Doc): Promise<boolean> {
  const now = new Date();
  const ns = await db
    .insertInto('metadef_namespaces')
    .values({
      namespace: doc['namespace'] as string,
      display_name: str(doc['display_name']),
      description: str(doc['description']),
      visibility: str(doc['visibility']),
      protected: typeof doc['protected'] === 'boolean' ? doc['protected'] : null,
      owner: str(doc['owner']) ?? 'admin',
      created_at: now,
      updated_at: null,
    })
    .onConflict((oc) => oc.column('namespace').doNothing())
    .returning('id')
    .executeTakeFirst();
  if (ns === undefined) return false;
  for (const rt of list(doc['resource_type_associations'])) {
    const rtId = await resourceTypeId(db, rt['name'] as string, now, true);
    await db
      .insertInto('metadef_namespace_resource_types')
      .values({
        namespace_id: ns.id,
        resource_type_id: rtId,
        prefix: str(rt['prefix']),
        properties_target: str(rt['properties_target']),
        created_at: now,
        updated_at: null,
      })
      .onConflict((oc) => oc.columns(['namespace_id', 'resource_type_id']).doNothing())
      .execute();
  }
  const props = Object.entries((doc['properties'] ?? {}) as Doc);
  if (props.length > 0)
    await db
      .insertInto('metadef_properties')
      .values(
        props.map(([name, schema]) => ({
          namespace_id: ns.id,
          name,
          schema: JSON.stringify(schema),
          created_at: now,
          updated_at: null,
        })),
      )
      .execute();
  const seenObjects = new Set<string>();
  for (const o of list(doc['objects'])) {
    const name = o['name'] as string;
    if (seenObjects.has(name)) continue;
    seenObjects.add(name);
    const required = Array.isArray(o['required']) && o['required'].length > 0 ? o['required'] : null;
    await db
      .insertInto('metadef_objects')
      .values({
        namespace_id: ns.id,
        name,
        description: str(o['description']),
        required: required === null ? null : JSON.stringify(required),
        properties: JSON.stringify(o['properties'] ?? {}),
        created_at: now,
        updated_at: null,
      })
      .execute();
  }
  const tags = [...new Set(list(doc['tags']).map((t) => t['name'] as string))];
  if (tags.length > 0)
    await db
      .insertInto('metadef_tags')
      .values(tags.map((name) => ({ namespace_id: ns.id, name, created_at: now, updated_at: null })))
      .execute();
  return true;
}
