/**
 * `npm run bench`: vdisk (bin/vdisk, a real process) and qemu-img side by side on the same
 * inputs, in one run. Each case runs REPEAT times per tool, alternating the tools, with a
 * `sync` before every run so that one run's dirty pages do not slow the next; the table
 * shows median wall times (measured around the process, start-up included: Node alone takes
 * ~50 ms, which dominates the small cases), their ratio (vdisk / qemu-img) and the peak RSS of
 * each process as GNU time reports it (`/usr/bin/time -f %M`, the child's maximum resident set),
 * and the CPU seconds (user + system, every thread) each process used: on a shared machine
 * wall times move by ±50 %, CPU seconds much less.
 *
 * Environment: BENCH_SIZE (default 2G) sizes the mixed-data image; BENCH_REPEAT (default 3);
 * BENCH_DIR (default the system temp dir) holds the files; BENCH_ONLY=substring picks cases.
 * qcow2 cases run when vdisk supports qcow2.
 *
 * Then the pipe phase (src/bench/pipe.ts): `vdisk convert … -` to standard output and from
 * standard input against the same convert with files, same run.
 *
 * Then the NBD phase (src/bench/nbd.ts): nbdcopy to null: from `vdisk nbd` and from qemu-nbd
 * serving the same images, and the servers' memory under 16 connections × 64 requests in
 * flight (BENCH_NBD_SECONDS, default 10, each). Then vdisk as an NBD client
 * (src/bench/nbd-client.ts): convert from qemu-nbd to a local file, vdisk against qemu-img.
 *
 * Then the HTTP phase (src/bench/http.ts): convert of the mixed qcow2 served by nginx, by
 * qemu-img's curl driver and by vdisk, against vdisk's convert of the local file
 * (BENCH_ONLY=http runs only this phase).
 */

import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdtempSync,
  openSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseSize } from '../core/size.js';
import { runHttpBench } from './http.js';
import { runNbdBench } from './nbd.js';
import { runNbdClientBench } from './nbd-client.js';
import { runPipeBench } from './pipe.js';
import { markdownTable, median } from './stats.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const VDISK = join(ROOT, 'bin/vdisk');
const SIZE = parseSize(process.env['BENCH_SIZE'] ?? '2G') ?? 2 ** 31;
const REPEAT = Number(process.env['BENCH_REPEAT'] ?? 3);
const ONLY = process.env['BENCH_ONLY'];
const HAVE_TIME = existsSync('/usr/bin/time');
const MiB = 1 << 20;

interface Run {
  seconds: number;
  rssKiB: number | null;
  /** CPU seconds of the process (user + system, all threads), from GNU time. */
  cpu: number | null;
}

function timed(cmd: string, args: string[], cwd: string): Run {
  spawnSync('sync');
  const argv = HAVE_TIME ? ['-f', '%e %M %U %S', cmd, ...args] : args;
  const t0 = performance.now();
  const r = spawnSync(HAVE_TIME ? '/usr/bin/time' : cmd, argv, { cwd, encoding: 'utf8', maxBuffer: 1 << 30 });
  const wall = (performance.now() - t0) / 1000;
  const lines = r.stderr.trim().split('\n');
  const last = lines[lines.length - 1] ?? '';
  const m = /^([\d.]+) (\d+) ([\d.]+) ([\d.]+)$/.exec(last);
  // compare exits 1 on a difference, check 3 on leaks: only ≥ 2 (or a signal) is a failure here.
  if (r.status === null || r.status >= (cmd === VDISK || cmd === 'qemu-img' ? 2 : 1)) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  }
  // Wall time measured here (ms resolution; /usr/bin/time's %e has only 10 ms), spawn included
  // for both tools alike.
  return { seconds: wall, rssKiB: m ? Number(m[2]) : null, cpu: m ? Number(m[3]) + Number(m[4]) : null };
}

/**
 * A raw image of `size` bytes: per 64 MiB, 24 MiB of random data, 8 MiB of zeros written
 * as data, 8 MiB of compressible text, 24 MiB left as a hole.
 */
