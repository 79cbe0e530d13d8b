/**
 * Interoperable image import, as Glance 25 (glance/api/v2/images.py import_image,
 * image_data.py stage, glance/async_/flows/api_image_import.py and its internal plugins),
 * with one store:
 *
 * - `PUT /v2/images/{id}/stage`: queued → uploading; the data goes to the blob store under
 *   `staging-<id>` (the image's `blob` names it, so it survives a restart and is deleted
 *   with the image), inspected as `PUT /file` is when disk_format is known; `size` is set.
 *   Any failure puts the image back to queued and keeps nothing.
 * - `POST /v2/images/{id}/import` answers 202 and runs a task (`api_image_import`):
 *   glance-direct (from the staged data) and web-download (fetched by the server, filtered
 *   by web-download.ts, written to the staging key first as Glance does) take the image to
 *   `importing`, then copy the staged data to the image's blob through data.ts (md5,
 *   sha512, size cap, quota, and the upload inspection again, so hostile data is refused
 *   whatever path it came by), optionally convert it with the engine (`importConvertTo`,
 *   Glance's image_conversion plugin), set `active`, and remove the staged data.
 *   On failure: the staged data is removed, the image goes back to `queued` (Glance's
 *   _VerifyImageState/BaseDownload revert), the task fails with the reason as its message.
 * - The import lock is Glance's: the `os_glance_import_task` property names the task while
 *   it runs (a conditional UPDATE takes it; 409 when another task holds it, unless that
 *   task is gone or its lock expired: 60 minutes, 120 when pending); with a single store
 *   `os_glance_importing_to_stores` and `os_glance_failed_import` are set to '' as Glance
 *   does when `enabled_backends` is unset.
 * - copy-image: the image is already in the only store. Glance 25's single-store path looks
 *   for a store name in the location metadata (it has none there); we answer what that check
 *   means: 400 `Image is already present at store '…'` (202 and nothing to do with
 *   `all_stores: true`), after the same status (409) and policy (admin, 403) checks.
 */
import { mkdtemp, open, rm } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { sql } from 'kysely';
import { type AuthContext, beginWrite, type Services } from '../context.js';
import {
  type Ctx,
  HttpError,
  isObject,
  mediaType,
  type Router,
  readJson,
  sendEmpty,
  sendJson,
} from '../http.js';
import type { Identity } from '../identity/keystone.js';
import type { BlobStore } from '../store/store.js';
import { readStore, storeProperties, storesOf } from '../store/stores.js';
import type { ImageApi } from './api.js';
import { finishUpload, receiveData, type UploadOutcome } from './data.js';
import { ENGINE_FORMAT } from './formats.js';
import type { InspectorFactory } from './inspect.js';
import { BACKING_PROP } from './layers.js';
import { canModify, enforce, type ImageRow } from './policy.js';
import { removeFromStore, STAGING_PREFIX, stagingKey, storeById } from './store-ops.js';
import { createTask, type TaskRow, taskRoutes, updateTask } from './tasks.js';
import { type ImportFilter, isInternalAddress, openWebImage, validateImportUri } from './web-download.js';

const LOCK = 'os_glance_import_task';
const IMPORTING = 'os_glance_importing_to_stores';
const FAILED = 'os_glance_failed_import';
const LOCK_EXPIRY_MS = 60 * 60 * 1000;

/**
 * A task whose failure could not be recorded either (the database connection dropped during
 * its revert): its row still names this node as writer, so once the job is over (no longer in
 * `svc.writing`) and the row older than a lease, this node's reaper fails it as it fails the
 * import of a dead node (recovery.ts, recoverImport). Left unhandled, the rejection ended the
 * process (found by faults.test.ts: pg_terminate_backend mid-import).
 */
const unrecorded = (): void => {};

export interface ImportApiOptions {
  inspect?: InspectorFactory | undefined;
}

export { STAGING_PREFIX };

/** Glance's comma-separated store lists (os_glance_importing_to_stores…): sorted, no empties. */
export const storeList = (ids: Iterable<string>): string =>
  [...new Set(ids)]
    .filter((x) => x !== '')
    .sort()
    .join(',');
const listOf = (v: string | undefined): string[] => (v ?? '').split(',').filter((x) => x !== '');

/** The properties an image carries while a task of this server makes its data (the import lock). */
export const taskLockProperties = (taskId: string): Record<string, string> => ({
  [LOCK]: taskId,
  [IMPORTING]: '',
  [FAILED]: '',
});

/** A stream that data.ts's receiveData can read as it reads a request body. */
export function asBody(stream: Readable, size: number | null): IncomingMessage {
  const s = stream as Readable & { headers: Record<string, string> };
  s.headers = size === null ? {} : { 'content-length': String(size) };
  Object.defineProperty(s, 'complete', { get: () => stream.readableEnded, configurable: true });
  return s as unknown as IncomingMessage;
}

/**
 * The data on its way, counted: the task's message says how much was copied (Glance's
 * `Copied N MiB`), refreshed every few seconds, which also keeps the task's `updated_at`
 * (and so its import lock) fresh on long imports.
 */
function counted(svc: Services, taskId: string, source: Readable, every = 5000): Readable {
  let bytes = 0;
  let last = Date.now();
  const t = new Transform({
    highWaterMark: 1 << 20,
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      const now = Date.now();
      if (now - last >= every) {
        last = now;
        // Only while processing: a late update must not overwrite a final message.
        svc.db
          .updateTable('tasks')
          .set({ message: `Copied ${Math.floor(bytes / (1 << 20))} MiB`, updated_at: new Date() })
          .where('id', '=', taskId)
          .where('status', '=', 'processing')
          .execute()
          .catch(() => {});
      }
      cb(null, chunk);
    },
  });
  pipeline(source, t).catch(() => {});
  return t;
}

function filterOf(svc: Services): ImportFilter {
  const s = svc.settings;
  return {
    allowedSchemes: s.importAllowedSchemes,
    disallowedSchemes: s.importDisallowedSchemes,
    allowedHosts: s.importAllowedHosts.map((h) => h.toLowerCase()),
    disallowedHosts: s.importDisallowedHosts.map((h) => h.toLowerCase()),
    allowedPorts: s.importAllowedPorts,
    disallowedPorts: s.importDisallowedPorts,
  };
}

