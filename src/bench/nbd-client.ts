/**
 * The NBD client phase of `npm run bench`: `vdisk convert` and `qemu-img convert` copying the
 * same export of qemu-nbd (`-r -t -f raw`, a Unix socket) to a local raw file, REPEAT runs per
 * tool alternating, `sync` and the output removed before each; median wall time (process
 * start included) and the ratio vdisk / qemu-img. The copies are checked (qemu-img compare).
 *
 * Alone: `node dist/bench/nbd-client.js [IMAGE]` (without IMAGE, a BENCH_SIZE (default 1G) raw
 * image of random data and holes in BENCH_DIR).
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseSize } from '../core/size.js';
import { median } from './stats.js';

export interface NbdClientBenchOptions {
  dir: string;
  image: string;
  label: string;
  repeat: number;
  vdisk: string;
}

const HAVE_TIME = existsSync('/usr/bin/time');

/** Wall seconds and CPU seconds (user + system, from GNU time; NaN without it). */
function timed(cmd: string, args: string[]): { wall: number; cpu: number } {
  spawnSync('sync');
  const t0 = performance.now();
  const r = HAVE_TIME
    ? spawnSync('/usr/bin/time', ['-f', '%U %S', cmd, ...args], { encoding: 'utf8' })
    : spawnSync(cmd, args, { encoding: 'utf8' });
  const wall = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  const m = /([\d.]+) ([\d.]+)\s*$/.exec(r.stderr);
  return { wall, cpu: m ? Number(m[1]) + Number(m[2]) : Number.NaN };
}

async function startQemuNbd(image: string, socket: string): Promise<ChildProcess> {
  const child = spawn('qemu-nbd', ['-r', '-t', '-f', 'raw', '-k', socket, image], { stdio: 'ignore' });
  for (let i = 0; i < 400 && !existsSync(socket); i++) {
    if (child.exitCode !== null) throw new Error('qemu-nbd exited before listening');
    await new Promise((r) => setTimeout(r, 25));
  }
  return child;
}

/** Run the phase; answers its table (markdown) and the ratio of medians. */
export async function runNbdClientBench(o: NbdClientBenchOptions): Promise<string> {
  const socket = join(o.dir, 'client-bench.sock');
  const server = await startQemuNbd(o.image, socket);
  const uri = `nbd+unix:///?socket=${socket}`;
  const out = join(o.dir, 'nbd-client-out.raw');
  const times = { vdisk: [] as number[], qemu: [] as number[] };
  const cpu = { vdisk: [] as number[], qemu: [] as number[] };
  try {
    for (let i = 0; i < o.repeat; i++) {
      for (const tool of ['qemu', 'vdisk'] as const) {
        rmSync(out, { force: true });
        const t = timed(tool === 'qemu' ? 'qemu-img' : o.vdisk, ['convert', '-O', 'raw', uri, out]);
        times[tool].push(t.wall);
        cpu[tool].push(t.cpu);
        const cmp = spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, o.image], {
          encoding: 'utf8',
        });
        if (cmp.status !== 0) throw new Error(`${tool}'s copy differs: ${cmp.stdout}${cmp.stderr}`);
      }
    }
  } finally {
    server.kill('SIGTERM');
    rmSync(out, { force: true });
  }
  const q = median(times.qemu);
  const v = median(times.vdisk);
  return (
    `| NBD client: convert nbd→raw (${o.label}, qemu-nbd -r -f raw) | qemu-img s | vdisk s | ratio | qemu-img CPU s | vdisk CPU s |\n` +
    '|---|---:|---:|---:|---:|---:|\n' +
    `| qemu-nbd → local raw | ${q.toFixed(3)} | ${v.toFixed(3)} | ${(v / q).toFixed(2)} | ${median(cpu.qemu).toFixed(2)} | ${median(cpu.vdisk).toFixed(2)} |\n\n` +
    `median wall time of ${o.repeat} runs per tool (alternating, sync before each, process start included); ` +
    `runs: qemu-img ${times.qemu.map((t) => t.toFixed(2)).join(' ')}, vdisk ${times.vdisk.map((t) => t.toFixed(2)).join(' ')}\n`
  );
}

/** Random data in half of every 64 MiB, holes in the rest. */
function makeImage(path: string, size: number): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    const pool = randomBytes(32 << 20);
    for (let pos = 0; pos < size; pos += 64 << 20)
      writeSync(fd, pool, 0, Math.min(pool.length, size - pos), pos);
  } finally {
    closeSync(fd);
  }
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
  const dir = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'vdisk-bench-nbdc-'));
  try {
    let image = process.argv[2];
    const size = parseSize(process.env['BENCH_SIZE'] ?? '1G') ?? 2 ** 30;
    if (image === undefined) {
      image = join(dir, 'image.raw');
      makeImage(image, size);
    }
    process.stdout.write(
      await runNbdClientBench({
        dir,
        image,
        label: `${(size / 2 ** 30).toFixed(1)} GiB`,
        repeat: Number(process.env['BENCH_REPEAT'] ?? 3),
        vdisk: join(root, 'bin/vdisk'),
      }),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
