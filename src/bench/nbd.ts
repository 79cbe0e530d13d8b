/**
 * The NBD phase of `npm run bench`: `vdisk nbd` (bin/vdisk, a real process) and qemu-nbd
 * serving the same image with the same options (`-r -t -e 8`, a Unix socket), in one run.
 *
 *   - nbdcopy to null: from each server (nbdcopy's defaults: four connections when the server
 *     offers multi-conn, 64 requests of 256 KiB in flight each, extents first so that holes are
 *     not read), REPEAT runs per server, alternating; median wall time, the server's CPU
 *     seconds during the copies (/proc/PID/stat) and its peak RSS (VmHWM);
 *   - memory under load: 16 connections with 64 reads of 256 KiB in flight each (a Node client,
 *     src/nbd/client.ts) for BENCH_NBD_SECONDS (default 10) seconds against each server, the
 *     server's resident memory sampled every 50 ms (peak) and its VmHWM.
 *
 * Before the figures, what vdisk serves is checked against the image (qemu-img compare over NBD).
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { NbdClient } from '../nbd/client.js';
import type { Listen } from '../nbd/server.js';
import { markdownTable, median } from './stats.js';

interface Server {
  child: ChildProcess;
  listen: Listen;
  uri: string;
}

export interface NbdBenchOptions {
  dir: string;
  /** Images to copy from: label and path. */
  images: { label: string; path: string; format: string }[];
  repeat: number;
  only: string | undefined;
  vdisk: string;
  seconds: number;
}

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).status === 0;
}

async function waitFor(listen: Listen, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (child.exitCode !== null) throw new Error(`server exited (${child.exitCode}) before listening`);
    if (!('path' in listen) || existsSync(listen.path)) {
      try {
        const c = await NbdClient.connect(listen);
        c.close();
        return;
      } catch {
        // Not ready yet.
      }
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`nothing listens on ${JSON.stringify(listen)}`);
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** vdisk's variants: as shipped, and without sendfile (every reply through a buffer). */
const BUFFERS = { ...process.env, VDISK_NBD_SENDFILE: '0' };

async function start(
  who: 'qemu' | 'vdisk',
  o: NbdBenchOptions,
  image: string,
  format: string,
  extra: string[],
  env: NodeJS.ProcessEnv = process.env,
  tcp = false,
): Promise<Server> {
  let listen: Listen;
  let where: string[];
  let uri: string;
  if (tcp) {
    const port = await freePort();
    listen = { host: '127.0.0.1', port };
    where = ['-b', '127.0.0.1', '-p', String(port)];
    uri = `nbd://127.0.0.1:${port}`;
  } else {
    const socket = join(o.dir, `${who}.sock`);
    rmSync(socket, { force: true });
    listen = { path: socket };
    where = ['-k', socket];
    uri = `nbd+unix:///?socket=${socket}`;
  }
  const args = ['-r', '-t', '-f', format, ...extra, ...where, image];
  const child =
    who === 'qemu'
      ? spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'inherit'] })
      : spawn(o.vdisk, ['nbd', ...args], { stdio: ['ignore', 'ignore', 'inherit'], env });
  await waitFor(listen, child);
  return { child, listen, uri };
}

async function stop(s: Server): Promise<void> {
  const exited = new Promise<void>((r) => s.child.once('exit', () => r()));
  s.child.kill('SIGTERM');
  await exited;
}

