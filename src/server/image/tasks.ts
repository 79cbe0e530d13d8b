/**
 * Tasks, as Glance 25 keeps them for image import (glance/api/v2/tasks.py, the task domain
 * object and glance/db/sqlalchemy/api.py task_*): a task of type `api_image_import` is made
 * by `POST /v2/images/{id}/import`, goes pending → processing → success | failure, carries
 * its input (`image_id`, `import_req`, `backend`), a result (`{"image_id": …}` on success),
 * a message (progress, or why it failed) and expires 48 hours after it ends
 * (task_time_to_live).
 *
 * The tasks API (`GET /v2/tasks`, `GET /v2/tasks/{id}`) is admin-only, as Glance's default
 * `tasks_api_access` policy (role:admin); `GET /v2/images/{id}/tasks` is for whoever may
 * see the image and lists the tasks the caller owns (all of them for an admin).
 */
import { type Selectable, sql } from 'kysely';
import type { AuthContext, Services } from '../context.js';
import type { TaskTable } from '../db/schema.js';
import { type Ctx, HttpError, type Router, sendJson } from '../http.js';
import { isotime, UUID_RE, uuid } from '../util.js';
import { allowed, enforce } from './policy.js';

export type TaskRow = Selectable<TaskTable>;

/** Glance's [task] task_time_to_live: 48 hours. */
export const TASK_TTL_MS = 48 * 3600 * 1000;

export type TaskStatus = 'pending' | 'processing' | 'success' | 'failure';

export async function createTask(
  svc: Services,
  t: {
    type: string;
    owner: string;
    imageId: string;
    input: unknown;
    userId: string;
    requestId: string | null;
  },
): Promise<TaskRow> {
  const now = new Date();
  const row = {
    id: uuid(),
    type: t.type,
    status: 'pending',
    owner: t.owner,
    image_id: t.imageId,
    input: t.input,
    result: null,
    message: '',
    created_at: now,
    updated_at: now,
    expires_at: null,
    user_id: t.userId,
    request_id: t.requestId,
  };
  await svc.db
    .insertInto('tasks')
    .values({ ...row, input: JSON.stringify(t.input) as never })
    .execute();
  return row;
}

/** Move a task on; a final status sets `expires_at` (now + task_time_to_live). */
export async function updateTask(
  svc: Services,
  id: string,
  set: { status?: TaskStatus; message?: string; result?: unknown },
): Promise<void> {
  const now = new Date();
  const row: Record<string, unknown> = { updated_at: now };
  if (set.status !== undefined) row['status'] = set.status;
  if (set.message !== undefined) row['message'] = set.message;
  if (set.result !== undefined) row['result'] = JSON.stringify(set.result);
  if (set.status === 'success' || set.status === 'failure')
    row['expires_at'] = new Date(now.getTime() + TASK_TTL_MS);
  await svc.db.updateTable('tasks').set(row).where('id', '=', id).execute();
}

const location = (t: TaskRow) => `/v2/tasks/${t.id}`;

/** ResponseSerializer._format_task (GET /v2/tasks/{id}). */
export function taskView(t: TaskRow): Record<string, unknown> {
  const v: Record<string, unknown> = {
    id: t.id,
    input: t.input ?? null,
    type: t.type,
    status: t.status,
    owner: t.owner,
    message: t.message,
    result: t.result ?? null,
    created_at: isotime(t.created_at),
    updated_at: isotime(t.updated_at),
    self: location(t),
    schema: '/v2/schemas/task',
  };
  if (t.image_id !== null) v['image_id'] = t.image_id;
  if (t.request_id !== null) v['request_id'] = t.request_id;
  if (t.user_id !== null) v['user_id'] = t.user_id;
  if (t.expires_at !== null) v['expires_at'] = isotime(t.expires_at);
  return v;
}

/** ResponseSerializer._format_task_stub (GET /v2/tasks: no input, result, message). */
export function taskStubView(t: TaskRow): Record<string, unknown> {
  const v: Record<string, unknown> = {
    id: t.id,
    type: t.type,
    status: t.status,
    owner: t.owner,
    created_at: isotime(t.created_at),
    updated_at: isotime(t.updated_at),
    self: location(t),
    schema: '/v2/schemas/task',
  };
  if (t.expires_at !== null) v['expires_at'] = isotime(t.expires_at);
  return v;
}

/** Python's datetime.isoformat() of a naive UTC datetime, as Glance's JSON serializer writes it. */
function pyIsoformat(d: Date): string {
  const s = d.toISOString().replace(/Z$/, '');
  return s.endsWith('.000') ? s.slice(0, -4) : `${s}000`;
}

/** GET /v2/images/{id}/tasks: the db layer's _task_format dicts with task info. */
export function imageTaskView(t: TaskRow): Record<string, unknown> {
  return {
    id: t.id,
    type: t.type,
    status: t.status,
    owner: t.owner,
    expires_at: t.expires_at === null ? null : pyIsoformat(t.expires_at),
    created_at: pyIsoformat(t.created_at),
    updated_at: pyIsoformat(t.updated_at),
    deleted_at: null,
    deleted: false,
    image_id: t.image_id,
    request_id: t.request_id,
    user_id: t.user_id,
    input: t.input ?? null,
    result: t.result ?? null,
    message: t.message,
  };
}

const notExpired = (t: TaskRow, now: Date) => t.expires_at === null || t.expires_at >= now;

