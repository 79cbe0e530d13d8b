/**
 * `npm run fuzz`: mutation fuzzing of every format driver through the CLI, in process.
 *
 * Seed images are made by the real qemu-img and qemu-io (data written, snapshots, compressed
 * clusters, zero clusters), then mutated deterministically: bytes near the metadata
 * (non-zero bytes that are not the seeds' data patterns) flipped, 32/64-bit fields set to
 * boundary values, files truncated. Each mutant goes through `info`, `check`, `map`,
 * `convert -O raw`, `check -r all` (on a copy) and writes (on a copy: `convert -n` of guest
 * data into it, `resize`, `snapshot -c`, `rebase -u`, then a read). A finding is anything but
 * a `vdisk: …` error or success: an internal error (an exception that is not a VdiskError),
 * an exit status qemu-img never uses, a command slower than FUZZ_SLOW_MS, a crash or a hang of
 * the child.
 *
 * dmg (zlib and bzip2 chunks, XML and resource-fork tables), cloop and bochs seeds come from
 * the builders the format tests use (src/test/builders.ts): qemu-img cannot create them.
 *
 * Each seed runs in a child process (the parent kills it when it stops making progress and
 * reports the case it was on), with a 1 GiB heap limit so that an unbounded allocation shows
 * as a crash. Cases are reproducible: `FUZZ_ONLY=<seed> FUZZ_FROM=<case> FUZZ_ITER=1`.
 *
 * Environment: FUZZ_ITER (mutants per seed, default 150), FUZZ_RNG (default 1), FUZZ_ONLY
 * (substring of seed names), FUZZ_FROM (first case), FUZZ_DIR (work dir, default the system
 * temp dir), FUZZ_SLOW_MS (default 3000), FUZZ_KEEP=1 keeps the mutants of findings,
 * FUZZ_ORACLE=1 also converts each mutant with qemu-img and compares (compareWithQemu).
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  appendFileSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bufferIo } from '../cli/io.js';
import { main } from '../cli/main.js';
import { buildDmg, makeBochs, makeCloop } from './builders.js';
import { rng } from './rng.js';

const ITER = Number(process.env['FUZZ_ITER'] ?? 150);
const RNG = Number(process.env['FUZZ_RNG'] ?? 1);
const SLOW_MS = Number(process.env['FUZZ_SLOW_MS'] ?? 3000);
const ONLY = process.env['FUZZ_ONLY'];
const FROM = Number(process.env['FUZZ_FROM'] ?? 0);
const KEEP = process.env['FUZZ_KEEP'] === '1';
const ORACLE = process.env['FUZZ_ORACLE'] === '1';

/** Bytes the seeds' guest data is written with: mutating them tests nothing. */
const DATA_PATTERNS = new Set([0xab, 0xcd, 0x5a]);
const SECRET = ['--object', 'secret,id=sec0,data=fuzz-pass'];

interface Seed {
  name: string;
  fmt: string;
  /** The file to mutate (for vmdk monolithicFlat, the descriptor). */
  file: string;
  /** Extra arguments every command needs (secrets, image options). */
  extra?: string[];
  /** The image argument: a plain path, or `--image-opts` text built from the mutant's path. */
  imageArgs?: (path: string) => string[];
}

function sh(cmd: string, args: string[], cwd: string): void {
  for (let attempt = 0; ; attempt++) {
    const r = spawnSync(cmd, args, { cwd, encoding: 'utf8' });
    if (r.status === 0) return;
    // QEMU's PBKDF2 calibration fails now and then on a busy machine: try again.
    if (attempt < 20 && r.stderr.includes('Unable to get accurate CPU usage')) continue;
    throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  }
}

/** qemu-io writes that leave data, zeros and holes in an image of 64 MiB. */
const WRITES = [
  '-c',
  'write -P 0xab 0 1M',
  '-c',
  'write -P 0xcd 5M 64k',
  '-c',
  'write -P 0x5a 33M 300k',
  '-c',
  'write -P 0xab 63M 1M',
];

