/**
 * vdisk amend against qemu-img amend: each amend runs with qemu-img on one copy and with vdisk
 * on another; same exit code, stdout and stderr; vdisk's result is clean for qemu-img check
 * (or exactly as unclean as qemu-img's own result), reads the same as the original
 * (qemu-img compare 0), and has the same `info --output=json` apart from actual-size.
 */
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('vdisk-amend-'));
});
afterEach(() => cleanup());

interface Case {
  name: string;
  create?: string;
  /** qemu-io commands run on the image before amending. */
  io?: string[];
  snapshot?: boolean;
  /** Create the image as an overlay of a qcow2 base (with data in the base). */
  backing?: boolean;
  bitmap?: boolean;
  /** Created with an external data file d.raw (a copy d2.raw exists too). */
  dataFile?: boolean;
  args: string[];
}

const data = ['write -P 0x11 0 1M', 'write -z 2M 1M', 'write -P 0x22 3M 64k', 'write -z 3M 4k'];

const cases: Case[] = [
  { name: 'downgrade with zero clusters', io: data, args: ['-o', 'compat=0.10'] },
  { name: 'downgrade, progress', io: data, args: ['-p', '-o', 'compat=0.10'] },
  {
    name: 'downgrade an overlay: zero clusters become data',
    backing: true,
    io: data,
    args: ['-o', 'compat=0.10'],
  },
  { name: 'downgrade with a snapshot', io: data, snapshot: true, args: ['-o', 'compat=0.10'] },
  {
    name: 'downgrade, lazy refcounts',
    create: 'lazy_refcounts=on',
    io: data,
    args: ['-o', 'compat=0.10'],
  },
  { name: 'downgrade refused: extended L2', create: 'extended_l2=on', io: data, args: ['-o', 'compat=v2'] },
  { name: 'downgrade refused: refcount bits', create: 'refcount_bits=8', args: ['-o', 'compat=0.10'] },
  {
    name: 'downgrade of zstd without compressed clusters',
    create: 'compression_type=zstd',
    io: data,
    args: ['-o', 'compat=0.10'],
  },
  {
    name: 'downgrade refused: zstd compressed clusters',
    create: 'compression_type=zstd',
    io: ['write -c -P 0x33 0 64k'],
    args: ['-o', 'compat=0.10'],
  },
  {
    name: 'downgrade with a bitmap (allowed, as qemu-img)',
    bitmap: true,
    io: data,
    args: ['-o', 'compat=0.10'],
  },
  { name: 'upgrade', create: 'compat=0.10', io: ['write -P 0x11 0 1M'], args: ['-o', 'compat=1.1'] },
  { name: 'upgrade, progress', create: 'compat=0.10', args: ['-p', '-o', 'compat=v3'] },
  {
    name: 'upgrade with a snapshot and lazy refcounts',
    create: 'compat=0.10',
    io: ['write -P 0x11 0 1M'],
    snapshot: true,
    args: ['-o', 'compat=1.1,lazy_refcounts=on'],
  },
  { name: 'lazy refcounts on', io: data, args: ['-o', 'lazy_refcounts=on'] },
  { name: 'lazy refcounts off', create: 'lazy_refcounts=on', io: data, args: ['-o', 'lazy_refcounts=off'] },
  { name: 'lazy refcounts on a v2 image', create: 'compat=0.10', args: ['-o', 'lazy_refcounts=on'] },
  { name: 'refcount bits 16 → 1', io: data, args: ['-o', 'refcount_bits=1'] },
  { name: 'refcount bits 16 → 64', io: data, args: ['-q', '-o', 'refcount_bits=64'] },
  {
    name: 'refcount bits 8 → 2, small clusters',
    create: 'refcount_bits=8,cluster_size=4k',
    io: ['write -P 0x11 0 3M', 'write -z 5M 1M'],
    args: ['-o', 'refcount_bits=2'],
  },
  {
    name: 'refcount bits refused: shared clusters',
    io: data,
    snapshot: true,
    args: ['-o', 'refcount_bits=1'],
  },
  { name: 'refcount bits with a snapshot', io: data, snapshot: true, args: ['-o', 'refcount_bits=4'] },
  {
    name: 'refcount bits and downgrade',
    create: 'refcount_bits=4',
    io: data,
    args: ['-o', 'refcount_bits=16,compat=0.10'],
  },
  { name: 'refcount bits on v2 refused', create: 'compat=0.10', args: ['-o', 'refcount_bits=8'] },
  { name: 'refcount bits not a power of two', args: ['-o', 'refcount_bits=3'] },
  { name: 'refcount bits not a number', args: ['-o', 'refcount_bits=x'] },
  { name: 'size grows', io: data, args: ['-o', 'size=20M'] },
  { name: 'size shrinks (allowed, as qemu-img)', io: data, args: ['-o', 'size=2M'] },
  { name: 'size not a multiple of 512', io: data, args: ['-o', 'size=10000'] },
  { name: 'data_file renamed', dataFile: true, io: data, args: ['-o', 'data_file=DIR/d2.raw'] },
  {
    name: 'data_file_raw off',
    dataFile: true,
    create: 'data_file_raw=on',
    io: data,
    args: ['-o', 'data_file_raw=off'],
  },
  { name: 'data_file_raw on again refused', dataFile: true, io: data, args: ['-o', 'data_file_raw=on'] },
  { name: 'downgrade refused: data file', dataFile: true, io: data, args: ['-o', 'compat=0.10'] },
  { name: 'refcount bits with a data file', dataFile: true, io: data, args: ['-o', 'refcount_bits=8'] },
  { name: 'backing file change refused', backing: true, args: ['-o', 'backing_file=other.qcow2'] },
  {
    name: 'backing file unchanged',
    backing: true,
    args: ['-o', 'backing_file=base.qcow2,backing_fmt=qcow2'],
  },
  { name: 'data_file without one', args: ['-o', 'data_file=x.raw'] },
  { name: 'data_file_raw=on on an existing image', args: ['-o', 'data_file_raw=on'] },
  { name: 'data_file_raw=off', args: ['-o', 'data_file_raw=off'] },
  { name: 'creation-only option', args: ['-o', 'cluster_size=4k'] },
  { name: 'unknown option', args: ['-o', 'bogus=1'] },
  { name: 'bad compat', args: ['-o', 'compat=0.9'] },
  { name: 'encryption options', args: ['-o', 'encrypt.new-secret=x'] },
  { name: 'bad bool', args: ['-o', 'lazy_refcounts=maybe'] },
  { name: 'bad option list', args: ['-o', ''] },
  { name: 'bad cache mode', args: ['-t', 'bogus', '-o', 'lazy_refcounts=on'] },
  { name: 'no -o', args: [] },
  { name: 'help with the image', args: ['-o', 'help'] },
  { name: 'repeated -o', args: ['-o', 'lazy_refcounts=on', '-o', 'refcount_bits=8'] },
];

