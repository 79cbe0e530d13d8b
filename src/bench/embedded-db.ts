/**
 * `node dist/bench/embedded-db.js [db|serve|all]`: resident memory (VmRSS) and opening time
 * of the embedded metadata database's options, and of `vdisk serve` itself.
 *
 * db: each option is opened in a process of its own (this script run as `child`), which
 * answers one query, waits 2 s and reports its VmRSS, the time from the call that opens the
 * database to the first answer, and for PGlite the size of its WebAssembly memory:
 *   - `node -e` doing nothing (the floor);
 *   - PGlite with PGlite's own defaults, as vdisk configured it (shared_buffers=16MB) and with
 *     smaller settings, each on an existing data directory and some on a fresh one (initdb);
 *   - the same under V8 flags that change how the PostgreSQL WebAssembly is compiled;
 *   - vdisk's openPglite() as it is in this tree (configuration, migrations);
 *   - SQLite through better-sqlite3 and Kysely's SqliteDialect, when BENCH_SQLITE_MODULES
 *     names a node_modules directory holding both (better-sqlite3 is not a dependency).
 * serve: `bin/vdisk serve --data-dir D --port P` run as a program (its #! line's
 * MALLOC_ARENA_MAX=2 and node flags; with BENCH_NODE_ARGS, `node ARGS bin/vdisk …` instead):
 * the time from spawn to the first 200 of `GET /healthz`, and to the first 200 of an
 * authenticated `GET /v2/images` (password login first), beside the time of `node -e 0`
 * spawned just before (the floor), and VmRSS 2 s later, on a fresh data directory (first
 * start) and on a copy of one a server made and left; with BENCH_UPLOAD=1, a
 * `curl -T` upload of BENCH_UPLOAD_SIZE (1 GiB) to PUT /v2/images/{id}/file and the peak RSS
 * during it (VmHWM reset through /proc/PID/clear_refs before, and VmRSS sampled every 100 ms),
 * then VmRSS 2 s after. BENCH_DATABASE_URL=postgres://…/db adds the server on PostgreSQL (the
 * server's own memory without an embedded database). BENCH_IMAGES=N then creates N images and
 * lists them (see workload()) and reads VmRSS 2 s and 30 s after. Every run starts from the
 * same state (no data directory, a copy of one a first server left, an emptied database that
 * a first server filled).
 *
 * BENCH_QUERIES=1 adds, for the PGlite cases, 3000 inserts and 100 selects of jsonb rows (one
 * query at a time) and VmRSS 2 s after: the cost of a setting in speed.
 *
 * Each figure is the median of BENCH_REPEAT (3) runs; BENCH_CASES is a regular expression
 * that selects cases by name; BENCH_DIR (a temporary directory) holds the data directories.
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  cpSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { request } from 'node:http';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { adminToken } from './keystone.js';

const HERE = fileURLToPath(import.meta.url);
const ROOT = resolve(dirname(HERE), '../..');
const MiB = 1 << 20;
const REPEAT = Number(process.env['BENCH_REPEAT'] ?? 3);
const FILTER = new RegExp(process.env['BENCH_CASES'] ?? '.');
const UPLOAD = process.env['BENCH_UPLOAD'] === '1';
const UPLOAD_SIZE = Number(process.env['BENCH_UPLOAD_SIZE'] ?? 2 ** 30);
const SQLITE_MODULES = process.env['BENCH_SQLITE_MODULES'];
const DATABASE_URL = process.env['BENCH_DATABASE_URL'];
const IMAGES = Number(process.env['BENCH_IMAGES'] ?? 0);
const PASSWORD = 'bench-secret';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function status(pid: number | 'self', field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 1024) : Number.NaN;
}

/** utime + stime of a process (all its threads), ms. */
function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // fields 14, 15; USER_HZ = 100
}

const median = (xs: number[]) => {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.floor((s.length - 1) / 2)]!;
};