function makeSeeds(dir: string): Seed[] {
  const seeds: Seed[] = [];
  const qemuIo = (f: string, fmt: string, cmds: string[], extra: string[] = []) =>
    sh('qemu-io', [...extra, '-f', fmt, ...cmds, f], dir);
  const add = (name: string, fmt: string, createArgs: string[], write = true) => {
    const f = `${name}.${fmt}`;
    sh('qemu-img', ['create', '-q', '-f', fmt, ...createArgs, f, '64M'], dir);
    if (write) qemuIo(f, fmt, WRITES);
    seeds.push({ name, fmt, file: f });
    return f;
  };
  const q3 = add('qcow2-v3', 'qcow2', []);
  sh('qemu-img', ['snapshot', '-c', 'snap1', q3], dir);
  qemuIo(q3, 'qcow2', ['-c', 'write -P 0xcd 0 128k', '-c', 'write -z 40M 1M']);
  add('qcow2-v2-4k', 'qcow2', ['-o', 'compat=0.10,cluster_size=4096']);
  add('qcow2-l2ext', 'qcow2', ['-o', 'extended_l2=on,cluster_size=128k']);
  add('qcow2-refbits1', 'qcow2', ['-o', 'refcount_bits=1,cluster_size=512']);
  // Compressed clusters (zlib and zstd): convert -c of a raw image with compressible data.
  const raw = 'data.raw';
  sh('qemu-img', ['create', '-q', '-f', 'raw', raw, '64M'], dir);
  qemuIo(raw, 'raw', WRITES);
  for (const ct of ['zlib', 'zstd']) {
    const f = `qcow2-${ct}.qcow2`;
    sh('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${ct}`, raw, f], dir);
    seeds.push({ name: `qcow2-${ct}`, fmt: 'qcow2', file: f });
  }
  const sec = 'qcow2-luks.qcow2';
  sh(
    'qemu-img',
    [
      'create',
      '-q',
      ...SECRET,
      '-f',
      'qcow2',
      '-o',
      'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10',
      sec,
      '16M',
    ],
    dir,
  );
  seeds.push({
    name: 'qcow2-luks',
    fmt: 'qcow2',
    file: sec,
    extra: SECRET,
    imageArgs: (p) => ['--image-opts', `driver=qcow2,encrypt.key-secret=sec0,file.filename=${p}`],
  });
  add('qed', 'qed', []);
  add('qcow', 'qcow', []);
  add('vmdk-sparse', 'vmdk', []);
  const so = 'vmdk-stream.vmdk';
  sh('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, so], dir);
  seeds.push({ name: 'vmdk-stream', fmt: 'vmdk', file: so });
  add('vmdk-flat', 'vmdk', ['-o', 'subformat=monolithicFlat'], false);
  add('vdi', 'vdi', []);
  add('vpc-dynamic', 'vpc', []);
  add('vpc-fixed', 'vpc', ['-o', 'subformat=fixed']);
  add('vhdx', 'vhdx', []);
  add('vhdx-fixed', 'vhdx', ['-o', 'subformat=fixed'], false);
  add('parallels', 'parallels', []);
  const luks = 'luks.luks';
  sh(
    'qemu-img',
    ['create', '-q', ...SECRET, '-f', 'luks', '-o', 'key-secret=sec0,iter-time=10', luks, '16M'],
    dir,
  );
  seeds.push({
    name: 'luks',
    fmt: 'luks',
    file: luks,
    extra: SECRET,
    imageArgs: (p) => ['--image-opts', `driver=luks,key-secret=sec0,file.filename=${p}`],
  });
  // The read-only formats, with fixed content (the mutants must be replayable).
  const text = (n: number, tag: string) => Buffer.alloc(n, `${tag} sector data 0123456789 `);
  const dmgChunks = [
    { kind: 'zlib' as const, sectors: 64, data: text(64 * 512, 'zlib') },
    { kind: 'zero' as const, sectors: 32 },
    { kind: 'raw' as const, sectors: 8, data: text(8 * 512, 'raw') },
    { kind: 'bzip2' as const, sectors: 64, data: text(64 * 512, 'bzip2') },
    { kind: 'ignore' as const, sectors: 16 },
  ];
  writeFileSync(join(dir, 'dmg-xml.dmg'), buildDmg({ parts: [dmgChunks, dmgChunks.slice(0, 2)] }).file);
  writeFileSync(join(dir, 'dmg-rsrc.dmg'), buildDmg({ parts: [dmgChunks], resourceFork: true }).file);
  seeds.push({ name: 'dmg-xml', fmt: 'dmg', file: 'dmg-xml.dmg' });
  seeds.push({ name: 'dmg-rsrc', fmt: 'dmg', file: 'dmg-rsrc.dmg' });
  const bs = 16384;
  writeFileSync(join(dir, 'cloop.cloop'), makeCloop(bs, [text(bs, 'a'), Buffer.alloc(bs), text(bs, 'b')]));
  seeds.push({ name: 'cloop', fmt: 'cloop', file: 'cloop.cloop' });
  writeFileSync(
    join(dir, 'bochs.bochs'),
    makeBochs(1 << 20, 64 << 10, 2, (n) => Buffer.alloc(n, 0xab)),
  );
  seeds.push({ name: 'bochs', fmt: 'bochs', file: 'bochs.bochs' });
  return seeds;
}

/** Offsets worth mutating: non-zero metadata bytes in the first 4 MiB and the last 64 KiB. */
function interestingOffsets(buf: Buffer): number[] {
  const out: number[] = [];
  const scan = (from: number, to: number) => {
    for (let i = from; i < to; i++) {
      const b = buf[i]!;
      if (b !== 0 && !DATA_PATTERNS.has(b)) out.push(i);
    }
  };
  const head = Math.min(buf.length, 4 << 20);
  scan(0, head);
  scan(Math.max(head, buf.length - 65536), buf.length);
  return out.length > 0 ? out : [0];
}

const BOUNDARY32 = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 0x200, 0x10000, 0x100000];
const BOUNDARY64 = [
  0n,
  1n,
  0x7fffffffffffffffn,
  0xffffffffffffffffn,
  1n << 40n,
  1n << 56n,
  0x8000000000000000n,
];

/** The mutant for case `n` of a seed: a copy of `orig` with 1–4 edits, or truncated. */
function mutate(
  orig: Buffer,
  offsets: number[],
  seedIndex: number,
  n: number,
): { buf: Buffer; what: string } {
  const r = rng(RNG * 1000003 + seedIndex * 7919 + n);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  if (r() < 0.08) {
    const len = Math.floor(r() * orig.length);
    return { buf: Buffer.from(orig.subarray(0, len)), what: `truncate to ${len}` };
  }
  const buf = Buffer.from(orig);
  const edits: string[] = [];
  const count = 1 + Math.floor(r() * 4);
  for (let k = 0; k < count; k++) {
    const base = Math.min(buf.length - 1, Math.max(0, pick(offsets) + Math.floor(r() * 16) - 8));
    const kind = r();
    if (kind < 0.45) {
      const v = Math.floor(r() * 256);
      buf[base] = v;
      edits.push(`byte ${base}=${v}`);
    } else if (kind < 0.75 && base + 4 <= buf.length) {
      const at = base & ~3;
      const v = pick(BOUNDARY32);
      if (r() < 0.5) buf.writeUInt32LE(v, at);
      else buf.writeUInt32BE(v, at);
      edits.push(`u32 ${at}=${v}`);
    } else if (base + 8 <= buf.length) {
      const at = base & ~7;
      const v = pick(BOUNDARY64);
      if (r() < 0.5) buf.writeBigUInt64LE(v, at);
      else buf.writeBigUInt64BE(v, at);
      edits.push(`u64 ${at}=${v}`);
    } else {
      buf[base] = buf[base]! ^ 0xff;
      edits.push(`flip ${base}`);
    }
  }
  return { buf, what: edits.join(', ') };
}

interface Problem {
  command: string;
  problem: string;
}

interface Finding {
  seed: string;
  case: number;
  what: string;
  command: string;
  problem: string;
}

async function runCase(seed: Seed, path: string, out: string): Promise<Problem[]> {
  const problems: Problem[] = [];
  const image = seed.imageArgs ? seed.imageArgs(path) : ['-f', seed.fmt, path];
  const extra = seed.extra ?? [];
  const repairCopy = `${path}.repair`;
  const commands: string[][] = [
    ['info', ...extra, ...image],
    ['info', ...extra, '--output=json', ...image],
    ['check', ...extra, ...image],
    ['map', ...extra, '--output=json', ...image],
    ['convert', ...extra, ...image, '-O', 'raw', out],
  ];
  // Probing (no -f) must not fall over either.
  if (!seed.imageArgs) commands.push(['info', path]);
  let converted = false;
  let refusal = '';
  for (const args of commands) {
    const r = await runOne(args);
    problems.push(...r.found);
    if (args[0] === 'convert') {
      converted = r.code === 0;
      refusal = r.stderr.trim();
    }
  }
  if (ORACLE && existsSync(path)) problems.push(...compareWithQemu(image, extra, out, converted, refusal));
  if (existsSync(path)) {
    copyFileSync(path, repairCopy);
    const repairImage = seed.imageArgs ? seed.imageArgs(repairCopy) : ['-f', seed.fmt, repairCopy];
    problems.push(...(await runOne(['check', ...extra, '-r', 'all', ...repairImage])).found);
    // A repaired image must then read: repair may give up (exit 1/2/3) but not corrupt more.
    problems.push(...(await runOne(['convert', ...extra, ...repairImage, '-O', 'raw', out])).found);
    // Writes into the mutant (on a copy): guest data through its tables (convert -n), a
    // resize, an internal snapshot, a header rewrite; then it must still read or refuse.
    copyFileSync(path, repairCopy);
    const target = seed.imageArgs
      ? ['--target-image-opts', seed.imageArgs(repairCopy)[1]!]
      : ['-O', seed.fmt, repairCopy];
    const writes: string[][] = [
      ['convert', ...extra, '-n', '-f', 'raw', writeSource(dirname(path)), ...target],
      ['resize', ...extra, ...repairImage, '+1M'],
      ['snapshot', ...extra, '-c', 'fuzz', ...repairImage],
      ['rebase', ...extra, '-u', '-b', '', ...repairImage],
      ['convert', ...extra, ...repairImage, '-O', 'raw', out],
    ];
    for (const args of writes) problems.push(...(await runOne(args)).found);
    rmSync(repairCopy, { force: true });
  }
  rmSync(out, { force: true });
  return problems;
}

/** A raw image of 2 MiB with data at 0 and at 1 MiB, written into mutants by `convert -n`. */
function writeSource(dir: string): string {
  const p = join(dir, 'write-source.raw');
  if (!existsSync(p)) {
    const b = Buffer.alloc(2 << 20);
    b.fill(0x5a, 0, 65536);
    b.fill(0xab, 1 << 20, (1 << 20) + 200_000);
    writeFileSync(p, b);
  }
  return p;
}

/** Where the child logs each case and command, so that a hang names what hung. */
let progressFile = '';

async function runOne(args: string[]): Promise<{ code: number; stderr: string; found: Problem[] }> {
  if (progressFile !== '') appendFileSync(progressFile, `\t${args.join(' ')}\n`);
  const io = bufferIo();
  const t0 = performance.now();
  let code: number;
  try {
    code = await main(args, io);
  } catch (e) {
    const problem = `threw: ${e instanceof Error ? e.stack : String(e)}`;
    return { code: -1, stderr: '', found: [{ command: args.join(' '), problem }] };
  }
  const ms = performance.now() - t0;
  const found: Problem[] = [];
  if (io.stderr.includes('internal error'))
    found.push({ command: args.join(' '), problem: io.stderr.trim() });
  // 63: "This image format does not support checks" (qemu-img check on vpc, qcow, luks; -r on vdi, vmdk).
  if (![0, 1, 2, 3, 63].includes(code)) found.push({ command: args.join(' '), problem: `exit ${code}` });
  if (ms > SLOW_MS) found.push({ command: args.join(' '), problem: `took ${ms.toFixed(0)} ms` });
  return { code, stderr: io.stderr, found };
}

/**
 * FUZZ_ORACLE=1: the mutant through qemu-img convert -O raw too. Both read it: the bytes must
 * agree (up to 256 MiB of guest data). qemu-img reads it and vdisk refuses: reported as a
 * refusal, to be looked at (vdisk refuses some images on purpose: extents outside the image's
 * directory, tables past the end of the file).
 */
function compareWithQemu(
  image: string[],
  extra: string[],
  out: string,
  converted: boolean,
  refusal: string,
): Problem[] {
  const qout = `${out}.qemu`;
  const command = `qemu-img convert ${[...extra, ...image].join(' ')}`;
  try {
    const q = spawnSync('qemu-img', ['convert', ...extra, ...image, '-O', 'raw', qout], {
      encoding: 'utf8',
      // Well inside the parent's no-progress watchdog; qemu-img taking longer is not our finding.
      timeout: SLOW_MS * 3,
    });
    if (q.status !== 0) return [];
    if (!converted) return [{ command, problem: `refuses what qemu-img reads: ${refusal}` }];
    const qs = statSync(qout).size;
    const vs = statSync(out).size;
    if (qs !== vs) return [{ command, problem: `guest size ${vs}, qemu-img ${qs}` }];
    if (qs > 256 << 20) return [];
    if (!readFileSync(qout).equals(readFileSync(out)))
      return [{ command, problem: 'reads other bytes than qemu-img' }];
    return [];
  } finally {
    rmSync(qout, { force: true });
  }
}

async function child(dir: string, seedName: string, seedIndex: number, progress: string): Promise<void> {
  const seeds: Seed[] = JSON.parse(readFileSync(join(dir, 'seeds.json'), 'utf8'));
  const seed = seeds.find((s) => s.name === seedName)!;
  // imageArgs does not survive JSON: rebuild it from the seed's format.
  if (seed.extra) {
    const driverOpt = seed.fmt === 'luks' ? 'key-secret=sec0' : 'encrypt.key-secret=sec0';
    seed.imageArgs = (p) => ['--image-opts', `driver=${seed.fmt},${driverOpt},file.filename=${p}`];
  }
  const origPath = join(dir, seed.file);
  const orig = readFileSync(origPath);
  const offsets = interestingOffsets(orig);
  const work = mkdtempSync(join(dir, `w-${seed.name}-`));
  const mutant = join(work, seed.file);
  // A monolithicFlat descriptor names its extent by a relative path: keep it next to the mutant.
  for (const f of [`${seed.name}-flat.${seed.fmt}`]) {
    if (existsSync(join(dir, f))) copyFileSync(join(dir, f), join(work, f));
  }
  for (let n = FROM; n < FROM + ITER; n++) {
    const { buf, what } = mutate(orig, offsets, seedIndex, n);
    writeFileSync(mutant, buf);
    appendFileSync(progress, `${n}\t${what}\n`);
    progressFile = progress;
    const problems = await runCase(seed, mutant, join(work, 'out.raw'));
    for (const p of problems) {
      const f: Finding = { seed: seed.name, case: n, what, ...p };
      process.stdout.write(`${JSON.stringify(f)}\n`);
      if (KEEP) copyFileSync(mutant, join(dir, `finding-${seed.name}-${n}-${seed.file}`));
    }
  }
  rmSync(work, { recursive: true, force: true });
}

async function parent(): Promise<number> {
  const dir = mkdtempSync(join(process.env['FUZZ_DIR'] ?? tmpdir(), 'vdisk-fuzz-'));
  const all = makeSeeds(dir);
  writeFileSync(join(dir, 'seeds.json'), JSON.stringify(all));
  // A seed's index in the whole list feeds its mutations: FUZZ_ONLY replays the same cases.
  const seeds = all.filter((s) => ONLY === undefined || s.name.includes(ONLY));
  const self = fileURLToPath(import.meta.url);
  let findings = 0;
  for (const seed of seeds) {
    const progress = join(dir, `progress-${seed.name}.txt`);
    writeFileSync(progress, '');
    const t0 = performance.now();
    const seedIndex = all.indexOf(seed);
    const lines: string[] = [];
    const status = await new Promise<string>((resolve) => {
      const c = spawn(
        process.execPath,
        [
          ...process.execArgv,
          '--max-old-space-size=1024',
          self,
          '--child',
          dir,
          seed.name,
          String(seedIndex),
          progress,
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let stderr = '';
      c.stdout.setEncoding('utf8').on('data', (d: string) => lines.push(d));
      c.stderr.setEncoding('utf8').on('data', (d: string) => {
        stderr += d;
      });
      // Kill the child when its progress file stops growing: a hang.
      let last = -1;
      const timer = setInterval(() => {
        const size = statSync(progress).size;
        if (size === last) c.kill('SIGKILL');
        last = size;
      }, SLOW_MS * 5);
      c.on('exit', (code, signal) => {
        clearInterval(timer);
        resolve(
          code === 0
            ? 'ok'
            : `child ended with ${signal ?? code}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`,
        );
      });
    });
    const found = lines.join('').split('\n').filter(Boolean);
    findings += found.length;
    for (const l of found) process.stdout.write(`${l}\n`);
    if (status !== 'ok') {
      // The case line, and the command it was running.
      const log = readFileSync(progress, 'utf8').trimEnd().split('\n');
      const caseAt = log.findLastIndex((l) => !l.startsWith('\t'));
      const lastCase = `${log[caseAt] ?? ''} |${log.at(-1) ?? ''}`;
      process.stdout.write(`${JSON.stringify({ seed: seed.name, case: lastCase, problem: status })}\n`);
      findings++;
    }
    process.stderr.write(
      `fuzz: ${seed.name}: ${ITER} mutants, ${found.length} findings, ${((performance.now() - t0) / 1000).toFixed(1)} s${status === 'ok' ? '' : ' (child failed)'}\n`,
    );
  }
  if (!KEEP) rmSync(dir, { recursive: true, force: true });
  else process.stderr.write(`fuzz: kept ${dir}\n`);
  return findings === 0 ? 0 : 1;
}

if (process.argv[2] === '--child') {
  const [dir, name, index, progress] = process.argv.slice(3);
  await child(dir!, name!, Number(index), progress!);
} else {
  mkdirSync(process.env['FUZZ_DIR'] ?? tmpdir(), { recursive: true });
  process.exitCode = await parent();
}