const message = (e: unknown) => (e instanceof HttpError || e instanceof Error ? e.message : String(e));

export class ImportApi {
  private readonly jobs = new Set<Promise<void>>();
  private readonly abort = new AbortController();

  constructor(
    private readonly svc: Services,
    private readonly identity: Identity,
    private readonly images: ImageApi,
    private readonly opts: ImportApiOptions = {},
  ) {}

  private get db() {
    return this.svc.db;
  }

  routes(router: Router): void {
    const auth = (c: Ctx) => this.identity.authenticate(c.req);
    router.on('GET', '/v2/info/stores', async (c) => {
      await auth(c);
      sendJson(c.res, 200, { stores: this.storesInfo() });
    });
    router.on('GET', '/v2/info/stores/detail', async (c) => {
      const ctx = await auth(c);
      const stores = this.storesInfo();
      enforce('stores_info_detail', ctx, {});
      const set = this.svc.stores!;
      sendJson(c.res, 200, {
        stores: stores.map((s) => {
          const named = set.get(s['id'] as string)!;
          return { ...s, type: named.store.kind, properties: storeProperties(named) };
        }),
      });
    });
    router.on('DELETE', '/v2/stores/:store/:id', async (c) => this.deleteFromStore(c, await auth(c)));
    router.on('PUT', '/v2/images/:id/stage', async (c) => {
      const done = beginWrite(this.svc, c.params['id']!);
      try {
        await this.stage(c, await auth(c));
      } finally {
        done();
      }
    });
    router.on('POST', '/v2/images/:id/import', async (c) => this.importImage(c, await auth(c)));
    taskRoutes(this.svc, router, auth, (ctx, id) => this.images.visibleImage(ctx, id));
  }

  /** GET /v2/info/stores: Glance's discovery of the stores (404 with one store, as Glance). */
  private storesInfo(): Record<string, unknown>[] {
    const set = this.svc.stores;
    if (set === null) throw new HttpError(404, 'Multi backend is not supported at this site.');
    return set.list.map((s) => ({
      id: s.id,
      ...(s.description !== null && s.description !== '' ? { description: s.description } : {}),
      ...(s.id === set.defaultId ? { default: 'true' } : {}),
    }));
  }

  /**
   * DELETE /v2/stores/{store_id}/{image_id} (Glance's delete_from_store): the image's data
   * leaves one store. Glance's checks in Glance's order: 404 without several stores, 409 for
   * a store this server does not have, 404 for an image the caller cannot see, the
   * get_image_location and delete_image_location policies (admin by default), 409 unless
   * active, 403 for the last store holding it, 404 when it is not in that store.
   */
  private async deleteFromStore(c: Ctx, ctx: AuthContext): Promise<void> {
    const set = this.svc.stores;
    if (set === null) throw new HttpError(404, 'The resource could not be found.');
    const storeId = c.params['store']!;
    if (set.get(storeId) === undefined)
      throw new HttpError(409, `The selected store ${storeId} is not available on this node.`);
    const id = c.params['id']!;
    const img = await this.images.visibleImage(ctx, id).catch((e: unknown) => {
      if (e instanceof HttpError && e.status === 404) throw new HttpError(404, `Failed to find image ${id}`);
      throw e;
    });
    enforce('get_image_location', ctx, { image: img });
    enforce('delete_image_location', ctx, { image: img });
    if (img.status !== 'active')
      throw new HttpError(
        409,
        "It's not allowed to remove image data from store if image status is not 'active'",
      );
    if (img.stores.length === 1)
      throw new HttpError(
        403,
        'Cannot delete image data from the only store containing it. Consider deleting the image instead.',
      );
    if (!img.stores.includes(storeId))
      throw new HttpError(404, `Image ${img.id} is not stored in store ${storeId}.`);
    await removeFromStore(this.svc, img, storeId);
    sendEmpty(c.res, 204);
  }

  /** Let running imports finish (at most `timeoutMs`), then abort the rest and wait. */
  async drain(timeoutMs = 30000): Promise<void> {
    const all = () => Promise.allSettled([...this.jobs]).then(() => undefined);
    const deadline = new Promise<void>((r) => setTimeout(r, timeoutMs).unref());
    await Promise.race([all(), deadline]);
    this.abort.abort();
    await all();
  }

  private async stage(c: Ctx, ctx: AuthContext): Promise<void> {
    const mt = mediaType(c.req);
    if (mt !== 'application/octet-stream' && mt !== '')
      throw new HttpError(415, `Content-Type must be application/octet-stream; got ${mt}.`);
    const img = await this.images.visibleImage(ctx, c.params['id']!);
    if (!canModify(ctx, img))
      throw new HttpError(403, 'You are not authorized to complete modify_image action.');
    if (img.status !== 'queued')
      throw new HttpError(409, `Image status transition from ${img.status} to uploading is not allowed`);
    // Without a disk_format there is nothing to check the content against yet; the import
    // (which needs one) inspects the staged data.
    const inspect = img.disk_format === null ? undefined : this.opts.inspect;
    const out = await receiveData(this.svc, ctx, img, c.req, inspect, {
      fromStatus: 'queued',
      toStatus: 'uploading',
      finalStatus: 'uploading',
      keyPrefix: STAGING_PREFIX,
    });
    const key = stagingKey(img.id);
    const r = await this.db
      .updateTable('images')
      .set({ size: out.size, blob: key, writer: null, updated_at: new Date() })
      .where('id', '=', img.id)
      .where('status', '=', 'uploading')
      .executeTakeFirst();
    if (r.numUpdatedRows === 0n) {
      await this.svc.store.delete(key);
      throw new HttpError(
        410,
        `Image ${img.id} could not be found after upload. The image may have been deleted during the upload.`,
      );
    }
    sendEmpty(c.res, 204);
  }

