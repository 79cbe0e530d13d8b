/**
 * Hostile and broken qcow2 files: every one gives a one-line `vdisk: …` error (a VdiskError
 * with a stable code) and a non-zero exit, quickly and without large allocations.
 */
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { VdiskError } from '../../core/errors.js';
import { qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
let good: Buffer;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-bad-'));
  const p = join(dir, 'good.qcow2');
  qemuImgOk(['create', '-f', 'qcow2', p, '64M']);
  qemuIo(p, ['write -P 7 0 128k'], 'qcow2');
  good = readFileSync(p);
});
afterAll(() => cleanup());

/** A copy of the good image with an edit applied. */
function variant(name: string, edit: (b: Buffer) => unknown): string {
  const b = Buffer.from(good);
  const r = edit(b);
  const out = Buffer.isBuffer(r) ? r : b;
  const p = join(dir, name);
  writeFileSync(p, out);
  return p;
}

const l1 = () => Number(good.readBigUInt64BE(40));
const l2 = () => Number(good.readBigUInt64BE(l1()) & 0x00fffffffffffe00n);

const cases: Array<[string, (b: Buffer) => unknown, string]> = [
  ['truncated header', (b) => b.subarray(0, 50), 'INVALID_IMAGE'],
  ['truncated v3 header', (b) => b.subarray(0, 90), 'INVALID_IMAGE'],
  ['cluster_bits too large', (b) => void b.writeUInt32BE(30, 20), 'INVALID_IMAGE'],
  ['cluster_bits too small', (b) => void b.writeUInt32BE(8, 20), 'INVALID_IMAGE'],
  ['absurd L1 size', (b) => void b.writeUInt32BE(0x10000000, 36), 'TOO_LARGE'],
  ['L1 too small for the size', (b) => void b.writeBigUInt64BE(1n << 40n, 24), 'INVALID_IMAGE'],
  ['L1 table past end of file', (b) => void b.writeBigUInt64BE(1n << 40n, 40), 'INVALID_IMAGE'],
  ['L1 table unaligned', (b) => void b.writeBigUInt64BE(BigInt(l1() + 8), 40), 'INVALID_IMAGE'],
  ['L2 table past end of file', (b) => void b.writeBigUInt64BE(0x8000001000000000n, l1()), 'CORRUPT_IMAGE'],
  [
    'L2 table unaligned',
    (b) => void b.writeBigUInt64BE(BigInt(l2() + 512) | (1n << 63n), l1()),
    'CORRUPT_IMAGE',
  ],
  ['absurd refcount table', (b) => void b.writeUInt32BE(1 << 20, 56), 'TOO_LARGE'],
  ['refcount table past end', (b) => void b.writeBigUInt64BE(1n << 40n, 48), 'INVALID_IMAGE'],
  ['unknown incompatible feature', (b) => void b.writeUInt32BE(1 << 10, 76), 'UNSUPPORTED'],
  ['high incompatible feature', (b) => void b.writeUInt32BE(1, 72), 'UNSUPPORTED'],
  // crypt method 2 without its crypto header extension (qemu-img info segfaults on it; an open for
  // I/O says "Missing CRYPTO header for crypt method 2", as vdisk does).
  ['encrypted (LUKS) without a crypto header', (b) => void b.writeUInt32BE(2, 32), 'INVALID_IMAGE'],
  ['unknown encryption', (b) => void b.writeUInt32BE(7, 32), 'INVALID_IMAGE'],
  ['refcount order 7', (b) => void b.writeUInt32BE(7, 96), 'INVALID_IMAGE'],
  ['header length past cluster', (b) => void b.writeUInt32BE(1 << 20, 100), 'INVALID_IMAGE'],
  [
    'header extension overrunning the cluster',
    (b) => {
      b.writeUInt32BE(0x12345678, 112);
      b.writeUInt32BE(0x7fffffff, 116);
    },
    'INVALID_IMAGE',
  ],
  [
    'backing name overrunning the cluster',
    (b) => {
      b.writeBigUInt64BE(65000n, 8);
      b.writeUInt32BE(1000, 16);
    },
    'INVALID_IMAGE',
  ],
  ['virtual size beyond 2^53', (b) => void b.writeBigUInt64BE(1n << 60n, 24), 'TOO_LARGE'],
  [
    'too many snapshots',
    (b) => {
      b.writeUInt32BE(1_000_000, 60);
      b.writeBigUInt64BE(0x10000n, 64);
    },
    'INVALID_IMAGE',
  ],
  ['not qcow2 at all (magic with version 1)', (b) => void b.writeUInt32BE(1, 4), 'UNSUPPORTED'],
];

