import { execFileSync } from 'node:child_process';
import { existsSync, linkSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, sha256, tempDir, vdisk } from '../test/oracle.js';
import { asVdisk } from '../test/same.js';

let dir: string;
let cleanup: () => void;
let caseNo = 0;

/** Inputs, made once with qemu-img and qemu-io. */
function setup(): void {
  const raw = (name: string, size: string, writes: string[]) => {
    qemuImgOk(['create', '-f', 'raw', join(dir, name), size]);
    if (writes.length > 0) qemuIo(join(dir, name), writes, 'raw');
  };
  // Data with zero runs of every kind: short ones inside data (kept), long ones (holes),
  // zeros written as data, holes, and data at sector but not 4k alignment.
  raw('mixed.img', '24M', [
    'write -P 0xab 0 64k',
    'write -P 0 64k 2k',
    'write -P 0xac 66k 62k',
    'write -P 0 128k 200k',
    'write -P 0x5a 328k 512',
    'write -P 0xcd 1M 3M',
    'write -P 0 4M 2M',
    'write -P 0x77 7M 4k',
    'write -P 0x78 7339520 512',
    'write -P 0x11 23M 1M',
  ]);
  raw('small.img', '1M', ['write -P 0x42 4k 4k']);
  writeFileSync(join(dir, 'odd.img'), Buffer.alloc(1000, 9));
  writeFileSync(join(dir, 'empty.img'), Buffer.alloc(0));
  // Existing targets for -n: full of 0xff (zeros must then be written), and truly zero.
  writeFileSync(join(dir, 'ff.img'), Buffer.alloc(24 << 20, 0xff));
  raw('zero.img', '24M', []);
  raw('tiny.img', '1M', []);
}

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-convert-'));
  setup();
});
afterAll(() => cleanup());

const INPUTS = ['mixed.img', 'small.img', 'odd.img', 'empty.img', 'ff.img', 'zero.img', 'tiny.img'];

/**
 * Two fresh directories, one for qemu-img and one for vdisk, holding the inputs the
 * arguments name: sources as hard links (read only), the last argument as a copy (-n
 * writes into it).
 */
function twoDirs(args: string[]): { q: string; v: string } {
  caseNo++;
  const q = join(dir, `q${caseNo}`);
  const v = join(dir, `v${caseNo}`);
  for (const d of [q, v]) {
    mkdirSync(d);
    args.forEach((a, i) => {
      if (!INPUTS.includes(a) || existsSync(join(d, a))) return;
      if (i === args.length - 1) execFileSync('cp', ['--sparse=always', join(dir, a), join(d, a)]);
      else linkSync(join(dir, a), join(d, a));
    });
  }
  return { q, v };
}

function mapOf(d: string, file: string, fmt: string): string {
  return qemuImgOk(['map', '--output=json', '-f', fmt, file], d);
}

/**
 * Run `convert ARGS` with both tools in twin directories and check: same exit status and
 * output; when a target was written, the same guest content, the same allocation map, and a
 * clean `qemu-img check` for formats that have one.
 */
async function same(args: string[], out?: { file: string; fmt: string }): Promise<void> {
  const { q, v } = twoDirs(args);
  // qemu-img writes in q only and vdisk in v only: the outputs compared below are one each.
  const r = qemuImg(['convert', ...args], q);
  const qemu = { code: r.code, stdout: asVdisk(r.stdout), stderr: asVdisk(r.stderr) };
  const ours = await vdisk(['convert', ...args], v);
  expect(ours).toEqual(qemu);
  if (out === undefined || qemu.code !== 0) return;
  expect(existsSync(join(v, out.file))).toBe(true);
  expect(
    qemuImg(['compare', '-f', out.fmt, '-F', out.fmt, join(q, out.file), join(v, out.file)]).stdout,
  ).toBe('Images are identical.\n');
  expect(mapOf(v, out.file, out.fmt)).toBe(mapOf(q, out.file, out.fmt));
  if (out.fmt !== 'raw') {
    expect(qemuImg(['check', '-f', out.fmt, join(v, out.file)]).code).toBe(0);
  }
  if (out.fmt === 'raw') {
    expect(sha256(readFileSync(join(v, out.file)))).toBe(sha256(readFileSync(join(q, out.file))));
  }
}

const raw = { file: 'out.img', fmt: 'raw' };