function enforceTasksApi(ctx: AuthContext): void {
  enforce('tasks_api_access', ctx, {});
}

export function taskRoutes(
  svc: Services,
  router: Router,
  auth: (c: Ctx) => Promise<AuthContext>,
  imageVisible: (ctx: AuthContext, id: string) => Promise<unknown>,
): void {
  router.on('GET', '/v2/tasks', async (c) => {
    const ctx = await auth(c);
    enforceTasksApi(ctx);
    const q = c.query;
    const sortDir = q.get('sort_dir') ?? 'desc';
    if (sortDir !== 'asc' && sortDir !== 'desc')
      throw new HttpError(400, `Invalid sort direction: ${sortDir}`);
    const sortKey = q.get('sort_key') ?? 'created_at';
    const SORTABLE = ['created_at', 'updated_at', 'id', 'type', 'status', 'owner', 'expires_at'];
    if (!SORTABLE.includes(sortKey)) throw new HttpError(400, `Invalid sort key: ${sortKey}`);
    const status = q.get('status');
    if (status && !['pending', 'processing', 'success', 'failure'].includes(status))
      throw new HttpError(400, `Invalid status value: ${status}`);
    const type = q.get('type');
    if (type && !['import', 'api_image_import'].includes(type))
      throw new HttpError(400, `Invalid type value: ${type}`);
    let limit = 25;
    const lim = q.get('limit');
    if (lim !== null) {
      if (!/^-?\d+$/.test(lim)) throw new HttpError(400, 'limit param must be an integer');
      limit = Number(lim);
      if (limit < 0) throw new HttpError(400, 'limit param must be positive');
    }
    limit = Math.min(limit, 1000);
    const marker = q.get('marker');
    if (marker && !UUID_RE.test(marker)) throw new HttpError(400, 'Invalid marker format');

    const now = new Date();
    let query = svc.db
      .selectFrom('tasks')
      .selectAll()
      .where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>=', now)]));
    if (status) query = query.where('status', '=', status);
    if (type) query = query.where('type', '=', type);
    // Keyset pagination on (key, created_at, id) as Glance's _paginate_query; NULLs as ''.
    const col = (k: string) =>
      k === 'expires_at' ? sql`coalesce(expires_at, 'epoch'::timestamptz)` : sql.ref(k);
    const keys = [...new Set([sortKey, 'created_at', 'id'])];
    if (marker) {
      const m = await svc.db.selectFrom('tasks').selectAll().where('id', '=', marker).executeTakeFirst();
      if (m === undefined) throw new HttpError(400, `Task with identifier ${marker} not found`);
      const mv = (k: string) => {
        const v = m[k as keyof TaskRow];
        return k === 'expires_at' && v === null ? new Date(0) : v;
      };
      const lhs = sql.join(keys.map(col));
      const rhs = sql.join(keys.map((k) => sql`${mv(k)}`));
      query = query.where(
        sortDir === 'asc' ? sql<boolean>`(${lhs}) > (${rhs})` : sql<boolean>`(${lhs}) < (${rhs})`,
      );
    }
    for (const k of keys) query = query.orderBy(col(k), sortDir);
    const rows = await query.limit(limit).execute();
    const page = rows;
    const params = new URLSearchParams(q);
    params.delete('marker');
    const qs = params.toString();
    const body: Record<string, unknown> = {
      tasks: page.map(taskStubView),
      first: qs === '' ? '/v2/tasks' : `/v2/tasks?${qs}`,
      schema: '/v2/schemas/tasks',
    };
    if (page.length !== 0 && page.length === limit) {
      params.set('marker', page[page.length - 1]!.id);
      body['next'] = `/v2/tasks?${params.toString()}`;
    }
    sendJson(c.res, 200, body);
  });

  router.on('GET', '/v2/tasks/:id', async (c) => {
    const ctx = await auth(c);
    enforceTasksApi(ctx);
    const id = c.params['id']!;
    const t = await svc.db.selectFrom('tasks').selectAll().where('id', '=', id).executeTakeFirst();
    if (t === undefined || !notExpired(t, new Date())) throw new HttpError(404, `Could not find task ${id}`);
    sendJson(c.res, 200, taskView(t));
  });

  router.on('DELETE', '/v2/tasks/:id', async (c) => {
    const ctx = await auth(c);
    enforceTasksApi(ctx);
    throw new HttpError(
      405,
      'This operation is currently not permitted on Glance Tasks. They are auto deleted after reaching the time based on their expires_at property.',
      { Allow: 'GET' },
    );
  });

  router.on('GET', '/v2/images/:id/tasks', async (c) => {
    const ctx = await auth(c);
    const id = c.params['id']!;
    try {
      await imageVisible(ctx, id);
    } catch (e) {
      if (e instanceof HttpError && (e.status === 404 || e.status === 403))
        throw new HttpError(404, 'The resource could not be found.');
      throw e;
    }
    const now = new Date();
    let q = svc.db.selectFrom('tasks').selectAll().where('image_id', '=', id).orderBy('created_at');
    if (!allowed('tasks_api_access', ctx)) q = q.where('owner', '=', ctx.projectId ?? '');
    const rows = (await q.execute()).filter((t) => notExpired(t, now));
    sendJson(c.res, 200, { tasks: rows.map(imageTaskView) });
  });
}
