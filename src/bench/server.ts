/* biome-ignore-all lint/suspicious/noExplicitAny: the bench reads JSON answers of two servers. */
/**
 * `npm run bench:server`: the registry's data path and list latency, measured from outside
 * the server as a client sees them, and (when it can be started here) the real Glance 25
 * from Debian measured the same way in the same run.
 *
 * For each target (vdisk: `bin/vdisk serve` on its embedded default, PGlite + file store in a
 * temporary directory; Glance: `glance-api` with a file store, sqlite and no Keystone):
 *   - upload SIZE bytes with `PUT /v2/images/{id}/file`, with Content-Length and chunked;
 *   - download them with `GET /v2/images/{id}/file`;
 *   - create COUNT images and time `GET /v2/images` (the default page of 25, and limit=1000).
 * The client is a plain node:http client sending from one in-memory buffer (64 MiB of random
 * bytes, repeated) and discarding what it receives, so that it is not the bottleneck (the
 * Python clients are). Each transfer runs REPEAT times; the tables show the median MiB/s,
 * list p50/p99 over LIST_N sequential requests, and the server's peak RSS in each phase
 * (VmHWM, reset before the phase through /proc/PID/clear_refs).
 *
 * The checksums the server records (md5 `checksum`, sha512 `os_hash_value`) are checked
 * against the ones computed here, and every download's length and Content-MD5.
 *
 * The floor (issue 14): an acknowledged upload is hashed twice and on disk, so no upload can
 * beat the pipeline that does only that. The payload is written to a file in the same
 * filesystem as the stores, and each transfer round also times
 *   cat payload | { tee >(md5sum) >(sha512sum); wait; } | dd of=blob bs=4M conv=fsync
 * (the `wait` makes the hashes part of the time; their output is checked too), taking turns
 * with the servers' uploads. Downloads get their own phase: one image per server, downloaded
 * BENCH_DOWN_REPEAT times by each in turn (the order rotating every round): vdisk (sendfile
 * from the file store), vdisk "before" (below: the copying path), Glance, and as the
 * download floor `cat blob > /dev/null` of vdisk's blob (the page cache read alone, no socket).
 * "Before" is a second vdisk server with VDISK_ZERO_COPY=0 VDISK_WRITE_BACK=0: this build with
 * the download and upload changes of issue 14 turned off, measured in the same rounds.
 *
 * Environment: BENCH_SERVER_SIZE (1G), BENCH_SERVER_IMAGES (10000), BENCH_REPEAT (3),
 * BENCH_DOWN_REPEAT (5), BENCH_FLOOR (1; 0 skips the floor pipeline), BENCH_BEFORE (1: also a
 * vdisk with VDISK_ZERO_COPY=0 VDISK_WRITE_BACK=0, the data path as it was before issue 14,
 * in the upload rounds and the download phase; 0: not),
 * BENCH_LIST_N (200), BENCH_DIR (temp dir), BENCH_GLANCE (auto: run Glance when
 * /usr/bin/glance-api exists; 0: never; 1: required), BENCH_SERVER_NODE_ARGS (extra node
 * flags for the vdisk server, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`),
 * BENCH_SERVER_THREADS (1: print each upload's CPU per thread of the server).
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { type Agent, request } from 'node:http';
import { connect } from 'node:net';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseSize } from '../core/size.js';
import { type ExportFigures, exportBench } from './export.js';
import { adminToken } from './keystone.js';
import { fill, type LoadFigures, loadRoutes, startCluster } from './nodes.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const MiB = 1 << 20;
const SIZE = parseSize(process.env['BENCH_SERVER_SIZE'] ?? '1G') ?? 2 ** 30;
const COUNT = Number(process.env['BENCH_SERVER_IMAGES'] ?? 10000);
const REPEAT = Number(process.env['BENCH_REPEAT'] ?? 3);
const DOWN_REPEAT = Number(process.env['BENCH_DOWN_REPEAT'] ?? 5);
const FLOOR = process.env['BENCH_FLOOR'] !== '0';
const BEFORE = process.env['BENCH_BEFORE'] !== '0';
const LIST_N = Number(process.env['BENCH_LIST_N'] ?? 200);
const GLANCE = process.env['BENCH_GLANCE'] ?? 'auto';
/** Nodes of the list/show phase on PostgreSQL (0: no such phase); wrk's seconds and connections per node. */
const NODES = Number(process.env['BENCH_NODES'] ?? 3);
const WRK_SECONDS = Number(process.env['BENCH_WRK_SECONDS'] ?? 10);
const WRK_CONNS = Number(process.env['BENCH_WRK_CONNECTIONS'] ?? 4);
const THREADS = process.env['BENCH_SERVER_THREADS'] === '1';
const NODE_ARGS = (process.env['BENCH_SERVER_NODE_ARGS'] ?? '').split(' ').filter((s) => s !== '');
const ADMIN_PASSWORD = 'bench-secret';
const EXPORT = process.env['BENCH_EXPORT'] !== '0';
const EXPORT_SIZE = parseSize(process.env['BENCH_EXPORT_SIZE'] ?? '2G') ?? 2 ** 31;

/** 64 MiB of random data, sent again and again (the store sees SIZE distinct writes). */
const BLOCK = randomBytes(Math.min(64 * MiB, SIZE));
const SEND_CHUNK = 1 * MiB;

function* payload(): Generator<Buffer> {
  let left = SIZE;
  let off = 0;
  while (left > 0) {
    const n = Math.min(SEND_CHUNK, left, BLOCK.length - off);
    yield BLOCK.subarray(off, off + n);
    left -= n;
    off = (off + n) % BLOCK.length;
  }
}

function expectedHashes(): { md5: string; sha512: string } {
  const md5 = createHash('md5');
  const sha = createHash('sha512');
  for (const b of payload()) {
    md5.update(b);
    sha.update(b);
  }
  return { md5: md5.digest('hex'), sha512: sha.digest('hex') };
}

interface Target {
  name: string;
  url: string;
  pid: number;
  headers: Record<string, string>;
  /** Create n more images (for the list); default: POST /v2/images, 8 in flight. */
  bulk?: (n: number, from: number) => Promise<void>;
  stop(): Promise<void>;
}