// ---------------------------------------------------------------------------------------------
// child: open one option, report

interface ChildReport {
  rss: number;
  openMs: number;
  wasmMiB?: number;
  /** BENCH_QUERIES=1 (PGlite): 3000 inserts, 100 selects of up to 1000 jsonb rows, RSS 2 s after. */
  insertMs?: number;
  selectMs?: number;
  rssAfterQueries?: number;
}

const QUERIES = process.env['BENCH_QUERIES'] === '1';

/** Rows like the registry's (a jsonb object per row), inserted and read back one query at a time. */
async function queries(
  pg: import('@electric-sql/pglite').PGlite,
): Promise<{ insertMs: number; selectMs: number }> {
  await pg.exec(`CREATE TABLE IF NOT EXISTS bench (id text PRIMARY KEY, name text NOT NULL,
    props jsonb NOT NULL, created timestamptz NOT NULL DEFAULT now()); DELETE FROM bench`);
  let t = performance.now();
  for (let i = 0; i < 3000; i++)
    await pg.query('INSERT INTO bench (id, name, props) VALUES ($1, $2, $3)', [
      `id-${i}`,
      `name ${i}`,
      JSON.stringify({ a: i, b: 'x'.repeat(50), tags: ['t1', 't2'] }),
    ]);
  const insertMs = performance.now() - t;
  t = performance.now();
  for (let i = 0; i < 100; i++)
    await pg.query(
      `SELECT id, name, props, props->>'b' AS b FROM bench WHERE props ? 'a' AND name LIKE 'name 1%'
       ORDER BY created DESC, id LIMIT 1000`,
    );
  return { insertMs, selectMs: performance.now() - t };
}

