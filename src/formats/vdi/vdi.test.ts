import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { extentsOf } from '../../core/device.js';
import type { Image } from '../../core/image.js';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';
import type { VdiImage } from './image.js';

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
      present: e.allocated,
      zero: e.zero,
      data: e.data,
      ...(e.hostOffset !== undefined ? { offset: e.hostOffset } : {}),
    });
  }
  await img.close();
  return out;
}

function qemuMap(p: string) {
  return (JSON.parse(qemuImgOk(['map', '--output=json', p])) as Array<Record<string, unknown>>).map((e) => {
    const { depth: _d, ...rest } = e;
    return rest;
  });
}

describe('vdi: images made by qemu-img read byte-identical', () => {
  for (const opts of [[], ['-o', 'static=on']]) {
    it(`create ${opts.join(' ') || '(dynamic)'} + qemu-io writes, zeroes and discards`, async () => {
      const p = join(dir, 'q.vdi');
      qemuImgOk(['create', '-f', 'vdi', ...opts, p, '37M']);
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
        'vdi',
      );
      const img = await openImage(p);
      expect(img.format).toBe('vdi');
      expect(sha256(await readAll(img))).toBe(qemuRawDigest(p, 'vdi'));
      await img.close();
      expect(await vdiskMap(p)).toEqual(qemuMap(p));
    });
  }

  it('reads an odd-sized image (size rounded up to a sector as QEMU does)', async () => {
    const p = join(dir, 'odd.vdi');
    qemuImgOk(['create', '-f', 'vdi', p, '1000']);
    qemuIo(p, ['write -P 0x5a 0 1024'], 'vdi');
    const img = await openImage(p);
    expect(img.size).toBe(1024);
    expect(sha256(await readAll(img))).toBe(qemuRawDigest(p, 'vdi'));
    await img.close();
  });
});

describe('vdi: create and info against qemu-img', () => {
  it('prints the same Formatting line, info text and JSON', async () => {
    for (const args of [['10M'], ['1000'], ['-o', 'static=on', '3M'], ['-o', 'static=off', '1G'], ['0']]) {
      const q = join(dir, 'q.vdi');
      const v = join(dir, 'v.vdi');
      const qOut = qemuImgOk(['create', '-f', 'vdi', ...args.slice(0, -1), 'q.vdi', args.at(-1)!], dir);
      const vOut = await vdisk(['create', '-f', 'vdi', ...args.slice(0, -1), 'v.vdi', args.at(-1)!], dir);
      expect(vOut.stderr).toBe('');
      expect(vOut.stdout).toBe(qOut.replace("'q.vdi'", "'v.vdi'"));
      // The two files differ only in their random UUIDs.
      const qb = readFileSync(q);
      const vb = readFileSync(v);
      expect(vb.length).toBe(qb.length);
      qb.fill(0, 0x188, 0x1a8);
      vb.fill(0, 0x188, 0x1a8);
      expect(vb.equals(qb)).toBe(true);
      for (const [img, other] of [
        [q, v],
        [v, q],
      ] as const) {
        const qi = qemuImgOk(['info', img]);
        const vi = await vdisk(['info', img]);
        expect(vi.stdout).toBe(qi);
        const qj = qemuImgOk(['info', '--output=json', other]);
        const vj = await vdisk(['info', '--output=json', other]);
        expect(vj.stdout).toBe(qj);
      }
    }
  });

  it('lists the same -o help and refuses what qemu-img refuses', async () => {
    expect((await vdisk(['create', '-f', 'vdi', '-o', 'help'])).stdout).toBe(
      qemuImgOk(['create', '-f', 'vdi', '-o', 'help']),
    );
    const q = qemuImg(['create', '-f', 'vdi', 'x.vdi', '2P'], dir);
    const v = await vdisk(['create', '-f', 'vdi', 'x.vdi', '2P'], dir);
    expect(v.code).toBe(q.code);
    expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(q.stderr);
  });

  it('probes vdi without -f', async () => {
    const p = join(dir, 'p.vdi');
    qemuImgOk(['create', '-f', 'vdi', p, '1M']);
    const img = await openImage(p);
    expect(img.format).toBe('vdi');
    await img.close();
  });
});