  private async importImage(c: Ctx, ctx: AuthContext): Promise<void> {
    const body = await readJson(c.req);
    if (!isObject(body) || !('method' in body))
      throw new HttpError(400, "Import request requires a 'method' field.");
    const method = body['method'];
    if (!isObject(method) || !('name' in method))
      throw new HttpError(400, "Import request requires a 'name' field.");
    const name = method['name'];
    if (typeof name !== 'string' || !this.svc.settings.importMethods.includes(name))
      throw new HttpError(400, `Unknown import method name '${String(name)}'.`);
    const mustSucceed = body['all_stores_must_succeed'] ?? true;
    if (typeof mustSucceed !== 'boolean')
      throw new HttpError(400, "'all_stores_must_succeed' must be boolean value only");
    const allStores = body['all_stores'] ?? false;
    if (typeof allStores !== 'boolean') throw new HttpError(400, "'all_stores' must be boolean value only");
    const uri = typeof method['uri'] === 'string' ? method['uri'] : null;

    const img = await this.images.visibleImage(ctx, c.params['id']!);
    if (img.status === 'active' && name !== 'copy-image')
      throw new HttpError(409, 'Image with status active cannot be target for import');
    if (img.status !== 'active' && name === 'copy-image')
      throw new HttpError(409, 'Only images with status active can be targeted for copying');
    if (img.status !== 'queued' && name === 'web-download')
      throw new HttpError(409, `Image needs to be in 'queued' state to use '${name}' method`);
    if (img.status !== 'uploading' && name === 'glance-direct')
      throw new HttpError(409, "Image needs to be staged before 'glance-direct' method can be used");
    if (!img.container_format) throw new HttpError(409, "'container_format' needs to be set before import");
    if (!img.disk_format) throw new HttpError(409, "'disk_format' needs to be set before import");
    if (name === 'copy-image') {
      enforce('copy_image', ctx, { image: img });
    } else if (!canModify(ctx, img)) {
      throw new HttpError(403, 'You are not authorized to complete modify_image action.');
    }
    const stolen = LOCK in img.properties ? await this.checkLock(img) : null;
    const set = this.svc.stores;
    // With several stores, the stores to import to (Glance's get_stores_from_request).
    let targets: string[] | null = null;
    if (set !== null) {
      const header = c.req.headers['x-image-meta-store'];
      if (allStores) {
        if ('stores' in body || header !== undefined)
          throw new HttpError(
            400,
            "All_stores parameter can't be used with x-image-meta-store header or stores parameter",
          );
        targets = set.ids();
      } else if ('stores' in body) {
        if (header !== undefined)
          throw new HttpError(400, "Stores parameter and x-image-meta-store header can't be both specified");
        const given = body['stores'];
        if (!Array.isArray(given) || given.some((x) => typeof x !== 'string'))
          throw new HttpError(400, "'stores' must be a list of store identifiers");
        targets = [...new Set(given as string[])];
      } else targets = [typeof header === 'string' ? header : set.defaultId];
      for (const t of targets)
        if (set.get(t) === undefined) throw new HttpError(409, `Store for identifier ${t} not found`);
    }
    if (name === 'copy-image') {
      if (set === null) {
        // One store, and the image is in it.
        if (allStores) return sendEmpty(c.res, 202);
        throw new HttpError(400, `Image is already present at store '${this.svc.store.kind}'`);
      }
      const have = storesOf(set, img);
      if (allStores) {
        // Glance leaves out the stores that already hold the image; nothing left: done.
        targets = targets!.filter((t) => !have.includes(t));
        if (targets.length === 0) return sendEmpty(c.res, 202);
      } else {
        const already = have.find((h) => targets!.includes(h));
        if (already !== undefined) throw new HttpError(400, `Image is already present at store '${already}'`);
      }
    }
    if (!mustSucceed && set === null)
      throw new HttpError(
        400,
        `All_stores_must_succeed can only be set with enabled_backends ${uri ?? 'None'}`,
      );
    const filter = filterOf(this.svc);
    if (name === 'web-download') {
      let literalInternal = false;
      try {
        const host = new URL(uri ?? '').hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
        literalInternal =
          /^[\d.]+$|:/.test(host) && isInternalAddress(host) && !filter.allowedHosts.includes(host);
      } catch {
        // validateImportUri refuses it below
      }
      if (uri === null || !validateImportUri(uri, filter) || literalInternal)
        throw new HttpError(400, `URI for web-download does not pass filtering: ${uri ?? 'None'}`);
    }

    const task = await createTask(this.svc, {
      type: 'api_image_import',
      owner: ctx.projectId ?? '',
      imageId: img.id,
      input: { image_id: img.id, import_req: body, backend: targets ?? [null] },
      userId: ctx.userId,
      requestId: (c.res.getHeader('x-openstack-request-id') as string | undefined) ?? null,
    });
    // Take the lock and move to importing in one conditional statement (copy-image: the
    // image stays active). With several stores, the progress lists as Glance keeps them: the
    // targets join os_glance_importing_to_stores and leave os_glance_failed_import (and a
    // stolen lock's stale task's stores leave both).
    const from = name === 'glance-direct' ? 'uploading' : name === 'copy-image' ? 'active' : 'queued';
    let importing = '';
    let failed = '';
    if (targets !== null) {
      const stale = stolen === null ? [] : await this.taskStores(stolen);
      const cur = (k: string) => listOf(img.properties[k]).filter((x) => !stale.includes(x));
      importing = storeList([...cur(IMPORTING), ...targets]);
      failed = storeList(cur(FAILED).filter((x) => !targets!.includes(x)));
    }
    const props = JSON.stringify({ [LOCK]: task.id, [IMPORTING]: importing, [FAILED]: failed });
    let q = this.db
      .updateTable('images')
      .set({
        status: name === 'copy-image' ? 'active' : 'importing',
        writer: this.svc.instanceId,
        properties: sql`properties || ${props}::jsonb`,
        updated_at: new Date(),
      })
      .where('id', '=', img.id)
      .where('status', '=', from);
    q =
      stolen === null
        ? q.where(sql<boolean>`properties->>${LOCK} IS NULL`)
        : q.where(sql<boolean>`properties->>${LOCK} = ${stolen}`);
    const r = await q.executeTakeFirst();
    if (r.numUpdatedRows === 0n) {
      await this.db.deleteFrom('tasks').where('id', '=', task.id).execute();
      throw new HttpError(
        409,
        `New operation on image '${img.id}' is not permitted as prior operation is still in progress`,
      );
    }
    const done = beginWrite(this.svc, img.id);
    const job = (
      targets === null
        ? this.run(task, img.id, name, uri)
        : this.runToStores(task, img.id, name, uri, targets, mustSucceed)
    )
      .catch(unrecorded)
      .finally(() => {
        done();
        this.jobs.delete(job);
      });
    this.jobs.add(job);
    sendEmpty(c.res, 202);
  }

