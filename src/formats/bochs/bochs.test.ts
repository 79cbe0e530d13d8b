/**
 * qemu-img cannot create bochs images; the test writes them by the format's description
 * (Bochs' growing redolog) and requires vdisk to read what qemu-img reads.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { qemuImgOk, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

/** A growing redolog of `size` bytes, extents of `extent` bytes, some sectors present. */
function makeBochs(size: number, extent: number, version: 1 | 2): Buffer {
  const catalogSize = Math.ceil(size / extent);
  const bitmapBytes = Math.ceil(extent / 512 / 8);
  const bitmapBlocks = Math.ceil(bitmapBytes / 512);
  const extentBlocks = extent / 512;
  const header = Buffer.alloc(512);
  header.write('Bochs Virtual HD Image', 0, 'latin1');
  header.write('Redolog', 32, 'latin1');
  header.write('Growing', 48, 'latin1');
  header.writeUInt32LE(version === 2 ? 0x00020000 : 0x00010000, 64);
  header.writeUInt32LE(512, 68);
  header.writeUInt32LE(catalogSize, 72);
  header.writeUInt32LE(bitmapBytes, 76);
  header.writeUInt32LE(extent, 80);
  header.writeBigUInt64LE(BigInt(size), version === 2 ? 88 : 84);
  const catalog = Buffer.alloc(catalogSize * 4, 0xff);
  const blocks: Buffer[] = [];
  // Extents 1 and 3 stored (in reverse order in the file), with every third sector present.
  for (const [slot, ext] of [
    [0, 3],
    [1, 1],
  ] as const) {
    if (ext >= catalogSize) continue;
    catalog.writeUInt32LE(slot, ext * 4);
    const bitmap = Buffer.alloc(bitmapBlocks * 512);
    for (let s = 0; s < extentBlocks; s += 3) bitmap[s >> 3]! |= 1 << (s & 7);
    blocks.push(bitmap, randomBytes(extent));
  }
  return Buffer.concat([header, catalog, ...blocks]);
}

it.each([
  [1, 1 << 20, 64 << 10],
  [2, 1 << 20, 64 << 10],
  [2, 3 << 20, 512 << 10],
])('reads a version %d redolog (size %d, extent %d) as qemu-img does', async (version, size, extent) => {
  const p = join(dir, 'd.bochs');
  writeFileSync(p, makeBochs(size, extent, version as 1 | 2));
  const img = await openImage(p);
  expect(img.format).toBe('bochs');
  const buf = Buffer.alloc(img.size);
  await img.readAt(buf, 0);
  await img.close();
  expect(sha256(buf)).toBe(qemuRawDigest(p));
  const v = await vdisk(['info', '--output=json', p]);
  expect(v.stdout).toBe(qemuImgOk(['info', '--output=json', p]));
});

it('refuses writing and absurd headers', async () => {
  const p = join(dir, 'd.bochs');
  const good = makeBochs(1 << 20, 64 << 10, 2);
  writeFileSync(p, good);
  expect((await vdisk(['resize', p, '2M'])).code).toBe(1);
  const bad = Buffer.from(good);
  bad.writeUInt32LE(0x7fffffff, 72);
  writeFileSync(p, bad);
  const r = await vdisk(['info', p]);
  expect(r.code).toBe(1);
  expect(r.stderr).toContain('Catalog size is too large');
});
