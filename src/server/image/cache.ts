/**
 * The image cache of an API node, as Glance's (glance/image_cache, glance/api/v2/cached_images.py):
 * with `image_cache_dir` set, whole images are kept as local files so that downloads do not go
 * back to the blob store (a remote S3 bucket, typically) every time.
 *
 * - An image is cached on its first full download: the bytes sent to the client are written to
 *   `DIR/incomplete/<id>` on the way and renamed into `DIR/<id>` when the download completed (a
 *   cut download leaves nothing). Later downloads are served from the file.
 * - `PUT /v2/cache/{id}` queues an active image; a worker fetches queued images into the cache
 *   one at a time, right away (Glance's CacheWorker). The queue survives a restart
 *   (`DIR/queue/<id>` marker files).
 * - The cache holds at most `image_cache_max_size` bytes: after each addition the least
 *   recently used images go first (Glance's pruner, run inline). An image larger than that is
 *   never cached. Deleting an image drops it from the cache and the queue.
 * - `GET /v2/cache`, `DELETE /v2/cache/{id}`, `DELETE /v2/cache` (with
 *   `x-image-cache-clear-target: cache|queue`): Glance's answers, admin-only
 *   (`manage_image_cache`); without a cache directory, 404 "Caching via API is not supported at
 *   this site.", as Glance.
 *
 * Per node, as Glance's: each node caches what it serves. Hits and access times live in memory
 * (rebuilt from the files on start: hits 0, times from the files).
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { AuthContext, Services } from '../context.js';
import { type Ctx, HttpError, type Router, sendEmpty, sendJson } from '../http.js';
import { readStore } from '../store/stores.js';
import { UUID_RE } from '../util.js';
import { enforce, type ImageRow } from './policy.js';

interface Entry {
  size: number;
  hits: number;
  lastAccessed: number;
  lastModified: number;
}

/** Something that takes the bytes of a download on their way (a cache fill). */
export interface CacheFill {
  write(chunk: Buffer): Promise<void>;
  /** The download completed with `size` bytes: keep the file. */
  commit(size: number): Promise<void>;
  abort(): Promise<void>;
}

export class ImageCache {
  private readonly entries = new Map<string, Entry>();
  private readonly queue = new Set<string>();
  /** Images being written into the cache (one fill per image at a time). */
  private readonly filling = new Set<string>();
  private worker: Promise<void> | null = null;
  private stopped = false;

  private constructor(
    private readonly svc: Services,
    readonly dir: string,
    readonly maxSize: number,
  ) {}

  static async open(svc: Services, dir: string, maxSize: number): Promise<ImageCache> {
    const c = new ImageCache(svc, dir, maxSize);
    await mkdir(join(dir, 'incomplete'), { recursive: true });
    await mkdir(join(dir, 'queue'), { recursive: true });
    // What a crash left half-written goes; complete files and the queue stay.
    for (const n of await readdir(join(dir, 'incomplete')))
      await rm(join(dir, 'incomplete', n), { force: true });
    for (const n of await readdir(dir)) {
      if (!UUID_RE.test(n)) continue;
      const st = await stat(join(dir, n));
      c.entries.set(n, {
        size: st.size,
        hits: 0,
        lastAccessed: st.atimeMs / 1000,
        lastModified: st.mtimeMs / 1000,
      });
    }
    for (const n of await readdir(join(dir, 'queue'))) if (UUID_RE.test(n)) c.queue.add(n);
    c.kick();
    return c;
  }

  /** The cached file of an image, counting the hit; null when not cached. */
  async hit(id: string): Promise<string | null> {
    const e = this.entries.get(id);
    if (e === undefined) return null;
    e.hits++;
    e.lastAccessed = Date.now() / 1000;
    const path = join(this.dir, id);
    await utimes(path, new Date(), new Date(e.lastModified * 1000)).catch(() => {});
    return path;
  }

  /** A fill for a full download of an image that is not cached, or null (cached, too big, busy). */
  async fill(img: ImageRow): Promise<CacheFill | null> {
    const size = img.size ?? 0;
    if (this.stopped || this.entries.has(img.id) || this.filling.has(img.id) || size > this.maxSize)
      return null;
    this.filling.add(img.id);
    const tmp = join(this.dir, 'incomplete', `${img.id}.${randomBytes(4).toString('hex')}`);
    const out = createWriteStream(tmp, { flags: 'wx', mode: 0o600 });
    let written = 0;
    let done = false;
    let failed = false;
    out.on('error', () => {
      failed = true;
    });
    const finish = async (keep: boolean, expected: number) => {
      if (done) return;
      done = true;
      try {
        await new Promise<void>((resolve, reject) =>
          out.end((e?: Error | null) => (e ? reject(e) : resolve())),
        );
        if (keep && !failed && written === expected) {
          await rename(tmp, join(this.dir, img.id));
          const now = Date.now() / 1000;
          this.entries.set(img.id, { size: written, hits: 0, lastAccessed: now, lastModified: now });
          await this.prune();
        } else await rm(tmp, { force: true });
      } catch {
        await rm(tmp, { force: true });
      } finally {
        this.filling.delete(img.id);
      }
    };
    return {
      // Resolves once the chunk is in the file: the caller may then reuse its buffer. A failing
      // cache (a full disk) never fails the download: the fill is just dropped at the end.
      write: (chunk) => {
        if (failed) return Promise.resolve();
        written += chunk.length;
        return new Promise<void>((resolve) =>
          out.write(chunk, (e) => {
            if (e) failed = true;
            resolve();
          }),
        );
      },
      commit: (n) => finish(true, n),
      abort: () => finish(false, -1),
    };
  }