  /** The stores a task was importing to (its input's `backend`). */
  private async taskStores(taskId: string): Promise<string[]> {
    const t = await this.db.selectFrom('tasks').select('input').where('id', '=', taskId).executeTakeFirst();
    const backend = (t?.input as { backend?: unknown } | null | undefined)?.backend;
    return Array.isArray(backend) ? backend.filter((x): x is string => typeof x === 'string') : [];
  }

  /** Glance's _enforce_import_lock: the task id to take the lock from, or 409. */
  private async checkLock(img: ImageRow): Promise<string> {
    const other = img.properties[LOCK]!;
    const t = await this.db.selectFrom('tasks').selectAll().where('id', '=', other).executeTakeFirst();
    if (t !== undefined) {
      const age = Date.now() - t.updated_at.getTime();
      const expiry = t.status === 'pending' ? 2 * LOCK_EXPIRY_MS : LOCK_EXPIRY_MS;
      // A finished task still named by the lock is one whose server stopped before dropping
      // it: stale at once (Glance waits for the expiry in that case too).
      const finished = t.status === 'success' || t.status === 'failure';
      if (age < expiry && !finished) throw new HttpError(409, 'Image has active task');
      if (t.status === 'pending' || t.status === 'processing')
        await updateTask(this.svc, t.id, { status: 'failure', message: 'Expired lock preempted' });
    }
    return other;
  }

  private async run(task: TaskRow, imageId: string, method: string, uri: string | null): Promise<void> {
    const svc = this.svc;
    const staged = stagingKey(imageId);
    const signal = this.abort.signal;
    let convertedFrom: string | null = null;
    try {
      await updateTask(svc, task.id, { status: 'processing' });
      let img = await this.locked(imageId, task.id);
      const ctx = { userId: task.user_id } as unknown as AuthContext;
      if (method === 'web-download') {
        const res = await openWebImage(uri!, filterOf(svc), signal);
        const onAbort = () => res.destroy(new Error('The server is shutting down.'));
        signal.addEventListener('abort', onAbort);
        try {
          const declaredLength = Number(res.headers['content-length']);
          const body = asBody(
            counted(svc, task.id, res),
            Number.isSafeInteger(declaredLength) ? declaredLength : null,
          );
          const out = await receiveData(svc, ctx, img, body, this.opts.inspect, {
            fromStatus: 'importing',
            toStatus: 'importing',
            finalStatus: 'importing',
            keyPrefix: STAGING_PREFIX,
          });
          const declared = Number(res.headers['content-length']);
          if (Number.isFinite(declared) && declared !== out.size)
            throw new Error(
              `Task ${task.id} failed because downloaded data size ${out.size} is different from expected ${declared}`,
            );
        } finally {
          signal.removeEventListener('abort', onAbort);
          res.destroy();
        }
        await this.db
          .updateTable('images')
          .set({ blob: staged, updated_at: new Date() })
          .where('id', '=', imageId)
          .where('status', '=', 'importing')
          .execute();
        img = await this.locked(imageId, task.id);
      }
      if (signal.aborted) throw new Error('The server is shutting down.');
      await updateTask(svc, task.id, { message: 'Copied 0 MiB' });
      const target = svc.settings.importConvertTo;
      const convert =
        target !== null &&
        img.disk_format !== target &&
        img.disk_format !== null &&
        img.disk_format in ENGINE_FORMAT &&
        // An overlay is kept as it is: converting it would open the backing file it names
        // (the registry never follows those names) and flatten it.
        img.properties[BACKING_PROP] === undefined;
      const out = convert
        ? await this.convertInto(img, target, task.id, signal)
        : await this.copyStaged(img, img, task.id, signal);
      if (convert) {
        // The new format before the image goes active (fail() puts the old one back).
        await this.db
          .updateTable('images')
          .set({ disk_format: target })
          .where('id', '=', imageId)
          .where('status', '=', 'importing')
          .execute();
        convertedFrom = img.disk_format;
      }
      await finishUpload(svc, img, out, 'importing', 'active');
      await svc.store.delete(staged);
      await updateTask(svc, task.id, {
        status: 'success',
        result: { image_id: imageId },
        message: `Copied ${Math.floor(out.size / (1 << 20))} MiB`,
      });
      await this.dropLock(imageId, task.id);
    } catch (e) {
      await this.fail(task, imageId, e, convertedFrom);
    }
  }

  /**
   * Run a task that makes an image's data by other means than an upload (flatten): the image
   * is `importing` and holds `task`'s lock (os_glance_import_task), as an import's image does,
   * so the same recovery, lock and drain rules apply. `produce` stores the data (through
   * receiveData: hashes, caps, inspection) and returns the outcome; the image then goes
   * active and the task succeeds, or, on any failure, the image goes back to queued without
   * data and the task fails with the reason.
   */
  startJob(
    task: TaskRow,
    imageId: string,
    produce: (signal: AbortSignal, progress: (bytes: number) => void) => Promise<UploadOutcome>,
  ): void {
    const svc = this.svc;
    const signal = this.abort.signal;
    const done = beginWrite(svc, imageId);
    const job = (async () => {
      try {
        await updateTask(svc, task.id, { status: 'processing', message: 'Copied 0 MiB' });
        await this.locked(imageId, task.id);
        let last = Date.now();
        const out = await produce(signal, (bytes) => {
          const now = Date.now();
          if (now - last < 5000) return;
          last = now;
          svc.db
            .updateTable('tasks')
            .set({ message: `Copied ${Math.floor(bytes / (1 << 20))} MiB`, updated_at: new Date() })
            .where('id', '=', task.id)
            .where('status', '=', 'processing')
            .execute()
            .catch(() => {});
        });
        const img = await this.locked(imageId, task.id);
        await finishUpload(svc, img, out, 'importing', 'active');
        await updateTask(svc, task.id, {
          status: 'success',
          result: { image_id: imageId },
          message: `Copied ${Math.floor(out.size / (1 << 20))} MiB`,
        });
        await this.dropLock(imageId, task.id);
      } catch (e) {
        await this.fail(task, imageId, e, null);
      }
    })()
      .catch(unrecorded)
      .finally(() => {
        done();
        this.jobs.delete(job);
      });
    this.jobs.add(job);
  }

