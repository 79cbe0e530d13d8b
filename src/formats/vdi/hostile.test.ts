/** Hostile and corrupt VDI images: one-line errors, fast, bounded memory; QEMU's words where it refuses too. */
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';
import { OFF } from './header.js';

let dir: string;
let cleanup: () => void;
let p: string;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
  p = join(dir, 'h.vdi');
  qemuImgOk(['create', '-f', 'vdi', p, '4M']);
  qemuIo(p, ['write -P 7 0 1M'], 'vdi');
});
afterEach(() => cleanup());

function patch(fn: (b: Buffer) => void): void {
  const b = readFileSync(p);
  fn(b);
  writeFileSync(p, b);
}

/** vdisk info fails with one line, quickly; with qemu's exact message when `sameAsQemu`. */
async function expectRefused(sameAsQemu: boolean, pattern?: RegExp): Promise<void> {
  const t0 = Date.now();
  const v = await vdisk(['info', '-f', 'vdi', p]);
  expect(Date.now() - t0).toBeLessThan(1000);
  expect(v.code).toBe(1);
  expect(v.stderr.split('\n').filter(Boolean)).toHaveLength(1);
  expect(v.stderr).toMatch(/^vdisk: Could not open '.*': /);
  if (pattern) expect(v.stderr).toMatch(pattern);
  const q = qemuImg(['info', '-f', 'vdi', p]);
  if (sameAsQemu) {
    expect(q.code).toBe(1);
    expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(q.stderr);
  }
}

describe('vdi: hostile headers', () => {
  it('bad signature', async () => {
    patch((b) => b.writeUInt32LE(0x12345678, OFF.signature));
    await expectRefused(true);
  });
  it('truncated to a partial header', async () => {
    truncateSync(p, 100);
    await expectRefused(true, /sector size 0 is not 512/);
    truncateSync(p, 10);
    await expectRefused(true, /bad signature 00000000/);
  });
  it('unknown version', async () => {
    patch((b) => b.writeUInt32LE(0x00020001, OFF.version));
    await expectRefused(true);
  });
  it('unaligned block map and data offsets', async () => {
    patch((b) => b.writeUInt32LE(0x201, OFF.offsetBmap));
    await expectRefused(true);
    patch((b) => {
      b.writeUInt32LE(0x200, OFF.offsetBmap);
      b.writeUInt32LE(0x401, OFF.offsetData);
    });
    await expectRefused(true);
  });
  it('odd sector and block sizes', async () => {
    patch((b) => b.writeUInt32LE(4096, OFF.sectorSize));
    await expectRefused(true);
    patch((b) => {
      b.writeUInt32LE(512, OFF.sectorSize);
      b.writeUInt32LE(2 << 20, OFF.blockSize);
    });
    await expectRefused(true);
  });
  it('a disk size beyond the block map or beyond the maximum', async () => {
    patch((b) => b.writeBigUInt64LE(100n << 20n, OFF.diskSize));
    await expectRefused(true);
    patch((b) => b.writeBigUInt64LE(1n << 62n, OFF.diskSize));
    await expectRefused(true);
  });
  it('link and parent UUIDs', async () => {
    patch((b) => b.fill(1, OFF.uuidParent, OFF.uuidParent + 16));
    await expectRefused(true);
  });
  it('too many blocks', async () => {
    patch((b) => b.writeUInt32LE(0x3fffffff, OFF.blocksInImage));
    await expectRefused(true);
  });
  it('an absurd block map that is not in the file: refused before allocating it', async () => {
    // QEMU would allocate and read 2 GiB here; vdisk refuses because the map is not in the file.
    patch((b) => {
      b.writeUInt32LE(0x1fffff80, OFF.blocksInImage);
      b.writeBigUInt64LE(0x1fffff80n << 20n, OFF.diskSize);
    });
    const before = process.memoryUsage().rss;
    await expectRefused(false, /block map of 536870784 entries .* runs past the end of the file/);
    expect(process.memoryUsage().rss - before).toBeLessThan(256 << 20);
  });
  it('a data area overlapping the block map', async () => {
    patch((b) => b.writeUInt32LE(0x200, OFF.offsetData));
    await expectRefused(false, /data offset 0x200 overlaps the block map/);
  });
  it('a block map overlapping the header', async () => {
    patch((b) => b.writeUInt32LE(0, OFF.offsetBmap));
    await expectRefused(false, /overlaps the header/);
  });
  it('more blocks allocated than the image has', async () => {
    patch((b) => b.writeUInt32LE(5, OFF.blocksAllocated));
    await expectRefused(false, /5 blocks allocated, but the image has 4/);
  });
});

describe('vdi: corrupt block maps fail the access, not the open', () => {
  it('an entry pointing past the image', async () => {
    patch((b) => b.writeUInt32LE(99, 0x200 + 4));
    const img = await openImage(p, { format: 'vdi' });
    await expect(img.readAt(Buffer.alloc(512), 1 << 20)).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    await expect(img.blockStatus(1 << 20, 512)).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    // Block 0 is still readable.
    const b = Buffer.alloc(512);
    await img.readAt(b, 0);
    expect(b.every((x) => x === 7)).toBe(true);
    await img.close();
  });
  it('data cut off by a truncated file', async () => {
    truncateSync(p, 0x400 + 4096);
    const img = await openImage(p, { format: 'vdi' });
    await expect(img.readAt(Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    await img.close();
    const v = await vdisk(['info', p]);
    expect(v.code).toBe(0);
  });
});
