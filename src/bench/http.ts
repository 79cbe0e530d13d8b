/**
 * The HTTP phase of `npm run bench`: `convert -O raw` of a qcow2 served by nginx on loopback
 * (src/test/http-servers.ts), by qemu-img's curl driver (Debian's qemu-block-extra) and by
 * vdisk, and vdisk's convert of the same image as a local file, in one run: REPEAT runs each,
 * the tools alternating, median wall times.
 *
 * qemu-img runs twice over: with its defaults (-m 8), which with Debian's libcurl 7.88 now and
 * then stalls for good (such a run is stopped after HANG_SECONDS and counted, not timed), and
 * with -m 1 (one request at a time), which does not.
 *
 * The same image over https (nginx's self-signed certificate, not checked: sslverify off) by
 * qemu-img -m 1 and by vdisk: the TLS record decryption on top of the same copy.
 *
 * Two floors run with them: `curl` of the whole file to /dev/null (the bytes over loopback,
 * nothing else) and `cat` of it (the bytes from the page cache). With /usr/bin/time present,
 * each case's CPU (user + sys, median) is reported beside its wall time: on the shared 2-core
 * machine the wall figures are mostly the scheduler's.
 */

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startNginx } from '../test/http-servers.js';
import { markdownTable, median } from './stats.js';

const HANG_SECONDS = 60;

export interface HttpBenchOptions {
  dir: string;
  /** A qcow2 file in `dir`. */
  image: string;
  label: string;
  repeat: number;
  vdisk: string;
}

const TIME = '/usr/bin/time';

/** Wall seconds and CPU seconds (user + sys; NaN without /usr/bin/time), or null on a hang. */
function run(cmd: string, args: string[], cwd: string): { wall: number; cpu: number } | null {
  spawnSync('sync');
  const timed = existsSync(TIME);
  const out = join(cwd, 'http-bench-time.txt');
  // coreutils' timeout kills the tool itself: a timeout of spawnSync's own would kill only
  // /usr/bin/time and leave a stalled qemu-img running through the rest of the bench.
  const limited = ['timeout', '-s', 'KILL', String(HANG_SECONDS), cmd, ...args];
  const t0 = performance.now();
  const r = timed
    ? spawnSync(TIME, ['-f', '%U %S', '-o', out, ...limited], { cwd, encoding: 'utf8' })
    : spawnSync(limited[0]!, limited.slice(1), { cwd, encoding: 'utf8' });
  const wall = (performance.now() - t0) / 1000;
  // timeout exits 137 (128 + SIGKILL) when it stopped the tool.
  if (r.signal !== null || r.status === 137) return null;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  let cpu = Number.NaN;
  if (timed) {
    const last = readFileSync(out, 'utf8').trim().split('\n').pop() ?? '';
    const [u, sys] = last.split(' ').map(Number);
    if (u !== undefined && sys !== undefined) cpu = u + sys;
    rmSync(out, { force: true });
  }
  return { wall, cpu };
}

export async function runHttpBench(o: HttpBenchOptions): Promise<string> {
  const ngx = await startNginx(o.dir, { tls: true });
  try {
    const url = `${ngx.url}/${o.image}`;
    // The self-signed certificate is not checked (qemu's sslverify=off, as both take it).
    const tlsUrl = `${ngx.httpsUrl!}/${o.image}`;
    const cases: Array<{ name: string; cmd: string; args: string[]; floor?: boolean }> = [
      { name: 'qemu-img (curl, -m 8)', cmd: 'qemu-img', args: ['convert', '-O', 'raw', url, 'OUT'] },
      {
        name: 'qemu-img (curl, -m 1)',
        cmd: 'qemu-img',
        args: ['convert', '-m', '1', '-O', 'raw', url, 'OUT'],
      },
      { name: 'vdisk (http)', cmd: o.vdisk, args: ['convert', '-O', 'raw', url, 'OUT'] },
      { name: 'vdisk (local file)', cmd: o.vdisk, args: ['convert', '-O', 'raw', o.image, 'OUT'] },
      {
        name: 'qemu-img https (curl, -m 1)',
        cmd: 'qemu-img',
        args: [
          'convert',
          '-m',
          '1',
          '-O',
          'raw',
          `json:{"file.driver":"https","file.url":"${tlsUrl}","file.sslverify":"off"}`,
          'OUT',
        ],
      },
      {
        name: 'vdisk https',
        cmd: o.vdisk,
        args: [
          'convert',
          '-O',
          'raw',
          `json:{"file.driver":"https","file.url":"${tlsUrl}","file.sslverify":false}`,
          'OUT',
        ],
      },
      { name: 'floor: curl the file', cmd: 'curl', args: ['-s', '-o', '/dev/null', url], floor: true },
      { name: 'floor: cat the file', cmd: 'sh', args: ['-c', `cat '${o.image}' > /dev/null`], floor: true },
    ];
    const times = cases.map(() => [] as number[]);
    const cpus = cases.map(() => [] as number[]);
    const hangs = cases.map(() => 0);
    for (let i = 0; i < o.repeat; i++) {
      const order = cases.map((_, k) => k);
      if (i % 2 === 1) order.reverse();
      for (const k of order) {
        const c = cases[k]!;
        const out = join(o.dir, `http-${k}.raw`);
        rmSync(out, { force: true });
        const s = run(
          c.cmd,
          c.args.map((a) => (a === 'OUT' ? out : a)),
          o.dir,
        );
        if (s === null) hangs[k]!++;
        else {
          times[k]!.push(s.wall);
          cpus[k]!.push(s.cpu);
        }
        if (s !== null && k > 0 && c.floor !== true) {
          const cmp = spawnSync(
            'qemu-img',
            ['compare', '-F', 'qcow2', join(o.dir, `http-${k}.raw`), o.image],
            {
              cwd: o.dir,
              encoding: 'utf8',
            },
          );
          if (cmp.status !== 0) throw new Error(`${c.name}: output differs: ${cmp.stdout}${cmp.stderr}`);
        }
        rmSync(out, { force: true });
      }
    }
    const m = times.map((t) => (t.length > 0 ? median(t) : Number.NaN));
    const cpu = cpus.map((t) => (t.length > 0 ? median(t) : Number.NaN));
    const [q8, q1, vh, vl, qs, vs] = m as [number, number, number, number, number, number];
    const fig = (x: number, d: number) => (Number.isNaN(x) ? '—' : x.toFixed(d));
    const rows = cases.map((c, k) => [
      c.name,
      fig(m[k]!, 3),
      fig(cpu[k]!, 2),
      String(times[k]!.length),
      String(hangs[k]!),
    ]);
    return (
      `convert -O raw of a ${o.label} served by nginx on loopback (median wall s and CPU s, user + sys, of ${o.repeat} runs, alternating; load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} at the end):\n` +
      `${markdownTable(['source', 'median s', 'CPU s', 'runs', 'hangs'], rows)}\n` +
      `vdisk http / qemu-img -m 8: ${(vh / q8).toFixed(2)}; vdisk http / qemu-img -m 1: ${(vh / q1).toFixed(2)}; ` +
      `vdisk http / vdisk local: ${(vh / vl).toFixed(2)}; vdisk https / qemu-img https -m 1: ${(vs / qs).toFixed(2)} ` +
      `(a hang: a run stopped after ${HANG_SECONDS} s)\n`
    );
  } finally {
    await ngx.stop();
  }
}