  /** The image, after checking that our task still holds its lock (Glance's _ImageLock). */
  private async locked(imageId: string, taskId: string): Promise<ImageRow> {
    const img = await this.db.selectFrom('images').selectAll().where('id', '=', imageId).executeTakeFirst();
    if (img === undefined) throw new Error('Image has been deleted, aborting import.');
    if (img.properties[LOCK] !== taskId)
      throw new Error(`Image ${imageId} import task ${taskId} lost its lock; aborting.`);
    return img;
  }

  /** Staged data → the image's blob, through data.ts (hashes, caps, inspection). */
  private async copyStaged(img: ImageRow, asImage: ImageRow, taskId: string, signal: AbortSignal) {
    return this.copyBlob(this.svc.store, stagingKey(img.id), img.size, asImage, taskId, signal, {});
  }

  /**
   * A blob (`key` in `from`) → the image's blob, through data.ts (hashes, caps, and the upload
   * inspection unless `inspect` is false), into `opts.store` (default: the default store).
   */
  private async copyBlob(
    from: BlobStore,
    key: string,
    size: number | null,
    asImage: ImageRow,
    taskId: string,
    signal: AbortSignal,
    opts: { store?: BlobStore; status?: string; inspect?: boolean },
  ): Promise<UploadOutcome> {
    const stream = await from.read(key);
    const onAbort = () => stream.destroy(new Error('The server is shutting down.'));
    signal.addEventListener('abort', onAbort);
    try {
      const ctx = {} as AuthContext;
      const body = asBody(counted(this.svc, taskId, stream), size);
      const status = opts.status ?? 'importing';
      return await receiveData(
        this.svc,
        ctx,
        asImage,
        body,
        opts.inspect === false ? undefined : this.opts.inspect,
        {
          fromStatus: status,
          toStatus: status,
          finalStatus: status,
          ...(opts.store !== undefined ? { store: opts.store } : {}),
        },
      );
    } finally {
      signal.removeEventListener('abort', onAbort);
      stream.destroy();
    }
  }

