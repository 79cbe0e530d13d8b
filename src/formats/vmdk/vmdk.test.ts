import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { digest, qemuMap, readAll, vdiskMap } from '../../test/image-helpers.js';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';
import type { VmdkImage } from './image.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

const MiB = 1 << 20;
const SUBFORMATS = [
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
];

describe('vmdk: images made by qemu-img read byte-identical', () => {
  for (const sf of SUBFORMATS) {
    it(`subformat=${sf}: qemu-io writes and zeroes`, async () => {
      const p = join(dir, 'q.vmdk');
      // Split images need more than 2 GiB for a second extent.
      const split = sf.startsWith('twoGb');
      const top = split ? 2047 : 17;
      qemuImgOk(['create', '-q', '-f', 'vmdk', '-o', `subformat=${sf}`, p, `${top + 5}M`]);
      const cmds =
        sf === 'streamOptimized'
          ? // QEMU writes only whole, new grains of a stream.
            [
              'write -P 0xab 0 1M',
              'write -P 0x11 3M 64k',
              `write -P 0x22 ${top}M 2M`,
              `write -P 0x33 ${top + 4}M 64k`,
            ]
          : [
              'write -P 0xab 0 1M',
              'write -P 0x11 3M 4k',
              `write -P 0x22 ${top}M 2M`,
              'write -P 0x33 12345k 7k',
              'write -z 6M 512k',
              `write -P 0x44 ${top + 4}M 1M`,
            ];
      qemuIo(p, cmds, 'vmdk');
      const img = await openImage(p);
      expect(img.format).toBe('vmdk');
      expect(await digest(img)).toBe(qemuRawDigest(p, 'vmdk'));
      await img.close();
      expect(await vdiskMap(p)).toEqual(qemuMap(p));
    });
  }

  it('zeroed_grain=on: zeroed grains read and map as QEMU has them', async () => {
    const p = join(dir, 'z.vmdk');
    qemuImgOk(['create', '-q', '-f', 'vmdk', '-o', 'zeroed_grain=on', p, '10M']);
    qemuIo(p, ['write -P 1 0 1M', 'write -z 64k 128k', 'write -z 300k 10k', 'write -z 5M 1M'], 'vmdk');
    const img = await openImage(p);
    expect(await digest(img)).toBe(qemuRawDigest(p, 'vmdk'));
    await img.close();
    expect(await vdiskMap(p)).toEqual(qemuMap(p));
  });

  it('streamOptimized made by qemu-img convert', async () => {
    const raw = join(dir, 's.raw');
    const p = join(dir, 's.vmdk');
    qemuImgOk(['create', '-q', '-f', 'raw', raw, '9M']);
    qemuIo(raw, ['write -P 0xab 0 1M', 'write -P 0x11 5M 4k', 'write -P 0x12 9215k 1k'], 'raw');
    qemuImgOk(['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, p]);
    const img = await openImage(p);
    expect(sha256(await readAll(img))).toBe(qemuRawDigest(raw, 'raw'));
    await img.close();
    expect(await vdiskMap(p)).toEqual(qemuMap(p));
  });
});

describe('vmdk: create and info against qemu-img', () => {
  const cases: string[][] = [
    ['10M'],
    ['1000'],
    ['-o', 'subformat=monolithicFlat', '5M'],
    ['-o', 'subformat=twoGbMaxExtentSparse', '3G'],
    ['-o', 'subformat=twoGbMaxExtentFlat', '2G'],
    ['-o', 'subformat=streamOptimized', '100M'],
    ['-o', 'adapter_type=lsilogic,hwversion=7,toolsversion=123,zeroed_grain=on', '1G'],
    ['-o', 'adapter_type=buslogic,compat6=on', '64M'],
    ['-o', 'adapter_type=legacyESX,subformat=monolithicSparse,zeroed_grain=off', '64M'],
    ['0'],
  ];
  for (const args of cases) {
    it(`create ${args.join(' ')}`, async () => {
      const sub = args.slice(0, -1);
      const size = args.at(-1)!;
      const qOut = qemuImgOk(['create', '-f', 'vmdk', ...sub, 'q.vmdk', size], dir);
      const vOut = await vdisk(['create', '-f', 'vmdk', ...sub, 'v.vmdk', size], dir);
      expect(vOut.stderr).toBe('');
      expect(vOut.stdout).toBe(qOut.replace("'q.vmdk'", "'v.vmdk'"));
      // Same bytes in every file but the CID line.
      const noCid = (b: Buffer) =>
        b
          .toString('latin1')
          .replace(/CID=[0-9a-f]+\n/, 'CID=\n')
          .replaceAll('\0', '');
      const qFiles = readdir(dir, 'q');
      expect(readdir(dir, 'v')).toEqual(qFiles.map((f) => f.replace(/^q/, 'v')));
      for (const f of qFiles) {
        const qs = statSync(join(dir, f)).size;
        if (qs > 64 * MiB) {
          // A flat extent: sized, and empty.
          expect(statSync(join(dir, f.replace(/^q/, 'v'))).size).toBe(qs);
          continue;
        }
        const q = readFileSync(join(dir, f));
        const v = readFileSync(join(dir, f.replace(/^q/, 'v')));
        expect(noCid(v)).toBe(noCid(q).replaceAll('"q', '"v'));
      }
      if (size === '0') {
        // QEMU cannot open the empty monolithicSparse it makes (capacity 0 sends it down the
        // descriptor path); vdisk refuses it in the same words.
        const q = qemuImg(['info', 'q.vmdk'], dir);
        const v = await vdisk(['info', 'v.vmdk'], dir);
        expect(q.code).toBe(1);
        expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(q.stderr.replace("'q.vmdk'", "'v.vmdk'"));
        return;
      }
      for (const img of ['q.vmdk', 'v.vmdk']) {
        expect((await vdisk(['info', img], dir)).stdout).toBe(qemuImgOk(['info', img], dir));
        expect((await vdisk(['info', '--output=json', img], dir)).stdout).toBe(
          qemuImgOk(['info', '--output=json', img], dir),
        );
      }
      // And through a path with a directory (extent names as qemu-img shows them).
      expect((await vdisk(['info', join(dir, 'v.vmdk')])).stdout).toBe(
        qemuImgOk(['info', join(dir, 'v.vmdk')]),
      );
    });
  }

  it('refuses what qemu-img refuses, in its words', async () => {
    qemuImgOk(['create', '-q', '-f', 'vmdk', 'base.vmdk', '1M'], dir);
    qemuImgOk(['create', '-q', '-f', 'raw', 'base.raw', '1M'], dir);
    for (const args of [
      ['-o', 'compat6=on,hwversion=7', 'x.vmdk', '1G'],
      ['-o', 'adapter_type=foo', 'x.vmdk', '1G'],
      ['-o', 'subformat=foo', 'x.vmdk', '1G'],
      ['-o', 'subformat=monolithicFlat,zeroed_grain=on', 'x.vmdk', '1G'],
      ['-b', 'base.vmdk', '-F', 'vmdk', '-o', 'subformat=monolithicFlat', 'x.vmdk'],
      ['-b', 'base.raw', '-F', 'raw', 'x.vmdk'],
      ['-u', '-b', 'nope.vmdk', '-F', 'vmdk', 'x.vmdk', '1G'],
      ['-u', '-b', 'base.raw', '-F', 'vmdk', 'x.vmdk', '1G'],
    ]) {
      const q = qemuImg(['create', '-f', 'vmdk', ...args], dir);
      const v = await vdisk(['create', '-f', 'vmdk', ...args], dir);
      expect(q.code).toBe(1);
      expect(v.code).toBe(1);
      expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(q.stderr);
    }
  });

  it('lists the same -o help', async () => {
    expect((await vdisk(['create', '-f', 'vmdk', '-o', 'help'])).stdout).toBe(
      qemuImgOk(['create', '-f', 'vmdk', '-o', 'help']),
    );
  });
});

function readdir(d: string, prefix: string): string[] {
  return readdirSync(d)
    .filter((f) => f.startsWith(prefix))
    .sort();
}

describe('vmdk: backing files (parentFileNameHint / parentCID)', () => {
  it('an overlay vdisk makes reads, copies on write and passes qemu-img check/compare', async () => {
    const base = join(dir, 'base.vmdk');
    const top = join(dir, 'top.vmdk');
    qemuImgOk(['create', '-q', '-f', 'vmdk', base, '8M']);
    qemuIo(base, ['write -P 0x11 0 8M'], 'vmdk');
    const c = await vdisk(['create', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', 'top.vmdk'], dir);
    expect(c.stdout).toBe(
      "Formatting 'top.vmdk', fmt=vmdk size=8388608 backing_file=base.vmdk backing_fmt=vmdk compat6=off hwversion=undefined\n",
    );
    expect((await vdisk(['info', 'top.vmdk'], dir)).stdout).toBe(qemuImgOk(['info', 'top.vmdk'], dir));
    const img = await openImage(top, { writable: true, backing: 'follow' });
    await img.writeAt(Buffer.alloc(1000, 0x22), 70000);
    await img.writeZeroes(3 * MiB, 4096);
    await img.close();
    expect(qemuImg(['check', top]).stdout).toBe('No errors were found on the image.\n');
    const model = Buffer.alloc(8 * MiB, 0x11);
    model.fill(0x22, 70000, 71000);
    model.fill(0, 3 * MiB, 3 * MiB + 4096);
    writeFileSync(join(dir, 'model.raw'), model);
    expect(qemuImg(['compare', top, join(dir, 'model.raw')]).stdout).toBe('Images are identical.\n');
    const again = await openImage(top, { backing: 'follow' });
    expect(sha256(await readAll(again))).toBe(sha256(model));
    await again.close();
    expect(await vdiskMap(top)).toEqual(qemuMap(top));
  });

  it('refuses to read through a parent whose CID changed, as QEMU does', async () => {
    const base = join(dir, 'base.vmdk');
    const top = join(dir, 'top.vmdk');
    qemuImgOk(['create', '-q', '-f', 'vmdk', base, '1M']);
    qemuImgOk(['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', top]);
    qemuIo(base, ['write -P 1 0 64k'], 'vmdk'); // a write gives the base a new CID
    expect(qemuImg(['convert', '-O', 'raw', top, join(dir, 'o.raw')]).code).toBe(1);
    const img = await openImage(top, { backing: 'follow' });
    await expect(img.readAt(Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'INVALID_IMAGE' });
    await img.close();
  });
});

describe('vmdk: compressed writes (streamOptimized)', () => {
  it('writeCompressed grains pass qemu-img check and compare', async () => {
    const p = join(dir, 'c.vmdk');
    expect(
      (await vdisk(['create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', p, '4100k'])).code,
    ).toBe(0);
    const img = await openImage(p, { writable: true });
    const model = Buffer.alloc(img.size);
    for (let i = 0; i < model.length; i++) model[i] = (i * 7 + (i >> 12)) & 0xff;
    model.fill(0, MiB, 2 * MiB);
    const jobs: Promise<void>[] = [];
    for (let off = 0; off < model.length; off += 65536) {
      const chunk = model.subarray(off, Math.min(off + 65536, model.length));
      if (chunk.every((b) => b === 0)) continue;
      jobs.push(img.driver.writeCompressed!(chunk, off));
    }
    await Promise.all(jobs);
    await img.close();
    writeFileSync(join(dir, 'model.raw'), model);
    expect(qemuImg(['check', p]).stdout).toBe('No errors were found on the image.\n');
    expect(qemuImg(['compare', p, join(dir, 'model.raw')]).stdout).toBe('Images are identical.\n');
    const info = JSON.parse(qemuImgOk(['info', '--output=json', p])) as { 'actual-size': number };
    expect(info['actual-size']).toBeLessThan(model.length);
    expect(await vdiskMap(p)).toEqual(qemuMap(p));
  });
});

describe('vmdk: check as qemu-img does', () => {
  it('reports a grain that points past the end of the file', async () => {
    const p = join(dir, 'k.vmdk');
    qemuImgOk(['create', '-q', '-f', 'vmdk', p, '10M']);
    qemuIo(p, ['write -P 1 0 128k'], 'vmdk');
    const f = readFileSync(p);
    // Primary GT starts right after the primary GD (sector gd_offset + 1).
    const gdOffset = Number(f.readBigUInt64LE(56));
    const gt = (gdOffset + 1) * 512;
    f.writeUInt32LE(0x100000, gt + 4); // grain 1 far past the end
    writeFileSync(p, f);
    const q = qemuImg(['check', p]);
    expect(q.code).toBe(1);
    const img = await openImage(p);
    const r = await (img.driver as VmdkImage).check('none');
    await img.close();
    expect(r.corruptions).toBe(1);
    expect(r.messages).toEqual(q.stderr.split('\n').filter((l) => l.startsWith('ERROR')));
    expect(q.stderr).toContain(`qemu-img: Check failed: ${r.failure}\n`);
  });

  it('finds nothing wrong in the images of every subformat, and refuses -r', async () => {
    for (const sf of SUBFORMATS) {
      const p = join(dir, `${sf}.vmdk`);
      qemuImgOk(['create', '-q', '-f', 'vmdk', '-o', `subformat=${sf}`, p, '3M']);
      qemuIo(p, ['write -P 1 0 64k'], 'vmdk');
      expect(qemuImg(['check', p]).code).toBe(0);
      const img = await openImage(p);
      const r = await (img.driver as VmdkImage).check('none');
      expect(r.corruptions).toBe(0);
      await expect((img.driver as VmdkImage).check('leaks')).rejects.toMatchObject({ code: 'UNSUPPORTED' });
      await img.close();
    }
  });
});
