/**
 * GET /v2/images: what the caller may see (Glance's _select_images_query), filters,
 * sorting in both syntaxes, and keyset pagination with `marker` as Glance's _paginate_query
 * (NULLs compared as '' or 0, `created_at` and `id` appended as tie-breakers).
 */
import { type Expression, type ExpressionBuilder, type SqlBool, sql } from 'kysely';
import type { AuthContext, Services } from '../context.js';
import type { Database } from '../db/schema.js';
import { HttpError } from '../http.js';
import { BACKING_PROP, backingOf } from './layers.js';
import { type ImageRow, visibleFilter } from './policy.js';

const SORT_KEYS = [
  'name',
  'status',
  'container_format',
  'disk_format',
  'size',
  'id',
  'created_at',
  'updated_at',
];
const STRING_KEYS = new Set(['name', 'status', 'container_format', 'disk_format', 'id']);
/** Sort keys whose columns are NOT NULL (no coalesce needed; see the images table). */
const NOT_NULL_KEYS = new Set(['status', 'id', 'created_at', 'updated_at']);
export const DEFAULT_LIMIT = 25;
export const MAX_LIMIT = 1000;

type Dir = 'asc' | 'desc';
type SortKey =
  | 'name'
  | 'status'
  | 'container_format'
  | 'disk_format'
  | 'size'
  | 'id'
  | 'created_at'
  | 'updated_at';

export interface ListResult {
  images: ImageRow[];
  nextMarker: string | undefined;
}

export function sortParams(params: URLSearchParams): { keys: SortKey[]; dirs: Dir[] } {
  const keys: SortKey[] = [];
  const dirs: Dir[] = [];
  const checkKey = (k: string): SortKey => {
    if (!SORT_KEYS.includes(k))
      throw new HttpError(
        400,
        `Invalid sort key: ${k}. It must be one of the following: ${SORT_KEYS.join(', ')}.`,
      );
    return k as SortKey;
  };
  const checkDir = (d: string): Dir => {
    if (d !== 'asc' && d !== 'desc') throw new HttpError(400, `Invalid sort direction: ${d}`);
    return d;
  };
  const sort = params.get('sort');
  if (sort !== null) {
    if (params.has('sort_key') || params.has('sort_dir'))
      throw new HttpError(400, 'Old and new sorting syntax cannot be combined');
    for (const part of sort.trim().split(',')) {
      const i = part.indexOf(':');
      keys.push(checkKey((i < 0 ? part : part.slice(0, i)).trim()));
      dirs.push(checkDir(i < 0 ? 'desc' : part.slice(i + 1).trim()));
    }
  } else {
    for (const k of params.getAll('sort_key')) keys.push(checkKey(k.trim()));
    for (const d of params.getAll('sort_dir')) dirs.push(checkDir(d.trim()));
    if (dirs.length > 1 && dirs.length !== keys.length)
      throw new HttpError(400, 'Number of sort dirs does not match the number of sort keys');
  }
  if (keys.length === 0) keys.push('created_at');
  if (dirs.length === 0) dirs.push('desc');
  // image_get_all: one direction applies to every key; created_at and id break ties.
  const fallback = dirs[0]!;
  while (dirs.length < keys.length) dirs.push(fallback);
  for (const k of ['created_at', 'id'] as const) {
    if (!keys.includes(k)) {
      keys.push(k);
      dirs.push(fallback);
    }
  }
  return { keys, dirs };
}

/** utils.split_filter_op: `op:value`, unless the whole value is an ISO 8601 time. */
function splitOp(expr: string): [string, string] {
  const i = expr.indexOf(':');
  if (i < 0) return ['eq', expr];
  if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$/.test(expr)) return ['eq', expr];
  return [expr.slice(0, i), expr.slice(i + 1)];
}

/** utils.split_filter_value_for_quotes: comma-separated, double quotes protect commas. */
export function splitQuoted(v: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < v.length; i++) {
    const ch = v[i]!;
    if (ch === '"') {
      quoted = !quoted;
    } else if (ch === '\\' && v[i + 1] === '"') {
      cur += '"';
      i++;
    } else if (ch === ',' && !quoted) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out;
}

function parseBool(v: string, name: string): boolean {
  const s = v.trim().toLowerCase();
  if (['1', 't', 'true', 'on', 'y', 'yes'].includes(s)) return true;
  if (['0', 'f', 'false', 'off', 'n', 'no'].includes(s)) return false;
  throw new HttpError(
    400,
    `Unrecognized value '${v}' for ${name}, acceptable values are: '0', '1', 'f', 'false', 'n', 'no', 'off', 'on', 't', 'true', 'y', 'yes'`,
  );
}

