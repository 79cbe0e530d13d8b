/**
 * Open the metadata database: PGlite in a directory (the embedded default) or a PostgreSQL
 * server by URL. Both give the same Kysely<Database>; the schema is migrated on open.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { Kysely, PostgresDialect } from 'kysely';
import { inCliScript } from '../../core/bundle.js';
import { VdiskError } from '../../core/errors.js';
import { type Database, migrate } from './schema.js';
import { unpackTemplate } from './template.js';

export interface MetaDb {
  db: Kysely<Database>;
  kind: 'pglite' | 'postgres';
  close(): Promise<void>;
}

/**
 * PGlite's settings, and why. Figures: `node dist/bench/embedded-db.js db` (VmRSS 2 s after a
 * process opened an existing data directory, Node 20, median of 3; the whole table and the
 * server's figures are in docs/decisions.md, "Embedded database memory"):
 *   - shared_buffers 4 MB, where PostgreSQL's default is 128 MB (PGlite as it comes: 293 MiB)
 *     and the previous release had 16 MB: the buffers are memory of the WebAssembly instance,
 *     resident once touched, and the registry's tables are small, read through indexes, with
 *     the files in the OS page cache anyway. With Liftoff only (below), 16 MB → 4 MB: 129 →
 *     117 MiB; 1 MB gave 113 MiB, with the benchmark's selects slower.
 *   - The PostgreSQL WebAssembly compiled by Liftoff only (V8's baseline compiler), never tiered
 *     up to TurboFan. PostgreSQL's start-up runs some functions hot enough for V8 to recompile
 *     them with TurboFan in the background; that code and its compilation memory stayed
 *     resident (shared_buffers=16MB: 172 MiB with tier-up, 129 MiB without) and the opening
 *     took longer on two busy cores (~600–800 ms instead of ~400 ms). 3000 single-row inserts
 *     and 100 selects of 1000 jsonb rows were no slower with Liftoff only.
 */
export const PGLITE_PARAMS = ['-c', 'shared_buffers=4MB'];

/**
 * V8's `--liftoff-only` while PGlite's module is compiled. The flag is process-wide. A module
 * compiled under it stays Liftoff-only after it is cleared (V8 11, Node 20: the same RSS and
 * timings as with the flag left on; its functions are compiled lazily, on first call), so it
 * is set around PGlite.create() only, and other WebAssembly compiled later (zstd, bzip2) is
 * tiered up as usual. Left alone when node was started with it.
 */
let liftoffHolders = 0;
const liftoffByUser = process.execArgv.some((a) => /^--liftoff[-_]only$/.test(a));

async function withLiftoffOnly<T>(fn: () => Promise<T>): Promise<T> {
  if (liftoffByUser) return fn();
  if (liftoffHolders++ === 0) setFlagsFromString('--liftoff-only');
  try {
    return await fn();
  } finally {
    if (--liftoffHolders === 0) setFlagsFromString('--no-liftoff-only');
  }
}

/**
 * A new data directory without the template (see below; a tree not built with `npm run build`,
 * or the tests from src/) is made (initdb) by a child process. PGlite runs initdb in a second
 * PostgreSQL instance of its own, in memory, and copies the result: that grows the process to
 * 620–760 MiB, and much of it stays after both are closed (the previous release's first
 * `vdisk serve` idled at 300–640 MiB, later starts at ~200). In a child it goes with the child
 * (~4 s); the server then opens the directory as on any later start (~130 MiB). The child
 * makes `<dir>.new`, renamed to `<dir>` once complete, as the template is unpacked.
 */