interface Resp {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

function call(
  t: Target,
  method: string,
  path: string,
  body?: unknown,
  extra: Record<string, string> = {},
  agent?: Agent,
): Promise<Resp> {
  return new Promise((res, rej) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = { ...t.headers, ...extra };
    if (data !== undefined) {
      headers['Content-Type'] ??= 'application/json';
      headers['Content-Length'] = String(data.length);
    }
    const r = request(`${t.url}${path}`, { method, headers, ...(agent ? { agent } : {}) }, (resp) => {
      const chunks: Buffer[] = [];
      resp.on('data', (c: Buffer) => chunks.push(c));
      resp.on('end', () =>
        res({ status: resp.statusCode ?? 0, headers: resp.headers, body: Buffer.concat(chunks) }),
      );
      resp.on('error', rej);
    });
    r.on('error', (e) => rej(new Error(`${t.name}: ${method} ${path}: ${e.message}`)));
    r.end(data);
  });
}

async function json(t: Target, method: string, path: string, body?: unknown, want = 200): Promise<any> {
  const r = await call(t, method, path, body);
  if (r.status !== want) throw new Error(`${t.name}: ${method} ${path}: ${r.status} ${r.body.toString()}`);
  return r.body.length === 0 ? undefined : JSON.parse(r.body.toString());
}

/**
 * Upload SIZE bytes; resolves with the seconds from the first byte sent to the answer, and
 * from the last byte handed to the socket to the answer (what the server does after the body:
 * the last block, fsync, the database).
 */
function upload(t: Target, id: string, sized: boolean): Promise<{ s: number; tail: number }> {
  return new Promise((res, rej) => {
    const headers: Record<string, string> = { ...t.headers, 'Content-Type': 'application/octet-stream' };
    if (sized) headers['Content-Length'] = String(SIZE);
    else headers['Transfer-Encoding'] = 'chunked';
    const t0 = performance.now();
    let sent = 0;
    const r = request(`${t.url}/v2/images/${id}/file`, { method: 'PUT', headers }, (resp) => {
      const chunks: Buffer[] = [];
      resp.on('data', (c: Buffer) => chunks.push(c));
      resp.on('end', () => {
        const now = performance.now();
        const s = (now - t0) / 1000;
        if (resp.statusCode !== 204 && resp.statusCode !== 201)
          rej(new Error(`${t.name}: upload: ${resp.statusCode} ${Buffer.concat(chunks).toString()}`));
        else res({ s, tail: sent === 0 ? 0 : (now - sent) / 1000 });
      });
    });
    r.on('finish', () => {
      sent = performance.now();
    });
    r.on('error', (e) => rej(new Error(`${t.name}: upload: ${e.message}`)));
    const it = payload();
    const pump = () => {
      for (;;) {
        const n = it.next();
        if (n.done) {
          r.end();
          return;
        }
        if (!r.write(n.value)) {
          r.once('drain', pump);
          return;
        }
      }
    };
    pump();
  });
}

/**
 * Download and discard: a raw socket reading into one reused 1 MiB buffer (net's `onread`),
 * so that the client allocates nothing per chunk (node:http's client allocates a Buffer per
 * socket read and was the slower side here). The response head is parsed here: status,
 * Content-Length, Content-MD5; the body must be exactly Content-Length bytes.
 */
function download(t: Target, id: string, md5: string): Promise<number> {
  return new Promise((res, rej) => {
    const u = new URL(t.url);
    const t0 = performance.now();
    const head = Object.entries(t.headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('');
    let headText = '';
    let body = -1;
    let want = -1;
    let status = 0;
    let cmd5: string | undefined;
    const finish = (err?: Error) => {
      sock.destroy();
      if (err) return rej(err);
      const s = (performance.now() - t0) / 1000;
      if (status !== 200) rej(new Error(`${t.name}: download: ${status}`));
      else if (body !== SIZE) rej(new Error(`${t.name}: download: ${body} bytes, expected ${SIZE}`));
      else if (cmd5 !== undefined && cmd5 !== md5)
        rej(new Error(`${t.name}: download: Content-MD5 ${cmd5}, expected ${md5}`));
      else res(s);
    };
    const sock = connect({
      host: u.hostname,
      port: Number(u.port),
      onread: {
        buffer: Buffer.allocUnsafe(MiB),
        callback: (n: number, buf: Uint8Array) => {
          if (body < 0) {
            headText += Buffer.from(buf.buffer, buf.byteOffset, n).toString('latin1');
            const i = headText.indexOf('\r\n\r\n');
            if (i < 0) return true;
            const lines = headText.slice(0, i).split('\r\n');
            status = Number(lines[0]!.split(' ')[1]);
            for (const l of lines.slice(1)) {
              const [k, ...v] = l.split(':');
              const key = k!.trim().toLowerCase();
              if (key === 'content-length') want = Number(v.join(':').trim());
              if (key === 'content-md5') cmd5 = v.join(':').trim();
            }
            body = headText.length - i - 4;
          } else body += n;
          if (want >= 0 && body >= want) finish();
          return true;
        },
      },
    });
    sock.on('error', finish);
    sock.on('end', () => finish(body === want ? undefined : new Error(`${t.name}: download cut at ${body}`)));
    sock.write(`GET /v2/images/${id}/file HTTP/1.1\r\nHost: ${u.host}\r\n${head}Connection: close\r\n\r\n`);
  });
}

/** Peak RSS (VmHWM) of a process since the last reset, in MiB. */
function peakRss(pid: number): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : null;
  } catch {
    return null;
  }
}

/** CPU seconds (user + system, every thread) a process has used so far. */
function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields 14 and 15 (utime, stime) in clock ticks; 100 per second on Linux.
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return Number.NaN;
  }
}

/** CPU seconds [user, system] of each thread of a process so far, by thread id. */
function threadCpu(pid: number): Map<string, [number, number]> {
  const out = new Map<string, [number, number]>();
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        out.set(tid, [Number(f[11]) / 100, Number(f[12]) / 100]);
      } catch {
        // the thread ended meanwhile
      }
    }
  } catch {
    // the process is gone: no figures
  }
  return out;
}