function makeMixed(path: string, size: number): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    const pool = randomBytes(16 * MiB);
    const zeros = Buffer.alloc(8 * MiB);
    const text = Buffer.alloc(8 * MiB);
    const line = Buffer.from('The quick brown fox jumps over the lazy dog. 0123456789 ');
    for (let i = 0; i < text.length; i++) text[i] = line[i % line.length]!;
    for (let base = 0; base < size; base += 64 * MiB) {
      let pos = base;
      for (let i = 0; i < 24 && pos < size; i++, pos += MiB) {
        const o = ((base / MiB) * 7 + i * 1048573) % (15 * MiB);
        writeSync(fd, pool, o, Math.min(MiB, size - pos), pos);
      }
      for (const b of [zeros, text]) {
        if (pos >= size) break;
        writeSync(fd, b, 0, Math.min(b.length, size - pos), pos);
        pos += b.length;
      }
    }
  } finally {
    closeSync(fd);
  }
}

/** A 1 TiB sparse raw image with a little data spread over it. */
function makeHugeRaw(path: string): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, 2 ** 40);
    const b = randomBytes(64 * 1024);
    for (let i = 0; i < 64; i++) writeSync(fd, b, 0, b.length, i * 16 * 2 ** 30 + i * 4096);
  } finally {
    closeSync(fd);
  }
}

/**
 * A Debian-like root file system: a 4 GiB ext4 (mkfs.ext4 -d) holding ~600 MiB of real system
 * files (copies of /usr/bin, /usr/lib/python3.*, /usr/lib/gcc and /etc); debootstrap needs a
 * mirror, which the bench machine may not reach. Returns false when mkfs.ext4 is missing.
 */
function makeDebianLike(dir: string): boolean {
  const tree = join(dir, 'tree');
  const py = spawnSync('sh', ['-c', 'ls -d /usr/lib/python3.* 2>/dev/null | head -1'], { encoding: 'utf8' });
  const src = ['/usr/bin', '/usr/lib/gcc', '/etc', py.stdout.trim()].filter((d) => d !== '' && existsSync(d));
  spawnSync('mkdir', ['-p', tree]);
  spawnSync('cp', ['-a', ...src, tree]);
  const raw = join(dir, 'debian.raw');
  closeSync(openSync(raw, 'w'));
  spawnSync('truncate', ['-s', '4G', raw]);
  const r = spawnSync('mkfs.ext4', ['-q', '-F', '-d', tree, raw], { encoding: 'utf8' });
  rmSync(tree, { recursive: true, force: true });
  if (r.status !== 0) return false;
  spawnSync('cp', ['--sparse=always', raw, join(dir, 'debian-copy.raw')]);
  spawnSync('qemu-img', ['convert', '-O', 'qcow2', raw, join(dir, 'debian.qcow2')]);
  return true;
}

/**
 * frag2: a 64 GiB qcow2 with 4 KiB clusters and 200,000 4 KiB writes at random clusters
 * (xorshift32, fixed seed), written by qemu-io (cache=unsafe: ~2 min; writeback would take
 * half an hour): ~198,800 clusters allocated in write order, scattered over the guest.
 */
function makeFrag2(dir: string): void {
  const path = join(dir, 'frag2.qcow2');
  spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', path, '64G']);
  let s = 0x12345678;
  const lines: string[] = [];
  for (let i = 0; i < 200_000; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    lines.push(`write -P ${(i % 255) + 1} ${(s % 16_777_216) * 4096} 4k`);
  }
  const r = spawnSync('qemu-io', ['-t', 'unsafe', '-f', 'qcow2', path], {
    input: `${lines.join('\n')}\n`,
    stdio: ['pipe', 'ignore', 'pipe'],
    maxBuffer: 1 << 30,
  });
  if (r.status !== 0) throw new Error(`qemu-io failed to make frag2 (${r.status})`);
}