async function initPgliteDir(dir: string): Promise<void> {
  const require = createRequire(import.meta.url);
  const tmp = `${dir}.new`;
  await rm(tmp, { recursive: true, force: true });
  const script = `const { PGlite } = require(process.argv[1]);
PGlite.create(process.argv[2], { startParams: [...PGlite.defaultStartParams, ...JSON.parse(process.argv[3])] })
  .then((pg) => pg.close())
  .catch((err) => { console.error(err?.message ?? err); process.exit(1); });`;
  const child = spawn(
    process.execPath,
    [
      '--liftoff-only',
      '-e',
      script,
      require.resolve('@electric-sql/pglite'),
      tmp,
      JSON.stringify(PGLITE_PARAMS),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const code = await new Promise<number | null>((res, rej) => {
    child.once('error', rej);
    child.once('exit', res);
  });
  if (code !== 0 || !existsSync(join(tmp, 'PG_VERSION')))
    throw new VdiskError(
      'EIO',
      `Could not create the database in ${dir}: ${stderr.trim() || `exit ${code}`}`,
    );
  await rename(tmp, dir);
}

/**
 * The template of a new data directory (template.ts), built beside this module by
 * `npm run build`; null when absent.
 */
export function defaultTemplate(): string | null {
  // From the CLI script (dist/cli/vdisk.cjs): the template in dist/server/db/.
  const rel = inCliScript(import.meta.url) ? '../server/db/pgdata.tar.gz' : './pgdata.tar.gz';
  const path = fileURLToPath(new URL(rel, import.meta.url));
  return existsSync(path) ? path : null;
}

/**
 * A data directory is complete when it has PG_VERSION: both ways of making one (the template,
 * initdb in a child) make `<dir>.new` and rename it. A `<dir>` without PG_VERSION is an empty
 * directory or what an older release's initdb left when it was killed: made again.
 */
async function makeDataDir(dir: string, template: string | null): Promise<void> {
  try {
    await rm(dir, { recursive: true, force: true });
    await mkdir(dirname(dir), { recursive: true });
    if (template !== null) await unpackTemplate(template, dir);
    else await initPgliteDir(dir);
  } catch (err) {
    if (err instanceof VdiskError) throw err;
    throw new VdiskError('EIO', `Could not create the database in ${dir}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/** A compiled WebAssembly.Module (the project's lib has no WebAssembly types: PGlite's own). */
export type WasmModule = NonNullable<import('@electric-sql/pglite').PGliteOptions['pgliteWasmModule']>;
/** The global WebAssembly object (Node's), typed as much as is used here. */
const wasm = (globalThis as unknown as { WebAssembly: { compile(b: Uint8Array): Promise<WasmModule> } })
  .WebAssembly;

export interface PgliteOptions {
  /** The template of a new data directory (default: defaultTemplate()); null: initdb. */
  template?: string | null;
  /** PGlite's WebAssembly, from compilePglite() (default: compiled by PGlite.create()). */
  wasmModule?: Promise<WasmModule>;
}

/**
 * Compile PGlite's WebAssembly (9 MB; Liftoff only, as above) without waiting for PGlite's
 * JavaScript: the server starts this first, so that V8 compiles on its background threads
 * while the main thread loads the server's modules, and hands the promise to openPglite().
 */
export function compilePglite(): Promise<WasmModule> {
  const require = createRequire(import.meta.url);
  const path = join(dirname(require.resolve('@electric-sql/pglite')), 'pglite.wasm');
  return withLiftoffOnly(async () => wasm.compile(await readFile(path)));
}

export async function openPglite(dir: string | undefined, opts: PgliteOptions = {}): Promise<MetaDb> {
  const fresh = dir !== undefined && !existsSync(join(dir, 'PG_VERSION'));
  // The module (~100 ms to load) while the directory is unpacked.
  const [{ PGlite }, { PGliteDialect }] = await Promise.all([
    import('@electric-sql/pglite'),
    import('./pglite-dialect.js'),
    dir !== undefined && fresh
      ? makeDataDir(dir, opts.template === undefined ? defaultTemplate() : opts.template)
      : null,
  ]);
  const startParams = [...PGlite.defaultStartParams, ...PGLITE_PARAMS];
  const pgliteWasmModule = await opts.wasmModule;
  const o = pgliteWasmModule === undefined ? { startParams } : { startParams, pgliteWasmModule };
  // No directory: in memory (tests of the database code only).
  const pg = await withLiftoffOnly(() => (dir === undefined ? PGlite.create(o) : PGlite.create(dir, o)));
  const db = new Kysely<Database>({ dialect: new PGliteDialect(pg) });
  await migrate(db);
  return {
    db,
    kind: 'pglite',
    async close() {
      await db.destroy();
      await pg.close();
    },
  };
}

export async function openPostgres(url: string, onLost: (err: Error) => void = () => {}): Promise<MetaDb> {
  const pgmod = await import('pg');
  const pg = pgmod.default;
  // int8 (sizes) as numbers: image sizes stay far below 2^53.
  pg.types.setTypeParser(20, (v: string) => Number.parseInt(v, 10));
  const pool = new pg.Pool({ connectionString: url, max: 8 });
  // An idle connection the server dropped (a restart, pg_terminate_backend, a network cut)
  // is an 'error' event on the pool: without a listener it would end the process. The pool
  // has already discarded the connection and opens a new one for the next query.
  pool.on('error', onLost);
  // The same while a connection is checked out between two queries (a transaction, or Kysely
  // between acquiring and querying): the 'error' event is the client's then. The query on it
  // fails, and the pool drops the connection when it comes back.
  pool.on('connect', (client) => client.on('error', onLost));
  try {
    const c = await pool.connect();
    c.release();
  } catch (err) {
    await pool.end();
    throw new VdiskError('EIO', `Could not connect to the database: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  await migrate(db);
  return {
    db,
    kind: 'postgres',
    async close() {
      await db.destroy();
    },
  };
}