/**
 * BENCH_SERVER_THREADS=1: per-thread CPU-s per GiB of an upload, the main thread first, then
 * the others by decreasing CPU (for vdisk: the md5 and sha512 workers, then libuv's pool
 * (file writes: mostly system time) and V8's platform threads (concurrent GC)).
 */
function threadReport(pid: number, before: Map<string, [number, number]>): string {
  const gib = SIZE / 2 ** 30;
  const rows: { tid: string; u: number; s: number }[] = [];
  for (const [tid, [u, s]] of threadCpu(pid)) {
    const [u0, s0] = before.get(tid) ?? [0, 0];
    if (u - u0 + s - s0 > 0) rows.push({ tid, u: (u - u0) / gib, s: (s - s0) / gib });
  }
  rows.sort((a, b) => (a.tid === String(pid) ? -1 : b.tid === String(pid) ? 1 : b.u + b.s - (a.u + a.s)));
  return rows
    .map((r) => `${r.tid === String(pid) ? 'main ' : ''}${r.u.toFixed(2)}+${r.s.toFixed(2)}s`)
    .join(' ');
}

function resetPeak(pid: number): void {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    // not permitted: the figure is then the peak since start
  }
}

/**
 * A command run without blocking the event loop: a blocked loop would not see a server closing
 * an idle keep-alive connection, and the next request would go out on the dead socket.
 */
function run(
  cmd: string,
  args: string[],
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      stdout += c;
    });
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
    });
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
};
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

interface Figures {
  uploadSized: number;
  /** Server CPU seconds per GiB (all threads). */
  cpuUp: number;
  cpuDown: number;
  uploadChunked: number;
  /** Median seconds from an upload's last byte sent to the answer. */
  tail: number;
  download: number;
  rss: { upload: number | null; download: number | null; list: number | null };
  listDefault: { p50: number; p99: number };
  list1000: { p50: number; p99: number };
  listConc: number;
  createRate: number;
}

async function newImage(t: Target, name: string): Promise<string> {
  const img = await json(
    t,
    'POST',
    '/v2/images',
    { name, disk_format: 'raw', container_format: 'bare' },
    201,
  );
  return img.id as string;
}

interface TransferRuns {
  up: Record<'sized' | 'chunked', number[]>;
  /** Seconds from the last byte sent to the answer. */
  tail: number[];
  down: number[];
  cpuUp: number[];
  cpuDown: number[];
  rssUp: number;
  rssDown: number;
}

const newRuns = (): TransferRuns => ({
  up: { sized: [], chunked: [] },
  tail: [],
  down: [],
  cpuUp: [],
  cpuDown: [],
  rssUp: 0,
  rssDown: 0,
});

/** One round: a sized and a chunked upload, each downloaded back, checked, and deleted. */
async function transferRound(t: Target, i: number, hashes: { md5: string; sha512: string }, r: TransferRuns) {
  for (const mode of ['sized', 'chunked'] as const) {
    await run('sync', []);
    const id = await newImage(t, `bench-${mode}-${i}`);
    resetPeak(t.pid);
    const c0 = cpuSeconds(t.pid);
    const th0 = THREADS ? threadCpu(t.pid) : null;
    const { s, tail } = await upload(t, id, mode === 'sized');
    r.tail.push(tail);
    r.cpuUp.push((cpuSeconds(t.pid) - c0) / (SIZE / 2 ** 30));
    if (th0 !== null)
      process.stderr.write(`  ${t.name} ${mode} upload, CPU-s/GiB per thread: ${threadReport(t.pid, th0)}\n`);
    r.rssUp = Math.max(r.rssUp, peakRss(t.pid) ?? 0);
    r.up[mode].push(SIZE / MiB / s);
    const img = await json(t, 'GET', `/v2/images/${id}`);
    if (img.checksum !== hashes.md5 || img.os_hash_value !== hashes.sha512 || img.size !== SIZE)
      throw new Error(
        `${t.name}: recorded checksum ${img.checksum}/${img.os_hash_value} size ${img.size}, expected ${hashes.md5}/${hashes.sha512} ${SIZE}`,
      );
    resetPeak(t.pid);
    const c1 = cpuSeconds(t.pid);
    const d = await download(t, id, hashes.md5);
    r.cpuDown.push((cpuSeconds(t.pid) - c1) / (SIZE / 2 ** 30));
    r.rssDown = Math.max(r.rssDown, peakRss(t.pid) ?? 0);
    r.down.push(SIZE / MiB / d);
    await json(t, 'DELETE', `/v2/images/${id}`, undefined, 204);
    process.stderr.write(
      `  ${t.name} ${mode} #${i + 1}: upload ${(SIZE / MiB / s).toFixed(0)} MiB/s, download ${(SIZE / MiB / d).toFixed(0)} MiB/s\n`,
    );
  }
}

/**
 * The floor of an upload: the payload file hashed twice and written with fsync, nothing else.
 * `wait` inside the group waits for both hashes (process substitutions are not part of the
 * pipeline); `times` gives the CPU of everything the pipeline ran. Checked: both digests and
 * the size. Two floors: the issue's, with coreutils' md5sum and sha512sum, and the same with
 * `openssl dgst` (OpenSSL's assembly, the code node:crypto runs: the stricter floor here).
 */
const FLOORS = {
  floor: { md5: 'md5sum', sha512: 'sha512sum', label: 'cat | tee >(md5sum) >(sha512sum) | dd conv=fsync' },
  'floor-openssl': {
    md5: 'openssl dgst -md5 -r',
    sha512: 'openssl dgst -sha512 -r',
    label: 'the same with openssl dgst -md5 / -sha512',
  },
} as const;
type FloorName = keyof typeof FLOORS;

function floorScript(f: FloorName): string {
  const { md5, sha512 } = FLOORS[f];
  return `cat "$1" | { tee >(${md5} > "$2.md5") >(${sha512} > "$2.sha512"); wait; } | dd of="$2" bs=4M conv=fsync status=none; times`;
}

