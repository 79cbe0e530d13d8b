/**
 * qcow2 persistent dirty bitmaps against QEMU: images with bitmaps made by qemu-img read the
 * same (info, check), damaged bitmap metadata fails with qemu-img's messages, and guest
 * writes through vdisk leave the enabled bitmaps dirty over exactly the written granules, as
 * qemu-nbd -B reads them back (nbdinfo --map=qemu:dirty-bitmap:NAME).
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { expectedBitmapMap, qemuBitmapMap as qemuBitmapMapIn } from '../../test/bitmap-helpers.js';
import { execOk, serveQemu, serveVdisk } from '../../test/nbd-helpers.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';
import { bitmapBytes, setRange } from './bitmaps.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-bitmaps-'));
});
afterAll(() => cleanup());

const qemuBitmapMap = (image: string, name: string) => qemuBitmapMapIn(dir, image, name);
const expectedMap = expectedBitmapMap;

function withBitmaps(name: string, size = '64M'): string {
  const p = join(dir, name);
  qemuImgOk(['create', '-q', '-f', 'qcow2', p, size]);
  qemuImgOk(['bitmap', '--add', p, 'b0']);
  qemuImgOk(['bitmap', '--add', '-g', '1M', '--disable', p, 'b1']);
  qemuImgOk(['bitmap', '--add', '-g', '512', p, 'b2']);
  qemuIo(p, ['write -P 7 0 64k']);
  return p;
}

/** The bitmaps extension and directory of a qcow2 file (for damaging them on purpose). */
function bitmapsExt(b: Buffer): { ext: number; dir: number } {
  let off = 112;
  for (;;) {
    const type = b.readUInt32BE(off);
    const len = b.readUInt32BE(off + 4);
    if (type === 0) throw new Error('no bitmaps extension');
    if (type === 0x23852875) return { ext: off + 8, dir: Number(b.readBigUInt64BE(off + 24)) };
    off += 8 + Math.ceil(len / 8) * 8;
  }
}

describe('reading', () => {
  it('info (human and JSON) and check match qemu-img on bitmaps qemu-img made', async () => {
    const p = withBitmaps('info.qcow2');
    for (const out of [[], ['--output=json']]) {
      const q = qemuImg(['info', ...out, p]);
      const v = await vdisk(['info', ...out, p]);
      expect(v.stdout).toBe(q.stdout);
      expect(v.code).toBe(0);
      const qc = qemuImg(['check', ...out, p]);
      const vc = await vdisk(['check', ...out, p]);
      expect(vc.stdout).toBe(qc.stdout);
      expect(vc.code).toBe(qc.code);
    }
    expect(qemuImg(['check', p]).stdout).toContain('No errors were found');
  });

  const damage: Array<[string, (b: Buffer, ext: number, dir: number) => void]> = [
    ['reserved flag', (b, _e, d) => b.writeUInt32BE(6, d + 12)],
    ['zero bitmaps', (b, e) => b.writeUInt32BE(0, e)],
    ['more bitmaps in the header', (b, e) => b.writeUInt32BE(4, e)],
    ['huge directory', (b, e) => b.writeBigUInt64BE(1n << 40n, e + 8)],
    ['unaligned directory', (b, e, d) => b.writeBigUInt64BE(BigInt(d + 8), e + 16)],
    ['reserved field', (b, e) => b.writeUInt32BE(1, e + 4)],
    ['granularity 2^40', (b, _e, d) => b.writeUInt8(40, d + 17)],
    ['unknown type', (b, _e, d) => b.writeUInt8(2, d + 16)],
    ['extra data', (b, _e, d) => b.writeUInt32BE(8, d + 20)],
    ['table too large', (b, _e, d) => b.writeUInt32BE(5, d + 8)],
    [
      'table entry with reserved bits',
      (b, _e, d) => b.writeBigUInt64BE(1n << 62n, Number(b.readBigUInt64BE(d))),
    ],
    ['table entry unaligned', (b, _e, d) => b.writeBigUInt64BE(0x10001n, Number(b.readBigUInt64BE(d)))],
    ['name length past the directory', (b, _e, d) => b.writeUInt16BE(4000, d + 18)],
  ];
  it.each(damage)('refuses a damaged bitmap directory as qemu-img does: %s', async (label, fn) => {
    const src = withBitmaps(`damaged-${label.replaceAll(' ', '-')}.qcow2`);
    const b = readFileSync(src);
    const { ext, dir: d } = bitmapsExt(b);
    fn(b, ext, d);
    writeFileSync(src, b);
    for (const cmd of ['info', 'check']) {
      const q = qemuImg([cmd, src]);
      const v = await vdisk([cmd, src]);
      expect(q.code).not.toBe(0);
      expect(v.stderr.replace(/^vdisk:/, 'qemu-img:')).toBe(q.stderr);
      expect(v.code).toBe(q.code);
    }
  });

  it('fails check on a bad table entry of an in-use bitmap as qemu-img does', async () => {
    const src = withBitmaps('inuse-bad.qcow2');
    const b = readFileSync(src);
    const { dir: d } = bitmapsExt(b);
    b.writeUInt32BE(3, d + 12); // in_use | auto
    b.writeBigUInt64BE(1n << 62n, Number(b.readBigUInt64BE(d)));
    writeFileSync(src, b);
    for (const out of [[], ['--output=json']]) {
      const q = qemuImg(['check', ...out, src]);
      const v = await vdisk(['check', ...out, src]);
      expect(v.stdout).toBe(q.stdout);
      expect(v.stderr.replace(/^vdisk:/, 'qemu-img:')).toBe(q.stderr);
      expect(v.code).toBe(q.code);
    }
    // The in-use flag shows in info, as in qemu-img's.
    expect((await vdisk(['info', src])).stdout).toBe(qemuImgOk(['info', src]));
  });
});