describe('qcow2 bad input', () => {
  for (const [name, edit, code] of cases) {
    it(`refuses ${name} with ${code}, in one line`, async () => {
      const p = variant(`${name.replaceAll(' ', '_')}.qcow2`, edit);
      const t0 = Date.now();
      let err: unknown = null;
      try {
        const img = await openImage(p, { format: 'qcow2' });
        try {
          const buf = new Uint8Array(1 << 20);
          await img.readAt(buf, 0);
        } finally {
          await img.close();
        }
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(VdiskError);
      expect((err as VdiskError).code).toBe(code);
      const r = await vdisk(['info', '-f', 'qcow2', p]);
      if (code !== 'CORRUPT_IMAGE') {
        expect(r.code).toBe(1);
        expect(r.stderr).toMatch(/^vdisk: [^\n]+\n$/);
      }
      expect(Date.now() - t0).toBeLessThan(1000);
    });
  }

  it('refuses to write through L2 tables that overlap other metadata (looping references)', async () => {
    // Two L1 entries name the same L2 table.
    const p = join(dir, 'loop.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', p, '2G']);
    qemuIo(p, ['write -P 7 0 64k'], 'qcow2');
    const b = readFileSync(p);
    const l1off = Number(b.readBigUInt64BE(40));
    b.writeBigUInt64BE(b.readBigUInt64BE(l1off), l1off + 8);
    writeFileSync(p, b);
    await expect(openImage(p, { writable: true })).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    // An L2 table that is the L1 table itself.
    const q = variant('self.qcow2', (b) => void b.writeBigUInt64BE(BigInt(l1()) | (1n << 63n), l1()));
    await expect(openImage(q, { writable: true })).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    // A data cluster that points at the L1 table: reads are harmless, writes are refused.
    const d = variant('data-on-l1.qcow2', (b) => void b.writeBigUInt64BE(BigInt(l1()) | (1n << 63n), l2()));
    const img = await openImage(d, { writable: true });
    await expect(img.writeAt(new Uint8Array(512), 0)).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    await img.close().catch(() => {});
  });
});

describe('qcow2: a header size that is not a multiple of 512 (npm run fuzz)', () => {
  it('reads as the whole sectors it covers, as qemu-img reads it', async () => {
    for (const size of [1000n, 512n + 1n, 65535n]) {
      const p = variant(`size-${size}.qcow2`, (b) => void b.writeBigUInt64BE(size, 24));
      const v = await vdisk(['info', '--output=json', p]);
      expect(v.stdout).toBe(qemuImgOk(['info', '--output=json', p]));
      const out = join(dir, 'v.raw');
      expect((await vdisk(['convert', '-O', 'raw', p, out])).code).toBe(0);
      expect(readFileSync(out).equals(readFileSync(qemuRaw(p)))).toBe(true);
    }
  });
});

function qemuRaw(p: string): string {
  const out = join(dir, 'q.raw');
  qemuImgOk(['convert', '-O', 'raw', p, out]);
  return out;
}

describe('qcow2: a file that claims billions of clusters (npm run fuzz)', () => {
  it('maps and reads as qemu-img, without a pass over every cluster of the file', async () => {
    const p = join(dir, 'sparse-tail.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-o', 'cluster_size=512', p, '4M']);
    qemuIo(p, ['write -P 9 0 64k', 'write -P 8 2M 4k'], 'qcow2');
    // A sparse tail: 256 GiB of file, 2^29 clusters, almost none of them in use.
    truncateSync(p, 256 * 2 ** 30);
    const t0 = Date.now();
    const v = await vdisk(['map', '--output=json', p]);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(v.stdout).toBe(qemuImgOk(['map', '--output=json', p]));
    const out = join(dir, 'v.raw');
    expect((await vdisk(['convert', '-O', 'raw', p, out])).code).toBe(0);
    expect(readFileSync(out).equals(readFileSync(qemuRaw(p)))).toBe(true);
  });
});