describe('convert to raw against qemu-img', () => {
  it('raw → raw keeps holes and finds zero runs', () => same(['-O', 'raw', 'mixed.img', 'out.img'], raw));
  it('default output format', () => same(['mixed.img', 'out.img'], raw));
  it('-S 0 writes every byte', () => same(['-S', '0', 'mixed.img', 'out.img'], raw));
  it('-S 64k', () => same(['-S', '64k', 'mixed.img', 'out.img'], raw));
  it('-S 512', () => same(['-S', '512', 'mixed.img', 'out.img'], raw));
  it('-S 1M', () => same(['-S', '1M', 'mixed.img', 'out.img'], raw));
  it('several sources concatenated', () =>
    same(['small.img', 'odd.img', 'mixed.img', 'empty.img', 'small.img', 'out.img'], raw));
  it('-m 1', () => same(['-m', '1', 'mixed.img', 'out.img'], raw));
  it('-m 16 -W', () => same(['-m', '16', '-W', 'mixed.img', 'out.img'], raw));
  it('-m 0x4', () => same(['-m', '0x4', 'mixed.img', 'out.img'], raw));
  it('-n over data writes zeros', () => same(['-n', 'mixed.img', 'ff.img'], { file: 'ff.img', fmt: 'raw' }));
  it('-n -S 0 over data', () =>
    same(['-n', '-S', '0', 'mixed.img', 'ff.img'], { file: 'ff.img', fmt: 'raw' }));
  it('-n --target-is-zero', () =>
    same(['-n', '--target-is-zero', 'mixed.img', 'zero.img'], { file: 'zero.img', fmt: 'raw' }));
  it('-n with a smaller source', () => same(['-n', 'small.img', 'ff.img'], { file: 'ff.img', fmt: 'raw' }));
  it('-p draws progress', () => same(['-p', 'mixed.img', 'out.img'], raw));
  it('-p -S 0', () => same(['-p', '-S', '0', 'mixed.img', 'out.img'], raw));
  it('-p with nothing to copy', () => same(['-p', 'empty.img', 'out.img'], raw));
  it('-q -p', () => same(['-q', '-p', 'mixed.img', 'out.img'], raw));
  it('-o preallocation=full', () => same(['-o', 'preallocation=full', 'small.img', 'out.img'], raw));
  it('-o preallocation=falloc', () => same(['-o', 'preallocation=falloc', 'small.img', 'out.img'], raw));
  it('-t writeback -T none -U', () =>
    same(['-t', 'writeback', '-T', 'none', '-U', 'mixed.img', 'out.img'], raw));
  it('-r 1M -C', () => same(['-r', '1M', '-C', 'mixed.img', 'out.img'], raw));
  it('-f raw', () => same(['-f', 'raw', 'mixed.img', 'out.img'], raw));
  // Copy offloading copies what the source stores, zeros included (no zero detection).
  it('-C copies zeros inside data as data', async () => {
    await same(['-C', 'mixed.img', 'out.img'], raw);
    const { q } = twoDirs(['mixed.img', 'c.img']);
    qemuImgOk(['convert', '-C', 'mixed.img', 'c.img'], q);
    qemuImgOk(['convert', 'mixed.img', 'n.img'], q);
    expect(mapOf(q, 'c.img', 'raw')).not.toBe(mapOf(q, 'n.img', 'raw'));
  });
  it('-C -O qcow2', () =>
    same(['-C', '-O', 'qcow2', 'mixed.img', 'out.qcow2'], { file: 'out.qcow2', fmt: 'qcow2' }));
  it('-C -O qcow2 -o cluster_size=4k', () =>
    same(['-C', '-O', 'qcow2', '-o', 'cluster_size=4k', 'mixed.img', 'out.qcow2'], {
      file: 'out.qcow2',
      fmt: 'qcow2',
    }));
  it('empty source', () => same(['empty.img', 'out.img'], raw));
});