const RESERVED_PARAMS = new Set([
  'limit',
  'marker',
  'member_status',
  'tag',
  'sort',
  'sort_key',
  'sort_dir',
  'visibility',
  'os_hidden',
]);

export async function listImages(
  svc: Services,
  ctx: AuthContext,
  params: URLSearchParams,
): Promise<ListResult> {
  const limitRaw = params.get('limit');
  let limit = DEFAULT_LIMIT;
  if (limitRaw !== null) {
    if (!/^\s*[-+]?\d+\s*$/.test(limitRaw)) throw new HttpError(400, 'limit param must be an integer');
    limit = Number.parseInt(limitRaw, 10);
    if (limit < 0) throw new HttpError(400, 'limit param must be positive');
  }
  limit = Math.min(limit, MAX_LIMIT);
  const memberStatus = params.get('member_status') ?? 'accepted';
  if (!['pending', 'accepted', 'rejected', 'all'].includes(memberStatus))
    throw new HttpError(400, `Invalid status: ${memberStatus}`);
  const visibility = params.get('visibility');
  if (visibility !== null && !['community', 'public', 'private', 'shared', 'all'].includes(visibility))
    throw new HttpError(400, `Invalid visibility value: ${visibility}`);
  if (params.has('changes-since'))
    throw new HttpError(400, 'The "changes-since" filter is no longer available on v2.');
  const { keys, dirs } = sortParams(params);
  const tags = params.getAll('tag').map((t) => t.trim());
  const osHidden = params.has('os_hidden') ? parseBool(params.get('os_hidden')!, 'os_hidden') : false;

  const conds: ((eb: ExpressionBuilder<Database, 'images'>) => Expression<SqlBool>)[] = [];
  conds.push((eb) => eb('os_hidden', '=', osHidden));
  for (const t of tags) conds.push(() => sql<SqlBool>`tags @> ${JSON.stringify([t])}::jsonb`);

  const seen = new Set<string>();
  for (const [k, raw] of params) {
    if (RESERVED_PARAMS.has(k) || seen.has(k)) continue;
    seen.add(k);
    const v = params.getAll(k).at(-1)!;
    if (k.endsWith('_min') || k.endsWith('_max')) {
      const col = k.slice(0, -4);
      if (!['size', 'virtual_size', 'min_ram', 'min_disk'].includes(col)) {
        conds.push(() => sql<SqlBool>`properties->>${k} = ${v}`);
        continue;
      }
      if (!/^\s*[-+]?\d+\s*$/.test(v))
        throw new HttpError(400, 'Unable to filter on a range with a non-numeric value.');
      const n = Number.parseInt(v, 10);
      const c = col as 'size' | 'virtual_size' | 'min_ram' | 'min_disk';
      conds.push((eb) => eb(c, k.endsWith('_min') ? '>=' : '<=', n));
    } else if (k === 'created_at' || k === 'updated_at') {
      const [op, iso] = splitOp(v);
      const t = Date.parse(iso);
      if (!/^\d{4}-\d{2}-\d{2}/.test(iso) || Number.isNaN(t))
        throw new HttpError(400, `Bad "${k}" query filter format. Use ISO 8601 DateTime notation.`);
      const ops: Record<string, '=' | '<>' | '>' | '>=' | '<' | '<='> = {
        eq: '=',
        neq: '<>',
        gt: '>',
        gte: '>=',
        lt: '<',
        lte: '<=',
      };
      const sqlOp = ops[op];
      if (sqlOp === undefined) throw new HttpError(400, `Invalid operator: ${op}`);
      conds.push((eb) => eb(k, sqlOp, new Date(t)));
    } else if (STRING_KEYS.has(k)) {
      const [op, value] = splitOp(v);
      const col = k as 'name' | 'status' | 'container_format' | 'disk_format' | 'id';
      if (op === 'in') {
        const list = splitQuoted(value);
        conds.push((eb) => eb(col, 'in', list));
      } else if (op === 'eq') conds.push((eb) => eb(col, '=', value));
      else throw new HttpError(400, `Unable to filter by unknown operator '${op}'.`);
    } else if (k === 'size' || k === 'virtual_size' || k === 'min_ram' || k === 'min_disk') {
      // Glance filters any column of the image exactly (hasattr(models.Image, key)).
      if (!/^\s*\d+\s*$/.test(v))
        throw new HttpError(400, `Invalid value '${v}' for ${k}: an integer is expected.`);
      const n = Number.parseInt(v, 10);
      conds.push((eb) => eb(k, '=', n));
    } else if (k === 'owner' || k === 'checksum' || k === 'os_hash_value' || k === 'os_hash_algo') {
      conds.push((eb) => eb(k, '=', v));
    } else if (k === 'protected') {
      const b = parseBool(v, 'protected');
      conds.push((eb) => eb('protected', '=', b));
    } else if (k === BACKING_PROP) {
      conds.push(() => sql<SqlBool>`${backingOf()} = ${v}`);
    } else {
      conds.push(() => sql<SqlBool>`properties->>${k} = ${v}`);
    }
    void raw;
  }

  const project = ctx.projectId;
  let q = svc.db
    .selectFrom('images')
    // Each row as one JSON text: PGlite decodes one text value per row (JSON.parse, native)
    // instead of 23 typed columns, which halves the time of a page of 1000.
    .select(sql<string>`row_to_json(images)::text`.as('j'))
    .where((eb) => eb.and(conds.map((c) => c(eb))));
  const visible = visibleFilter(ctx, memberStatus);
  if (visible !== null) q = q.where(visible);
  if (visibility !== null) {
    if (visibility !== 'all') q = q.where('visibility', '=', visibility);
  } else if (project === null) {
    q = q.where('visibility', '<>', 'community');
  } else {
    q = q.where((eb) => eb.or([eb('owner', '=', project), eb('visibility', '<>', 'community')]));
  }

  // NULLs sort as '' or 0 (Glance's _paginate_query); NOT NULL columns stay bare so that
  // the index on (created_at DESC, id DESC) serves the default order: an index scan that
  // stops after `limit` rows instead of sorting every visible image.
  const expr = (k: SortKey) => {
    if (NOT_NULL_KEYS.has(k)) return sql.ref(k);
    if (STRING_KEYS.has(k)) return sql`coalesce(${sql.ref(k)}, '')`;
    if (k === 'size') return sql`coalesce(size, 0)`;
    return sql.ref(k);
  };
  const markerId = params.get('marker');
  if (markerId !== null) {
    const m = await svc.db.selectFrom('images').selectAll().where('id', '=', markerId).executeTakeFirst();
    if (m === undefined) throw new HttpError(400, `marker not found: ${markerId}`);
    const mv = (k: SortKey): unknown => {
      const v = m[k];
      if (v === null) return STRING_KEYS.has(k) ? '' : 0;
      return v;
    };
    if (keys.every((k) => NOT_NULL_KEYS.has(k)) && dirs.every((d) => d === dirs[0])) {
      // One direction over NOT NULL keys: a row comparison, which the index scan uses as
      // its start key (the OR form below means the same but is only a filter).
      const l = sql.join(keys.map((k) => sql.ref(k)));
      const r = sql.join(keys.map((k) => sql`${mv(k)}`));
      q = q.where(dirs[0] === 'desc' ? sql<SqlBool>`(${l}) < (${r})` : sql<SqlBool>`(${l}) > (${r})`);
    } else {
      const ors = keys.map((k, i) => {
        const parts = keys.slice(0, i).map((kj) => sql`${expr(kj)} = ${mv(kj)}`);
        parts.push(dirs[i] === 'desc' ? sql`${expr(k)} < ${mv(k)}` : sql`${expr(k)} > ${mv(k)}`);
        return sql`(${sql.join(parts, sql` AND `)})`;
      });
      q = q.where(sql<SqlBool>`(${sql.join(ors, sql` OR `)})`);
    }
  }
  for (let i = 0; i < keys.length; i++) q = q.orderBy(expr(keys[i]!), dirs[i]!);
  refreshStats(svc);
  const images = (await q.limit(limit).execute()).map((r) => rowFromJson(r.j));
  const nextMarker = images.length > 0 && images.length === limit ? images.at(-1)!.id : undefined;
  return { images, nextMarker };
}

/** An images row from row_to_json: the same values as a plain SELECT, dates as Dates. */
function rowFromJson(text: string): ImageRow {
  const o = JSON.parse(text) as Record<string, unknown>;
  o['created_at'] = new Date(o['created_at'] as string);
  o['updated_at'] = new Date(o['updated_at'] as string);
  return o as unknown as ImageRow;
}

/**
 * Planner statistics. PostgreSQL's autovacuum keeps them; PGlite has no autovacuum, and
 * without them the planner guesses a few dozen images, sorts every visible row instead of
 * walking the (created_at, id) index, and a page of 25 out of 10,000 takes a full sort.
 * Lists refresh them at most every STATS_INTERVAL_MS, in the background (ANALYZE samples at
 * most 30,000 rows per table; a few ms here).
 */
const STATS_INTERVAL_MS = 10_000;
const statsAt = new WeakMap<object, number>();

function refreshStats(svc: Services): void {
  const now = Date.now();
  const last = statsAt.get(svc.db);
  if (last !== undefined && now - last < STATS_INTERVAL_MS) return;
  statsAt.set(svc.db, now);
  sql`ANALYZE images, image_members`.execute(svc.db).catch(() => {
    // statistics are an optimisation: a failure (database closing) changes no answer
  });
}