/**
 * The Debian-like disk again on a loop-mounted XFS (reflinks on), where vdisk's convert shares
 * the source's blocks and -C is copy_file_range: `xfs/` under dir, or null (not root, no
 * mkfs.xfs, no loop device) with the reason on stderr. unmountXfs undoes it.
 */
function mountXfs(dir: string): string | null {
  const img = join(dir, 'xfs.img');
  const at = join(dir, 'xfs');
  const say = (why: string) => {
    process.stderr.write(`bench: no XFS cases (${why})\n`);
    return null;
  };
  if (process.getuid?.() !== 0) return say('not root');
  closeSync(openSync(img, 'w'));
  spawnSync('truncate', ['-s', '6G', img]);
  const mk = spawnSync('mkfs.xfs', ['-q', '-f', img], { encoding: 'utf8' });
  if (mk.status !== 0) return say(`mkfs.xfs: ${mk.error?.message ?? mk.stderr.trim()}`);
  spawnSync('mkdir', ['-p', at]);
  const m = spawnSync('mount', ['-o', 'loop', img, at], { encoding: 'utf8' });
  if (m.status !== 0) return say(`mount: ${m.stderr.trim()}`);
  spawnSync('cp', ['--sparse=always', join(dir, 'debian.raw'), join(dir, 'debian.qcow2'), at]);
  spawnSync('sync');
  return at;
}

function unmountXfs(at: string | null): void {
  if (at !== null) spawnSync('umount', [at]);
}

/** OUT for one tool: `q-NAME` or `v-NAME`, in NAME's directory. */
function outFor(who: 'q' | 'v', name: string): string {
  const i = name.lastIndexOf('/');
  return `${name.slice(0, i + 1)}${who}-${name.slice(i + 1)}`;
}

interface Case {
  name: string;
  /** Arguments for both tools; OUT stands for a per-tool output file (removed before each run). */
  args: string[];
  out?: string;
  needs?: string;
}