function makeImage(c: Case, path: string): void {
  if (c.backing) {
    const base = join(dir, 'base.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', base, '8M']);
    qemuIo(base, ['write -P 0x44 0 8M'], 'qcow2');
    qemuImgOk([
      'create',
      '-q',
      '-f',
      'qcow2',
      '-b',
      'base.qcow2',
      '-F',
      'qcow2',
      ...(c.create ? ['-o', c.create] : []),
      path,
    ]);
  } else {
    // qemu resolves a relative data file name against its working directory: absolute here.
    const opts = [
      ...(c.dataFile ? [`data_file=${join(dir, 'd.raw')}`] : []),
      ...(c.create ? [c.create] : []),
    ].join(',');
    qemuImgOk(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), path, '8M'], dir);
  }
  if (c.io) qemuIo(path, c.io, 'qcow2');
  if (c.dataFile) copyFileSync(join(dir, 'd.raw'), join(dir, 'd2.raw'));
  if (c.snapshot) {
    qemuImgOk(['snapshot', '-c', 's1', path]);
    qemuIo(path, ['write -P 0x55 512k 128k', 'write -z 0 64k'], 'qcow2');
  }
  if (c.bitmap) qemuImgOk(['bitmap', '--add', path, 'bm0']);
}

const info = (f: string) =>
  qemuImg(['info', '--output=json', '-U', f], dir)
    .stdout.replace(/"actual-size": \d+,?/, '')
    .replaceAll(f, 'IMG');

