/**
 * The list and show phase of `npm run bench:server` with several nodes: N `vdisk serve` nodes
 * (default 3) on one real PostgreSQL (src/server/test/servers.ts starts a throwaway cluster)
 * and one shared file store, with COUNT images, loaded by `wrk` on loopback (one wrk per node,
 * run at once, their requests/s summed and their worst p99 kept), and the same wrk load on a
 * reference target (the real Glance 25 that bench:server starts) in the same run.
 *
 * Standalone: `node dist/bench/nodes.js` (vdisk only; BENCH_NODES, BENCH_SERVER_IMAGES,
 * BENCH_WRK_SECONDS, BENCH_WRK_CONNECTIONS).
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { adminToken } from './keystone.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const PASSWORD = 'nodes-bench-secret';
/** Extra node flags for the servers (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`), as bench:server. */
const NODE_ARGS = (process.env['BENCH_SERVER_NODE_ARGS'] ?? '').split(' ').filter((a) => a !== '');

export interface LoadTarget {
  name: string;
  /** One base URL per node (a single-node service has one). */
  urls: string[];
  headers: Record<string, string>;
}

export interface LoadFigures {
  /** Requests/s summed over the nodes. */
  rps: number;
  p50: number;
  /** The worst node's p99, ms. */
  p99: number;
  errors: number;
}

function parseMs(v: string, unit: string): number {
  const n = Number(v);
  return unit === 'us' ? n / 1000 : unit === 's' ? n * 1000 : unit === 'm' ? n * 60_000 : n;
}

/** wrk's `--latency` summary: requests/s, the 50 % and 99 % latencies, non-2xx and errors. */
export function parseWrk(out: string): LoadFigures {
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? Number.NaN);
  const lat = (p: string) => {
    const m = new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out);
    return m === null ? Number.NaN : parseMs(m[1]!, m[2]!);
  };
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const errors = non2xx + (sock === null ? 0 : sock.slice(1).reduce((a, b) => a + Number(b), 0));
  if (Number.isNaN(rps)) throw new Error(`wrk gave no figures:\n${out}`);
  return { rps, p50: lat('50'), p99: lat('99'), errors };
}

function wrk(url: string, headers: Record<string, string>, script: string, seconds: number, conns: number) {
  const args = ['-t1', `-c${conns}`, `-d${seconds}s`, '--latency', '-s', script];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  args.push(url);
  return new Promise<LoadFigures>((res, rej) => {
    const c = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    c.stderr.on('data', (d: Buffer) => {
      out += d.toString();
    });
    c.on('exit', (code) => {
      if (code !== 0) return rej(new Error(`wrk exited ${code}: ${out}`));
      try {
        res(parseWrk(out));
      } catch (err) {
        rej(err);
      }
    });
  });
}

/** A wrk script requesting `paths` in turn (a random start per thread). */
function pathScript(dir: string, name: string, paths: string[]): string {
  const file = join(dir, `${name}.lua`);
  writeFileSync(
    file,
    [
      `local paths = {${paths.map((p) => JSON.stringify(p)).join(',')}}`,
      'local i = 0',
      'request = function()',
      '  i = i % #paths + 1',
      '  return wrk.format("GET", paths[i])',
      'end',
      '',
    ].join('\n'),
  );
  return file;
}

/**
 * Load `target` with wrk on the default list page and on shows of `ids`: every node at once,
 * `conns` connections each, `seconds` per route.
 */
export async function loadRoutes(
  target: LoadTarget,
  ids: string[],
  dir: string,
  seconds: number,
  conns: number,
): Promise<{ list: LoadFigures; show: LoadFigures }> {
  if (spawnSync('wrk', ['--version']).error !== undefined)
    throw new Error('wrk is not installed (apt-get install wrk)');
  const run = async (name: string, paths: string[]) => {
    const script = pathScript(dir, `${target.name}-${name}`, paths);
    const per = await Promise.all(target.urls.map((u) => wrk(u, target.headers, script, seconds, conns)));
    return {
      rps: per.reduce((a, f) => a + f.rps, 0),
      p50: Math.max(...per.map((f) => f.p50)),
      p99: Math.max(...per.map((f) => f.p99)),
      errors: per.reduce((a, f) => a + f.errors, 0),
    };
  };
  const list = await run('list', ['/v2/images']);
  const show = await run(
    'show',
    ids.slice(0, 200).map((id) => `/v2/images/${id}`),
  );
  return { list, show };
}

