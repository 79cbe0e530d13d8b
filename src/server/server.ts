/**
 * `vdisk serve`: one HTTP server with the identity API under /v3 and the image API
 * everywhere else, over a metadata database (PGlite in DIR, or PostgreSQL) and a blob store
 * (files in DIR, or S3). An exclusive lock on DIR/serve.lock keeps two servers off one
 * directory. On start it repairs what a crash left (temporary blobs, uploads stuck in
 * `saving`, blobs no image points to); on SIGTERM it stops accepting, lets requests in
 * flight finish (bounded), then closes the database cleanly.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { getHeapSpaceStatistics } from 'node:v8';
import { VdiskError } from '../core/errors.js';
import { native } from '../native/index.js';
import { defaultSettings, type ServerSettings, type Services } from './context.js';
import { compilePglite, type MetaDb, openPglite, openPostgres } from './db/connect.js';
import { HttpError, httpErrorOf, Router, sendGlanceError, sendKeystoneError } from './http.js';
import { Identity } from './identity/keystone.js';
import { ImageApi, type ImageApiOptions } from './image/api.js';
import type { AccessEvent } from './ops.js';
import { FsStore } from './store/fs.js';
import type { BlobStore } from './store/store.js';
import { type NamedStore, StoreSet, type StoreSpec } from './store/stores.js';

export interface ServeOptions {
  host?: string;
  port?: number;
  dataDir: string;
  databaseUrl?: string;
  /** `s3://…` or a directory (default DIR/images): one store. */
  store?: string;
  /**
   * Several named stores (Glance's enabled_backends; store/stores.ts): their ids, locations and
   * descriptions, and the default one. Replaces `store`.
   */
  stores?: { stores: StoreSpec[]; defaultId: string };
  adminPassword?: string;
  settings?: Partial<ServerSettings>;
  log?: (line: string) => void;
  /** One event per request (vdisk serve --log-format json writes them as JSON lines). */
  accessLog?: (e: AccessEvent) => void;
  imageApi?: ImageApiOptions;
  /** The built dashboard (default: dist/web beside dist/server, see dashboard.ts). */
  dashboardDir?: string;
}

export interface RunningServer {
  url: string;
  port: number;
  services: Services;
  /** Set when the admin password was generated on this start. */
  generatedPassword: string | null;
  close(timeoutMs?: number): Promise<void>;
}

/** Idle time after which the server gives free heap memory back (see startServer). */
const IDLE_TRIM_MS = 1000;
/** V8 starts its young generation at 1 MiB and doubles it up to 16 (Node 20, 64-bit). */
const YOUNG_GROWN = 2 << 20;
/** When a first start loads the metadefs, unless a request under /v2/metadefs asks first. */
const METADEFS_DELAY_MS = 1000;

async function lockDir(dir: string): Promise<() => Promise<void>> {
  const path = join(dir, 'serve.lock');
  const fh = await open(path, 'a+');
  if (native !== null) {
    const r = native.ofdLock(fh.fd, 2, 0, 1);
    if (r !== 0) {
      await fh.close();
      throw new VdiskError(
        'LOCKED',
        `Failed to lock '${dir}': another vdisk server is using this data directory`,
      );
    }
  } else {
    // Without the addon: a pid file, with a liveness check of the pid it names.
    const text = (await fh.readFile('utf8')).trim();
    const pid = Number(text);
    if (text !== '' && Number.isInteger(pid) && pid !== process.pid) {
      let alive = true;
      try {
        process.kill(pid, 0);
      } catch {
        alive = false;
      }
      if (alive) {
        await fh.close();
        throw new VdiskError(
          'LOCKED',
          `Failed to lock '${dir}': another vdisk server is using this data directory`,
        );
      }
    }
    await fh.truncate(0);
    await fh.write(`${process.pid}\n`, 0);
  }
  return async () => {
    if (native !== null) native.ofdLock(fh.fd, 0, 0, 1);
    else await fh.truncate(0).catch(() => {});
    await fh.close();
  };
}

async function openStore(
  spec: string | undefined,
  dataDir: string,
  settings: ServerSettings,
): Promise<BlobStore> {
  if (spec !== undefined && /^s3(\+https)?:\/\//.test(spec)) {
    const { S3Store } = await import('./store/s3.js');
    return S3Store.open(spec, { timeoutSeconds: settings.s3TimeoutSeconds });
  }
  return FsStore.open(spec ?? join(dataDir, 'images'));
}

/** Several named stores, opened in order (each closed again if a later one fails). */
async function openStores(
  specs: StoreSpec[],
  dataDir: string,
  settings: ServerSettings,
): Promise<NamedStore[]> {
  const out: NamedStore[] = [];
  try {
    for (const s of specs) out.push({ ...s, store: await openStore(s.location, dataDir, settings) });
  } catch (err) {
    for (const s of out) await s.store.close().catch(() => {});
    throw err;
  }
  return out;
}