function vdiskFormats(): string {
  const r = spawnSync(VDISK, ['--help'], { encoding: 'utf8' });
  return /Supported formats: (.*)/.exec(r.stdout)?.[1] ?? '';
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'vdisk-bench-'));
  let xfs: string | null = null;
  try {
    const gib = (SIZE / 2 ** 30).toFixed(SIZE % 2 ** 30 === 0 ? 0 : 2);
    process.stderr.write(`bench: making a ${gib} GiB mixed raw image and a 1 TiB sparse one in ${dir}\n`);
    makeMixed(join(dir, 'mixed.raw'), SIZE);
    makeHugeRaw(join(dir, 'huge.raw'));
    spawnSync('cp', ['--sparse=always', join(dir, 'mixed.raw'), join(dir, 'mixed-copy.raw')]);
    const qcow2 = vdiskFormats().split(' ').includes('qcow2');
    if (qcow2) {
      spawnSync('qemu-img', ['convert', '-O', 'qcow2', join(dir, 'mixed.raw'), join(dir, 'mixed.qcow2')]);
      spawnSync('qemu-img', ['convert', '-O', 'qcow2', join(dir, 'huge.raw'), join(dir, 'huge.qcow2')]);
    }
    // Inputs that take a while to build are built when one of their cases is selected.
    const wants = (tag: string) => ONLY === undefined || tag.includes(ONLY) || ONLY.includes(tag);
    const debian = qcow2 && (wants('Debian-like ext4') || wants('XFS')) && makeDebianLike(dir);
    const frag2 = qcow2 && wants('frag2');
    xfs = debian && wants('XFS') ? mountXfs(dir) : null;
    if (frag2) {
      process.stderr.write('bench: making frag2 (qemu-io, ~2 min)\n');
      makeFrag2(dir);
    }
    const cases: Case[] = [
      {
        name: `convert raw→raw (${gib} GiB mixed)`,
        args: ['convert', '-O', 'raw', 'mixed.raw', 'OUT'],
        out: 'o.raw',
      },
      { name: `compare raw raw (${gib} GiB mixed)`, args: ['compare', 'mixed.raw', 'mixed-copy.raw'] },
      { name: 'map --output=json (1 TiB sparse raw)', args: ['map', '--output=json', 'huge.raw'] },
      { name: 'compare (1 TiB sparse raw, itself)', args: ['compare', 'huge.raw', 'huge.raw'] },
      {
        name: `convert raw→qcow2 (${gib} GiB mixed)`,
        args: ['convert', '-O', 'qcow2', 'mixed.raw', 'OUT'],
        out: 'o.qcow2',
        needs: 'qcow2',
      },
      {
        name: `convert qcow2→raw (${gib} GiB mixed)`,
        args: ['convert', '-O', 'raw', 'mixed.qcow2', 'OUT'],
        out: 'o.raw',
        needs: 'qcow2',
      },
      {
        name: `convert -c -O qcow2 (${gib} GiB mixed)`,
        args: ['convert', '-c', '-O', 'qcow2', 'mixed.raw', 'OUT'],
        out: 'o.qcow2',
        needs: 'qcow2',
      },
      {
        name: `compare qcow2 raw (${gib} GiB mixed)`,
        args: ['compare', 'mixed.qcow2', 'mixed.raw'],
        needs: 'qcow2',
      },
      {
        name: 'map --output=json (1 TiB sparse qcow2)',
        args: ['map', '--output=json', 'huge.qcow2'],
        needs: 'qcow2',
      },
      { name: 'check (1 TiB sparse qcow2)', args: ['check', 'huge.qcow2'], needs: 'qcow2' },
      {
        name: `convert qcow2→vmdk streamOptimized (${gib} GiB mixed)`,
        args: ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', 'mixed.qcow2', 'OUT'],
        out: 'o.vmdk',
        needs: 'qcow2',
      },
      {
        name: `convert qcow2→vhdx (${gib} GiB mixed)`,
        args: ['convert', '-O', 'vhdx', 'mixed.qcow2', 'OUT'],
        out: 'o.vhdx',
        needs: 'qcow2',
      },
    ];
    if (debian) {
      cases.push(
        {
          name: 'convert raw→qcow2 (4 GiB Debian-like ext4)',
          args: ['convert', '-O', 'qcow2', 'debian.raw', 'OUT'],
          out: 'o.qcow2',
        },
        {
          name: 'convert qcow2→raw (4 GiB Debian-like ext4)',
          args: ['convert', '-O', 'raw', 'debian.qcow2', 'OUT'],
          out: 'o.raw',
        },
        {
          name: 'compare qcow2 raw (4 GiB Debian-like ext4)',
          args: ['compare', 'debian.qcow2', 'debian.raw'],
        },
      );
    }
    if (xfs !== null) {
      const x = (name: string, args: string[], out?: string): Case => ({
        name: `${name} (Debian-like, XFS)`,
        args,
        ...(out === undefined ? {} : { out }),
      });
      cases.push(
        x('convert raw→raw', ['convert', '-O', 'raw', 'xfs/debian.raw', 'OUT'], 'xfs/o.raw'),
        x('convert raw→qcow2', ['convert', '-O', 'qcow2', 'xfs/debian.raw', 'OUT'], 'xfs/o.qcow2'),
        x('convert qcow2→raw', ['convert', '-O', 'raw', 'xfs/debian.qcow2', 'OUT'], 'xfs/o.raw'),
        x('convert -C raw→raw', ['convert', '-C', '-O', 'raw', 'xfs/debian.raw', 'OUT'], 'xfs/o.raw'),
        x('convert -C raw→qcow2', ['convert', '-C', '-O', 'qcow2', 'xfs/debian.raw', 'OUT'], 'xfs/o.qcow2'),
      );
    }
    if (frag2) {
      cases.push(
        {
          name: 'convert frag2→qcow2 (64 GiB, 4 KiB clusters, 200k scattered)',
          args: ['convert', '-O', 'qcow2', 'frag2.qcow2', 'OUT'],
          out: 'o.qcow2',
        },
        { name: 'map --output=json (frag2)', args: ['map', '--output=json', 'frag2.qcow2'] },
        { name: 'check (frag2)', args: ['check', 'frag2.qcow2'] },
        {
          name: 'convert -c -O qcow2 (frag2)',
          args: ['convert', '-c', '-O', 'qcow2', 'frag2.qcow2', 'OUT'],
          out: 'o.qcow2',
        },
      );
    }
    const rows: string[][] = [];
    const measured: { q: number; v: number }[] = [];
    for (const c of cases) {
      if (c.needs === 'qcow2' && !qcow2) continue;
      if (ONLY !== undefined && !c.name.includes(ONLY)) continue;
      const times: Record<'q' | 'v', number[]> = { q: [], v: [] };
      const rss: Record<'q' | 'v', number[]> = { q: [], v: [] };
      const cpu: Record<'q' | 'v', number[]> = { q: [], v: [] };
      let outSizes = '';
      // The outputs of the first round are checked (same content) and measured (du), then
      // every run starts with neither tool's output on disk. A run that starts beside the other
      // tool's output just written (and `sync` writing it out) gets memory this virtual
      // machine's host took back in the meantime: 2–14 s for a 2 GiB convert that takes 0.3 s
      // otherwise, for either tool (docs/benchmarks.md, stop 32).
      const removeOutputs = () => {
        if (c.out === undefined) return;
        rmSync(join(dir, outFor('q', c.out)), { force: true });
        rmSync(join(dir, outFor('v', c.out)), { force: true });
      };
      for (let i = 0; i < REPEAT; i++) {
        for (const who of i % 2 === 0 ? (['q', 'v'] as const) : (['v', 'q'] as const)) {
          const out = c.out !== undefined ? outFor(who, c.out) : '';
          if (i > 0) removeOutputs();
          else if (out !== '') rmSync(join(dir, out), { force: true });
          const args = c.args.map((a) => (a === 'OUT' ? out : a));
          const r = timed(who === 'q' ? 'qemu-img' : VDISK, args, dir);
          times[who].push(r.seconds);
          if (r.rssKiB !== null) rss[who].push(r.rssKiB);
          if (r.cpu !== null) cpu[who].push(r.cpu);
        }
        if (i === 0 && c.out !== undefined) {
          // Output files' allocated size (du), qemu-img's / vdisk's: a faster compressed convert
          // must not be a worse-compressed one.
          const du = (f: string) => (statSync(join(dir, f)).blocks * 512) / MiB;
          outSizes = `${du(outFor('q', c.out)).toFixed(0)} / ${du(outFor('v', c.out)).toFixed(0)}`;
          // The outputs must hold the same content.
          const cmp = spawnSync('qemu-img', ['compare', outFor('q', c.out), outFor('v', c.out)], {
            cwd: dir,
            encoding: 'utf8',
          });
          if (cmp.status !== 0) throw new Error(`${c.name}: outputs differ: ${cmp.stdout}${cmp.stderr}`);
          removeOutputs();
        }
      }
      removeOutputs();
      const q = median(times.q);
      const v = median(times.v);
      const mib = (xs: number[]) => (xs.length > 0 ? (Math.max(...xs) / 1024).toFixed(0) : '?');
      const cq = cpu.q.length > 0 ? median(cpu.q) : null;
      const cv = cpu.v.length > 0 ? median(cpu.v) : null;
      measured.push({ q, v });
      rows.push([
        c.name,
        q.toFixed(3),
        v.toFixed(3),
        (v / q).toFixed(2),
        '', // (v − node) / q, once the floor is measured
        cq === null ? '?' : cq.toFixed(2),
        cv === null ? '?' : cv.toFixed(2),
        mib(rss.q),
        mib(rss.v),
        outSizes,
      ]);
      // Every run's wall time: on this shared machine a run sometimes takes several times its usual
      // time (the host's lazily backed pages), and the median alone does not show it.
      const all = (xs: number[]) => xs.map((x) => x.toFixed(3)).join(' ');
      process.stderr.write(`bench: ${c.name} done (qemu-img ${all(times.q)}; vdisk ${all(times.v)})\n`);
    }
    const head = [
      'case',
      'qemu-img s',
      'vdisk s',
      'ratio',
      '(v − node) / q',
      'qemu-img CPU s',
      'vdisk CPU s',
      'qemu-img MiB',
      'vdisk MiB',
      'output MiB q / v',
    ];
    // bin/vdisk starts node without NODE_EXTRA_CA_CERTS (it reads that file when TLS is first
    // used: src/protocols/tls-ca.ts); the floor is Node started the same way, and Node in this
    // environment beside it when the two differ.
    // The floor, as the start-up targets take it: vdisk's time less Node's own start,
    // against qemu-img's (a median of 5: one start is noisy at this scale).
    const node = median(
      Array.from(
        { length: 5 },
        () => timed('env', ['-u', 'NODE_EXTRA_CA_CERTS', process.execPath, '-e', '0'], dir).seconds,
      ),
    );
    for (const [i, m] of measured.entries()) rows[i]![4] = ((m.v - node) / m.q).toFixed(2);
    const nodeHere =
      process.env['NODE_EXTRA_CA_CERTS'] !== undefined
        ? ` (${timed(process.execPath, ['-e', '0'], dir).seconds.toFixed(3)} s with this environment's NODE_EXTRA_CA_CERTS, which bin/vdisk hands over instead)`
        : '';
    process.stdout.write(
      `${markdownTable(head, rows)}\n\nmedian wall time of ${REPEAT} runs per tool (alternating, sync before each), ` +
        `process start included (\`node -e 0\` alone: ${node.toFixed(3)} s, median of 5${nodeHere}); (v − node) / q: vdisk's time less that, over qemu-img's; CPU: median user + system ` +
        `seconds (/usr/bin/time -f '%U %S', all threads); RSS: peak of /usr/bin/time -f %M; ` +
        `output: the first run's output file, allocated MiB (qemu-img / vdisk)\n`,
    );
    if (qcow2) {
      const pipe = runPipeBench({
        dir,
        image: 'mixed.qcow2',
        raw: 'mixed.raw',
        label: `${gib} GiB mixed, made by qemu-img`,
        repeat: REPEAT,
        only: ONLY,
        vdisk: VDISK,
      });
      if (pipe !== '') process.stdout.write(`\n${pipe}`);
    }
    const nbd = await runNbdBench({
      dir,
      images: [
        { label: `${gib} GiB mixed raw`, path: join(dir, 'mixed.raw'), format: 'raw' },
        ...(qcow2
          ? [{ label: `${gib} GiB mixed qcow2`, path: join(dir, 'mixed.qcow2'), format: 'qcow2' }]
          : []),
      ],
      repeat: REPEAT,
      only: ONLY,
      vdisk: VDISK,
      seconds: Number(process.env['BENCH_NBD_SECONDS'] ?? 10),
    });
    process.stdout.write(`\n${nbd}`);
    if (ONLY === undefined || 'nbd client'.includes(ONLY)) {
      const client = await runNbdClientBench({
        dir,
        image: join(dir, 'mixed.raw'),
        label: `${gib} GiB mixed`,
        repeat: REPEAT,
        vdisk: VDISK,
      });
      process.stdout.write(`\n${client}`);
    }
    if (qcow2 && (ONLY === undefined || 'http'.includes(ONLY))) {
      const http = await runHttpBench({
        dir,
        image: 'mixed.qcow2',
        label: `${gib} GiB mixed qcow2`,
        repeat: REPEAT,
        vdisk: VDISK,
      });
      process.stdout.write(`\n${http}`);
    }
  } finally {
    unmountXfs(xfs);
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