export interface Cluster {
  target: LoadTarget;
  pids: number[];
  stop(): Promise<void>;
}

function waitListening(child: ChildProcess, what: string): Promise<string> {
  return new Promise((res, rej) => {
    let err = '';
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) res(m[1]!);
    });
    child.on('exit', (c) => rej(new Error(`${what} exited ${c}: ${err}`)));
  });
}

/** N nodes of `vdisk serve` on one throwaway PostgreSQL and one shared file store. */
export async function startCluster(dir: string, nodes: number): Promise<Cluster> {
  const { startPostgres } = await import('../server/test/servers.js');
  const pg = await startPostgres();
  const databaseUrl = await pg.createDatabase('bench');
  const store = join(dir, 'shared-store');
  const children: ChildProcess[] = [];
  const start = (i: number) => {
    const c = spawn(
      process.execPath,
      [
        ...NODE_ARGS,
        join(ROOT, 'bin/vdisk'),
        'serve',
        '--port',
        '0',
        '--data-dir',
        join(dir, `node${i}`),
        '--database-url',
        databaseUrl,
        '--store',
        store,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, VDISK_ADMIN_PASSWORD: PASSWORD } },
    );
    children.push(c);
    return waitListening(c, `node ${i}`);
  };
  try {
    const urls = [await start(1)];
    urls.push(...(await Promise.all(Array.from({ length: nodes - 1 }, (_, i) => start(i + 2)))));
    const token = await adminToken(urls[0]!, PASSWORD);
    const stop = async () => {
      await Promise.all(
        children.map(
          (c) =>
            new Promise<void>((res) => {
              if (c.exitCode !== null || c.signalCode !== null) return res();
              c.once('exit', () => res());
              c.kill('SIGTERM');
            }),
        ),
      );
      await pg.stop();
    };
    return {
      target: {
        name: `vdisk ×${nodes}`,
        urls,
        headers: { 'X-Auth-Token': token },
      },
      pids: children.map((c) => c.pid!),
      stop,
    };
  } catch (err) {
    for (const c of children) c.kill('SIGKILL');
    await pg.stop();
    throw err;
  }
}

/** COUNT images through the API, 8 in flight, spread over the nodes; their ids. */
export async function fill(t: LoadTarget, count: number): Promise<string[]> {
  const ids: string[] = [];
  let next = 0;
  const worker = async (w: number) => {
    while (next < count) {
      const i = next++;
      const url = t.urls[(w + i) % t.urls.length]!;
      const r = await fetch(`${url}/v2/images`, {
        method: 'POST',
        headers: { ...t.headers, 'Content-Type': 'application/json' },
        body: JSON.stringify({
          name: `list-${String(i).padStart(5, '0')}`,
          disk_format: 'raw',
          container_format: 'bare',
        }),
      });
      if (r.status !== 201) throw new Error(`create: ${r.status} ${await r.text()}`);
      ids.push(((await r.json()) as { id: string }).id);
    }
  };
  await Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
  return ids;
}

async function main() {
  const nodes = Number(process.env['BENCH_NODES'] ?? 3);
  const count = Number(process.env['BENCH_SERVER_IMAGES'] ?? 10_000);
  const seconds = Number(process.env['BENCH_WRK_SECONDS'] ?? 10);
  const conns = Number(process.env['BENCH_WRK_CONNECTIONS'] ?? 4);
  const dir = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'vdisk-bench-nodes-'));
  const cluster = await startCluster(dir, nodes);
  try {
    process.stderr.write(`${nodes} nodes; creating ${count} images…\n`);
    const ids = await fill(cluster.target, count);
    const f = await loadRoutes(cluster.target, ids, dir, seconds, conns);
    const row = (what: string, x: LoadFigures) =>
      `| ${what} | ${x.rps.toFixed(0)} | ${x.p50.toFixed(1)} | ${x.p99.toFixed(1)} | ${x.errors} |`;
    console.log(
      `| ${cluster.target.name}, ${count} images, wrk ${conns} connections per node, ${seconds} s | req/s | p50 ms | p99 ms | errors |`,
    );
    console.log('| --- | --- | --- | --- | --- |');
    console.log(row('list (default page)', f.list));
    console.log(row('show', f.show));
  } finally {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (
  process.argv[1] !== undefined &&
  existsSync(process.argv[1]) &&
  import.meta.url === `file://${resolve(process.argv[1])}`
)
  await main();