  /**
   * An import with several stores (glance-direct, web-download, copy-image), as Glance's
   * api_image_import flow with enabled_backends: the data (staged, downloaded to staging, or
   * for copy-image read from a store that holds the image) is written to each target store in
   * turn. Each store that completes joins the image's `stores` and leaves
   * os_glance_importing_to_stores; with all_stores_must_succeed (the default) the image goes
   * active with the last store, and the first failure reverts everything this task did (its
   * copies are deleted, the image goes back to queued — copy-image: stays active with the
   * stores it had — and the failing store is listed in os_glance_failed_import). Without it, a
   * failing store is listed in os_glance_failed_import and the import goes on; the image goes
   * active with the first store that succeeds, and if none does, back to queued.
   */
  private async runToStores(
    task: TaskRow,
    imageId: string,
    method: string,
    uri: string | null,
    targets: string[],
    mustSucceed: boolean,
  ): Promise<void> {
    const svc = this.svc;
    const signal = this.abort.signal;
    const copy = method === 'copy-image';
    // The image's status while the copies are made: importing, until a store makes it active.
    let status = copy ? 'active' : 'importing';
    const added: string[] = [];
    const failedHere = new Set<string>();
    let current: string | null = null;
    let convertedFrom: string | null = null;
    let dir: string | null = null;
    try {
      await updateTask(svc, task.id, { status: 'processing' });
      let img = await this.locked(imageId, task.id);
      let size = img.size;
      if (method === 'web-download') {
        const res = await openWebImage(uri!, filterOf(svc), signal);
        const onAbort = () => res.destroy(new Error('The server is shutting down.'));
        signal.addEventListener('abort', onAbort);
        try {
          const declared = Number(res.headers['content-length']);
          const body = asBody(counted(svc, task.id, res), Number.isSafeInteger(declared) ? declared : null);
          const out = await receiveData(svc, {} as AuthContext, img, body, this.opts.inspect, {
            fromStatus: 'importing',
            toStatus: 'importing',
            finalStatus: 'importing',
            keyPrefix: STAGING_PREFIX,
          });
          if (Number.isFinite(declared) && declared !== out.size)
            throw new Error(
              `Task ${task.id} failed because downloaded data size ${out.size} is different from expected ${declared}`,
            );
          size = out.size;
        } finally {
          signal.removeEventListener('abort', onAbort);
          res.destroy();
        }
        img = await this.locked(imageId, task.id);
      }
      if (signal.aborted) throw new Error('The server is shutting down.');
      await updateTask(svc, task.id, { message: 'Copied 0 MiB' });
      // The source of every copy: a converted file, the staged data, or (copy-image) the image.
      const target = svc.settings.importConvertTo;
      const convert =
        !copy &&
        target !== null &&
        img.disk_format !== target &&
        img.disk_format !== null &&
        img.disk_format in ENGINE_FORMAT &&
        img.properties[BACKING_PROP] === undefined;
      let file: { path: string; size: number } | null = null;
      if (convert) {
        dir = await mkdtemp(join(svc.workDir, 'import-'));
        file = await this.convertToFile({ ...img, size }, target, task.id, signal, dir);
        await this.db
          .updateTable('images')
          .set({ disk_format: target })
          .where('id', '=', imageId)
          .where('status', '=', 'importing')
          .execute();
        convertedFrom = img.disk_format;
      }
      const source = copy ? readStore(svc, img) : svc.store;
      const sourceKey = copy ? img.blob! : stagingKey(imageId);
      const asImage = convert ? { ...img, disk_format: target } : img;
      let first: UploadOutcome | null = null;
      for (const [i, sid] of targets.entries()) {
        if (signal.aborted) throw new Error('The server is shutting down.');
        const store = storeById(svc, sid);
        // Glance's set_active: the last store with all_stores_must_succeed, else the first
        // that succeeds; copy-image never changes the status.
        const setActive = !copy && (!mustSucceed || i === targets.length - 1);
        current = sid;
        try {
          const out =
            file !== null
              ? await this.receiveFile(img, target!, file, signal, store)
              : await this.copyBlob(source, sourceKey, size, asImage, task.id, signal, {
                  store,
                  status,
                  inspect: !copy,
                });
          // Every store gets the same bytes (copy-image: the image's own).
          const expect = copy ? { hash: img.os_hash_value, size: img.size } : first;
          if (expect !== null && (out.hash !== expect.hash || out.size !== expect.size)) {
            await store.delete(imageId).catch(() => {});
            throw new Error(`The data written to store '${sid}' differs from the image's (sha512 or size).`);
          }
          await this.addStore(imageId, task.id, sid, out, status, setActive, !copy && first === null);
          if (setActive) status = 'active';
          first ??= out;
          added.push(sid);
        } catch (e) {
          if (mustSucceed) throw e;
          // This store failed; the others go on (all_stores_must_succeed: false).
          failedHere.add(sid);
          await this.progress(imageId, task.id, { done: [sid], failed: [sid] });
        }
        current = null;
      }
      // Glance's _VerifyImageState.
      if (!copy && added.length === 0) throw new Error('None of the uploads finished!');
      if (!copy) await svc.store.delete(stagingKey(imageId));
      await this.db
        .updateTable('images')
        .set({ writer: null })
        .where('id', '=', imageId)
        .where(sql<boolean>`properties->>${LOCK} = ${task.id}`)
        .execute();
      const n = first?.size ?? img.size ?? 0;
      await updateTask(svc, task.id, {
        status: 'success',
        result: { image_id: imageId },
        message: `Copied ${Math.floor(n / (1 << 20))} MiB`,
      });
      await this.dropLock(imageId, task.id);
    } catch (e) {
      // The store being written failed; a failure before any store (the download, the
      // conversion) fails them all, as Glance's download revert does.
      const failing =
        current !== null ? [current] : added.length === 0 && failedHere.size === 0 ? targets : [];
      await this.failToStores(
        task,
        imageId,
        copy,
        status === 'active',
        e,
        targets,
        added,
        current,
        failing,
        convertedFrom,
      );
    } finally {
      if (dir !== null) await rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * A store completed: it joins the image's `stores` and leaves os_glance_importing_to_stores,
   * in one statement that holds only while our task has the lock (else the blob just written
   * is deleted: nothing claims it). The first store of a new image also sets its data
   * (size, checksums, blob); `setActive` makes it active.
   */
  private async addStore(
    imageId: string,
    taskId: string,
    sid: string,
    out: UploadOutcome,
    status: string,
    setActive: boolean,
    setData: boolean,
  ): Promise<void> {
    const cur = await this.locked(imageId, taskId).catch(async (e: unknown) => {
      await storeById(this.svc, sid)
        .delete(imageId)
        .catch(() => {});
      throw e;
    });
    const importing = storeList(listOf(cur.properties[IMPORTING]).filter((x) => x !== sid));
    const r = await this.db
      .updateTable('images')
      .set({
        stores: sql`CASE WHEN jsonb_exists(stores, ${sid}::text) THEN stores ELSE stores || jsonb_build_array(${sid}::text) END`,
        properties: sql`properties || ${JSON.stringify({ [IMPORTING]: importing })}::jsonb`,
        // Ours until the task ends (a restart fails what a stopped server left).
        writer: this.svc.instanceId,
        ...(setData
          ? {
              size: out.size,
              virtual_size: out.virtualSize,
              checksum: out.checksum,
              os_hash_algo: 'sha512',
              os_hash_value: out.hash,
              blob: imageId,
            }
          : {}),
        ...(setActive ? { status: 'active' } : {}),
        updated_at: new Date(),
      })
      .where('id', '=', imageId)
      .where('status', '=', status)
      .where(sql<boolean>`properties->>${LOCK} = ${taskId}`)
      .executeTakeFirst();
    if (r.numUpdatedRows === 0n) {
      await storeById(this.svc, sid)
        .delete(imageId)
        .catch(() => {});
      throw new Error(`Image ${imageId} import task ${taskId} lost its lock; aborting.`);
    }
  }

  /** Stores leave os_glance_importing_to_stores (`done`) and join os_glance_failed_import. */
  private async progress(
    imageId: string,
    taskId: string,
    change: { done: string[]; failed: string[] },
  ): Promise<void> {
    const cur = await this.db
      .selectFrom('images')
      .select('properties')
      .where('id', '=', imageId)
      .executeTakeFirst();
    if (cur === undefined) return;
    const props = {
      [IMPORTING]: storeList(listOf(cur.properties[IMPORTING]).filter((x) => !change.done.includes(x))),
      [FAILED]: storeList([...listOf(cur.properties[FAILED]), ...change.failed]),
    };
    await this.db
      .updateTable('images')
      .set({ properties: sql`properties || ${JSON.stringify(props)}::jsonb`, updated_at: new Date() })
      .where('id', '=', imageId)
      .where(sql<boolean>`properties->>${LOCK} = ${taskId}`)
      .execute();
  }

  /**
   * The revert of an import with several stores: the row first (an import: back to queued
   * without data or stores, its disk_format back if it was converted; copy-image: the stores
   * this task added leave `stores`), with the progress lists (our targets leave
   * os_glance_importing_to_stores, `failing` join os_glance_failed_import); then the blobs no
   * row claims any more (the copies this task made, the staged data); then the task's failure;
   * the lock last.
   */
  private async failToStores(
    task: TaskRow,
    imageId: string,
    copy: boolean,
    active: boolean,
    e: unknown,
    targets: string[],
    added: string[],
    current: string | null,
    failing: string[],
    diskFormat: string | null,
  ): Promise<void> {
    const svc = this.svc;
    // The stores this task wrote to: the ones completed and the one it was writing.
    const made = current !== null && !added.includes(current) ? [...added, current] : added;
    try {
      const cur = await this.db.selectFrom('images').selectAll().where('id', '=', imageId).executeTakeFirst();
      let ours = false;
      let kept: string[] = [];
      if (cur !== undefined && cur.properties[LOCK] === task.id) {
        const props = {
          [IMPORTING]: storeList(listOf(cur.properties[IMPORTING]).filter((x) => !targets.includes(x))),
          [FAILED]: storeList([...listOf(cur.properties[FAILED]), ...failing]),
        };
        // copy-image: its copies go; an import already active (all_stores_must_succeed false,
        // then stopped by a shutdown) keeps what it made.
        kept = copy ? cur.stores.filter((x) => !made.includes(x)) : active ? cur.stores : [];
        const r = await this.db
          .updateTable('images')
          .set({
            properties: sql`properties || ${JSON.stringify(props)}::jsonb`,
            stores: JSON.stringify(kept) as never,
            writer: null,
            updated_at: new Date(),
            ...(active
              ? {}
              : {
                  status: 'queued',
                  size: null,
                  virtual_size: null,
                  checksum: null,
                  os_hash_algo: null,
                  os_hash_value: null,
                  blob: null,
                  ...(diskFormat !== null ? { disk_format: diskFormat } : {}),
                }),
          })
          .where('id', '=', imageId)
          .where('status', '=', active ? 'active' : 'importing')
          .where(sql<boolean>`properties->>${LOCK} = ${task.id}`)
          .executeTakeFirst();
        ours = r.numUpdatedRows > 0n;
      }
      // Ours to clean, or the image was deleted meanwhile (its delete removed what it claimed).
      // The copies no row claims go, the one being written when the failure came included
      // (its blob may be complete, the statement claiming it lost with the database).
      if (ours || cur === undefined) {
        for (const sid of made)
          if (!kept.includes(sid))
            await storeById(svc, sid)
              .delete(imageId)
              .catch(() => {});
        if (!copy) await svc.store.delete(stagingKey(imageId)).catch(() => {});
      }
    } finally {
      await updateTask(svc, task.id, { status: 'failure', message: message(e) }).catch(() => {});
      await this.dropLock(imageId, task.id);
    }
  }

  /**
   * image_conversion: the staged data is inspected (as an upload of its disk_format), written
   * to a temporary file, converted by the engine's convert, and the result stored as the
   * image's data (inspected again, as `target`).
   */
  private async convertInto(img: ImageRow, target: 'raw' | 'qcow2', taskId: string, signal: AbortSignal) {
    const dir = await mkdtemp(join(this.svc.workDir, 'import-'));
    try {
      const converted = await this.convertToFile(img, target, taskId, signal, dir);
      return await this.receiveFile(img, target, converted, signal);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** The staged data converted into DIR/converted (inspected on the way in). */
  private async convertToFile(
    img: ImageRow,
    target: 'raw' | 'qcow2',
    taskId: string,
    signal: AbortSignal,
    dir: string,
  ): Promise<{ path: string; size: number }> {
    const src = join(dir, 'source');
    const dst = join(dir, 'converted');
    const inspector = this.opts.inspect?.(img, img.size);
    const stream = await this.svc.store.read(stagingKey(img.id));
    const fh = await open(src, 'wx', 0o600);
    let size = 0;
    try {
      await pipeline(
        stream,
        async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            inspector?.feed(chunk);
            size += chunk.length;
            yield chunk;
          }
        },
        fh.createWriteStream(),
        { signal },
      );
    } finally {
      await fh.close().catch(() => {});
    }
    inspector?.finish(size);
    await updateTask(this.svc, taskId, { message: `Converting from ${img.disk_format} to ${target}` });
    const { convertCommand } = await import('../../commands/convert.js');
    await convertCommand({
      sources: [src],
      sourceFormat: ENGINE_FORMAT[img.disk_format!]!,
      output: dst,
      outputFormat: target,
    });
    await rm(src, { force: true });
    const { stat } = await import('node:fs/promises');
    return { path: dst, size: (await stat(dst)).size };
  }

  /** A converted file → the image's blob in `store` (inspected as `target`). */
  private async receiveFile(
    img: ImageRow,
    target: string,
    file: { path: string; size: number },
    signal: AbortSignal,
    store?: BlobStore,
    status = 'importing',
  ): Promise<UploadOutcome> {
    const { createReadStream } = await import('node:fs');
    const rs = createReadStream(file.path, { highWaterMark: 1 << 20 });
    const onAbort = () => rs.destroy(new Error('The server is shutting down.'));
    signal.addEventListener('abort', onAbort);
    try {
      return await receiveData(
        this.svc,
        {} as AuthContext,
        { ...img, disk_format: target },
        asBody(rs, file.size),
        this.opts.inspect,
        {
          fromStatus: status,
          toStatus: status,
          finalStatus: status,
          ...(store !== undefined ? { store } : {}),
        },
      );
    } finally {
      signal.removeEventListener('abort', onAbort);
      rs.destroy();
    }
  }

  /** _CompleteTask._drop_lock: remove os_glance_import_task if it is still ours. */
  private async dropLock(imageId: string, taskId: string): Promise<void> {
    await this.db
      .updateTable('images')
      .set({ properties: sql`properties - ${LOCK}::text` })
      .where('id', '=', imageId)
      .where(sql<boolean>`properties->>${LOCK} = ${taskId}`)
      .execute();
  }

  /**
   * Back to queued without data (nothing staged is kept), then the task's failure, then the
   * lock: whoever polls the task or the image (status and lock) sees a finished cleanup.
   */
  private async fail(task: TaskRow, imageId: string, e: unknown, diskFormat: string | null): Promise<void> {
    const svc = this.svc;
    // What the image's row says decides the task's end. A dropped database connection can
    // take the answer of any of these queries (or the query itself) with it: each attempt
    // starts again from the row, and the next query opens another connection.
    let copied: number | null = null;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        copied = await this.revert(task, imageId, diskFormat);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 250 * (attempt + 1)));
      }
    }
    // Left undecided (the database unreachable throughout), the row still names this node as
    // its writer: the node's own recovery ends it a lease later, as after a lost UPDATE.
    const end: Parameters<typeof updateTask>[2] =
      copied !== null && copied >= 0
        ? {
            status: 'success',
            result: { image_id: imageId },
            message: `Copied ${Math.floor(copied / (1 << 20))} MiB`,
          }
        : { status: 'failure', message: message(e) };
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await updateTask(svc, task.id, end);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 250 * (attempt + 1)));
      }
    }
    await this.dropLock(imageId, task.id);
  }

  /**
   * The image back to queued, unless the UPDATE that made it active landed (only its answer
   * lost with the database connection: found by faults.test.ts, pg_terminate_backend
   * mid-import and mid-flatten): then the import succeeded. Returns the bytes copied on
   * success, -1 when the image was put back (or was deleted meanwhile).
   */
  private async revert(task: TaskRow, imageId: string, diskFormat: string | null): Promise<number> {
    const svc = this.svc;
    const r = await this.db
      .updateTable('images')
      .set({
        status: 'queued',
        size: null,
        virtual_size: null,
        checksum: null,
        os_hash_algo: null,
        os_hash_value: null,
        blob: null,
        writer: null,
        updated_at: new Date(),
        ...(diskFormat !== null ? { disk_format: diskFormat } : {}),
      })
      .where('id', '=', imageId)
      .where('status', '=', 'importing')
      .where(sql<boolean>`properties->>${LOCK} = ${task.id}`)
      .executeTakeFirst();
    const cur =
      r.numUpdatedRows === 0n
        ? await this.db
            .selectFrom('images')
            .select(['status', 'size', 'properties'])
            .where('id', '=', imageId)
            .executeTakeFirst()
        : undefined;
    const ours = cur !== undefined && cur.properties[LOCK] === task.id;
    if (ours && cur.status === 'active') {
      await svc.store.delete(stagingKey(imageId)).catch(() => {});
      return cur.size ?? 0;
    }
    // Ours to clean: put back now, or by an earlier attempt whose answer was lost (the lock is
    // still ours), or the image was deleted meanwhile (its staged data may be newer). The
    // image's own blob goes too: the task may have written it before the statement that
    // would have claimed it failed (pg_terminate_backend between the copy and finishUpload,
    // faults.test.ts), and a queued row claims none.
    if (r.numUpdatedRows > 0n || cur === undefined || (ours && cur.status === 'queued')) {
      await svc.store.delete(imageId);
      await svc.store.delete(stagingKey(imageId));
    }
    return -1;
  }
}

