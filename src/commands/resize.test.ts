import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  copySparse,
  hostFileMap,
  qemuImg,
  qemuImgOk,
  qemuIo,
  qemuRawDigest,
  tempDir,
  vdisk,
} from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

describe('resize against qemu-img', () => {
  const cases: Array<[string, string[]]> = [
    ['raw', ['20M']],
    ['raw', ['+1000']],
    ['raw', ['5M']],
    ['raw', ['--shrink', '5M']],
    ['raw', ['--shrink', '--', '-3M']],
    ['raw', ['--preallocation=falloc', '20M']],
    ['raw', ['--preallocation=full', '+1M']],
    ['raw', ['--shrink', '0']],
    ['qed', ['20M']],
    ['qed', ['+1T']],
    ['qed', ['5M']],
    ['qed', ['--shrink', '5M']],
    ['qed', ['--preallocation=full', '20M']],
    ['qed', ['1000']],
    ['qcow2', ['20M']],
    ['qcow2', ['+1T']],
    ['qcow2', ['+100']],
    ['qcow2', ['5M']],
    ['qcow2', ['--shrink', '5M']],
    ['qcow2', ['--shrink', '--', '-9M']],
    ['qcow2', ['--shrink', '1536k']],
    ['qcow2-512', ['--shrink', '3M']],
    ['qcow2-512', ['--shrink', '1M']],
    ['qcow2', ['--shrink', '--preallocation=falloc', '5M']],
    ['qcow2', ['--preallocation=bogus', '20M']],
    ['qcow2', ['--preallocation=metadata', '20M']],
    ['qcow2', ['--preallocation=falloc', '+5M']],
    ['qcow2', ['--preallocation=full', '20M']],
    ['qcow2', ['--preallocation=full', '10M']],
    ['raw', ['--preallocation=metadata', '20M']],
    ['raw', ['--preallocation=falloc', '10M']],
  ];
  it.each(cases)('%s %j: same output, exit code, size and content', async (kind, args) => {
    // qcow2-512: 512-byte clusters, below the host's block size (a shrink's frees must be
    // merged before they are punched to give any space back).
    const fmt = kind === 'qcow2-512' ? 'qcow2' : kind;
    const v = join(dir, `v.${fmt}`);
    const q = join(dir, `q.${fmt}`);
    const opts = kind === 'qcow2-512' ? ['-o', 'cluster_size=512'] : [];
    qemuImgOk(['create', '-q', '-f', fmt, ...opts, q, '10M']);
    qemuIo(q, ['write -P 0x5a 1M 8M'], fmt);
    copySparse(q, v);
    const qr = qemuImg(['resize', '-f', fmt, ...withFile(args, q)]);
    const vr = await vdisk(['resize', '-f', fmt, ...withFile(args, v)]);
    expect(vr.code).toBe(qr.code);
    expect(vr.stdout).toBe(qr.stdout);
    expect(vr.stderr.replace(/^vdisk:/gm, 'qemu-img:')).toBe(qr.stderr);
    const size = (p: string) =>
      (JSON.parse(qemuImgOk(['info', '--output=json', '-f', fmt, p])) as { 'virtual-size': number })[
        'virtual-size'
      ];
    expect(size(v)).toBe(size(q));
    if (size(q) <= 64 << 20) expect(qemuRawDigest(v, fmt)).toBe(qemuRawDigest(q, fmt));
    else expect(qemuImg(['compare', '-f', fmt, '-F', fmt, v, q]).code).toBe(0);
    // falloc and full lay the new area out differently from QEMU's (its refcount table moves
    // to the file's end): only the space used is compared, below.
    const prealloc = args.some((a) => /^--preallocation=(falloc|full)$/.test(a));
    if (fmt === 'qcow2') expectSameQcow2(v, q, prealloc ? 'none' : kind === 'qcow2-512' ? 'about' : 'map');
  });

  // Shrinking and growing an image with an internal snapshot (qemu-img 7.2 allows both), and
  // growing past one L2 table's span so that the L1 table moves.
  const withSnap: string[][][] = [[['--shrink', '3M']], [['40M']], [['--shrink', '3M'], ['+600M']]];
  it.each(withSnap)('qcow2 with 4k clusters and a snapshot, %j', async (...steps) => {
    const v = join(dir, 'v.qcow2');
    const q = join(dir, 'q.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', q, '10M']);
    qemuIo(q, ['write -P 0x5a 1M 8M'], 'qcow2');
    qemuImgOk(['snapshot', '-c', 's1', q]);
    qemuIo(q, ['write -P 0x6b 2M 4M'], 'qcow2');
    copySparse(q, v);
    for (const st of steps) {
      const qr = qemuImg(['resize', '-f', 'qcow2', ...withFile(st, q)]);
      const vr = await vdisk(['resize', '-f', 'qcow2', ...withFile(st, v)]);
      expect(vr.code).toBe(qr.code);
      expect(vr.stdout).toBe(qr.stdout);
    }
    expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', v, q]).code).toBe(0);
    expectSameQcow2(v, q);
    const snapDigest = (f: string) => {
      const out = join(dir, `${f === v ? 'v' : 'q'}-s1.raw`);
      qemuImgOk(['convert', '-l', 'snapshot.name=s1', '-O', 'raw', f, out]);
      return qemuRawDigest(out, 'raw');
    };
    expect(snapDigest(v)).toBe(snapDigest(q));
  });
});

