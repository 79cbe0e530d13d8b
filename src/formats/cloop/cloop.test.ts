/** cloop images written by the format's description (qemu-img cannot create them), read as qemu-img reads them. */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { makeCloop } from '../../test/builders.js';
import { qemuImg, qemuImgOk, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

it('reads blocks of random, zero and text data as qemu-img does', async () => {
  const bs = 64 << 10;
  const blocks = [randomBytes(bs), Buffer.alloc(bs), Buffer.alloc(bs, 'cloop '), randomBytes(bs)];
  const p = join(dir, 'c.cloop');
  writeFileSync(p, makeCloop(bs, blocks));
  const img = await openImage(p);
  expect(img.format).toBe('cloop');
  const buf = Buffer.alloc(img.size);
  await img.readAt(buf, 0);
  await img.close();
  expect(buf.equals(Buffer.concat(blocks))).toBe(true);
  expect(sha256(buf)).toBe(qemuRawDigest(p));
  expect((await vdisk(['info', '--output=json', p])).stdout).toBe(qemuImgOk(['info', '--output=json', p]));
});

it('hostile headers and tables: info, convert and compare answer as qemu-img, word for word', async () => {
  const p = join(dir, 'c.cloop');
  const out = join(dir, 'out.raw');
  const good = makeCloop(4096, [randomBytes(4096), randomBytes(4096)]);
  const cases: Record<string, (b: Buffer) => void> = {
    'block size not a multiple of 512': (b) => b.writeUInt32BE(1000, 128),
    'block size zero': (b) => b.writeUInt32BE(0, 128),
    'block size over 64 MB': (b) => b.writeUInt32BE(128 << 20, 128),
    'n_blocks too large': (b) => b.writeUInt32BE(0x7fffffff, 132),
    'a table over 512 MB': (b) => {
      b.writeUInt32BE(65536, 128);
      b.writeUInt32BE(0x4000000, 132);
    },
    'a compressed block over 128 MB': (b) => b.writeBigUInt64BE(1n << 40n, 136 + 8),
    'offsets going back': (b) => b.writeBigUInt64BE(136n, 136 + 16),
    // These open (QEMU does not look at the end of the file) and fail to read: -EIO.
    'blocks past the end of the file': (b) => {
      b.writeBigUInt64BE(100n << 20n, 136 + 8);
      b.writeBigUInt64BE((100n << 20n) + 100n, 136 + 16);
    },
    'offsets past 2^53': (b) => {
      b.writeBigUInt64BE(1n << 60n, 136);
      b.writeBigUInt64BE((1n << 60n) + 300n, 136 + 8);
      b.writeBigUInt64BE((1n << 60n) + 600n, 136 + 16);
    },
    'blocks that do not inflate': (b) => b.fill(0x55, 136 + 24, 136 + 60),
  };
  for (const [name, edit] of Object.entries(cases)) {
    const b = Buffer.from(good);
    edit(b);
    writeFileSync(p, b);
    for (const args of [
      ['info', '-f', 'cloop', p],
      ['convert', '-f', 'cloop', '-O', 'raw', p, out],
      ['compare', '-f', 'cloop', '-F', 'raw', p, out],
    ]) {
      const q = qemuImg(args);
      const v = await vdisk(args);
      expect(v.stderr, `${name}: ${args[0]}`).toBe(q.stderr.replaceAll('qemu-img:', 'vdisk:'));
      expect(v.code, `${name}: ${args[0]}`).toBe(q.code);
      if (args[0] === 'info') expect(v.stdout, name).toBe(q.stdout);
    }
  }
});

it('opens a table of 50 M zero offsets past the end of the file as qemu-img does, without reading it (fuzzer finding)', async () => {
  // covfuzz: a 144-byte file whose header claims 50 M blocks made vdisk read (as zeros) and keep
  // a 400 MB table, as QEMU does; qemu-img opens it (every offset 0). Only the part in the file is
  // read now: the same answer, without the allocation.
  const p = join(dir, 'zeros.cloop');
  const b = makeCloop(65536, [randomBytes(512)]).subarray(0, 144);
  b.writeUInt32BE(50_000_000, 132);
  b.fill(0, 136);
  writeFileSync(p, b);
  const before = process.memoryUsage().arrayBuffers;
  const img = await openImage(p);
  expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(16 << 20);
  expect(img.size).toBe(((50_000_000 * 128) % 2 ** 32) * 512); // QEMU's 32-bit sector count
  await img.close();
  expect((await vdisk(['info', '--output=json', p])).stdout).toBe(qemuImgOk(['info', '--output=json', p]));
  // A non-zero offset before the zeros: refused at the first zero, as QEMU does.
  b.writeBigUInt64BE(144n, 136);
  writeFileSync(p, b);
  const r = await vdisk(['info', p]);
  expect(r.code).toBe(1);
  expect(r.stderr).toContain('offsets not monotonically increasing at index 1');
});
