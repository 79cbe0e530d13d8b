/**
 * Compressed clusters whose deflate stream does not end where the cluster does (`npm run fuzz`
 * found corrupted ones that qemu-img reads and vdisk refused). QEMU inflates until the cluster
 * is full and takes those bytes whatever follows; a stream that ends or breaks before the
 * cluster is full is an error. Checked for qcow2 and qcow (v1) against qemu-img.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

/** Guest cluster 0 (compressed) of a qcow2 or qcow image: host offset, stored length, cluster size. */
function compressedCluster0(
  b: Buffer,
  fmt: 'qcow2' | 'qcow',
): { offset: number; length: number; cs: number } {
  // Both headers keep the L1 table's offset at byte 40.
  const l1 = Number(b.readBigUInt64BE(40));
  if (fmt === 'qcow2') {
    const bits = b.readUInt32BE(20);
    const l2 = Number(b.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
    const e = b.readBigUInt64BE(l2);
    expect(e >> 62n).toBe(1n); // compressed
    const x = 62n - BigInt(bits - 8);
    const offset = Number(e & ((1n << x) - 1n));
    const sectors = Number((e >> x) & ((1n << BigInt(bits - 8)) - 1n)) + 1;
    return { offset, length: sectors * 512 - (offset % 512), cs: 2 ** bits };
  }
  const bits = b[32]!;
  const l2 = Number(b.readBigUInt64BE(l1));
  const e = b.readBigUInt64BE(l2);
  expect(e >> 63n).toBe(1n);
  const x = 63n - BigInt(bits);
  return {
    offset: Number(e & ((1n << x) - 1n)),
    length: Number((e >> x) & ((1n << BigInt(bits)) - 1n)),
    cs: 2 ** bits,
  };
}

/** An image whose only stored cluster, cluster 0, is compressed (made by qemu-img). */
function compressedImage(fmt: 'qcow2' | 'qcow'): { p: string; cs: number } {
  const raw = join(dir, 'src.raw');
  qemuImgOk(['create', '-f', 'raw', raw, '1M']);
  qemuIo(raw, ['write -P 0x41 0 64k'], 'raw');
  const p = join(dir, `c.${fmt}`);
  if (fmt === 'qcow2') {
    qemuImgOk(['convert', '-c', '-O', fmt, raw, p]);
  } else {
    // qemu-img 7.2's `convert -c -O qcow` exits 1 without a message; qemu-io compresses.
    qemuImgOk(['create', '-f', 'qcow', p, '1M']);
    qemuIo(p, ['write -c -P 0x41 0 4k'], 'qcow');
  }
  return { p, cs: compressedCluster0(readFileSync(p), fmt).cs };
}

/**
 * Replace cluster 0's stored stream with `stream`: it must fit in the stored length (and, as
 * the only compressed cluster, it overwrites no neighbour's bytes).
 */
function restream(p: string, fmt: 'qcow2' | 'qcow', stream: Buffer): void {
  let b = readFileSync(p);
  const { offset, length } = compressedCluster0(b, fmt);
  if (fmt === 'qcow') {
    // qcow stores the exact length, and cluster 0 is the last thing in the file: store the new
    // stream's length in the L2 entry and let the file grow.
    const bits = BigInt(b[32]!);
    const l2 = Number(b.readBigUInt64BE(Number(b.readBigUInt64BE(40))));
    b.writeBigUInt64BE((1n << 63n) | (BigInt(stream.length) << (63n - bits)) | BigInt(offset), l2);
    expect(offset + length).toBe(b.length);
    b = Buffer.concat([b.subarray(0, offset), Buffer.alloc(stream.length)]);
  }
  expect(stream.length).toBeLessThanOrEqual(fmt === 'qcow' ? stream.length : length);
  stream.copy(b, offset);
  writeFileSync(p, b);
}

describe.each(['qcow2', 'qcow'] as const)('%s: compressed cluster streams', (fmt) => {
  it('a stream that goes on past the cluster reads as its first cluster of bytes', async () => {
    const { p, cs } = compressedImage(fmt);
    // One cluster of 'C' then 16 KiB of 'D': deflate packs both in a few dozen bytes.
    const more = Buffer.concat([Buffer.alloc(cs, 0x43), Buffer.alloc(16384, 0x44)]);
    restream(p, fmt, deflateRawSync(more, { windowBits: 12 }));
    const q = qemuImg(['convert', '-O', 'raw', p, join(dir, 'q.raw')]);
    expect(q.code).toBe(0);
    const r = await vdisk(['convert', '-O', 'raw', p, join(dir, 'v.raw')]);
    expect(r.stderr).toBe('');
    const v = readFileSync(join(dir, 'v.raw'));
    expect(v.subarray(0, cs).equals(Buffer.alloc(cs, 0x43))).toBe(true);
    expect(sha256(v)).toBe(qemuRawDigest(p));
  });

  it('a stream that goes on into garbage still reads (the garbage is never decoded)', async () => {
    const { p, cs } = compressedImage(fmt);
    const full = deflateRawSync(Buffer.concat([Buffer.alloc(cs, 0x45), Buffer.alloc(8192, 0x46)]), {
      windowBits: 12,
      finishFlush: 2, // Z_SYNC_FLUSH: no final block, the stream simply stops
    });
    restream(p, fmt, Buffer.concat([full, Buffer.alloc(64, 0xff)]));
    expect(qemuImg(['convert', '-O', 'raw', p, join(dir, 'q.raw')]).code).toBe(0);
    const r = await vdisk(['convert', '-O', 'raw', p, join(dir, 'v.raw')]);
    expect(r.code).toBe(0);
    expect(sha256(readFileSync(join(dir, 'v.raw')))).toBe(qemuRawDigest(p));
  });

  it('a stream that ends before the cluster is full is an error in both tools', async () => {
    const { p, cs } = compressedImage(fmt);
    restream(p, fmt, deflateRawSync(Buffer.alloc(cs / 2, 0x47), { windowBits: 12 }));
    expect(qemuImg(['convert', '-O', 'raw', p, join(dir, 'q.raw')]).code).toBe(1);
    const r = await vdisk(['convert', '-O', 'raw', p, join(dir, 'v.raw')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^vdisk: .*(decompress|inflate).*\n$/);
  });
});