describe('writes keep enabled bitmaps right', () => {
  it('marks the written granules dirty in the enabled bitmaps only, and clears in_use at close', async () => {
    const p = withBitmaps('writes.qcow2');
    const size = 64 << 20;
    const img = await openImage(p, { writable: true });
    await img.writeAt(new Uint8Array(4096).fill(1), 5 << 20);
    await img.writeAt(new Uint8Array(65536 + 512).fill(2), (10 << 20) + 512);
    await img.writeZeroes(20 << 20, 1 << 20);
    // While open for writing, qemu sees the bitmaps in use (inconsistent).
    expect(qemuImgOk(['info', '-U', p])).toContain('in-use');
    await img.close();
    const info = qemuImgOk(['info', p]);
    expect(info).not.toContain('in-use');
    expect((await vdisk(['info', p])).stdout).toBe(info);
    expect(qemuImgOk(['check', p])).toContain('No errors were found');
    // b0: 64 KiB granules; its earlier dirty cluster (qemu-io's write at 0) is kept.
    expect(await qemuBitmapMap(p, 'b0')).toBe(
      expectedMap(size, [
        [0, 64 << 10],
        [5 << 20, (5 << 20) + (64 << 10)],
        [10 << 20, (10 << 20) + (128 << 10)],
        [20 << 20, 21 << 20],
      ]),
    );
    // b1 is disabled: only what qemu-io wrote while... nothing (it was disabled then too).
    expect(await qemuBitmapMap(p, 'b1')).toBe(expectedMap(size, []));
    // b2: 512-byte granules, exactly the written bytes.
    expect(await qemuBitmapMap(p, 'b2')).toBe(
      expectedMap(size, [
        [0, 64 << 10],
        [5 << 20, (5 << 20) + 4096],
        [(10 << 20) + 512, (10 << 20) + 512 + 65536 + 512],
        [20 << 20, 21 << 20],
      ]),
    );
  });

  it('reads back what QEMU wrote and keeps it across an open without writes', async () => {
    const p = withBitmaps('reopen.qcow2');
    const before = readFileSync(p);
    const img = await openImage(p, { writable: true });
    await img.close();
    expect(readFileSync(p).equals(before)).toBe(true);
  });

  it('a copy made by vdisk convert -n into an image with bitmaps matches qemu-img convert -n', async () => {
    const src = join(dir, 'src.raw');
    qemuImgOk(['create', '-q', '-f', 'raw', src, '64M']);
    qemuIo(src, ['write -P 1 4M 1M'], 'raw');
    const q = withBitmaps('conv-q.qcow2');
    const v = join(dir, 'conv-v.qcow2');
    copyFileSync(q, v);
    qemuImgOk(['convert', '-n', '-f', 'raw', '-O', 'qcow2', src, q]);
    expect((await vdisk(['convert', '-n', '-f', 'raw', '-O', 'qcow2', src, v])).code).toBe(0);
    for (const name of ['b0', 'b1', 'b2']) {
      expect(await qemuBitmapMap(v, name)).toBe(await qemuBitmapMap(q, name));
    }
    expect(qemuImgOk(['check', v])).toContain('No errors were found');
  });
});