async function child(kind: string, dir: string, params: string[]): Promise<void> {
  let report: ChildReport;
  if (kind === 'pglite') {
    const { PGlite } = await import('@electric-sql/pglite');
    const t0 = performance.now();
    const pg = await PGlite.create(dir, { startParams: [...PGlite.defaultStartParams, ...params] });
    await pg.query('SELECT 1');
    const openMs = performance.now() - t0;
    await sleep(2000);
    const mod = (pg as unknown as { mod: { HEAPU8: Uint8Array } }).mod;
    report = { rss: status('self', 'VmRSS'), openMs, wasmMiB: mod.HEAPU8.byteLength / MiB };
    if (QUERIES) {
      Object.assign(report, await queries(pg));
      await sleep(2000);
      report.rssAfterQueries = status('self', 'VmRSS');
    }
    await pg.close();
  } else if (kind === 'vdisk') {
    const { openPglite } = await import('../server/db/connect.js');
    const t0 = performance.now();
    const meta = await openPglite(dir);
    await meta.db.selectFrom('images').select('id').limit(1).execute();
    const openMs = performance.now() - t0;
    await sleep(2000);
    report = { rss: status('self', 'VmRSS'), openMs };
    await meta.close();
  } else if (kind === 'sqlite') {
    // Not a dependency: loaded from BENCH_SQLITE_MODULES, typed loosely.
    const req = createRequire(join(SQLITE_MODULES!, 'x.js'));
    const t0 = performance.now();
    const BetterSqlite3 = req('better-sqlite3') as new (path: string) => unknown;
    const kysely = req('kysely') as typeof import('kysely');
    const db = new kysely.Kysely<Record<string, Record<string, unknown>>>({
      dialect: new kysely.SqliteDialect({ database: new BetterSqlite3(join(dir, 'meta.sqlite')) as never }),
    });
    await kysely.sql`CREATE TABLE IF NOT EXISTS images (id text PRIMARY KEY, name text, status text NOT NULL,
      properties text NOT NULL DEFAULT '{}', tags text NOT NULL DEFAULT '[]', created_at text NOT NULL)`.execute(
      db,
    );
    await db
      .insertInto('images')
      .values({
        id: randomBytes(8).toString('hex'),
        name: 'x',
        status: 'queued',
        created_at: new Date().toISOString(),
      })
      .execute();
    await kysely.sql`SELECT id, json_extract(properties, '$.a') AS a FROM images LIMIT 1`.execute(db);
    const openMs = performance.now() - t0;
    await sleep(2000);
    report = { rss: status('self', 'VmRSS'), openMs };
    await db.destroy();
  } else {
    const t0 = performance.now();
    const openMs = performance.now() - t0;
    await sleep(2000);
    report = { rss: status('self', 'VmRSS'), openMs };
  }
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

function runChild(nodeArgs: string[], kind: string, dir: string, params: string[]): ChildReport {
  const r = spawnSync(process.execPath, [...nodeArgs, HERE, 'child', kind, dir, ...params], {
    encoding: 'utf8',
    env: { ...process.env, MALLOC_ARENA_MAX: '2' },
  });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !line.startsWith('{'))
    throw new Error(`child ${kind} ${params.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(line) as ChildReport;
}

// ---------------------------------------------------------------------------------------------
// db

interface DbCase {
  name: string;
  kind: 'none' | 'node-e' | 'pglite' | 'vdisk' | 'sqlite';
  params?: string[];
  nodeArgs?: string[];
  /** A new, empty directory for every run (initdb); otherwise one made before the runs. */
  fresh?: boolean;
}

const CURRENT = ['-c', 'shared_buffers=16MB'];

function dbCases(): DbCase[] {
  const cases: DbCase[] = [
    { name: 'node -e (nothing)', kind: 'node-e' },
    { name: 'PGlite defaults, fresh dir (initdb)', kind: 'pglite', fresh: true },
    { name: 'PGlite defaults, existing dir', kind: 'pglite' },
    {
      name: 'PGlite shared_buffers=16MB (vdisk before), fresh dir',
      kind: 'pglite',
      params: CURRENT,
      fresh: true,
    },
    { name: 'PGlite shared_buffers=16MB (vdisk before), existing dir', kind: 'pglite', params: CURRENT },
  ];
  for (const sb of ['4MB', '1MB'])
    cases.push({
      name: `PGlite shared_buffers=${sb}`,
      kind: 'pglite',
      params: ['-c', `shared_buffers=${sb}`],
    });
  cases.push({
    name: 'PGlite shared_buffers=1MB, temp_buffers=1MB, work_mem=1MB, maintenance_work_mem=1MB, wal_buffers=64kB, max_connections=2',
    kind: 'pglite',
    params: [
      ...['-c', 'shared_buffers=1MB', '-c', 'temp_buffers=1MB', '-c', 'work_mem=1MB'],
      ...['-c', 'maintenance_work_mem=1MB', '-c', 'wal_buffers=64kB', '-c', 'max_connections=2'],
    ],
  });
  for (const flag of ['--liftoff-only', '--no-wasm-tier-up', '--wasm-tiering-budget=100000000'])
    cases.push({
      name: `PGlite shared_buffers=16MB, node ${flag}`,
      kind: 'pglite',
      params: CURRENT,
      nodeArgs: [flag],
    });
  cases.push(
    {
      name: 'PGlite shared_buffers=4MB, node --liftoff-only',
      kind: 'pglite',
      params: ['-c', 'shared_buffers=4MB'],
      nodeArgs: ['--liftoff-only'],
    },
    {
      name: 'PGlite shared_buffers=1MB, node --liftoff-only',
      kind: 'pglite',
      params: ['-c', 'shared_buffers=1MB'],
      nodeArgs: ['--liftoff-only'],
    },
    { name: 'vdisk openPglite() (this tree), fresh dir', kind: 'vdisk', fresh: true },
    { name: 'vdisk openPglite() (this tree), existing dir', kind: 'vdisk' },
  );
  if (SQLITE_MODULES !== undefined) {
    cases.push({
      name: 'SQLite: better-sqlite3 + Kysely SqliteDialect, fresh file',
      kind: 'sqlite',
      fresh: true,
    });
    cases.push({ name: 'SQLite: better-sqlite3 + Kysely SqliteDialect, existing file', kind: 'sqlite' });
  }
  return cases.filter((c) => FILTER.test(c.name));
}

function nodeE(): ChildReport {
  const code =
    "setTimeout(() => { const m = /VmRSS:\\s+(\\d+)/.exec(require('fs').readFileSync('/proc/self/status', 'utf8')); console.log(JSON.stringify({ rss: Math.round(m[1] / 1024), openMs: 0 })); }, 2000)";
  const r = spawnSync(process.execPath, ['-e', code], {
    encoding: 'utf8',
    env: { ...process.env, MALLOC_ARENA_MAX: '2' },
  });
  return JSON.parse(r.stdout.trim()) as ChildReport;
}

async function dbBench(base: string): Promise<void> {
  const rows: string[] = [];
  for (const [i, c] of dbCases().entries()) {
    const dir = join(base, `db-${i}`);
    const runs: ChildReport[] = [];
    if (c.kind !== 'node-e' && !c.fresh) {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      runChild(c.nodeArgs ?? [], c.kind, dir, c.params ?? []); // creates it
    }
    for (let r = 0; r < REPEAT; r++) {
      if (c.kind === 'node-e') {
        runs.push(nodeE());
        continue;
      }
      if (c.fresh) {
        rmSync(dir, { recursive: true, force: true });
        mkdirSync(dir, { recursive: true });
      }
      runs.push(runChild(c.nodeArgs ?? [], c.kind, dir, c.params ?? []));
    }
    rmSync(dir, { recursive: true, force: true });
    const rss = runs.map((x) => x.rss);
    const wasm = runs[0]?.wasmMiB;
    const med = (f: (x: ChildReport) => number | undefined) => {
      const xs = runs.map(f).filter((x): x is number => x !== undefined);
      return xs.length === 0 ? '' : String(Math.round(median(xs)));
    };
    const q = QUERIES
      ? ` ${med((x) => x.insertMs)} | ${med((x) => x.selectMs)} | ${med((x) => x.rssAfterQueries)} |`
      : '';
    const row = `| ${c.name} | ${median(rss)} (${rss.join(', ')}) | ${wasm === undefined ? '' : wasm.toFixed(0)} | ${med((x) => x.openMs)} |${q}`;
    rows.push(row);
    process.stderr.write(`${row}\n`);
  }
  process.stdout.write(
    `\n| option | idle RSS MiB, median (runs) | WASM memory MiB | open to first answer, ms |${QUERIES ? ' 3000 inserts, ms | 100 selects, ms | RSS after, MiB |' : ''}\n|---|---|---|---|${QUERIES ? '---|---|---|' : ''}\n${rows.join('\n')}\n`,
  );
}

// ---------------------------------------------------------------------------------------------
// serve

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a !== null ? res(a.port) : rej(new Error('no port'))));
    });
  });
}

function get(url: string): Promise<number> {
  return new Promise((res, rej) => {
    const r = request(url, (resp) => {
      resp.resume();
      resp.on('end', () => res(resp.statusCode ?? 0));
    });
    r.on('error', rej);
    r.end();
  });
}

function stop(c: ChildProcess): Promise<void> {
  return new Promise((res) => {
    if (c.exitCode !== null || c.signalCode !== null) return res();
    c.once('exit', () => res());
    c.kill('SIGTERM');
    setTimeout(() => c.kill('SIGKILL'), 30000).unref();
  });
}

async function uploadFile(base: string): Promise<string> {
  const path = join(base, 'upload.bin');
  if (existsSync(path)) return path;
  const block = randomBytes(MiB);
  const out = createWriteStream(path);
  for (let done = 0; done < UPLOAD_SIZE; done += MiB) {
    if (!out.write(block.subarray(0, Math.min(MiB, UPLOAD_SIZE - done))))
      await new Promise<void>((r) => out.once('drain', () => r()));
  }
  await new Promise<void>((r, j) => out.end((e?: Error | null) => (e ? j(e) : r())));
  return path;
}

interface ServeRun {
  /** `node -e 0`, spawned just before: the floor of a start on this machine at this moment. */
  floorMs?: number;
  /** Spawn to the first 200 of GET /healthz. */
  firstAnswerMs: number;
  /** Spawn to the first 200 of GET /v2/images, after a password login (POST /v3/auth/tokens). */
  firstListMs: number;
  /** The server's CPU time (all threads, user + system) at those two moments: what load disturbs least. */
  firstAnswerCpuMs: number;
  firstListCpuMs: number;
  idleRss: number;
  uploadPeak?: number;
  afterUploadRss?: number;
  afterWorkRss?: number;
  afterWork30Rss?: number;
}

/**
 * BENCH_IMAGES=N: N images created through the API (4 in flight, each with properties and
 * tags), then 10 lists of 1000 and 10 filtered lists sorted by name: the memory a server keeps
 * after some work, 2 s and 30 s after it (V8 gives heap pages back after ~20 s idle).
 */
async function workload(url: string, token: string, n: number): Promise<void> {
  const headers = { 'Content-Type': 'application/json', 'X-Auth-Token': token };
  let next = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < n) {
        const i = next++;
        const create = () =>
          fetch(`${url}/v2/images`, {
            method: 'POST',
            headers,
            body: JSON.stringify({
              name: `img-${i}`,
              disk_format: 'qcow2',
              container_format: 'bare',
              tags: ['a', 'b'],
              os_distro: 'ubuntu',
              description: 'x'.repeat(200),
            }),
          });
        // Once more when a kept-alive connection was closed by the server as it was reused
        // (its keepAliveTimeout; fetch then fails with "other side closed").
        const r = await create().catch(create);
        if (r.status !== 201) throw new Error(`create: ${r.status} ${await r.text()}`);
      }
    }),
  );
  for (const path of ['/v2/images?limit=1000', '/v2/images?os_distro=ubuntu&sort_key=name&sort_dir=asc']) {
    for (let i = 0; i < 10; i++) {
      const r = await fetch(`${url}${path}`, { headers });
      if (r.status !== 200) throw new Error(`list: ${r.status}`);
      await r.arrayBuffer();
    }
  }
}

async function serveOnce(
  dataDir: string,
  nodeArgs: string[],
  databaseUrl: string | undefined,
  file: string | null,
): Promise<ServeRun> {
  const port = await freePort();
  // bin/vdisk run as a program (its #! line's environment and node flags) unless node flags are given.
  const args = ['serve', '--data-dir', dataDir, '--port', String(port)];
  if (databaseUrl !== undefined) args.push('--database-url', databaseUrl);
  const [cmd, argv] =
    nodeArgs.length > 0
      ? [process.execPath, [...nodeArgs, join(ROOT, 'bin/vdisk'), ...args]]
      : [join(ROOT, 'bin/vdisk'), args];
  const t0 = performance.now();
  const c = spawn(cmd, argv, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, MALLOC_ARENA_MAX: '2', VDISK_ADMIN_PASSWORD: PASSWORD },
  });
  let err = '';
  c.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    for (;;) {
      if (c.exitCode !== null) throw new Error(`vdisk serve exited (${c.exitCode}): ${err}`);
      if (performance.now() - t0 > 120000) throw new Error(`vdisk serve did not answer: ${err}`);
      try {
        if ((await get(`${url}/healthz`)) === 200) break;
      } catch {}
      await sleep(5);
    }
    const firstAnswerMs = performance.now() - t0;
    const firstAnswerCpuMs = cpuMs(c.pid!);
    // Then what a client does first: a token (Keystone password login), and a list of images.
    const token = await login(url);
    const list = await fetch(`${url}/v2/images`, { headers: { 'X-Auth-Token': token } });
    await list.arrayBuffer();
    if (list.status !== 200) throw new Error(`GET /v2/images: ${list.status}`);
    const firstListMs = performance.now() - t0;
    const firstListCpuMs = cpuMs(c.pid!);
    await sleep(2000);
    const run: ServeRun = {
      firstAnswerMs,
      firstListMs,
      firstAnswerCpuMs,
      firstListCpuMs,
      idleRss: status(c.pid!, 'VmRSS'),
    };
    if (file !== null) await uploadOnce(c.pid!, url, token, file, run);
    if (IMAGES > 0) {
      await workload(url, token, IMAGES);
      await sleep(2000);
      run.afterWorkRss = status(c.pid!, 'VmRSS');
      await sleep(28000);
      run.afterWork30Rss = status(c.pid!, 'VmRSS');
    }
    return run;
  } finally {
    await stop(c);
  }
}

async function login(url: string): Promise<string> {
  return adminToken(url, PASSWORD);
}

/** The 1 GiB upload with `curl -T`: peak RSS during it, RSS 2 s after. */
async function uploadOnce(
  pid: number,
  url: string,
  token: string,
  file: string,
  run: ServeRun,
): Promise<void> {
  const img = await fetch(`${url}/v2/images`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Auth-Token': token },
    body: JSON.stringify({ name: 'bench', disk_format: 'raw', container_format: 'bare' }),
  });
  const id = ((await img.json()) as { id: string }).id;
  writeFileSync(`/proc/${pid}/clear_refs`, '5'); // resets VmHWM
  let sampled = 0;
  const timer = setInterval(() => {
    sampled = Math.max(sampled, status(pid, 'VmRSS'));
  }, 100);
  const curl = spawn(
    'curl',
    [
      '-sS',
      '-f',
      '-T',
      file,
      '-H',
      `X-Auth-Token: ${token}`,
      '-H',
      'Content-Type: application/octet-stream',
      `${url}/v2/images/${id}/file`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let curlErr = '';
  curl.stderr!.on('data', (d: Buffer) => {
    curlErr += d.toString();
  });
  const code = await new Promise<number | null>((r) => curl.once('exit', r));
  clearInterval(timer);
  if (code !== 0) throw new Error(`curl: ${code} ${curlErr}`);
  run.uploadPeak = Math.max(sampled, status(pid, 'VmHWM'));
  const meta = (await (
    await fetch(`${url}/v2/images/${id}`, { headers: { 'X-Auth-Token': token } })
  ).json()) as {
    size: number;
    status: string;
  };
  if (meta.size !== UPLOAD_SIZE || meta.status !== 'active')
    throw new Error(`upload: ${JSON.stringify(meta)}`);
  await sleep(2000);
  run.afterUploadRss = status(pid, 'VmRSS');
  await fetch(`${url}/v2/images/${id}`, { method: 'DELETE', headers: { 'X-Auth-Token': token } });
}

async function emptyPostgres(url: string): Promise<void> {
  const pg = (await import('pg')).default;
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query('DROP SCHEMA public CASCADE; CREATE SCHEMA public');
  } finally {
    await c.end();
  }
}

async function serveBench(base: string): Promise<void> {
  const nodeArgs = (process.env['BENCH_NODE_ARGS'] ?? '').split(' ').filter((s) => s !== '');
  const file = UPLOAD ? await uploadFile(base) : null;
  const cases: { name: string; databaseUrl?: string; fresh: boolean }[] = [
    { name: 'vdisk serve, embedded, first start (fresh data dir)', fresh: true },
    { name: 'vdisk serve, embedded, existing data dir', fresh: false },
  ];
  if (DATABASE_URL !== undefined)
    cases.push({ name: 'vdisk serve --database-url (PostgreSQL)', databaseUrl: DATABASE_URL, fresh: false });
  const rows: string[] = [];
  const dir = join(base, 'serve');
  const template = join(base, 'serve-template');
  for (const c of cases.filter((x) => FILTER.test(x.name))) {
    const runs: ServeRun[] = [];
    // Every run starts from the same state: no data directory; or a copy of one that a
    // server made and left (its second start); or, on PostgreSQL, a database a server made.
    rmSync(template, { recursive: true, force: true });
    if (!c.fresh && c.databaseUrl === undefined) await serveOnce(template, nodeArgs, undefined, null);
    for (let r = 0; r < REPEAT; r++) {
      rmSync(dir, { recursive: true, force: true });
      if (!c.fresh && c.databaseUrl === undefined) cpSync(template, dir, { recursive: true });
      if (c.databaseUrl !== undefined) {
        await emptyPostgres(c.databaseUrl);
        await serveOnce(dir, nodeArgs, c.databaseUrl, null);
      }
      const f0 = performance.now();
      // Started as bin/vdisk starts node: without NODE_EXTRA_CA_CERTS (src/protocols/tls-ca.ts).
      spawnSync('env', ['-u', 'NODE_EXTRA_CA_CERTS', process.execPath, '-e', '0']);
      const floorMs = performance.now() - f0;
      runs.push({ floorMs, ...(await serveOnce(dir, nodeArgs, c.databaseUrl, file)) });
      process.stderr.write(`  ${c.name}: ${JSON.stringify(runs.at(-1))}\n`);
    }
    const col = (f: (x: ServeRun) => number | undefined) => {
      const xs = runs.map(f).filter((x): x is number => x !== undefined);
      return xs.length === 0 ? '' : `${Math.round(median(xs))} (${xs.map(Math.round).join(', ')})`;
    };
    rows.push(
      `| ${c.name} | ${col((x) => x.idleRss)} | ${col((x) => x.uploadPeak)} | ${col((x) => x.afterUploadRss)} | ${col((x) => x.afterWorkRss)} | ${col((x) => x.afterWork30Rss)} | ${col((x) => x.firstAnswerMs)} | ${col((x) => x.firstListMs)} | ${col((x) => x.firstAnswerCpuMs)} / ${col((x) => x.firstListCpuMs)} | ${col((x) => x.floorMs)} |`,
    );
    process.stderr.write(`${rows.at(-1)}\n`);
  }
  rmSync(dir, { recursive: true, force: true });
  rmSync(template, { recursive: true, force: true });
  process.stdout.write(
    `\n${nodeArgs.length > 0 ? `node ${nodeArgs.join(' ')}\n\n` : ''}| server | idle RSS MiB | peak RSS during ${UPLOAD_SIZE / MiB} MiB upload | RSS 2 s after | RSS 2 s after ${IMAGES} images and lists | 30 s after | spawn to first GET /healthz 200, ms | spawn to login and first GET /v2/images 200, ms | server CPU at those, ms | node -e 0, ms |\n|---|---|---|---|---|---|---|---|---|---|\n${rows.join('\n')}\n`,
  );
}

// ---------------------------------------------------------------------------------------------

const [mode = 'all', ...rest] = process.argv.slice(2);
if (mode === 'child') {
  const [kind = 'none', dir = '', ...params] = rest;
  await child(kind, dir, params);
} else {
  const base = process.env['BENCH_DIR'] ?? mkdtempSync(join(tmpdir(), 'vdisk-embedded-db-'));
  try {
    if (mode === 'db' || mode === 'all') await dbBench(base);
    if (mode === 'serve' || mode === 'all') await serveBench(base);
  } finally {
    if (process.env['BENCH_DIR'] === undefined) rmSync(base, { recursive: true, force: true });
  }
}