function shellCpu(stdout: string): number {
  // `times`: the shell's user and system time, then its children's ("0m1.234s 0m0.567s").
  const line = stdout.trim().split('\n').at(-1) ?? '';
  let total = 0;
  for (const m of line.matchAll(/(\d+)m([\d.]+)s/g)) total += Number(m[1]) * 60 + Number(m[2]);
  return total;
}

function floorUpload(
  f: FloorName,
  payloadPath: string,
  blob: string,
  hashes: { md5: string; sha512: string },
) {
  spawnSync('sync');
  const t0 = performance.now();
  const r = spawnSync('bash', ['-c', floorScript(f), f, payloadPath, blob], { encoding: 'utf8' });
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`${f} pipeline failed (${r.status}): ${r.stderr}`);
  // md5sum and `openssl dgst -r` both print "<hex> <name>".
  const md5 = readFileSync(`${blob}.md5`, 'utf8').split(' ')[0];
  const sha512 = readFileSync(`${blob}.sha512`, 'utf8').split(' ')[0];
  const size = statSync(blob).size;
  rmSync(blob, { force: true });
  rmSync(`${blob}.md5`, { force: true });
  rmSync(`${blob}.sha512`, { force: true });
  if (md5 !== hashes.md5 || sha512 !== hashes.sha512 || size !== SIZE)
    throw new Error(
      `${f} pipeline: ${md5}/${sha512} ${size} bytes, expected ${hashes.md5}/${hashes.sha512} ${SIZE}`,
    );
  return { mibs: SIZE / MiB / seconds, cpu: shellCpu(r.stdout) / (SIZE / 2 ** 30) };
}

function writePayload(path: string): void {
  const fd = openSync(path, 'w');
  try {
    for (const b of payload()) writeSync(fd, b);
  } finally {
    closeSync(fd);
  }
}

interface DownRuns {
  mibs: number[];
  /** Server CPU seconds per GiB (for the floor: cat's). */
  cpu: number[];
  rss: number;
}

/**
 * Downloads side by side: one image per server (a sized upload, checked), then DOWN_REPEAT
 * rounds in which each server serves it once and the floor reads vdisk's blob once, the
 * order rotating every round.
 */
async function downloadPhase(
  targets: Target[],
  hashes: { md5: string; sha512: string },
  vdiskDir: string,
): Promise<Map<string, DownRuns>> {
  const ids = new Map<Target, string>();
  for (const t of targets) {
    const id = await newImage(t, 'bench-download');
    await upload(t, id, true);
    const img = await json(t, 'GET', `/v2/images/${id}`);
    if (img.checksum !== hashes.md5 || img.size !== SIZE)
      throw new Error(`${t.name}: download image not stored`);
    ids.set(t, id);
  }
  const runs = new Map<string, DownRuns>();
  const steps: { name: string; run: () => Promise<{ mibs: number; cpu: number; rss: number }> }[] =
    targets.map((t) => ({
      name: t.name,
      run: async () => {
        resetPeak(t.pid);
        const c0 = cpuSeconds(t.pid);
        const s = await download(t, ids.get(t)!, hashes.md5);
        return {
          mibs: SIZE / MiB / s,
          cpu: (cpuSeconds(t.pid) - c0) / (SIZE / 2 ** 30),
          rss: peakRss(t.pid) ?? 0,
        };
      },
    }));
  const v = targets.find((t) => t.name === 'vdisk');
  if (FLOOR && v !== undefined) {
    const blob = join(vdiskDir, 'images', ids.get(v)!);
    steps.push({
      name: 'floor',
      run: async () => {
        const t0 = performance.now();
        const r = await run('bash', ['-c', 'cat "$1" > /dev/null; times', 'floor', blob]);
        const s = (performance.now() - t0) / 1000;
        if (r.status !== 0) throw new Error(`cat ${blob}: ${r.stderr}`);
        return { mibs: SIZE / MiB / s, cpu: shellCpu(r.stdout) / (SIZE / 2 ** 30), rss: 0 };
      },
    });
  }
  for (const st of steps) runs.set(st.name, { mibs: [], cpu: [], rss: 0 });
  process.stderr.write(`downloads: ${steps.map((x) => x.name).join(', ')} × ${DOWN_REPEAT}\n`);
  for (let i = 0; i < DOWN_REPEAT; i++) {
    const k = i % steps.length;
    const order = [...steps.slice(k), ...steps.slice(0, k)];
    const line: string[] = [];
    for (const st of order) {
      const r = await st.run();
      const x = runs.get(st.name)!;
      x.mibs.push(r.mibs);
      x.cpu.push(r.cpu);
      x.rss = Math.max(x.rss, r.rss);
      line.push(`${st.name} ${r.mibs.toFixed(0)}`);
    }
    process.stderr.write(`  download #${i + 1} (MiB/s): ${line.join(', ')}\n`);
  }
  for (const t of targets) await json(t, 'DELETE', `/v2/images/${ids.get(t)}`, undefined, 204);
  return runs;
}