/** user + system CPU seconds of a process so far. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 of the whole line (utime, stime) are 12 and 13 after "pid (comm) ".
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** VmRSS or VmHWM of a process, in MiB. */
function memMiB(pid: number, key: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

function run(cmd: string, args: string[]): number {
  spawnSync('sync');
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return (performance.now() - t0) / 1000;
}

/** 16 connections × 64 reads of 256 KiB in flight for `seconds`; the server's peak RSS. */
async function hammer(
  s: Server,
  size: number,
  seconds: number,
): Promise<{ peak: number; hwm: number; gib: number }> {
  const pid = s.child.pid!;
  let peak = memMiB(pid, 'VmRSS');
  const sampler = setInterval(() => {
    peak = Math.max(peak, memMiB(pid, 'VmRSS'));
  }, 50);
  const until = performance.now() + seconds * 1000;
  const req = 256 * 1024;
  const slots = Math.floor(size / req);
  let bytes = 0;
  try {
    const clients = await Promise.all(Array.from({ length: 16 }, () => NbdClient.connect(s.listen)));
    await Promise.all(
      clients.map(async (c, ci) => {
        let k = ci * 7919;
        const lane = async () => {
          while (performance.now() < until) {
            k = (k * 1103515245 + 12345) % 2 ** 31;
            await c.read((k % slots) * req, req);
            bytes += req;
          }
        };
        await Promise.all(Array.from({ length: 64 }, lane));
        await c.disconnect();
      }),
    );
  } finally {
    clearInterval(sampler);
  }
  return { peak, hwm: memMiB(pid, 'VmHWM'), gib: bytes / 2 ** 30 };
}

/** Run the phase; returns the Markdown table and notes, or a line saying why it was skipped. */
export async function runNbdBench(o: NbdBenchOptions): Promise<string> {
  if (!have('qemu-nbd') || !have('nbdcopy'))
    return 'NBD phase skipped: qemu-nbd or nbdcopy is missing (scripts/test-deps.sh)\n';
  const rows: string[][] = [];
  for (const img of o.images) {
    for (const [buffers, tcp] of [
      [false, false],
      [true, false],
      [false, true],
    ] as const) {
      const name = `nbdcopy to null: (${img.label}${buffers ? ', vdisk VDISK_NBD_SENDFILE=0' : ''}${tcp ? ', TCP loopback' : ''})`;
      if (o.only !== undefined && !name.includes(o.only)) continue;
      const env = buffers ? BUFFERS : process.env;
      // What vdisk serves is the image.
      const check = await start('vdisk', o, img.path, img.format, ['-e', '8'], env);
      try {
        const cmp = spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', img.format, check.uri, img.path], {
          encoding: 'utf8',
        });
        if (cmp.status !== 0)
          throw new Error(`${name}: vdisk nbd serves other data: ${cmp.stdout}${cmp.stderr}`);
      } finally {
        await stop(check);
      }
      const times: Record<'q' | 'v', number[]> = { q: [], v: [] };
      const cpu: Record<'q' | 'v', number> = { q: 0, v: 0 };
      const hwm: Record<'q' | 'v', number> = { q: 0, v: 0 };
      // Both servers stay up through the runs, which alternate between them.
      const q = await start('qemu', o, img.path, img.format, ['-e', '8'], process.env, tcp);
      const v = await start('vdisk', o, img.path, img.format, ['-e', '8'], env, tcp);
      try {
        // One copy each before timing: the image in the page cache for both, vdisk's code compiled.
        run('nbdcopy', [q.uri, 'null:']);
        run('nbdcopy', [v.uri, 'null:']);
        for (let i = 0; i < o.repeat; i++) {
          for (const who of i % 2 === 0 ? (['q', 'v'] as const) : (['v', 'q'] as const)) {
            const s = who === 'q' ? q : v;
            const c0 = cpuSeconds(s.child.pid!);
            times[who].push(run('nbdcopy', [s.uri, 'null:']));
            cpu[who] += cpuSeconds(s.child.pid!) - c0;
          }
        }
        hwm.q = memMiB(q.child.pid!, 'VmHWM');
        hwm.v = memMiB(v.child.pid!, 'VmHWM');
      } finally {
        await stop(q);
        await stop(v);
      }
      const tq = median(times.q);
      const tv = median(times.v);
      rows.push([
        name,
        tq.toFixed(3),
        tv.toFixed(3),
        (tq / tv).toFixed(2),
        (cpu.q / o.repeat).toFixed(2),
        (cpu.v / o.repeat).toFixed(2),
        hwm.q.toFixed(0),
        hwm.v.toFixed(0),
      ]);
      process.stderr.write(`bench: ${name} done\n`);
    }
  }
  const memRows: string[][] = [];
  const memName = 'nbd memory: 16 connections × 64 reads of 256 KiB in flight';
  if (o.images.length > 0 && (o.only === undefined || memName.includes(o.only))) {
    const img = o.images[0]!;
    const size = Number(spawnSync('stat', ['-c', '%s', img.path], { encoding: 'utf8' }).stdout.trim());
    const variants: [string, 'qemu' | 'vdisk', NodeJS.ProcessEnv][] = [
      ['qemu-nbd', 'qemu', process.env],
      ['vdisk nbd', 'vdisk', process.env],
      ['vdisk nbd, VDISK_NBD_SENDFILE=0', 'vdisk', BUFFERS],
    ];
    for (const [label, who, env] of variants) {
      const s = await start(who, o, img.path, img.format, ['-e', '0'], env);
      try {
        const r = await hammer(s, size, o.seconds);
        memRows.push([label, r.peak.toFixed(0), r.hwm.toFixed(0), (r.gib / o.seconds).toFixed(2)]);
      } finally {
        await stop(s);
      }
    }
    process.stderr.write(`bench: ${memName} (${img.label}) done\n`);
  }
  let text = '';
  if (rows.length > 0) {
    text += tableNl(
      [
        'case',
        'qemu-nbd s',
        'vdisk nbd s',
        'throughput vdisk / qemu-nbd',
        'qemu-nbd CPU s',
        'vdisk CPU s',
        'qemu-nbd peak MiB',
        'vdisk peak MiB',
      ],
      rows,
    );
    text +=
      `\nnbdcopy SOURCE null: with nbdcopy's defaults, both servers \`-r -t -e 8 -k SOCKET\` (TCP: \`-b 127.0.0.1 -p PORT\`); median wall time of ` +
      `${o.repeat} runs per server (alternating, sync before each, one untimed copy each first); CPU: the ` +
      `server's user + system seconds per copy (/proc/PID/stat); peak: the server's VmHWM\n`;
  }
  if (memRows.length > 0) {
    text += `\n${tableNl(['server (-r -t -e 0)', 'peak RSS MiB (sampled)', 'VmHWM MiB', 'GiB/s served'], memRows)}`;
    text += `\n${memName}, random 256 KiB-aligned offsets in ${o.images[0]!.label}, ${o.seconds} s each, one Node client process\n`;
  }
  return text;
}

const tableNl = (head: string[], rows: string[][]): string => `${markdownTable(head, rows)}\n`;