describe('vdi: images vdisk writes', () => {
  for (const opts of [[], ['-o', 'static=on']]) {
    it(`pass qemu-img check and compare (${opts.join(' ') || 'dynamic'})`, async () => {
      const p = join(dir, 'v.vdi');
      expect((await vdisk(['create', '-f', 'vdi', ...opts, p, '20M'])).code).toBe(0);
      const model = Buffer.alloc(20 * MiB);
      const img = await openImage(p, { writable: true });
      const writes: Array<[number, number, number]> = [
        [0, 4096, 1],
        [MiB - 512, 1024, 2],
        [5 * MiB + 7, 3 * MiB, 3],
        [19 * MiB, MiB, 4],
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
      writeFileSync(join(dir, 'model.raw'), model);
      expect(qemuImg(['check', '-f', 'vdi', p]).stdout).toBe('No errors were found on the image.\n');
      const cmp = qemuImg(['compare', '-f', 'vdi', '-F', 'raw', p, join(dir, 'model.raw')]);
      expect(cmp.stdout).toBe('Images are identical.\n');
      expect(await vdiskMap(p)).toEqual(qemuMap(p));
    });
  }

  it('allocates in the order QEMU does: a block is counted in the header before the map names it', async () => {
    const p = join(dir, 'o.vdi');
    qemuImgOk(['create', '-f', 'vdi', p, '4M']);
    const img = await openImage(p, { writable: true });
    await img.writeAt(Buffer.alloc(512, 9), 2 * MiB);
    await img.close();
    const f = readFileSync(p);
    expect(f.readUInt32LE(0x184)).toBe(1);
    expect(f.readUInt32LE(0x200 + 2 * 4)).toBe(0);
    expect(f.length).toBe(0x400 + MiB);
  });
});

describe('vdi: a leaked block after a crash', () => {
  it('is counted back when vdisk opens the image for writing; the next block reuses it', async () => {
    const p = join(dir, 'l.vdi');
    qemuImgOk(['create', '-f', 'vdi', p, '8M']);
    qemuIo(p, ['write -P 1 0 1M', 'write -P 2 1M 1M'], 'vdi');
    const f = readFileSync(p);
    f.writeUInt32LE(3, 0x184); // header counted a third block the map never got
    writeFileSync(p, f);
    expect(qemuImg(['check', p]).stderr).toBe('ERROR: allocated blocks mismatch, is 2, should be 3\n');
    // Read-only opens leave it alone.
    await (await openImage(p)).close();
    expect(readFileSync(p).readUInt32LE(0x184)).toBe(3);
    const img = await openImage(p, { writable: true });
    await img.writeAt(Buffer.alloc(512, 3), 5 * MiB);
    await img.close();
    const g = readFileSync(p);
    expect(g.readUInt32LE(0x184)).toBe(3);
    expect(g.readUInt32LE(0x200 + 5 * 4)).toBe(2);
    expect(qemuImg(['check', p]).stdout).toBe('No errors were found on the image.\n');
  });
});

describe('vdi: check as qemu-img does', () => {
  /** Corrupt a qemu-made image, then compare our check with qemu-img check's stderr lines. */
  async function checkBoth(p: string) {
    const q = qemuImg(['check', '-f', 'vdi', p]);
    const img = await openImage(p, { format: 'vdi' });
    try {
      const r = await (img.driver as VdiImage).check('none');
      const qLines = q.stderr.split('\n').filter((l) => l.startsWith('ERROR'));
      expect(r.messages).toEqual(qLines);
      expect(r.corruptions).toBe(qLines.length);
      return r;
    } finally {
      await img.close();
    }
  }

  it('finds map entries out of range, shared blocks and a wrong count', async () => {
    const p = join(dir, 'c.vdi');
    qemuImgOk(['create', '-f', 'vdi', p, '8M']);
    qemuIo(p, ['write -P 1 0 1M', 'write -P 2 1M 1M', 'write -P 3 2M 1M'], 'vdi');
    expect((await checkBoth(p)).corruptions).toBe(0);
    const f = readFileSync(p);
    f.writeUInt32LE(1, 0x200 + 2 * 4); // block 2 now shares data block 1
    f.writeUInt32LE(77, 0x200 + 5 * 4); // block 5 points past the image
    writeFileSync(p, f);
    expect((await checkBoth(p)).corruptions).toBe(2);
  });

  it('refuses check -r as qemu-img does', async () => {
    const p = join(dir, 'r.vdi');
    qemuImgOk(['create', '-f', 'vdi', p, '1M']);
    expect(qemuImg(['check', '-r', 'all', p]).stderr).toBe(
      'qemu-img: This image format does not support checks\n',
    );
    const img = await openImage(p);
    await expect((img.driver as VdiImage).check('all')).rejects.toMatchObject({
      code: 'UNSUPPORTED',
      message: 'This image format does not support checks',
    });
    await img.close();
  });
});