async function listing(t: Target) {
  const have = ((await json(t, 'GET', '/v2/images?limit=1000')).images as unknown[]).length;
  // The first (up to) 300 through the API, 8 in flight: the create rate; the rest through
  // the API too, or the target's bulk path when it has one.
  let next = have;
  const apiUntil = t.bulk === undefined ? COUNT : Math.min(COUNT, have + 300);
  const worker = async () => {
    while (next < apiUntil) {
      const i = next++;
      await newImage(t, `list-${String(i).padStart(5, '0')}`);
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: 8 }, worker));
  const created = Math.max(0, apiUntil - have);
  const createRate = created / ((performance.now() - t0) / 1000);
  if (t.bulk !== undefined && COUNT > apiUntil) await t.bulk(COUNT - apiUntil, apiUntil);
  process.stderr.write(
    `  ${t.name}: ${created} images through the API (${createRate.toFixed(0)}/s)` +
      `${t.bulk !== undefined ? `, ${Math.max(0, COUNT - apiUntil)} in bulk` : ''}\n`,
  );
  const time = async (path: string, n: number) => {
    const ms: number[] = [];
    for (let i = 0; i < n + 5; i++) {
      const a = performance.now();
      const r = await call(t, 'GET', path);
      const dt = performance.now() - a;
      if (r.status !== 200) throw new Error(`${t.name}: GET ${path}: ${r.status}`);
      if (i >= 5) ms.push(dt); // 5 warm-up requests
    }
    return { p50: pct(ms, 50), p99: pct(ms, 99) };
  };
  resetPeak(t.pid);
  const page = await json(t, 'GET', '/v2/images');
  if (page.images.length !== 25 || page.next === undefined)
    throw new Error(`${t.name}: default page has ${page.images.length} images`);
  const big = await json(t, 'GET', '/v2/images?limit=1000');
  if (big.images.length !== Math.min(1000, COUNT))
    throw new Error(`${t.name}: limit=1000 gave ${big.images.length}`);
  const listDefault = await time('/v2/images', LIST_N);
  const list1000 = await time('/v2/images?limit=1000', Math.max(20, Math.floor(LIST_N / 4)));
  // 4 clients in flight for 5 s on the default page (what `wrk -c4` measures): requests/s.
  let done = 0;
  const until = performance.now() + 5000;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (performance.now() < until) {
        const r = await call(t, 'GET', '/v2/images');
        if (r.status !== 200) throw new Error(`${t.name}: list: ${r.status}`);
        done++;
      }
    }),
  );
  return { listDefault, list1000, listConc: done / 5, rssList: peakRss(t.pid), createRate };
}

async function measure(t: Target, r: TransferRuns): Promise<Figures> {
  process.stderr.write(`${t.name}: list with ${COUNT} images\n`);
  const li = await listing(t);
  return {
    uploadSized: median(r.up.sized),
    uploadChunked: median(r.up.chunked),
    tail: median(r.tail),
    download: median(r.down),
    cpuUp: median(r.cpuUp),
    cpuDown: median(r.cpuDown),
    rss: { upload: r.rssUp, download: r.rssDown, list: li.rssList },
    listDefault: li.listDefault,
    list1000: li.list1000,
    listConc: li.listConc,
    createRate: li.createRate,
  };
}

function waitForLine(child: ChildProcess, re: RegExp, what: string, ms: number): Promise<RegExpExecArray> {
  return new Promise((res, rej) => {
    let buf = '';
    const timer = setTimeout(() => rej(new Error(`${what} did not start in ${ms} ms:\n${buf}`)), ms);
    const on = (c: Buffer) => {
      buf += c.toString();
      const m = re.exec(buf);
      if (m) {
        clearTimeout(timer);
        child.stderr?.off('data', on);
        child.stdout?.off('data', on);
        child.stderr?.resume();
        child.stdout?.resume();
        res(m);
      }
    };
    child.stderr?.on('data', on);
    child.stdout?.on('data', on);
    child.once('exit', (code) => {
      clearTimeout(timer);
      rej(new Error(`${what} exited (${code}):\n${buf}`));
    });
  });
}

function stopChild(child: ChildProcess): Promise<void> {
  return new Promise((res) => {
    if (child.exitCode !== null || child.signalCode !== null) return res();
    child.once('exit', () => res());
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 30000).unref();
  });
}

async function startVdisk(dir: string, name = 'vdisk', env: Record<string, string> = {}): Promise<Target> {
  const child = spawn(
    process.execPath,
    [...NODE_ARGS, join(ROOT, 'bin/vdisk'), 'serve', '--port', '0', '--data-dir', join(dir, name)],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, VDISK_ADMIN_PASSWORD: ADMIN_PASSWORD, ...env },
    },
  );
  const m = await waitForLine(child, /listening on (http:\/\/\S+) /, 'vdisk serve', 60000);
  const url = m[1]!;
  const token = await adminToken(url, ADMIN_PASSWORD);
  return {
    name,
    url,
    pid: child.pid!,
    headers: { 'X-Auth-Token': token },
    stop: () => stopChild(child),
  };
}

/**
 * Glance 25 from Debian on loopback: file store and sqlite in DIR, no Keystone (the paste
 * pipeline without auth: `[paste_deploy] flavor =` empty), the caller named by headers as
 * Glance's noauth context middleware reads them (X-Roles admin, X-Tenant-Id).
 */