const failTask = async (svc: Services, task: string | undefined): Promise<void> => {
  if (task !== undefined)
    await svc.db
      .updateTable('tasks')
      .set({
        status: 'failure',
        message: 'The server stopped during the import.',
        updated_at: new Date(),
        expires_at: new Date(Date.now() + 48 * 3600 * 1000),
      })
      .where('id', '=', task)
      .where('status', 'in', ['pending', 'processing'])
      .execute();
};

// With several stores, the stores still being imported to have failed.
const failedProgress = (svc: Services, img: ImageRow) =>
  svc.stores === null
    ? {}
    : {
        [IMPORTING]: '',
        [FAILED]: storeList([...listOf(img.properties[FAILED]), ...listOf(img.properties[IMPORTING])]),
      };

/**
 * An import (`importing`, or a stage cut off in `uploading`) whose node died, claimed by this
 * node (`writer` is ours: src/server/nodes.ts): it fails as Glance fails an import: the image
 * goes back to queued, its staged data and the copies it had made go, its task fails. An image
 * staged completely (`uploading` with its data) stays, ready for `POST /import`. Returns
 * whether the image was recovered.
 */
export async function recoverImport(svc: Services, img: ImageRow): Promise<boolean> {
  if (img.status === 'uploading' && img.blob !== null) {
    await svc.db
      .updateTable('images')
      .set({ writer: null })
      .where('id', '=', img.id)
      .where('writer', '=', svc.instanceId)
      .execute();
    return false;
  }
  const task = img.properties[LOCK];
  const multi =
    svc.stores === null
      ? {}
      : {
          stores: '[]' as never,
          virtual_size: null,
          checksum: null,
          os_hash_algo: null,
          os_hash_value: null,
        };
  // What the dead node was writing: temporaries of the staged data and of the copies.
  for (const st of svc.stores === null ? [svc.store] : svc.stores.list.map((s) => s.store)) {
    await st.abortPending(stagingKey(img.id));
    await st.abortPending(img.id);
  }
  const r = await svc.db
    .updateTable('images')
    .set({
      status: 'queued',
      size: null,
      blob: null,
      writer: null,
      ...multi,
      properties: sql`(properties - ${LOCK}::text) || ${JSON.stringify(failedProgress(svc, img))}::jsonb`,
      updated_at: new Date(),
    })
    .where('id', '=', img.id)
    .where('status', '=', img.status)
    .where('writer', '=', svc.instanceId)
    .executeTakeFirst();
  if (r.numUpdatedRows === 0n) return false;
  // The copies an import with several stores had made are claimed no more.
  if (svc.stores !== null && img.blob !== null && !img.blob.startsWith(STAGING_PREFIX))
    for (const sid of img.stores)
      await storeById(svc, sid)
        .delete(img.blob)
        .catch(() => {});
  await svc.store.delete(stagingKey(img.id));
  await failTask(svc, task);
  return true;
}

/**
 * A copy to other stores (copy-image, or an import already active) whose node died, claimed
 * by this node: the image keeps the stores it has; the task fails and the lock goes.
 */
export async function recoverCopy(svc: Services, img: ImageRow): Promise<void> {
  for (const st of svc.stores === null ? [svc.store] : svc.stores.list.map((s) => s.store))
    await st.abortPending(img.id);
  await svc.db
    .updateTable('images')
    .set({
      writer: null,
      properties: sql`(properties - ${LOCK}::text) || ${JSON.stringify(failedProgress(svc, img))}::jsonb`,
      updated_at: new Date(),
    })
    .where('id', '=', img.id)
    .where('writer', '=', svc.instanceId)
    .execute();
  await failTask(svc, img.properties[LOCK]);
}