const errors: string[][] = [
  [],
  ['-O', 'raw'],
  ['mixed.img'],
  ['missing.img', 'out.img'],
  ['mixed.img', 'missing.img', 'out.img'],
  ['-O', 'foo', 'mixed.img', 'out.img'],
  ['-S', '100', 'mixed.img', 'out.img'],
  ['-S', '32M', 'mixed.img', 'out.img'],
  ['-S', 'x', 'mixed.img', 'out.img'],
  ['-S', '0', '-C', 'mixed.img', 'out.img'],
  ['-c', '-C', 'mixed.img', 'out.img'],
  ['-m', '0', 'mixed.img', 'out.img'],
  ['-m', '17', 'mixed.img', 'out.img'],
  ['-m', 'x', 'mixed.img', 'out.img'],
  ['-n', '-o', 'size=1M', 'mixed.img', 'out.img'],
  ['--target-is-zero', 'mixed.img', 'out.img'],
  ['-c', '-O', 'raw', 'mixed.img', 'out.img'],
  ['-O', 'raw', '-B', 'small.img', 'mixed.img', 'out.img'],
  ['-O', 'raw', '-F', 'raw', 'mixed.img', 'out.img'],
  ['-T', 'foo', 'mixed.img', 'out.img'],
  ['-t', 'foo', 'mixed.img', 'out.img'],
  ['-p', '-t', 'foo', 'mixed.img', 'out.img'],
  ['-l', 'snap', 'mixed.img', 'out.img'],
  ['-l', 'snapshot.id=1', 'mixed.img', 'out.img'],
  ['-l', 'snapshot.foo=1', 'mixed.img', 'out.img'],
  ['-l', 'snap', 'mixed.img', 'small.img', 'out.img'],
  ['-s', 'snap', 'mixed.img', 'out.img'],
  ['-n', 'mixed.img', 'missing.img'],
  ['-n', 'mixed.img', 'tiny.img'],
  ['-O', 'raw', '-o', 'foo=bar', 'mixed.img', 'out.img'],
  ['-O', 'raw', '-o', 'preallocation=xyz', 'mixed.img', 'out.img'],
  ['-o', ',size=1', 'mixed.img', 'out.img'],
  ['-O', 'raw', '-o', 'help'],
  ['-O', 'raw', '-o', 'help', 'mixed.img', 'out.img'],
  ['-r', 'abc', 'mixed.img', 'out.img'],
  ['--skip-broken-bitmaps', 'mixed.img', 'out.img'],
  ['--bitmaps', 'mixed.img', 'out.img'],
  ['--bitmaps', 'mixed.img', 'small.img', 'out.img'],
  ['-x', 'mixed.img', 'out.img'],
  ['mixed.img', 'out.img', '-O'],
  ['--progress=xml', 'mixed.img', 'out.img'],
];

describe('convert errors against qemu-img', () => {
  for (const args of errors) {
    it(args.join(' ') || '(no arguments)', async () => {
      const { q, v } = twoDirs(args);
      const r = qemuImg(['convert', ...args], q);
      const qemu = { code: r.code, stdout: asVdisk(r.stdout), stderr: asVdisk(r.stderr) };
      const ours = await vdisk(['convert', ...args], v);
      if (args.includes('--progress=xml')) {
        // A vdisk extension: qemu-img has no --progress at all.
        expect(ours.code).toBe(1);
        expect(ours.stderr).toBe('vdisk: --progress must be used with human or json as argument.\n');
        return;
      }
      expect(ours).toEqual(qemu);
      // A failed convert leaves the same files behind (qemu-img creates before some checks).
      expect(existsSync(join(v, 'out.img'))).toBe(existsSync(join(q, 'out.img')));
    });
  }
});

describe('--progress=json (a vdisk extension)', () => {
  it('prints one JSON object per update, rising to 100, and nothing else', async () => {
    const { v } = twoDirs(['mixed.img']);
    const ours = await vdisk(['convert', '--progress=json', 'mixed.img', 'out.img'], v);
    expect(ours.code).toBe(0);
    expect(ours.stderr).toBe('');
    const values = ours.stdout
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { progress: number }).progress);
    expect(values[0]).toBe(0);
    expect(values[values.length - 1]).toBe(100);
    expect(values.length).toBeGreaterThan(3);
    for (let i = 1; i < values.length; i++) expect(values[i]!).toBeGreaterThanOrEqual(values[i - 1]!);
  });
  it('compare reports the same way', async () => {
    const ours = await vdisk(['compare', '--progress=json', 'mixed.img', 'mixed.img'], dir);
    const lines = ours.stdout.trim().split('\n');
    expect(lines[lines.length - 1]).toBe('Images are identical.');
    for (const l of lines.slice(0, -1)) expect(l).toMatch(/^\{"progress": \d+\.\d\d\}$/);
  });
});
