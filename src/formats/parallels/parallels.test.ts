import { copyFileSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { extentsOf } from '../../core/device.js';
import type { CheckResult } from '../../core/driver.js';
import type { Image } from '../../core/image.js';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';
import { HEADER_INUSE_MAGIC, OFF } from './header.js';
import type { ParallelsImage } from './image.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

const MiB = 1 << 20;

async function readAll(img: Image): Promise<Buffer> {
  const buf = Buffer.alloc(img.size);
  await img.readAt(buf, 0);
  return buf;
}

async function vdiskMap(p: string) {
  const img = await openImage(p);
  const out = [];
  for await (const e of extentsOf(img)) {
    out.push({
      start: e.offset,
      length: e.length,
      depth: e.depth ?? 0,
      present: e.allocated,
      zero: e.zero,
      data: e.data,
      ...(e.hostOffset !== undefined ? { offset: e.hostOffset } : {}),
    });
  }
  await img.close();
  return out;
}

const qemuMap = (p: string) => JSON.parse(qemuImgOk(['map', '--output=json', p])) as unknown[];

/** An image in the old "WithoutFreeSpace" layout (BAT entries in sectors, data_off 0). */
function oldMagicImage(p: string): void {
  const b = Buffer.alloc(512 + 4096 * 2);
  b.write('WithoutFreeSpace', 0, 'latin1');
  b.writeUInt32LE(2, OFF.version);
  b.writeUInt32LE(16, OFF.heads);
  b.writeUInt32LE(1, OFF.cylinders);
  b.writeUInt32LE(8, OFF.tracks);
  b.writeUInt32LE(5, OFF.batEntries);
  // The high half of nb_sectors is ignored with the old magic (as QEMU does).
  b.writeBigUInt64LE((7n << 32n) | 40n, OFF.nbSectors);
  b.writeUInt32LE(9, 64); // cluster 0 at sector 9
  b.writeUInt32LE(1, 64 + 3 * 4); // cluster 3 at sector 1
  b.fill(0x11, 512, 512 + 4096);
  b.fill(0x33, 512 + 4096, 512 + 8192);
  writeFileSync(p, b);
}

describe('parallels: images made by qemu-img read byte-identical', () => {
  for (const opts of [
    [],
    ['-o', 'cluster_size=4k'],
    ['-o', 'cluster_size=64k'],
    ['-o', 'cluster_size=1000'],
  ]) {
    it(`create ${opts.join(' ') || '(default)'} + qemu-io writes, zeroes and discards`, async () => {
      const p = join(dir, 'q.hdd');
      qemuImgOk(['create', '-f', 'parallels', ...opts, p, '37M']);
      qemuIo(
        p,
        [
          'write -P 0xab 0 1M',
          'write -P 0x11 3M 4k',
          'write -P 0x22 5M 3M',
          'write -P 0x33 12345k 7k',
          'write -z 6M 512k',
          'discard 7M 1M',
          'write -P 0x44 37887k 1k',
        ],
        'parallels',
      );
      const img = await openImage(p);
      expect(img.format).toBe('parallels');
      expect(sha256(await readAll(img))).toBe(qemuRawDigest(p, 'parallels'));
      await img.close();
      expect(await vdiskMap(p)).toEqual(qemuMap(p));
    });
  }

  it('reads the old magic (entries in sectors, data_off 0) as qemu-img does', async () => {
    const p = join(dir, 'old.hdd');
    oldMagicImage(p);
    const img = await openImage(p);
    expect(img.size).toBe(40 * 512);
    expect(sha256(await readAll(img))).toBe(qemuRawDigest(p, 'parallels'));
    await img.close();
    expect(await vdiskMap(p)).toEqual(qemuMap(p));
  });
});

describe('parallels: vdisk allocates where qemu does', () => {
  const writes: Array<[number, number, number]> = [
    [0, 4096, 1],
    [MiB - 512, 1024, 2],
    [5 * MiB + 7 * 512, 3 * MiB, 3],
    [19 * MiB, MiB, 4],
    [2 * MiB, 512, 5],
  ];
  for (const make of ['qemu 64k', 'qemu default', 'old magic']) {
    it(`the same writes give the same file (${make})`, async () => {
      const a = join(dir, 'a.hdd');
      const b = join(dir, 'b.hdd');
      if (make === 'old magic') oldMagicImage(a);
      else
        qemuImgOk([
          'create',
          '-f',
          'parallels',
          ...(make === 'qemu 64k' ? ['-o', 'cluster_size=64k'] : []),
          a,
          '20M',
        ]);
      copyFileSync(a, b);
      const img = await openImage(a, { writable: true });
      const size = img.size;
      const ops = writes.filter(([off, len]) => off + len <= size);
      for (const [off, len, fill] of ops) await img.writeAt(Buffer.alloc(len, fill), off);
      await img.close();
      qemuIo(
        b,
        ops.map(([off, len, fill]) => `write -P ${fill} ${off} ${len}`),
        'parallels',
      );
      expect(readFileSync(a).equals(readFileSync(b))).toBe(true);
    });
  }
});

describe('parallels: create and info against qemu-img', () => {
  it('prints the same Formatting line, writes the same file, and the same info', async () => {
    for (const args of [
      ['10M'],
      ['1000'],
      ['0'],
      ['-o', 'cluster_size=4k', '100M'],
      ['-o', 'cluster_size=1000', '1G'],
      ['-o', 'cluster_size=64k,preallocation=full', '10M'],
      ['-o', 'preallocation=falloc', '3G'],
    ]) {
      const qOut = qemuImgOk(['create', '-f', 'parallels', ...args.slice(0, -1), 'q.hdd', args.at(-1)!], dir);
      const vOut = await vdisk(
        ['create', '-f', 'parallels', ...args.slice(0, -1), 'v.hdd', args.at(-1)!],
        dir,
      );
      expect(vOut.stderr).toBe('');
      expect(vOut.stdout).toBe(qOut.replace("'q.hdd'", "'v.hdd'"));
      const q = join(dir, 'q.hdd');
      const v = join(dir, 'v.hdd');
      expect(readFileSync(v).equals(readFileSync(q))).toBe(true);
      expect(statSync(v).blocks).toBe(statSync(q).blocks);
      for (const img of [q, v]) {
        expect((await vdisk(['info', img])).stdout).toBe(qemuImgOk(['info', img]));
        expect((await vdisk(['info', '--output=json', img])).stdout).toBe(
          qemuImgOk(['info', '--output=json', img]),
        );
      }
    }
  });

  it('lists the same -o help and refuses what qemu-img refuses, in its words', async () => {
    expect((await vdisk(['create', '-f', 'parallels', '-o', 'help'])).stdout).toBe(
      qemuImgOk(['create', '-f', 'parallels', '-o', 'help']),
    );
    for (const args of [
      ['-o', 'cluster_size=0', '1M'],
      ['-o', 'cluster_size=2G', '1M'],
      ['-o', 'cluster_size=512', '2T'],
      ['-o', 'preallocation=metadata', '1M'],
      ['-b', 'base.raw', '-F', 'raw', '1M'],
    ]) {
      const q = qemuImg(['create', '-f', 'parallels', ...args.slice(0, -1), 'x.hdd', args.at(-1)!], dir);
      const v = await vdisk(['create', '-f', 'parallels', ...args.slice(0, -1), 'x.hdd', args.at(-1)!], dir);
      expect(v.code, args.join(' ')).toBe(q.code);
      expect(v.stdout).toBe(q.stdout);
      expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(q.stderr);
    }
  });

  it('probes parallels without -f, both magics', async () => {
    const p = join(dir, 'p.hdd');
    qemuImgOk(['create', '-f', 'parallels', p, '1M']);
    const img = await openImage(p);
    expect(img.format).toBe('parallels');
    await img.close();
    oldMagicImage(p);
    const old = await openImage(p);
    expect(old.format).toBe('parallels');
    await old.close();
  });
});

describe('parallels: images vdisk writes', () => {
  it('pass qemu-img check and compare, and the in-use mark lives only while open', async () => {
    const p = join(dir, 'v.hdd');
    expect((await vdisk(['create', '-f', 'parallels', '-o', 'cluster_size=64k', p, '20M'])).code).toBe(0);
    const model = Buffer.alloc(20 * MiB);
    const img = await openImage(p, { writable: true });
    expect(readFileSync(p).readUInt32LE(OFF.inuse)).toBe(HEADER_INUSE_MAGIC);
    const writes: Array<[number, number, number]> = [
      [0, 4096, 1],
      [MiB - 512, 1024, 2],
      [5 * MiB + 7, 3 * MiB, 3],
      [19 * MiB, MiB, 4],
      [5 * MiB + 100, 200, 5],
    ];
    await Promise.all(
      writes.map(([off, len, fill]) => {
        model.fill(fill, off, off + len);
        return img.writeAt(Buffer.alloc(len, fill), off);
      }),
    );
    await img.writeZeroes(6 * MiB, MiB, { unmap: true });
    model.fill(0, 6 * MiB, 7 * MiB);
    await img.close();
    expect(readFileSync(p).readUInt32LE(OFF.inuse)).toBe(0);
    writeFileSync(join(dir, 'model.raw'), model);
    expect(qemuImg(['check', '-f', 'parallels', p]).stdout).toMatch(/^No errors were found on the image\.\n/);
    const cmp = qemuImg(['compare', '-f', 'parallels', '-F', 'raw', p, join(dir, 'model.raw')]);
    expect(cmp.stdout).toBe('Images are identical.\n');
    expect(await vdiskMap(p)).toEqual(qemuMap(p));
  });

  it('refuses to write an image left in use, as qemu does, and still reads it', async () => {
    const p = join(dir, 'u.hdd');
    qemuImgOk(['create', '-f', 'parallels', p, '4M']);
    qemuIo(p, ['write -P 7 0 1M'], 'parallels');
    const b = readFileSync(p);
    b.writeUInt32LE(HEADER_INUSE_MAGIC, OFF.inuse);
    writeFileSync(p, b);
    const q = qemuImg(['resize', '-f', 'parallels', p, '8M']);
    expect(q.stderr).toContain('parallels: Image was not closed correctly; cannot be opened read/write');
    await expect(openImage(p, { writable: true })).rejects.toMatchObject({
      message: `Could not open '${p}': parallels: Image was not closed correctly; cannot be opened read/write`,
    });
    const img = await openImage(p);
    expect(sha256(await readAll(img))).toBe(qemuRawDigest(p, 'parallels'));
    await img.close();
  });
});

describe('parallels: check as qemu-img 7.2 counts it', () => {
  interface QemuCheck {
    corruptions?: number;
    leaks?: number;
    'allocated-clusters'?: number;
    'total-clusters'?: number;
    'fragmented-clusters'?: number;
    'image-end-offset'?: number;
    'corruptions-fixed'?: number;
    'leaks-fixed'?: number;
  }

  function qemuCheck(p: string, repair?: string) {
    const r = qemuImg(['check', '--output=json', ...(repair ? ['-r', repair] : []), '-f', 'parallels', p]);
    return { json: JSON.parse(r.stdout) as QemuCheck, lines: r.stderr.split('\n').filter(Boolean) };
  }

  async function vdiskCheck(p: string, repair: 'none' | 'leaks' | 'all'): Promise<CheckResult> {
    const img = await openImage(p, { format: 'parallels', writable: repair !== 'none', forCheck: true });
    try {
      return await (img.driver as ParallelsImage).check(repair);
    } finally {
      await img.close();
    }
  }

  function damaged(name: string, fn: (b: Buffer) => Buffer): string {
    const p = join(dir, name);
    qemuImgOk(['create', '-f', 'parallels', '-o', 'cluster_size=64k', p, '10M']);
    qemuIo(p, ['write -P 1 0 100k', 'write -P 2 1M 64k', 'write -P 3 3M 192k'], 'parallels');
    writeFileSync(p, fn(readFileSync(p)));
    return p;
  }

  const cases: Record<string, (b: Buffer) => Buffer> = {
    clean: (b) => b,
    'left in use': (b) => {
      b.writeUInt32LE(HEADER_INUSE_MAGIC, OFF.inuse);
      return b;
    },
    'entries past the end of the file': (b) => {
      b.writeUInt32LE(0x50, 64 + 5 * 4);
      b.writeUInt32LE(b.length / 65536, 64 + 6 * 4);
      b.writeUInt32LE(0x7fffffff, 64 + 7 * 4);
      return b;
    },
    'duplicate entries': (b) => {
      b.writeUInt32LE(1, 64 + 16 * 4);
      return b;
    },
    'leaked space': (b) => Buffer.concat([b, Buffer.alloc(5 * 65536 + 1000, 9)]),
    fragmented: (b) => {
      const e0 = b.readUInt32LE(64);
      b.writeUInt32LE(b.readUInt32LE(64 + 4), 64);
      b.writeUInt32LE(e0, 64 + 4);
      return b;
    },
  };

  for (const [name, fn] of Object.entries(cases)) {
    it(`${name}: same counts, messages and repairs`, async () => {
      const p = damaged('d.hdd', fn);
      const q = qemuCheck(p);
      const r = await vdiskCheck(p, 'none');
      expect(r.messages).toEqual(q.lines);
      expect(r.corruptions).toBe(q.json.corruptions ?? 0);
      expect(r.leaks).toBe(q.json.leaks ?? 0);
      expect(r.allocatedClusters).toBe(q.json['allocated-clusters'] ?? 0);
      expect(r.totalClusters).toBe(q.json['total-clusters']);
      expect(r.fragmentedClusters).toBe(q.json['fragmented-clusters'] ?? 0);
      expect(r.imageEndOffset).toBe(q.json['image-end-offset']);
      for (const mode of ['leaks', 'all'] as const) {
        const qp = join(dir, `q-${mode}.hdd`);
        const vp = join(dir, `v-${mode}.hdd`);
        copyFileSync(p, qp);
        copyFileSync(p, vp);
        const qr = qemuImg(['check', '-r', mode, '-f', 'parallels', qp]);
        const vr = await vdiskCheck(vp, mode);
        // qemu-img prints the first pass's repair lines, then checks again.
        expect(vr.messages).toEqual(qr.stderr.split('\n').filter(Boolean).slice(0, vr.messages.length));
        expect(vr.corruptionsFixed + vr.leaksFixed).toBe(
          Number(/(\d+) leaked clusters/.exec(qr.stdout)?.[1] ?? 0) +
            Number(/(\d+) corruptions\n/.exec(qr.stdout)?.[1] ?? 0),
        );
        expect(readFileSync(vp).equals(readFileSync(qp)), `${name} -r ${mode}`).toBe(true);
      }
    });
  }

  it('thousands of entries past the end, in runs and far apart: the same repaired BAT (npm run fuzz found 1M repairs taking 12 s)', async () => {
    const p = join(dir, 'big.hdd');
    qemuImgOk(['create', '-f', 'parallels', '-o', 'cluster_size=64k', p, '64G']);
    qemuIo(p, ['write -P 1 0 64k', 'write -P 2 40G 64k'], 'parallels');
    const b = readFileSync(p);
    const entries = (64 * 2 ** 30) / 65536;
    for (let i = 0; i < entries; i++) {
      if ((i % 3 === 0 && i > 0 && i < 30000) || (i >= 200000 && i < 200010) || i === entries - 1) {
        b.writeUInt32LE(0x7fffffff, 64 + i * 4);
      }
    }
    writeFileSync(p, b);
    const qp = join(dir, 'q.hdd');
    const vp = join(dir, 'v.hdd');
    copyFileSync(p, qp);
    copyFileSync(p, vp);
    const qr = qemuImg(['check', '-r', 'all', '-f', 'parallels', qp]);
    const vr = await vdisk(['check', '-r', 'all', '-f', 'parallels', vp]);
    expect(vr.code).toBe(qr.code);
    expect(vr.stdout).toBe(qr.stdout);
    expect(vr.stderr).toBe(qr.stderr);
    expect(vr.stdout).toContain('10010 corruptions');
    expect(readFileSync(vp).equals(readFileSync(qp))).toBe(true);
  });

  it('maps a header claiming petabytes past a short BAT as one unallocated extent (npm run fuzz)', async () => {
    const p = join(dir, 'huge.hdd');
    qemuImgOk(['create', '-f', 'parallels', p, '64M']);
    qemuIo(p, ['write -P 1 1M 1M'], 'parallels');
    const b = readFileSync(p);
    b.writeBigUInt64LE(1n << 43n, 36); // nb_sectors: 4 PiB, 4G clusters past a BAT of 64
    writeFileSync(p, b);
    // qemu-img 7.2 aborts on this image (an assertion in bdrv_co_block_status); the extents
    // are those its map prints for the part it gets through.
    const t0 = Date.now();
    const r = await vdisk(['map', '--output=json', '-f', 'parallels', p]);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual([
      { start: 0, length: 1048576, depth: 0, present: false, zero: true, data: false },
      { start: 1048576, length: 1048576, depth: 0, present: true, zero: false, data: true, offset: 1048576 },
      { start: 2097152, length: 2 ** 52 - 2097152, depth: 0, present: false, zero: true, data: false },
    ]);
  });

  it('an empty image whose BAT ends before the first cluster "leaks", as in qemu 7.2', async () => {
    const p = join(dir, 'e.hdd');
    qemuImgOk(['create', '-f', 'parallels', '-o', 'cluster_size=4k', p, '100M']);
    const q = qemuCheck(p);
    const r = await vdiskCheck(p, 'none');
    expect(r.messages).toEqual(q.lines);
    expect(r.leaks).toBe(q.json.leaks);
    expect(r.imageEndOffset).toBe(q.json['image-end-offset']);
  });
});

describe('parallels: hostile headers', () => {
  function base(): string {
    const p = join(dir, 'h.hdd');
    qemuImgOk(['create', '-f', 'parallels', '-o', 'cluster_size=64k', p, '4M']);
    qemuIo(p, ['write -P 7 0 1M'], 'parallels');
    return p;
  }
  function patch(p: string, fn: (b: Buffer) => void): void {
    const b = readFileSync(p);
    fn(b);
    writeFileSync(p, b);
  }
  async function refused(p: string, sameAsQemu: boolean, pattern?: RegExp): Promise<void> {
    const t0 = Date.now();
    const v = await vdisk(['info', '-f', 'parallels', p]);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(v.code).toBe(1);
    expect(v.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    if (pattern) expect(v.stderr).toMatch(pattern);
    if (sameAsQemu)
      expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(qemuImg(['info', '-f', 'parallels', p]).stderr);
  }

  it('bad magic, bad version, truncated header', async () => {
    const p = base();
    patch(p, (b) => b.write('WithoutFreeSpacX', 0, 'latin1'));
    await refused(p, true, /Image not in Parallels format/);
    patch(p, (b) => {
      b.write('WithouFreSpacExt', 0, 'latin1');
      b.writeUInt32LE(3, OFF.version);
    });
    await refused(p, true);
    truncateSync(p, 30);
    await refused(p, true);
  });

  it('zero and absurd cluster sizes, an absurd catalog, an absurd size', async () => {
    const p = base();
    patch(p, (b) => b.writeUInt32LE(0, OFF.tracks));
    await refused(p, true, /Zero sectors per track/);
    patch(p, (b) => b.writeUInt32LE(0x7fffffff, OFF.tracks));
    await refused(p, true, /Too big cluster/);
    patch(p, (b) => {
      b.writeUInt32LE(128, OFF.tracks);
      b.writeUInt32LE(0xfffffff0, OFF.batEntries);
    });
    await refused(p, true, /Catalog too large/);
    patch(p, (b) => {
      b.writeUInt32LE(64, OFF.batEntries);
      b.writeBigUInt64LE(1n << 60n, OFF.nbSectors);
    });
    await refused(p, false, /too large/);
  });

  it('a BAT that runs past the end of the file and entries past it: read as qemu, never written', async () => {
    const p = join(dir, 'b.hdd');
    qemuImgOk(['create', '-f', 'parallels', '-o', 'cluster_size=64k', p, '4M']);
    patch(p, (b) => {
      b.writeUInt32LE(0x10000000, OFF.batEntries);
      b.writeUInt32LE(0xffffffff, 64 + 4);
      b.writeUInt32LE(3, 64 + 8);
    });
    const img = await openImage(p);
    const digest = sha256(await readAll(img));
    await img.close();
    expect(digest).toBe(qemuRawDigest(p, 'parallels'));
    await expect(openImage(p, { writable: true })).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    expect(readFileSync(p).readUInt32LE(OFF.inuse)).toBe(0);
    // A BAT larger than qemu's largest read fails as qemu fails.
    patch(p, (b) => b.writeUInt32LE(0x1fffff80, OFF.batEntries));
    await refused(p, true, /Input\/output error/);
  });
});