  /** Least recently used first, until the cache fits. */
  private async prune(): Promise<void> {
    let total = 0;
    for (const e of this.entries.values()) total += e.size;
    const byAge = [...this.entries.entries()].sort((a, b) => a[1].lastAccessed - b[1].lastAccessed);
    for (const [id, e] of byAge) {
      if (total <= this.maxSize) break;
      await this.drop(id);
      total -= e.size;
    }
  }

  /** Forget an image (deleted, or asked to). */
  async drop(id: string): Promise<boolean> {
    const had = this.entries.delete(id);
    if (had) await rm(join(this.dir, id), { force: true });
    return had;
  }

  async unqueue(id: string): Promise<boolean> {
    const had = this.queue.delete(id);
    await rm(join(this.dir, 'queue', id), { force: true });
    return had;
  }

  async enqueue(id: string): Promise<void> {
    if (this.entries.has(id)) return;
    this.queue.add(id);
    await writeFile(join(this.dir, 'queue', id), '');
    this.kick();
  }

  /** The worker: fetch queued images into the cache, one at a time. */
  private kick(): void {
    if (this.worker !== null || this.queue.size === 0 || this.stopped) return;
    this.worker = (async () => {
      while (!this.stopped) {
        const id = this.queue.values().next().value as string | undefined;
        if (id === undefined) break;
        await this.prefetch(id).catch(() => {});
        // Whatever happened, it is no longer queued (Glance's prefetcher drops failures too).
        await this.unqueue(id);
      }
    })().finally(() => {
      this.worker = null;
      this.kick();
    });
  }

  private async prefetch(id: string): Promise<void> {
    const img = await this.svc.db.selectFrom('images').selectAll().where('id', '=', id).executeTakeFirst();
    if (img === undefined || img.status !== 'active' || img.blob === null) return;
    const f = await this.fill(img);
    if (f === null) return;
    try {
      const stream = await readStore(this.svc, img).read(img.blob);
      let n = 0;
      await pipeline(stream, async (source: AsyncIterable<Buffer>) => {
        for await (const chunk of source) {
          n += chunk.length;
          await f.write(chunk);
        }
      });
      await f.commit(n === img.size ? n : -1);
    } catch (err) {
      await f.abort();
      throw err;
    }
  }

  state(): { cached_images: unknown[]; queued_images: string[] } {
    return {
      cached_images: [...this.entries.entries()]
        .sort((a, b) => (a[0] < b[0] ? -1 : 1))
        .map(([image_id, e]) => ({
          image_id,
          hits: e.hits,
          last_accessed: e.lastAccessed,
          last_modified: e.lastModified,
          size: e.size,
        })),
      queued_images: [...this.queue].sort(),
    };
  }

  async clear(target: 'cache' | 'queue' | 'both'): Promise<void> {
    if (target !== 'queue') for (const id of [...this.entries.keys()]) await this.drop(id);
    if (target !== 'cache') for (const id of [...this.queue]) await this.unqueue(id);
  }

  async close(): Promise<void> {
    this.stopped = true;
    await this.worker;
  }
}

const NOT_SUPPORTED = 'Caching via API is not supported at this site.';

/** The cache API (Glance's /v2/cache routes). `cache` is null when caching is off. */
export function cacheRoutes(
  router: Router,
  auth: (c: Ctx) => Promise<AuthContext>,
  cache: ImageCache | null,
  image: (ctx: AuthContext, id: string) => Promise<ImageRow>,
): void {
  const guard = async (c: Ctx): Promise<{ ctx: AuthContext; cache: ImageCache }> => {
    const ctx = await auth(c);
    enforce('manage_image_cache', ctx, {}, 'Access was denied to this resource.');
    if (cache === null) throw new HttpError(404, NOT_SUPPORTED);
    return { ctx, cache };
  };
  router.on('GET', '/v2/cache', async (c) => {
    const { cache: k } = await guard(c);
    sendJson(c.res, 200, k.state());
  });
  router.on('PUT', '/v2/cache/:id', async (c) => {
    const { ctx, cache: k } = await guard(c);
    const img = await image(ctx, c.params['id']!).catch(() => {
      throw new HttpError(404, `Image ${c.params['id']} not found.`);
    });
    if (img.status !== 'active')
      throw new HttpError(400, 'Only images with status active can be targeted for queueing');
    await k.enqueue(img.id);
    sendEmpty(c.res, 202);
  });
  router.on('DELETE', '/v2/cache/:id', async (c) => {
    const { ctx, cache: k } = await guard(c);
    const id = c.params['id']!;
    // Glance: 404 only for an image that neither exists nor is cached or queued.
    const exists = await image(ctx, id).then(
      () => true,
      () => false,
    );
    const dropped = await k.drop(id);
    const unqueued = await k.unqueue(id);
    if (!exists && !dropped && !unqueued) throw new HttpError(404, `Image ${id} not found.`);
    sendEmpty(c.res, 204);
  });
  router.on('DELETE', '/v2/cache', async (c) => {
    const { cache: k } = await guard(c);
    const target = String(c.req.headers['x-image-cache-clear-target'] ?? '').toLowerCase();
    if (!['', 'cache', 'queue'].includes(target))
      throw new HttpError(
        400,
        "If provided 'x-image-cache-clear-target' must be 'cache', 'queue' or empty string.",
      );
    await k.clear(target === '' ? 'both' : (target as 'cache' | 'queue'));
    sendEmpty(c.res, 204);
  });
}
