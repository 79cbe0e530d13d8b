/**
 * qcow2 create and info against qemu-img: the same "Formatting" line, the same file layout
 * (byte-identical files), the same `info` text and JSON, for many option combinations,
 * including images with snapshots and bitmaps added by qemu-img.
 */

import { spawnSync } from 'node:child_process';
import { closeSync, fsyncSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-create-'));
});
afterAll(() => cleanup());

const combos: Array<[string, string]> = [
  ['', '1G'],
  ['cluster_size=512', '1G'],
  ['cluster_size=512,refcount_bits=64', '1G'],
  ['cluster_size=512,refcount_bits=64', '20G'],
  ['refcount_bits=1,cluster_size=512', '10G'],
  ['cluster_size=4k', '100M'],
  ['cluster_size=8k', '100M'],
  ['cluster_size=2M', '1P'],
  ['', '100T'],
  ['compat=0.10', '1G'],
  ['compat=v2', '1000'],
  ['compat=1.1,lazy_refcounts=on', '10G'],
  ['refcount_bits=8', '3G'],
  ['extended_l2=on', '2G'],
  ['extended_l2=on,cluster_size=16k', '1G'],
  ['compression_type=zstd', '1G'],
  ['preallocation=metadata', '1G'],
  ['preallocation=metadata,cluster_size=4k', '100M'],
  ['preallocation=falloc', '200M'],
  ['preallocation=full', '20M'],
  ['preallocation=metadata,compat=0.10', '64M'],
  ['preallocation=metadata,extended_l2=on', '64M'],
  ['preallocation=falloc,extended_l2=on', '32M'],
  ['', '0'],
  ['', '12345'],
];

async function both(args: string[]): Promise<void> {
  const q = qemuImg(['create', '-f', 'qcow2', ...args.map((a) => a.replaceAll('@', 'qqq'))], dir);
  const v = await vdisk(['create', '-f', 'qcow2', ...args.map((a) => a.replaceAll('@', 'vvv'))], dir);
  expect(v.stdout).toBe(q.stdout.replaceAll('qqq', 'vvv'));
  expect(v.stderr.replaceAll('vdisk:', 'qemu-img:')).toBe(q.stderr.replaceAll('qqq', 'vvv'));
  expect(v.code).toBe(q.code);
}

async function sameInfo(q: string, v: string, extra: string[] = [], loose = false): Promise<void> {
  // Let delayed allocation settle so that st_blocks ("disk size") is stable for both files.
  for (const f of [q, v]) {
    const fd = openSync(f, 'r');
    fsyncSync(fd);
    closeSync(fd);
  }
  // With falloc/full the file system's own extent blocks (st_blocks) vary by a block or
  // two from file to file: "disk size" is then compared to within 64 KiB.
  const fix = (s: string) =>
    loose
      ? s.replace(/^disk size: .*$/m, 'disk size: X').replace(/"actual-size": \d+/, '"actual-size": X')
      : s;
  const qi = qemuImgOk(['info', ...extra, q]);
  const vi = await vdisk(['info', ...extra, v]);
  expect(vi.stderr).toBe('');
  expect(fix(vi.stdout)).toBe(fix(qi.replaceAll(q, v)));
  const qj = qemuImgOk(['info', '--output=json', ...extra, q]);
  const vj = await vdisk(['info', '--output=json', ...extra, v]);
  expect(fix(vj.stdout)).toBe(fix(qj.replaceAll(q, v)));
  if (loose) {
    const a = (j: string) => (JSON.parse(j) as { 'actual-size': number })['actual-size'];
    expect(Math.abs(a(vj.stdout) - a(qj))).toBeLessThanOrEqual(65536);
  }
}