async function startGlance(dir: string): Promise<Target> {
  const g = join(dir, 'glance');
  const port = 19292 + Math.floor(Math.random() * 1000);
  spawnSync('mkdir', ['-p', join(g, 'images'), join(g, 'staging')]);
  const conf = join(g, 'glance-api.conf');
  writeFileSync(
    conf,
    [
      '[DEFAULT]',
      `bind_host = 127.0.0.1`,
      `bind_port = ${port}`,
      'workers = 1',
      `log_file = ${join(g, 'api.log')}`,
      'enabled_backends = file:file',
      '[database]',
      `connection = sqlite:///${join(g, 'glance.sqlite')}`,
      '[paste_deploy]',
      'flavor =',
      '[glance_store]',
      'default_backend = file',
      '[file]',
      `filesystem_store_datadir = ${join(g, 'images')}`,
      '[os_glance_staging_store]',
      `filesystem_store_datadir = ${join(g, 'staging')}`,
      '[os_glance_tasks_store]',
      `filesystem_store_datadir = ${join(g, 'tasks')}`,
      '[oslo_policy]',
      'enforce_new_defaults = false',
      'enforce_scope = false',
      '',
    ].join('\n'),
  );
  const sync = spawnSync('glance-manage', ['--config-file', conf, 'db_sync'], { encoding: 'utf8' });
  if (sync.status !== 0) throw new Error(`glance-manage db_sync failed: ${sync.stderr}`);
  const child = spawn('glance-api', ['--config-file', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
  const url = `http://127.0.0.1:${port}`;
  const t0 = Date.now();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`glance-api exited (${child.exitCode}); see ${g}/api.log`);
    try {
      const r = await fetch(`${url}/versions`);
      if (r.status === 200) break;
    } catch {
      // not yet listening
    }
    if (Date.now() - t0 > 90000) {
      await stopChild(child);
      throw new Error('glance-api did not answer in 90 s');
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  process.stderr.write(`glance: started in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  child.stdout?.resume();
  child.stderr?.resume();
  // The process that does the work: with workers = 1 the parent forks one child.
  const kids = spawnSync('pgrep', ['-P', String(child.pid)], { encoding: 'utf8' })
    .stdout.trim()
    .split('\n')
    .filter((s) => s !== '');
  const db = join(g, 'glance.sqlite');
  return {
    name: 'glance',
    url,
    // Glance creates ~60 images/s through its API here (one eventlet worker): the list's
    // images go straight into its sqlite database, rows as Glance's own create writes them.
    bulk: async (n, from) => {
      const py = [
        'import sqlite3, sys, uuid, datetime',
        'db = sqlite3.connect(sys.argv[1]); n = int(sys.argv[2]); base = int(sys.argv[3])',
        'now = datetime.datetime.utcnow()',
        'rows = []',
        'for i in range(n):',
        '    t = (now - datetime.timedelta(milliseconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f")',
        '    rows.append((str(uuid.uuid4()), "list-%05d" % (base + i), "queued", t, t, 0, "raw", "bare", "bench-project", 0, 0, 0, "shared", 0))',
        'db.executemany("INSERT INTO images (id, name, status, created_at, updated_at, deleted, disk_format, container_format, owner, min_disk, min_ram, protected, visibility, os_hidden) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)',
        'db.commit()',
      ].join('\n');
      const r = spawnSync('python3', ['-c', py, db, String(n), String(from)], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`glance bulk insert: ${r.stderr}`);
    },
    pid: kids.length > 0 ? Number(kids[0]) : child.pid!,
    headers: {
      'X-Auth-Token': 'bench',
      'X-Roles': 'admin,member,reader',
      'X-Tenant-Id': 'bench-project',
      'X-Project-Id': 'bench-project',
      'X-User-Id': 'bench-user',
      'X-Identity-Status': 'Confirmed',
    },
    stop: () => stopChild(child),
  };
}

function fmt(n: number, d = 0) {
  return n.toFixed(d);
}

function table(rows: string[][]): string {
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(w[i]!)).join(' | ')} |`;
  return [line(rows[0]!), `|${w.map((n) => '-'.repeat(n + 2)).join('|')}|`, ...rows.slice(1).map(line)].join(
    '\n',
  );
}

/**
 * Against this machine's limits (issue 14): each upload as a fraction of the floor pipeline's
 * throughput and a multiple of Glance's, downloads (sendfile, the copying path, Glance, the
 * page-cache read) from the download phase.
 */
function limitsTable(
  results: Record<string, Figures>,
  before: TransferRuns | null,
  floors: Map<FloorName, { mibs: number[]; cpu: number[] }>,
  downs: Map<string, DownRuns> | null,
  load0: number[],
  load1: number[],
): void {
  const v = results['vdisk'];
  const g = results['glance'];
  if (v === undefined) return;
  const fu = (n: FloorName) => {
    const x = floors.get(n);
    return x === undefined ? null : median(x.mibs);
  };
  const f = fu('floor');
  const fo = fu('floor-openssl');
  const ratio = (a: number | undefined, b: number | null | undefined) =>
    a === undefined || b === null || b === undefined ? '' : `${fmt(a / b, 2)}×`;
  const num = (x: number | null | undefined, d = 0) => (x === null || x === undefined ? '' : fmt(x, d));
  const rows: string[][] = [
    [
      'MiB/s (median)',
      'vdisk',
      'glance',
      'floor',
      'floor, openssl',
      'vdisk ÷ floor',
      'vdisk ÷ floor, openssl',
      'vdisk ÷ glance',
    ],
  ];
  const up = (label: string, a: number, b: number | undefined) =>
    rows.push([label, fmt(a), num(b), num(f), num(fo), ratio(a, f), ratio(a, fo), ratio(a, b)]);
  up(`upload ${SIZE / MiB} MiB, Content-Length`, v.uploadSized, g?.uploadSized);
  up(`upload ${SIZE / MiB} MiB, chunked`, v.uploadChunked, g?.uploadChunked);
  if (before !== null && before.up.sized.length > 0) {
    up(`vdisk before (VDISK_WRITE_BACK=0): Content-Length`, median(before.up.sized), g?.uploadSized);
    up(`vdisk before (VDISK_WRITE_BACK=0): chunked`, median(before.up.chunked), g?.uploadChunked);
  }
  rows.push([
    'upload: last byte sent → answer (s)',
    `${fmt(v.tail, 2)}${before !== null && before.tail.length > 0 ? ` (before: ${fmt(median(before.tail), 2)})` : ''}`,
    g === undefined ? '' : fmt(g.tail, 2),
    '',
    '',
    '',
    '',
    '',
  ]);
  const fc = (n: FloorName) => {
    const x = floors.get(n);
    return x === undefined ? '' : fmt(median(x.cpu), 2);
  };
  rows.push([
    'upload CPU-s per GiB (server; floor: its processes)',
    `${fmt(v.cpuUp, 2)}${before !== null && before.cpuUp.length > 0 ? ` (before: ${fmt(median(before.cpuUp), 2)})` : ''}`,
    g === undefined ? '' : fmt(g.cpuUp, 2),
    fc('floor'),
    fc('floor-openssl'),
    '',
    '',
    '',
  ]);
  console.log(
    `\nUploads against this machine's limits (floor: cat | tee >(md5sum) >(sha512sum) | dd bs=4M conv=fsync, as in issue 14, its hashes waited for; floor, openssl: the same with openssl dgst), median of ${REPEAT}; load average ${load0.map((x) => x.toFixed(2)).join(' ')} at the start:\n`,
  );
  console.log(table(rows));
  if (downs === null) return;
  const gl = downs.get('glance');
  const cat = downs.get('floor');
  const drows: string[][] = [
    [`download ${SIZE / MiB} MiB, median of ${DOWN_REPEAT}`, 'MiB/s', 'CPU-s per GiB', '÷ glance', '÷ cat'],
  ];
  const labels: Record<string, string> = {
    vdisk: 'vdisk, sendfile (default)',
    'vdisk-before': 'vdisk before: copying path (VDISK_ZERO_COPY=0)',
    glance: 'glance',
    floor: 'floor: cat blob > /dev/null (no socket)',
  };
  for (const [name, x] of downs) {
    const m = median(x.mibs);
    drows.push([
      labels[name] ?? name,
      fmt(m),
      fmt(median(x.cpu), 2),
      gl === undefined || name === 'glance' ? '' : `${fmt(m / median(gl.mibs), 2)}×`,
      cat === undefined || name === 'floor' ? '' : `${fmt(m / median(cat.mibs), 2)}×`,
    ]);
  }
  console.log(
    `\nDownloads side by side (CPU: the server's; cat's for the floor); load average ${load1.map((x) => x.toFixed(2)).join(' ')} after them:\n`,
  );
  console.log(table(drows));
}

async function main() {
  const base = process.env['BENCH_DIR'] ?? tmpdir();
  const dir = mkdtempSync(join(base, 'vdisk-bench-server-'));
  const results: Record<string, Figures> = {};
  let exported: ExportFigures | null = null;
  let nodesFigures: {
    vdisk: { list: LoadFigures; show: LoadFigures };
    glance: { list: LoadFigures; show: LoadFigures } | null;
  } | null = null;
  let nodesWhy: string | null = null;
  let glanceWhy: string | null = null;
  const targets: Target[] = [];
  let before: Target | null = null;
  const beforeRuns = newRuns();
  const floors = new Map<FloorName, { mibs: number[]; cpu: number[] }>();
  let downs: Map<string, DownRuns> | null = null;
  const load0 = loadavg();
  let load1 = load0;
  try {
    process.stderr.write(`hashing the ${SIZE / MiB} MiB payload…\n`);
    const hashes = expectedHashes();
    targets.push(await startVdisk(dir));
    // The data path before issue 14's changes, for comparison in the same rounds.
    if (BEFORE)
      before = await startVdisk(dir, 'vdisk-before', { VDISK_ZERO_COPY: '0', VDISK_WRITE_BACK: '0' });
    if (GLANCE !== '0') {
      if (!existsSync('/usr/bin/glance-api')) {
        glanceWhy = '/usr/bin/glance-api is not installed (apt-get install glance-api)';
        if (GLANCE === '1') throw new Error(glanceWhy);
      } else {
        try {
          targets.push(await startGlance(dir));
        } catch (err) {
          if (GLANCE === '1') throw err;
          glanceWhy = (err as Error).message;
        }
      }
    }
    // Transfers in rounds, the servers taking turns (the first one rotates): all see the same
    // machine, page cache and background load, as far as a shared machine allows.
    // The floor pipeline takes its turn in the same rounds, its payload in the same filesystem.
    const runs = new Map(targets.map((t) => [t, newRuns()]));
    const payloadPath = join(dir, 'floor-payload');
    if (FLOOR) writePayload(payloadPath);
    const rounders: { name: string; round: (i: number) => Promise<void> }[] = targets.map((t) => ({
      name: t.name,
      round: (i) => transferRound(t, i, hashes, runs.get(t)!),
    }));
    if (before !== null) {
      const b = before;
      rounders.splice(1, 0, { name: b.name, round: (i) => transferRound(b, i, hashes, beforeRuns) });
    }
    for (const f of FLOOR ? (Object.keys(FLOORS) as FloorName[]) : []) {
      const x = { mibs: [] as number[], cpu: [] as number[] };
      floors.set(f, x);
      rounders.push({
        name: f,
        round: async (i) => {
          const r = await floorUpload(f, payloadPath, join(dir, 'floor-blob'), hashes);
          x.mibs.push(r.mibs);
          x.cpu.push(r.cpu);
          process.stderr.write(
            `  ${f} #${i + 1}: ${FLOORS[f].label}: ${r.mibs.toFixed(0)} MiB/s, ${r.cpu.toFixed(2)} CPU-s/GiB\n`,
          );
        },
      });
    }
    process.stderr.write(
      `transfers of ${SIZE / MiB} MiB × ${REPEAT} (load average ${load0.map((x) => x.toFixed(2)).join(' ')})\n`,
    );
    for (let i = 0; i < REPEAT; i++) {
      const k = i % rounders.length;
      const order = [...rounders.slice(k), ...rounders.slice(0, k)];
      for (const t of order) await t.round(i);
    }
    rmSync(payloadPath, { force: true });
    downs = await downloadPhase(
      before === null ? targets : [targets[0]!, before, ...targets.slice(1)],
      hashes,
      join(dir, 'vdisk'),
    );
    await before?.stop();
    before = null;
    load1 = loadavg();
    for (const t of targets) results[t.name] = await measure(t, runs.get(t)!);
    if (NODES > 0) {
      if (spawnSync('wrk', ['--version']).error !== undefined)
        nodesWhy = 'wrk is not installed (apt-get install wrk)';
      else {
        // The same total of connections on both sides: NODES × WRK_CONNS.
        process.stderr.write(`list and show: ${NODES} vdisk nodes on PostgreSQL, wrk ${WRK_SECONDS} s\n`);
        const cluster = await startCluster(dir, NODES);
        try {
          const ids = await fill(cluster.target, COUNT);
          const v = await loadRoutes(cluster.target, ids, dir, WRK_SECONDS, WRK_CONNS);
          const glance = targets.find((t) => t.name === 'glance');
          let g: { list: LoadFigures; show: LoadFigures } | null = null;
          if (glance !== undefined) {
            const gids = ((await json(glance, 'GET', '/v2/images?limit=200')).images as { id: string }[]).map(
              (i) => i.id,
            );
            g = await loadRoutes(
              { name: 'glance', urls: [glance.url], headers: glance.headers },
              gids,
              dir,
              WRK_SECONDS,
              WRK_CONNS * NODES,
            );
          }
          nodesFigures = { vdisk: v, glance: g };
        } finally {
          await cluster.stop();
        }
      }
    }
    if (EXPORT) {
      const v = targets[0]!;
      exported = await exportBench(
        { url: v.url, pid: v.pid, headers: v.headers, adminPassword: ADMIN_PASSWORD },
        dir,
        { size: EXPORT_SIZE, repeat: REPEAT, resetPeak, peakRss },
        (s) => process.stderr.write(s),
      );
    }
  } finally {
    for (const t of targets) await t.stop();
    await before?.stop();
    rmSync(dir, { recursive: true, force: true });
  }

  const names = Object.keys(results);
  const row = (label: string, f: (x: Figures) => string, ratio?: (x: Figures) => number, better = 1) => {
    const r = [label, ...names.map((n) => f(results[n]!))];
    if (names.length > 1) {
      const a = ratio?.(results['vdisk']!);
      const b = ratio?.(results['glance']!);
      r.push(a !== undefined && b !== undefined ? `${fmt(better > 0 ? a / b : b / a, 1)}×` : '');
    }
    return r;
  };
  const rows: string[][] = [['', ...names, ...(names.length > 1 ? ['vdisk vs glance'] : [])]];
  rows.push(
    row(
      `upload ${SIZE / MiB} MiB, Content-Length (MiB/s)`,
      (x) => fmt(x.uploadSized),
      (x) => x.uploadSized,
    ),
  );
  rows.push(
    row(
      `upload ${SIZE / MiB} MiB, chunked (MiB/s)`,
      (x) => fmt(x.uploadChunked),
      (x) => x.uploadChunked,
    ),
  );
  rows.push(
    row(
      `download ${SIZE / MiB} MiB (MiB/s)`,
      (x) => fmt(x.download),
      (x) => x.download,
    ),
  );
  rows.push(
    row('server CPU s per GiB: upload / download', (x) => `${fmt(x.cpuUp, 2)} / ${fmt(x.cpuDown, 2)}`),
  );
  rows.push(
    row('peak RSS upload / download (MiB)', (x) => `${x.rss.upload ?? '?'} / ${x.rss.download ?? '?'}`),
  );
  rows.push(
    row(
      `list default page, ${COUNT} images: p50 / p99 (ms)`,
      (x) => `${fmt(x.listDefault.p50, 1)} / ${fmt(x.listDefault.p99, 1)}`,
      (x) => x.listDefault.p99,
      -1,
    ),
  );
  rows.push(
    row(
      'list limit=1000: p50 / p99 (ms)',
      (x) => `${fmt(x.list1000.p50, 1)} / ${fmt(x.list1000.p99, 1)}`,
      (x) => x.list1000.p99,
      -1,
    ),
  );
  rows.push(
    row(
      'list default page, 4 in flight (req/s)',
      (x) => fmt(x.listConc),
      (x) => x.listConc,
    ),
  );
  rows.push(row('peak RSS list (MiB)', (x) => String(x.rss.list ?? '?')));
  rows.push(
    row(
      'image create through the API, 8 in flight (/s)',
      (x) => fmt(x.createRate),
      (x) => x.createRate,
    ),
  );
  const cpu = cpus()[0]?.model ?? '?';
  console.log(
    `Registry benchmark: ${SIZE / MiB} MiB transfers (median of ${REPEAT}), ${COUNT} images; ` +
      `${cpus().length} × ${cpu}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}\n`,
  );
  console.log(table(rows));
  if (glanceWhy !== null) console.log(`\nGlance not measured: ${glanceWhy}`);
  limitsTable(results, BEFORE ? beforeRuns : null, floors, downs, load0, load1);
  if (nodesWhy !== null) console.log(`\nList and show with ${NODES} nodes not measured: ${nodesWhy}`);
  if (nodesFigures !== null) {
    const { vdisk: v, glance: g } = nodesFigures;
    const cell = (f: LoadFigures) =>
      `${fmt(f.rps)} req/s, p99 ${fmt(f.p99, 1)} ms${f.errors > 0 ? `, ${f.errors} errors` : ''}`;
    const nrows: string[][] = [
      [
        'wrk, same run',
        `vdisk × ${NODES} nodes (PostgreSQL), ${WRK_CONNS} conn. each`,
        ...(g !== null ? [`glance, ${WRK_CONNS * NODES} conn.`, 'vdisk vs glance'] : []),
      ],
    ];
    for (const [what, a, b] of [
      [`list default page, ${COUNT} images`, v.list, g?.list],
      ['show one image', v.show, g?.show],
    ] as const) {
      nrows.push([what, cell(a), ...(b !== undefined ? [cell(b), `${fmt(a.rps / b.rps, 1)}×`] : [])]);
    }
    console.log(`\nList and show with several nodes:\n`);
    console.log(table(nrows));
  }
  if (exported !== null) {
    const e = exported;
    const v = median(e.vdisk);
    const today = e.today.map((x) => x.save + x.convert);
    const t = median(today);
    console.log(
      `\nExport of a ${e.size / MiB} MiB qcow2 (${fmt(e.dataBytes / MiB)} MiB of /usr's files) as a streamOptimized vmdk, median of ${e.vdisk.length}:\n`,
    );
    console.log(
      table([
        ['', 'seconds', 'output (MiB)'],
        [
          'vdisk: GET /v2/images/{id}/export?disk_format=vmdk&subformat=streamOptimized',
          fmt(v, 1),
          fmt(e.outBytes.vdisk / MiB),
        ],
        [
          'today: openstack image save, then qemu-img convert -O vmdk -o subformat=streamOptimized',
          `${fmt(t, 1)} (${fmt(median(e.today.map((x) => x.save)), 1)} + ${fmt(median(e.today.map((x) => x.convert)), 1)})`,
          fmt(e.outBytes.qemu / MiB),
        ],
        ['vdisk / today (time)', `${fmt(v / t, 2)}×`, ''],
        [
          'vdisk serve resident memory: before / peak during the export (MiB)',
          `${e.rssBefore ?? '?'} / ${e.rss ?? '?'}`,
          '',
        ],
      ]),
    );
  }
}

main().catch((err) => {
  console.error(`bench:server: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