describe('qcow2 resize --preallocation against qemu-img', () => {
  const setups: Array<[string, string, string[], boolean]> = [
    ['default clusters', '', ['write -P 0x5a 1M 8M'], false],
    ['4k clusters: new L2 tables and a larger L1 table', 'cluster_size=4k', ['write -P 0x5a 1M 2M'], false],
    ['unaligned old size', 'cluster_size=64k', ['write -P 0x5a 0 512k'], false],
    ['extended L2', 'extended_l2=on', ['write -P 0x5a 1M 1M'], false],
    ['lazy refcounts', 'lazy_refcounts=on', ['write -P 0x5a 1M 1M'], false],
    ['an overlay', 'cluster_size=4k', ['write -P 0x5a 1M 1M'], true],
  ];
  const modes = ['metadata', 'falloc', 'full'];
  const cases = setups.flatMap((s) => modes.map((m) => [s[0], m, s] as const));
  it.each(cases)('%s, %s', async (_n, mode, [, opts, io, backed]) => {
    const v = join(dir, 'v.qcow2');
    const q = join(dir, 'q.qcow2');
    const oldSize = opts.startsWith('cluster_size=64k') ? '1000k' : '10M';
    if (backed) {
      qemuImgOk(['create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '32M']);
      qemuIo(join(dir, 'base.qcow2'), ['write -P 0x33 0 32M'], 'qcow2');
    }
    qemuImgOk([
      'create',
      '-q',
      '-f',
      'qcow2',
      ...(opts ? ['-o', opts] : []),
      ...(backed ? ['-b', 'base.qcow2', '-F', 'qcow2'] : []),
      q,
      oldSize,
    ]);
    qemuIo(q, io, 'qcow2');
    copySparse(q, v);
    const size = opts === 'cluster_size=4k' ? '+600M' : '+5M';
    const qr = qemuImg(['resize', `--preallocation=${mode}`, q, size], dir);
    const vr = await vdisk(['resize', `--preallocation=${mode}`, v, size], dir);
    expect(vr.code).toBe(qr.code);
    expect(vr.stdout).toBe(qr.stdout);
    expect(vr.stderr.replace(/^vdisk:/gm, 'qemu-img:')).toBe(qr.stderr);
    expect(qemuImg(['compare', v, q]).code).toBe(0);
    // metadata: the same layout as qemu-img's, guest map and file map alike.
    expectSameQcow2(v, q, mode === 'metadata' ? 'map' : 'none');
    if (mode === 'metadata') {
      expect(qemuImgOk(['map', '--output=json', v])).toBe(qemuImgOk(['map', '--output=json', q]));
    }
    // Disk usage of the same order: falloc and full allocate the new area, metadata does not.
    const actual = (f: string) =>
      (JSON.parse(qemuImgOk(['info', '--output=json', f])) as { 'actual-size': number })['actual-size'];
    const [a, b] = [actual(v), actual(q)];
    expect(a).toBeGreaterThan(b / 2);
    expect(a).toBeLessThan(b * 2);
  });
});

/**
 * qemu-img check clean on vdisk's result, same info JSON apart from actual-size and names;
 * `space`: the host file's allocation compared as well, exactly (`'map'`) or to within 64 KiB
 * (`'about'`: 512-byte clusters, where which host blocks stay depends on the order QEMU's
 * caches write back zeroed tables around the holes it punches).
 */
function expectSameQcow2(v: string, q: string, space: 'map' | 'about' | 'none' = 'map'): void {
  expect(qemuImg(['check', v]).code).toBe(0);
  const info = (f: string) =>
    qemuImgOk(['info', '--output=json', f])
      .replace(/"actual-size": \d+,?/, '')
      .replaceAll(f, 'IMG');
  expect(info(v)).toBe(info(q));
  // The same space left in the file: what a shrink frees goes back to the host (QEMU
  // discards it, QCOW2_DISCARD_ALWAYS), and the header and refcount table are written as
  // qemu-img writes them.
  if (space === 'map') expect(hostFileMap(v)).toBe(hostFileMap(q));
  const used = (f: string) => statSync(f).blocks * 512;
  if (space === 'about') expect(Math.abs(used(v) - used(q))).toBeLessThanOrEqual(64 * 1024);
}

/** Put the file name before the size (the last argument), keeping a `--` before a negative size. */
function withFile(args: string[], file: string): string[] {
  const size = args.at(-1)!;
  const rest = args.slice(0, -1).filter((a) => a !== '--');
  return size.startsWith('-') ? [...rest, '--', file, size] : [...rest, file, size];
}

describe('resize of an overlay whose backing file is longer, against qemu-img', () => {
  // QEMU's bdrv_co_truncate asks for the new area to read as zeros (BDRV_REQ_ZERO_WRITE)
  // when the backing file reaches past the old end: qcow2 v3 sets zero flags (and writes
  // the part of a cluster the old end cuts), other drivers refuse. Before, vdisk showed the
  // backing file's data there.
  const cases: Array<[string, string, string, string[], string[]]> = [
    ['4k clusters', 'qcow2', 'cluster_size=4k', [], ['+5M']],
    // (qemu-io 7.2 fails writes that span a full cluster and the partial last one of an
    // overlay: the data here stays inside the last cluster.)
    ['unaligned old end in allocated data', 'qcow2', 'cluster_size=64k', ['write -P 7 9984k 8k'], ['+5M']],
    ['unaligned old end, unallocated', 'qcow2', 'cluster_size=64k', [], ['+5M']],
    ['past the backing file', 'qcow2', '', [], ['+30M']],
    ['preallocation=metadata', 'qcow2', 'cluster_size=4k', [], ['--preallocation=metadata', '+5M']],
    ['v2: refused', 'qcow2', 'compat=0.10', [], ['+5M']],
    ['qed: refused', 'qed', '', [], ['+5M']],
  ];
  it.each(cases)('%s', async (_n, fmt, opts, io, args) => {
    const base = join(dir, 'base.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', base, '32M']);
    qemuIo(base, ['write -P 0x33 0 32M'], 'qcow2');
    const q = join(dir, `q.${fmt}`);
    const v = join(dir, `v.${fmt}`);
    const size = opts === 'cluster_size=64k' ? '10000k' : '10M';
    qemuImgOk(['create', '-q', '-f', fmt, ...(opts ? ['-o', opts] : []), '-b', base, '-F', 'qcow2', q, size]);
    if (io.length > 0) qemuIo(q, io, fmt);
    copySparse(q, v);
    const qr = qemuImg(['resize', '-f', fmt, ...withFile(args, q)]);
    const vr = await vdisk(['resize', '-f', fmt, ...withFile(args, v)]);
    expect(vr.stderr.replace(/^vdisk:/gm, 'qemu-img:')).toBe(qr.stderr);
    expect(vr.stdout).toBe(qr.stdout);
    expect(vr.code).toBe(qr.code);
    expect(qemuImg(['compare', '-f', fmt, '-F', fmt, v, q]).code).toBe(0);
    const map = (f: string) => qemuImgOk(['map', '--output=json', '-f', fmt, f]);
    expect(map(v)).toBe(map(q));
    expect(hostFileMap(v)).toBe(hostFileMap(q));
  });
});

describe('resize of formats qemu-img cannot resize', () => {
  it.each(['qcow', 'vmdk', 'vhdx', 'vpc', 'vdi', 'parallels'])('%s: the same error', async (fmt) => {
    const q = join(dir, `q.${fmt}`);
    const v = join(dir, `v.${fmt}`);
    qemuImgOk(['create', '-q', '-f', fmt, q, '10M']);
    copySparse(q, v);
    const qr = qemuImg(['resize', '-f', fmt, q, '+5M']);
    const vr = await vdisk(['resize', '-f', fmt, v, '+5M']);
    expect(vr.stderr.replace(/^vdisk:/gm, 'qemu-img:')).toBe(qr.stderr);
    expect(vr.code).toBe(qr.code);
  });
});
