/**
 * The qcow2 write path against qemu: images vdisk writes (random pattern writes, zero
 * writes with and without unmap, discards, compressed writes, rewrites) pass
 * `qemu-img check` with no errors and no leaks, and `qemu-img compare` finds them equal to a
 * raw file with the same writes applied.
 */
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-write-'));
});
afterAll(() => cleanup());

/** A small deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Case {
  name: string;
  opts: string;
  size: number;
  cs: number;
  compressed?: boolean;
  backing?: boolean;
}

const cases: Case[] = [
  { name: 'default', opts: '', size: 32 << 20, cs: 65536, compressed: true },
  { name: 'v2', opts: 'compat=0.10', size: 16 << 20, cs: 65536, compressed: true },
  { name: '512-rc64', opts: 'cluster_size=512,refcount_bits=64', size: 4 << 20, cs: 512 },
  { name: '4k-rc1', opts: 'cluster_size=4096,refcount_bits=1', size: 8 << 20, cs: 4096, compressed: true },
  { name: 'rc2', opts: 'refcount_bits=2,cluster_size=1024', size: 8 << 20, cs: 1024 },
  { name: 'zstd', opts: 'compression_type=zstd', size: 16 << 20, cs: 65536, compressed: true },
  { name: 'extl2', opts: 'extended_l2=on', size: 16 << 20, cs: 65536, compressed: true },
  { name: 'lazy', opts: 'lazy_refcounts=on', size: 16 << 20, cs: 65536 },
  { name: '2M', opts: 'cluster_size=2M', size: 64 << 20, cs: 2 << 20, compressed: true },
  { name: 'backing', opts: '', size: 16 << 20, cs: 65536, backing: true, compressed: true },
  { name: 'backing-extl2', opts: 'extended_l2=on', size: 16 << 20, cs: 65536, backing: true },
];

describe('qcow2 write path against qemu', () => {
  for (const c of cases) {
    it(`writes images qemu-img finds clean and equal (${c.name})`, async () => {
      const p = join(dir, `${c.name}.qcow2`);
      const raw = join(dir, `${c.name}.raw`);
      const fd = openSync(raw, 'w');
      ftruncateSync(fd, c.size);
      const base = join(dir, `${c.name}-base.qcow2`);
      if (c.backing) {
        qemuImgOk(['create', '-f', 'qcow2', base, String(c.size / 2)]);
        qemuIo(base, [`write -P 0x5a 0 ${c.size / 2}`], 'qcow2');
        writeSync(fd, Buffer.alloc(c.size / 2, 0x5a), 0, c.size / 2, 0);
        qemuImgOk([
          'create',
          '-f',
          'qcow2',
          ...(c.opts ? ['-o', c.opts] : []),
          '-b',
          base,
          '-F',
          'qcow2',
          p,
          String(c.size),
        ]);
      } else {
        qemuImgOk(['create', '-f', 'qcow2', ...(c.opts ? ['-o', c.opts] : []), p, String(c.size)]);
      }
      const img = await openImage(p, { writable: true, backing: 'follow' });
      const rand = rng(c.size ^ c.cs);
      const sector = (n: number) => Math.floor(rand() * n) * 512;
      try {
        for (let i = 0; i < 120; i++) {
          const op = rand();
          const off = sector(c.size / 512 - 8);
          const maxLen = Math.min(c.size - off, c.cs * 4);
          const len = Math.max(512, sector(maxLen / 512));
          if (op < 0.55) {
            const buf = Buffer.alloc(len);
            const v = Math.floor(rand() * 255) + 1;
            for (let j = 0; j < len; j += 512) buf.fill((v + j / 512) & 0xff, j, j + 512);
            await img.writeAt(buf, off);
            writeSync(fd, buf, 0, len, off);
          } else if (op < 0.7) {
            const unmap = rand() < 0.5;
            await img.writeZeroes(off, len, { unmap });
            writeSync(fd, Buffer.alloc(len), 0, len, off);
          } else if (op < 0.8) {
            // Discard: whole clusters end up reading as zeros (v3) or the backing (v2 has none here).
            const start = Math.ceil(off / c.cs) * c.cs;
            const end = Math.floor((off + len) / c.cs) * c.cs;
            if (end > start) {
              await img.discard(start, end - start);
              writeSync(fd, Buffer.alloc(end - start), 0, end - start, start);
            }
          } else if (op < 0.9 && c.compressed) {
            const cl = Math.floor(rand() * (c.size / c.cs)) * c.cs;
            const buf = Buffer.alloc(c.cs, Math.floor(rand() * 255) + 1);
            buf.write('some text that compresses', 100);
            await img.driver.writeCompressed!(buf, cl);
            writeSync(fd, buf, 0, c.cs, cl);
          } else {
            // Unaligned small write (read-modify-write in core).
            const o = Math.floor(rand() * (c.size - 1000));
            const buf = Buffer.alloc(777, 0xee);
            await img.writeAt(buf, o);
            writeSync(fd, buf, 0, buf.length, o);
          }
        }
      } finally {
        await img.close();
        closeSync(fd);
      }
      const check = qemuImg(['check', p]);
      expect(check.stderr).toBe('');
      expect(check.code).toBe(0);
      const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', p, raw]);
      expect(cmp.stdout + cmp.stderr).toContain('Images are identical');
      expect(cmp.code).toBe(0);
    });
  }

  it('writes an image with an external data file that qemu reads back', async () => {
    for (const rawFlag of [false, true]) {
      const p = join(dir, `df-${rawFlag}.qcow2`);
      qemuImgOk([
        'create',
        '-f',
        'qcow2',
        '-o',
        `data_file=${p}.data${rawFlag ? ',data_file_raw=on' : ''}`,
        p,
        '4M',
      ]);
      const img = await openImage(p, { writable: true, allowDataFile: true });
      await img.writeAt(Buffer.alloc(100_000, 0x61), 70_000);
      await img.writeZeroes(1 << 20, 128 << 10, { unmap: true });
      await img.writeAt(Buffer.alloc(4096, 0x62), 3 << 20);
      await img.close();
      expect(qemuImg(['check', p]).code).toBe(0);
      const out = qemuIo(
        p,
        ['read -P 0x61 70000 100000', 'read -P 0 1M 128k', 'read -P 0x62 3M 4k'],
        'qcow2',
      );
      expect(out).not.toMatch(/fail|mismatch/i);
    }
  });

  it('refuses to write a corrupt image and opens read-only images read-only', async () => {
    const p = join(dir, 'ro.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', p, '1M']);
    const img = await openImage(p);
    await expect(img.writeAt(Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'READ_ONLY' });
    await img.close();
  });
});
