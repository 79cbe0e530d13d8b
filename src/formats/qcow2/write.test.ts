/**
 * The qcow2 write path against qemu: images vdisk writes (random pattern writes, zero
 * writes with and without unmap, discards, compressed writes, rewrites) pass
 * `qemu-img check` with no errors and no leaks, and `qemu-img compare` finds them equal to a
 * raw file with the same writes applied.
 */

import { spawnSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  ftruncateSync,
  openSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../../test/oracle.js';
import { rng } from '../../test/rng.js';

const distOpen = fileURLToPath(new URL('../../../dist/chain/open.js', import.meta.url));

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-write-'));
});
afterAll(() => cleanup());

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

  it('keeps many writes in flight at once (sharing clusters and L2 tables) without losing any', async () => {
    for (const opts of ['', 'extended_l2=on', 'cluster_size=4096,refcount_bits=2']) {
      const p = join(dir, `concurrent-${opts.replace(/\W/g, '_')}.qcow2`);
      const raw = join(dir, 'concurrent.raw');
      const size = 32 << 20;
      qemuImgOk(['create', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), p, String(size)]);
      const expected = Buffer.alloc(size);
      const img = await openImage(p, { writable: true });
      const rand = rng(42);
      // Disjoint sector ranges, in a random order, many sharing a cluster with another.
      const sectors = Array.from({ length: size / 512 / 64 }, (_, i) => i * 64 + Math.floor(rand() * 40));
      for (let i = sectors.length - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [sectors[i], sectors[j]] = [sectors[j]!, sectors[i]!];
      }
      const ops = sectors.map((sec, i) => {
        const len = 512 * (1 + (i % 24));
        const b = Buffer.alloc(len, (i % 250) + 1);
        b.copy(expected, sec * 512);
        return img.writeAt(b, sec * 512);
      });
      await Promise.all(ops);
      await img.close();
      writeFileSync(raw, expected);
      const check = qemuImg(['check', p]);
      expect(check.code).toBe(0);
      expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', p, raw]).code).toBe(0);
    }
  });

  it('copies shared clusters and L2 tables on write when internal snapshots hold them', async () => {
    for (const opts of ['', 'extended_l2=on', 'compat=0.10']) {
      const p = join(dir, `snapshots-${opts.replace(/\W/g, '_')}.qcow2`);
      qemuImgOk(['create', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), p, '8M']);
      qemuIo(p, ['write -P 1 0 2M', 'write -c -P 2 4M 64k'], 'qcow2');
      qemuImgOk(['snapshot', '-c', 'before', p]);
      const snapRaw = join(dir, 'snap-before.raw');
      qemuImgOk(['convert', '-O', 'raw', p, snapRaw]);
      const img = await openImage(p, { writable: true });
      await img.writeAt(Buffer.alloc(4096, 9), 65536 + 512);
      await img.writeAt(Buffer.alloc(3 << 20, 8), 1 << 20);
      await img.writeZeroes(0, 65536, { unmap: true });
      await img.discard(4 << 20, 65536);
      await img.close();
      const check = qemuImg(['check', p]);
      expect(check.stdout + check.stderr).not.toMatch(/ERROR|Leaked/);
      expect(check.code).toBe(0);
      // The snapshot still reads as it was taken; the active layer has the new writes.
      const after = join(dir, 'snap-after.raw');
      qemuImgOk(['convert', '-l', 'snapshot.name=before', '-O', 'raw', p, after]);
      expect(qemuImg(['compare', '-f', 'raw', '-F', 'raw', snapRaw, after]).code).toBe(0);
      const out = qemuIo(
        p,
        ['read -P 0 0 64k', 'read -P 1 64k 512', 'read -P 9 66048 4k', 'read -P 8 1M 3M', 'read -P 0 4M 64k'],
        'qcow2',
      );
      expect(out).not.toMatch(/fail|mismatch/i);
    }
  });

  it('a partial write into a new cluster zeroes it on the host and writes only the data, also in a freed cluster that held data', async () => {
    const p = join(dir, 'zero-cow.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', p, '4M']);
    const img = await openImage(p, { writable: true });
    // Cluster 0 full of 0x5a, then discarded: its host cluster is free, with the bytes still there.
    await img.writeAt(Buffer.alloc(65536, 0x5a), 0);
    await img.discard(0, 65536);
    // 4 KiB into clusters 1 and 3 (new host clusters, the first the freed one), 512 bytes at
    // the end of cluster 5: the rest of each cluster must read as zeros.
    await img.writeAt(Buffer.alloc(4096, 0x11), 65536 + 8192);
    await img.writeAt(Buffer.alloc(4096, 0x22), 3 * 65536);
    await img.writeAt(Buffer.alloc(512, 0x33), 6 * 65536 - 512);
    await img.close();
    const check = qemuImg(['check', p]);
    expect(check.stdout + check.stderr).not.toMatch(/ERROR|Leaked/);
    const out = qemuIo(
      p,
      [
        'read -P 0 0 64k',
        'read -P 0 64k 8k',
        'read -P 0x11 72k 4k',
        'read -P 0 76k 52k',
        'read -P 0x22 192k 4k',
        'read -P 0 196k 60k',
        'read -P 0 320k 65024',
        'read -P 0x33 392704 512',
      ],
      'qcow2',
    );
    expect(out).not.toMatch(/fail|mismatch/i);
    // The freed host cluster (the first data cluster, after the header, tables and the L2
    // table) was taken again by the first partial write: its old 0x5a bytes read as zeros above.
    const map = JSON.parse(qemuImgOk(['map', '--output=json', p])) as Array<{
      start: number;
      data: boolean;
      offset?: number;
    }>;
    const hosts = map.filter((m) => m.data).map((m) => [m.start, m.offset]);
    expect(hosts).toEqual([
      [65536, 5 * 65536],
      [3 * 65536, 6 * 65536],
      [5 * 65536, 7 * 65536],
    ]);
  });

  it('partial writes into new clusters past the end of the file: zeroed ahead (16 MiB at a time), with the content, map, length and disk size qemu-io gives', async () => {
    const writes: Array<[number, number, number]> = [];
    for (let i = 0; i < 48; i++) writes.push([(i * 7919) % 2048, 4096, (i % 250) + 1]);
    const ours = join(dir, 'untouched-vdisk.qcow2');
    const theirs = join(dir, 'untouched-qemu.qcow2');
    for (const p of [ours, theirs]) qemuImgOk(['create', '-f', 'qcow2', p, '128M']);
    const img = await openImage(ours, { writable: true });
    // 4 KiB at scattered 64 KiB-aligned offsets + 12 KiB: each a new cluster, written in part.
    for (const [c, n, v] of writes) await img.writeAt(Buffer.alloc(n, v), c * 65536 + 12288);
    // The last one at a cluster's start: the file must still end after that cluster.
    await img.writeAt(Buffer.alloc(4096, 0xee), 2040 * 65536);
    await img.close();
    qemuIo(
      theirs,
      [
        ...writes.map(([c, n, v]) => `write -P ${v} ${c * 65536 + 12288} ${n}`),
        `write -P 0xee ${2040 * 65536} 4k`,
      ],
      'qcow2',
    );
    expect(qemuImg(['compare', ours, theirs]).code).toBe(0);
    const check = qemuImg(['check', ours]);
    expect(check.stdout + check.stderr).not.toMatch(/ERROR|Leaked/);
    // The same host layout: each new cluster has its host blocks (QEMU's fallocate ZERO_RANGE;
    // here allocated 16 MiB ahead and the rest given back at close), the same length and space.
    expect(qemuImgOk(['map', '--output=json', ours])).toBe(qemuImgOk(['map', '--output=json', theirs]));
    expect(statSync(ours).size).toBe(statSync(theirs).size);
    expect(Math.abs(statSync(ours).blocks - statSync(theirs).blocks) * 512).toBeLessThanOrEqual(65536);
  });

  it('a new refcount block takes the cluster after the data that needed it, as in QEMU 7.2 (no free cluster left before it)', async () => {
    // 4 KiB clusters: a refcount block covers 8 MiB of the file, so these 5,462 new clusters
    // need three. QEMU's update_refcount has the allocation search again from the clusters it
    // had chosen; vdisk searched from past the new block and left a free cluster before it.
    const ours = join(dir, 'refblock-vdisk.qcow2');
    const theirs = join(dir, 'refblock-qemu.qcow2');
    for (const p of [ours, theirs])
      qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', p, '64M']);
    const clusters: number[] = [];
    for (let c = 0; c < 16384; c += 3) clusters.push(c);
    const img = await openImage(ours, { writable: true });
    for (const c of clusters) await img.writeAt(Buffer.alloc(4096, (c % 250) + 1), c * 4096);
    await img.close();
    qemuIo(
      theirs,
      clusters.map((c) => `write -P ${(c % 250) + 1} ${c * 4096} 4k`),
      'qcow2',
    );
    expect(qemuImg(['compare', ours, theirs]).code).toBe(0);
    expect(qemuImgOk(['map', '--output=json', ours])).toBe(qemuImgOk(['map', '--output=json', theirs]));
    const check = qemuImg(['check', ours]);
    expect(check.stdout + check.stderr).not.toMatch(/ERROR|Leaked/);
  });

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
      await img.writeAt(Buffer.alloc(4096, 0x60), 0);
      await img.writeAt(Buffer.alloc(100_000, 0x61), 70_000);
      await img.writeZeroes(1 << 20, 128 << 10, { unmap: true });
      await img.writeAt(Buffer.alloc(4096, 0x62), 3 << 20);
      await img.close();
      expect(qemuImg(['check', p]).code).toBe(0);
      const out = qemuIo(
        p,
        ['read -P 0x60 0 4k', 'read -P 0x61 70000 100000', 'read -P 0 1M 128k', 'read -P 0x62 3M 4k'],
        'qcow2',
      );
      expect(out).not.toMatch(/fail|mismatch/i);
    }
  });

  it.skipIf(!existsSync(distOpen))('compresses zstd clusters on worker threads (the built code)', () => {
    const p = join(dir, 'zstd-pool.qcow2');
    const raw = join(dir, 'zstd-pool.raw');
    qemuImgOk(['create', '-f', 'qcow2', '-o', 'compression_type=zstd', p, '8M']);
    const script = `
      import { openImage } from ${JSON.stringify(distOpen)};
      import { writeFileSync } from 'node:fs';
      const img = await openImage(${JSON.stringify(p)}, { writable: true });
      const all = Buffer.alloc(8 << 20);
      await Promise.all(Array.from({ length: 100 }, (_, i) => {
        const b = Buffer.alloc(65536, i + 1);
        b.write('cluster ' + i, 1000);
        b.copy(all, i * 65536);
        return img.driver.writeCompressed(b, i * 65536);
      }));
      await img.close();
      writeFileSync(${JSON.stringify(raw)}, all);
    `;
    const file = join(dir, 'zstd-pool.mjs');
    writeFileSync(file, script);
    const r = spawnSync(process.execPath, [file], {
      encoding: 'utf8',
      env: { ...process.env, VDISK_ZSTD_THREADS: '2' },
    });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(qemuImg(['check', p]).code).toBe(0);
    const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', p, raw]);
    expect(cmp.code).toBe(0);
    const map = qemuImgOk(['check', '--output=json', p]);
    expect((JSON.parse(map) as { 'compressed-clusters': number })['compressed-clusters']).toBe(100);
  });

  it('keeps header extensions and persistent bitmaps (stored at close, in_use cleared) when it writes', async () => {
    const p = join(dir, 'bitmaps.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', p, '64M']);
    qemuImgOk(['bitmap', '--add', p, 'b0']);
    qemuImgOk(['bitmap', '--add', '-g', '1M', p, 'b1']);
    const img = await openImage(p, { writable: true });
    await img.writeAt(Buffer.alloc(65536, 3), 1 << 20);
    await img.close();
    const check = qemuImg(['check', p]);
    expect(check.stderr).toBe('');
    expect(check.code).toBe(0);
    const info = JSON.parse(qemuImgOk(['info', '--output=json', p])) as {
      'format-specific': { data: { bitmaps: Array<{ name: string; flags: string[] }> } };
    };
    expect(info['format-specific'].data.bitmaps.map((b) => [b.name, b.flags])).toEqual([
      ['b0', ['auto']],
      ['b1', ['auto']],
    ]);
  });

  it('refuses to write a corrupt image and opens read-only images read-only', async () => {
    const p = join(dir, 'ro.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', p, '1M']);
    const img = await openImage(p);
    await expect(img.writeAt(Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'READ_ONLY' });
    await img.close();
    const b = readFileSync(p);
    b[79] = b[79]! | 2; // the corrupt bit
    writeFileSync(p, b);
    await expect(openImage(p, { writable: true })).rejects.toMatchObject({
      code: 'CORRUPT_IMAGE',
      message: expect.stringContaining('Image is corrupt; cannot be opened read/write'),
    });
    const ro = await openImage(p);
    await ro.close();
  });
});