export async function startServer(opts: ServeOptions): Promise<RunningServer> {
  const log = opts.log ?? (() => {});
  // PGlite's WebAssembly compiles on V8's threads while everything else loads.
  const wasmModule = opts.databaseUrl === undefined ? compilePglite() : undefined;
  wasmModule?.catch(() => {}); // awaited (and reported) by openPglite()
  await mkdir(opts.dataDir, { recursive: true });
  const unlock = await lockDir(opts.dataDir);
  // The modules the start needs after the database, loaded while it opens (PGlite's start
  // waits on reading its files and on compiling its WebAssembly off the main thread). Each
  // `await import()` below then finds its module loaded or loading.
  for (const m of [
    import('./nodes.js'),
    import('./recovery.js'),
    import('./image/inspect.js'),
    import('./image/import.js'),
    import('./image/export.js'),
    import('./image/cache.js'),
    import('./metadefs/index.js'),
    import('./ops.js'),
    import('prom-client'),
  ])
    m.catch(() => {}); // a failure is reported where the module is used
  // The admin password's hash (scrypt, ~100 ms of a thread-pool thread) while it opens too.
  const pw = opts.adminPassword;
  const adminHash =
    pw === undefined ? undefined : import('./identity/passwords.js').then((m) => m.hashPassword(pw));
  adminHash?.catch(() => {}); // awaited (and reported) by bootstrap()
  const settings: ServerSettings = { ...defaultSettings(), ...opts.settings };
  let meta: MetaDb | undefined;
  let store: BlobStore | undefined;
  let stores: StoreSet | null = null;
  try {
    meta =
      opts.databaseUrl !== undefined
        ? await openPostgres(opts.databaseUrl, (err) =>
            log(`warning: a database connection was lost (${err.message}); the next query opens another`),
          )
        : await openPglite(join(opts.dataDir, 'db'), wasmModule === undefined ? {} : { wasmModule });
    if (opts.stores !== undefined) {
      stores = new StoreSet(
        await openStores(opts.stores.stores, opts.dataDir, settings),
        opts.stores.defaultId,
      );
      store = stores.default.store;
    } else store = await openStore(opts.store, opts.dataDir, settings);
  } catch (err) {
    await meta?.close();
    await unlock();
    throw err;
  }
  const svc: Services = {
    db: meta.db,
    store,
    stores,
    settings,
    instanceId: randomBytes(8).toString('hex'),
    workDir: join(opts.dataDir, 'work'),
    cache: null,
    writing: new Map(),
  };
  const identity = new Identity(svc);
  const generatedPassword = await identity.bootstrap(opts.adminPassword, adminHash);
  const { NodeLease, nodeKey } = await import('./nodes.js');
  const lease = new NodeLease(
    svc.db,
    svc.instanceId,
    await nodeKey(opts.dataDir),
    svc.settings.nodeLeaseSeconds,
    log,
  );
  const { recoverOnStart, reapDeadWriters, collectTemporaries } = await import('./recovery.js');
  try {
    await lease.start();
    await recoverOnStart(svc, log);
  } catch (err) {
    await lease.release();
    await meta.close();
    await unlock();
    throw err;
  }

  const router = new Router();
  identity.routes(router);
  if (svc.settings.imageCacheDir !== null) {
    const { ImageCache } = await import('./image/cache.js');
    svc.cache = await ImageCache.open(svc, svc.settings.imageCacheDir, svc.settings.imageCacheMaxSize);
  }
  const { inspectUpload } = await import('./image/inspect.js');
  const imageApi = new ImageApi(svc, identity, { inspect: inspectUpload, ...opts.imageApi });
  const { ImportApi } = await import('./image/import.js');
  const importApi = new ImportApi(svc, identity, imageApi, {
    inspect: opts.imageApi?.inspect ?? inspectUpload,
  });
  importApi.routes(router);
  const { ExportApi } = await import('./image/export.js');
  new ExportApi(svc, identity, imageApi, importApi, {
    inspect: opts.imageApi?.inspect ?? inspectUpload,
  }).routes(router);
  imageApi.routes(router);
  const { cacheRoutes } = await import('./image/cache.js');
  cacheRoutes(
    router,
    (c) => identity.authenticate(c.req),
    svc.cache,
    (ctx, id) => imageApi.visibleImage(ctx, id),
  );
  const { setupMetadefs } = await import('./metadefs/index.js');
  const metadefs = setupMetadefs(svc, identity, router, log);

  const { Ops } = await import('./ops.js');
  const ops = await Ops.create(svc, lease, opts.accessLog);

  const inflight = new Set<Promise<void>>();
  // Once no request has come for IDLE_TRIM_MS: V8's young generation back to its initial
  // size if it grew (memoryPressure: a full collection, ~30-100 ms of CPU, so only then; what
  // bin/vdisk's --max-semi-space-size=1 did for every command until issue 16), then glibc's
  // free heap pages back to the system (malloc_trim). glibc returns only the top of its main
  // heap by itself; the pages freed in the middle of it and of the other arena stay resident,
  // ~50 MiB after an upload and 1000 images created (173 → 117 MiB; docs/decisions.md,
  // "Embedded database memory").
  let lastRequest = Date.now();
  let trimmed = false;
  const trimTimer = setInterval(() => {
    if (trimmed || inflight.size > 0 || Date.now() - lastRequest < IDLE_TRIM_MS) return;
    trimmed = true;
    const young = getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
    if (young !== undefined && young.space_size > YOUNG_GROWN) native?.memoryPressure?.();
    native?.mallocTrim?.();
  }, IDLE_TRIM_MS / 4);
  trimTimer.unref();
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    lastRequest = Date.now();
    trimmed = false;
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname;
    const keystone = path === '/v3' || path.startsWith('/v3/');
    res.setHeader('x-openstack-request-id', `req-${crypto.randomUUID()}`);
    const tracked = ops.track(req, res);
    try {
      if (Ops.PATHS.has(path)) {
        tracked.matched(path);
        await ops.serve(path, res);
        return;
      }
      if (path === '/dashboard' || path.startsWith('/dashboard/')) {
        // The web dashboard: loaded on its first request only.
        tracked.matched('/dashboard/');
        const { serveDashboard, defaultDashboardDir } = await import('./dashboard.js');
        await serveDashboard(req, res, path, opts.dashboardDir ?? defaultDashboardDir());
        return;
      }
      const { handler, params, route } = router.match(req.method ?? 'GET', path);
      tracked.matched(route);
      await handler({ req, res, method: req.method ?? 'GET', path, query: url.searchParams, params });
    } catch (err) {
      let e = httpErrorOf(err);
      if (e === null || e.status >= 500) {
        log(
          `error: ${req.method} ${path}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`,
        );
      }
      e ??= new HttpError(
        500,
        'The server has either erred or is incapable of performing the requested operation.',
      );
      if (res.headersSent) {
        res.destroy();
        return;
      }
      // Do not read the rest of a refused upload: answer and close.
      if (!req.complete) res.setHeader('Connection', 'close');
      if (keystone) sendKeystoneError(res, e);
      else {
        // webob's text for a method a resource does not take (Keystone's is werkzeug's).
        if (e.status === 405 && e.headers['Allow'] !== undefined)
          e = new HttpError(405, `The method ${req.method} is not allowed for this resource.`, e.headers);
        sendGlanceError(res, e);
      }
    }
  };
  const server: Server = createServer({ keepAliveTimeout: 5000, requestTimeout: 0 }, (req, res) => {
    const p = handle(req, res).finally(() => {
      inflight.delete(p);
      lastRequest = Date.now();
    });
    inflight.add(p);
  });
  server.listen(opts.port ?? 9292, opts.host ?? '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  }).catch(async (err) => {
    await lease.release();
    await meta.close();
    await unlock();
    throw new VdiskError(
      'EIO',
      `Could not listen on ${opts.host ?? '127.0.0.1'}:${opts.port ?? 9292}: ${(err as Error).message}`,
    );
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  const url = `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${addr.port}`;
  await lease.setUrl(url);
  // Once a client's first requests are answered (see setupMetadefs).
  const metadefsTimer = setTimeout(() => void metadefs.load(), METADEFS_DELAY_MS);
  metadefsTimer.unref();
  lease.every(async () => {
    await reapDeadWriters(svc, log);
    // What an abort could not remove (the store away when the write failed), without a restart.
    await collectTemporaries(svc, log);
  });
  let closing: Promise<void> | undefined;
  return {
    url,
    port: addr.port,
    services: svc,
    generatedPassword,
    close(timeoutMs = 30000) {
      closing ??= (async () => {
        clearInterval(trimTimer);
        ops.drain();
        const stopped = new Promise<void>((r) => server.close(() => r()));
        server.closeIdleConnections();
        const deadline = new Promise<void>((r) => setTimeout(r, timeoutMs).unref());
        await Promise.race([Promise.allSettled([...inflight]).then(() => undefined), deadline]);
        server.closeAllConnections();
        await stopped;
        await Promise.allSettled([...inflight]);
        await importApi.drain(timeoutMs);
        clearTimeout(metadefsTimer);
        await metadefs.settled();
        // Drained: nothing of this node needs recovering.
        await lease.release();
        await svc.cache?.close();
        if (stores === null) await store.close();
        else for (const s of stores.list) await s.store.close();
        await meta.close();
        await unlock();
      })();
      return closing;
    },
  };
}