describe('qcow2 create against qemu-img', () => {
  for (const [opts, size] of combos) {
    it(`creates the same image (${opts || 'defaults'} ${size})`, async () => {
      const o = opts ? ['-o', opts] : [];
      await both([...o, '@.qcow2', size]);
      const q = join(dir, 'qqq.qcow2');
      const v = join(dir, 'vvv.qcow2');
      expect(qemuImg(['check', v]).code).toBe(0);
      // Same layout, byte for byte (preallocated data regions are compared by size only).
      const qb = readFileSync(q);
      const vb = readFileSync(v);
      expect(vb.length).toBe(qb.length);
      if (qb.length < 64 << 20) expect(vb.equals(qb)).toBe(true);
      await sameInfo(q, v, [], /falloc|full/.test(opts));
    });
  }

  it('creates overlays with a backing file and an external data file like qemu-img', async () => {
    qemuImgOk(['create', '-f', 'qcow2', 'base.qcow2', '64M'], dir);
    await both(['-b', 'base.qcow2', '-F', 'qcow2', '@.qcow2']);
    await sameInfo(join(dir, 'qqq.qcow2'), join(dir, 'vvv.qcow2'));
    await both(['-b', 'base.qcow2', '-F', 'qcow2', '-o', 'compat=0.10', '@.qcow2', '32M']);
    await sameInfo(join(dir, 'qqq.qcow2'), join(dir, 'vvv.qcow2'));
    await both(['-o', 'data_file=@.data,data_file_raw=on', '@.qcow2', '16M']);
    expect(readFileSync(join(dir, 'vvv.qcow2')).length).toBe(readFileSync(join(dir, 'qqq.qcow2')).length);
    const qi = qemuImgOk(['info', '--output=json', join(dir, 'qqq.qcow2')]);
    const vi = await vdisk(['info', '--output=json', join(dir, 'vvv.qcow2')]);
    expect(vi.stdout).toBe(qi.replaceAll('qqq', 'vvv'));
    // After writes through both tools: the data file stays out of "disk size", as in qemu 7.2.
    for (const n of ['qqq', 'vvv']) {
      const r = spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 1M', `${n}.qcow2`], { cwd: dir });
      expect(r.status).toBe(0);
    }
    for (const out of [[], ['--output=json']]) {
      const q = qemuImgOk(['info', ...out, join(dir, 'qqq.qcow2')]);
      const v = await vdisk(['info', ...out, join(dir, 'vvv.qcow2')]);
      expect(v.stdout).toBe(q.replaceAll('qqq', 'vvv'));
    }
  });

  it('preallocates with an external data file like qemu-img', async () => {
    for (const p of ['metadata', 'falloc', 'full']) {
      await both(['-o', `preallocation=${p},data_file=@.data`, '@.qcow2', '32M']);
      const q = readFileSync(join(dir, 'qqq.qcow2'));
      const v = readFileSync(join(dir, 'vvv.qcow2'));
      expect(Buffer.from(v.toString('latin1').replaceAll('vvv', 'qqq'), 'latin1').equals(q)).toBe(true);
      expect(readFileSync(join(dir, 'vvv.data')).length).toBe(readFileSync(join(dir, 'qqq.data')).length);
      const r = spawnSync('qemu-img', ['check', 'vvv.qcow2'], { cwd: dir });
      expect(r.status).toBe(0);
    }
  });

  it('rejects what qemu-img rejects, with the same words', async () => {
    for (const o of [
      'compat=0.10,lazy_refcounts=on',
      'compat=0.10,refcount_bits=8',
      'compat=0.10,extended_l2=on',
      'compat=0.10,compression_type=zstd',
      'compat=0.10,data_file=x',
      'cluster_size=1000',
      'cluster_size=4M',
      'cluster_size=abc',
      'refcount_bits=3',
      'refcount_bits=128',
      'refcount_bits=abc',
      'extended_l2=on,cluster_size=8k',
      'compression_type=lz4',
      'compat=2',
      'preallocation=xx',
      'data_file_raw=on',
      'lazy_refcounts=maybe',
    ]) {
      await both(['-o', o, '@.qcow2', '1M']);
    }
    qemuImgOk(['create', '-f', 'raw', 'b.raw', '1M'], dir);
    await both(['-o', 'preallocation=full', '-b', 'b.raw', '-F', 'raw', '@.qcow2']);
  });

  it('lists its options like qemu-img (-o help)', async () => {
    const q = qemuImgOk(['create', '-f', 'qcow2', '-o', 'help']);
    const v = await vdisk(['create', '-f', 'qcow2', '-o', 'help']);
    expect(v.stdout).toBe(q);
  });
});

describe('qcow2 info against qemu-img', () => {
  it('shows a backing chain (--backing-chain) as qemu-img does', async () => {
    const base = join(dir, 'chain-base.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', base, '64M']);
    qemuIo(base, ['write -P 1 0 1M'], 'qcow2');
    qemuImgOk(['snapshot', '-c', 's1', base]);
    const top = join(dir, 'chain-top.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-b', 'chain-base.qcow2', '-F', 'qcow2', top]);
    qemuIo(top, ['write -P 2 0 64k'], 'qcow2');
    for (const out of [[], ['--output=json']]) {
      const q = qemuImgOk(['info', '--backing-chain', ...out, top]);
      const v = await vdisk(['info', '--backing-chain', ...out, top]);
      expect(v.stdout).toBe(q);
    }
  });

  it('shows snapshots, bitmaps, dirty and corrupt state as qemu-img does', async () => {
    const p = join(dir, 'snap.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', p, '64M']);
    qemuIo(p, ['write -P 1 0 1M'], 'qcow2');
    qemuImgOk(['snapshot', '-c', 'first', p]);
    qemuIo(p, ['write -P 2 0 64k'], 'qcow2');
    qemuImgOk(['snapshot', '-c', 'second snapshot', p]);
    qemuImgOk(['bitmap', '--add', p, 'bm0']);
    qemuImgOk(['bitmap', '--add', '-g', '1M', '--disable', p, 'bm1']);
    await sameInfo(p, p);
    await sameInfo(p, p, ['-U']);
    // Lazy refcounts with a dirty header: "cleanly shut down: no".
    const d = join(dir, 'dirty.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-o', 'lazy_refcounts=on', d, '16M']);
    const b = readFileSync(d);
    b[79] = b[79]! | 1;
    const { writeFileSync } = await import('node:fs');
    writeFileSync(d, b);
    await sameInfo(d, d);
    b[79] = (b[79]! & ~1) | 2;
    writeFileSync(d, b);
    await sameInfo(d, d);
  });
});