describe('writes through vdisk commands and its NBD server', () => {
  it('vdisk nbd: what a client writes, zeroes and discards ends up dirty, as through qemu-nbd', async () => {
    const q = withBitmaps('nbd-q.qcow2');
    const v = join(dir, 'nbd-v.qcow2');
    copyFileSync(q, v);
    const io = ['write -P 5 3M 4k', 'write -z 7M 64k', 'discard 12M 1M'];
    const qs = await serveQemu(q, join(dir, 'q.sock'), ['-f', 'qcow2', '--discard=unmap']);
    try {
      await execOk('qemu-io', ['-f', 'raw', ...io.flatMap((c) => ['-c', c]), qs.uri]);
    } finally {
      await qs.stop();
    }
    const vs = await serveVdisk(v, join(dir, 'v.sock'), { format: 'qcow2', discard: 'unmap' });
    try {
      await execOk('qemu-io', ['-f', 'raw', ...io.flatMap((c) => ['-c', c]), vs.uri]);
    } finally {
      await vs.stop();
    }
    expect(qemuImgOk(['check', v])).toContain('No errors were found');
    for (const name of ['b0', 'b1', 'b2']) {
      expect(await qemuBitmapMap(v, name), name).toBe(await qemuBitmapMap(q, name));
    }
  });

  it('vdisk commit: the committed ranges end up dirty in the base, as with qemu-img commit', async () => {
    const maps: string[][] = [];
    for (const tool of ['q', 'v']) {
      const base = withBitmaps(`commit-base-${tool}.qcow2`);
      const top = join(dir, `commit-top-${tool}.qcow2`);
      qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
      qemuIo(top, ['write -P 6 20M 192k', 'write -P 6 63M 4k']);
      if (tool === 'q') qemuImgOk(['commit', '-q', top]);
      else expect((await vdisk(['commit', '-q', top])).code).toBe(0);
      expect(qemuImgOk(['check', base])).toContain('No errors were found');
      maps.push(await Promise.all(['b0', 'b1', 'b2'].map((n) => qemuBitmapMap(base, n))));
    }
    expect(maps[1]).toEqual(maps[0]);
  });
});

describe('resize keeps bitmaps as qemu-img 7.2 does', () => {
  it.each([
    ['grow', ['128M']],
    ['shrink', ['--shrink', '32M']],
    ['shrink to a partial granule', ['--shrink', '33M']],
  ])('%s: same directory, same contents, clean check', async (label, args) => {
    const q = withBitmaps(`resize-${label.replaceAll(' ', '-')}-q.qcow2`);
    qemuIo(q, ['write -P 9 60M 4M', 'write 32M 1536k']);
    const v = q.replace('-q.qcow2', '-v.qcow2');
    copyFileSync(q, v);
    const qr = qemuImg(['resize', q, ...args]);
    const vr = await vdisk(['resize', v, ...args]);
    expect(vr.stdout).toBe(qr.stdout);
    expect(vr.code).toBe(qr.code);
    const info = (p: string) =>
      qemuImgOk(['info', p])
        .replaceAll(p, 'IMG')
        .replace(/disk size: .*\n/, '');
    expect(info(v)).toBe(info(q));
    expect(qemuImgOk(['check', v])).toContain('No errors were found');
    for (const name of ['b0', 'b1', 'b2']) {
      expect(await qemuBitmapMap(v, name), name).toBe(await qemuBitmapMap(q, name));
    }
  });

  it("refuses to resize with an in-use bitmap, with qemu-img's message", async () => {
    const q = withBitmaps('resize-inuse-q.qcow2');
    const b = readFileSync(q);
    b.writeUInt32BE(3, bitmapsExt(b).dir + 12);
    writeFileSync(q, b);
    const v = join(dir, 'resize-inuse-v.qcow2');
    copyFileSync(q, v);
    const qr = qemuImg(['resize', q, '128M']);
    const vr = await vdisk(['resize', v, '128M']);
    expect(qr.code).toBe(1);
    expect(vr.stderr.replace(/^vdisk:/, 'qemu-img:')).toBe(qr.stderr);
    expect(vr.code).toBe(1);
    const info = (p: string) =>
      qemuImgOk(['info', p])
        .replaceAll(p, 'IMG')
        .replace(/disk size: .*\n/, '');
    expect(info(v)).toBe(info(q));
  });
});

describe('amend keeps bitmaps as qemu-img 7.2 does', () => {
  it.each([['refcount_bits=1'], ['refcount_bits=64'], ['lazy_refcounts=on']])('%s', async (opt) => {
    const q = withBitmaps(`amend-${opt.replace('=', '-')}-q.qcow2`);
    const v = q.replace('-q.qcow2', '-v.qcow2');
    copyFileSync(q, v);
    qemuImgOk(['amend', '-o', opt, q]);
    expect((await vdisk(['amend', '-o', opt, v])).code).toBe(0);
    const info = (p: string) =>
      qemuImgOk(['info', p])
        .replaceAll(p, 'IMG')
        .replace(/disk size: .*\n/, '');
    expect(info(v)).toBe(info(q));
    expect(qemuImgOk(['check', v])).toContain('No errors were found');
    for (const name of ['b0', 'b1', 'b2']) {
      expect(await qemuBitmapMap(v, name), name).toBe(await qemuBitmapMap(q, name));
    }
  });
});

describe('bit helpers', () => {
  it('setRange sets the granules a byte range touches, never past the image end', () => {
    const size = 10 * 512 + 100;
    const bits = new Uint8Array(bitmapBytes(size, 9));
    setRange(bits, 9, size, 511, 2);
    expect([...bits]).toEqual([0b11, 0]);
    setRange(bits, 9, size, 0, size * 2);
    expect([...bits]).toEqual([0xff, 0b111]);
  });
});