describe('amend against qemu-img', () => {
  it.each(cases.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const orig = join(dir, 'orig.qcow2');
    const q = join(dir, 'q.qcow2');
    const v = join(dir, 'v.qcow2');
    makeImage(c, orig);
    copyFileSync(orig, q);
    copyFileSync(orig, v);
    const withFile = c.name === 'no -o' ? ['-q'] : [];
    const args = c.args.map((a) => a.replace('DIR/', `${dir}/`));
    const qr = qemuImg(['amend', ...args, ...withFile, q], dir);
    const vr = await vdisk(['amend', ...args, ...withFile, v], dir);
    expect(vr.code).toBe(qr.code);
    const norm = (s: string) =>
      s
        .replace(/^vdisk:/gm, 'qemu-img:')
        .replaceAll("'vdisk ", "'qemu-img ")
        .replaceAll(v, 'IMG')
        .replaceAll(q, 'IMG');
    expect(norm(vr.stderr)).toBe(norm(qr.stderr));
    if (c.args.includes('-p') && c.args.some((a) => a.includes('refcount_bits'))) {
      // The number of steps differs with the refcount walk; the bar starts and ends alike.
      const ends = (s: string) => [s.split('\r')[0], s.split('\r').at(-2)];
      expect(ends(vr.stdout)).toEqual(ends(qr.stdout));
    } else {
      expect(vr.stdout).toBe(qr.stdout);
    }
    // The content never changes (a size that grows adds zeros; a shrink cuts as qemu-img's).
    if (!c.args.some((a) => a.includes('size=2M')))
      expect(qemuImg(['compare', '-U', orig, v], dir).code).toBe(0);
    expect(qemuImg(['compare', '-U', q, v], dir).code).toBe(0);
    const qc = qemuImg(['check', '-U', q], dir);
    const vc = qemuImg(['check', '-U', v], dir);
    expect(vc.stdout + vc.stderr).not.toMatch(/ERROR/);
    // Clean, unless qemu-img's own result leaks too (bitmaps dropped by a downgrade).
    expect(vc.code).toBe(qc.code === 3 ? 3 : 0);
    expect(info(v)).toContain('"format": "qcow2"');
    expect(info(v)).toBe(info(q));
  });

  it('-o help with -f and no image, -f of a format without amend, unknown format', async () => {
    for (const args of [
      ['-f', 'qcow2', '-o', 'help'],
      ['-f', 'raw', '-o', 'help'],
      ['-f', 'bogus', '-o', '?'],
      ['-o', 'help'],
    ]) {
      const qr = qemuImg(['amend', ...args], dir);
      const vr = await vdisk(['amend', ...args], dir);
      expect(vr.code).toBe(qr.code);
      expect(vr.stdout).toBe(qr.stdout);
      expect(vr.stderr.replace(/^vdisk:/gm, 'qemu-img:')).toBe(qr.stderr);
    }
  });

  it('raw images: no amend, a missing image: qemu-img open error', async () => {
    const r = join(dir, 'r.raw');
    qemuImgOk(['create', '-q', '-f', 'raw', r, '1M']);
    for (const args of [
      ['-f', 'raw', '-o', 'size=2M', 'r.raw'],
      ['-o', 'size=2M', 'r.raw'],
      ['-o', 'lazy_refcounts=on', 'missing.qcow2'],
    ]) {
      const qr = qemuImg(['amend', ...args], dir);
      const vr = await vdisk(['amend', ...args], dir);
      expect(vr.code).toBe(qr.code);
      expect(vr.stderr.replace(/^vdisk:/gm, 'qemu-img:')).toBe(qr.stderr);
    }
    expect(existsSync(join(dir, 'missing.qcow2'))).toBe(false);
  });
});
