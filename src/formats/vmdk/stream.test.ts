/**
 * The sequential vmdk writer: the shared conformance suite (qemu-img check and compare) for
 * both subformats, then what it does not cover: qemu-img info and the file's bytes against
 * qemu-img's own output for the same options, layered outputs over a vmdk parent (the CID
 * rule), refusals before any byte, vdisk reading its own streams, and a large sparse disk
 * (tables in several pieces).
 */
import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { getDriver } from '../../core/formats.js';
import type { Image } from '../../core/image.js';
import { imageSeqSource, type SeqSource } from '../../core/seq.js';
import { digest } from '../../test/image-helpers.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';
import { runSeqConformance, writeImageSeq } from '../../test/seq-conformance.js';
import { registerBuiltinFormats } from '../index.js';
import { descriptorText } from './descriptor.js';
import { decodeVmdk4, SECTOR, VMDK4_FLAG_ZERO_GRAIN } from './header.js';

const MiB = 1 << 20;
const GiB = 1 << 30;

runSeqConformance({
  format: 'vmdk',
  variants: [{}, { subformat: 'streamOptimized' }, { adapter_type: 'lsilogic', zeroed_grain: 'on' }],
  // The suite's layered case names a qcow2 backing file, which a vmdk cannot have (QEMU opens
  // a vmdk's parent as a vmdk): it must be refused; layered outputs over a vmdk parent are
  // tested below.
  backing: false,
  layeredRefusal: 'backing_file must be a vmdk image',
  refused: [
    { options: { adapter_type: 'scsi' } },
    { options: { subformat: 'bogus' } },
    { options: { compat6: 'on', hwversion: '7' } },
    { options: { zeroed_grain: 'maybe' } },
  ],
  knownLength: (o) => o['subformat'] !== 'streamOptimized',
  checkable: true,
});

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  registerBuiltinFormats();
  ({ dir, cleanup } = tempDir('vdisk-vmdk-seq-'));
});
afterAll(() => cleanup());

const info = (p: string) => JSON.parse(qemuImgOk(['info', '--output=json', '-f', 'vmdk', p]));

/** qemu-img check says nothing is wrong, and compare says the two read alike. */
function expectSame(out: string, ref: string, refFmt: string): void {
  const check = qemuImg(['check', '-f', 'vmdk', out]);
  expect(check.stdout + check.stderr).toMatch(/No errors were found/);
  expect(check.code).toBe(0);
  const cmp = qemuImg(['compare', '-f', 'vmdk', '-F', refFmt, out, ref]);
  expect(cmp.stdout + cmp.stderr).toMatch(/Images are identical/);
  expect(cmp.code).toBe(0);
}

/** The embedded descriptor's lines, but CID and the extent's file name (qemu-img's are random or its own). */
function descriptorLines(p: string): string[] {
  const fd = openSync(p, 'r');
  const buf = Buffer.alloc(20 * SECTOR);
  readSync(fd, buf, 0, buf.length, SECTOR);
  closeSync(fd);
  return descriptorText(buf)
    .split('\n')
    .filter((l) => !l.startsWith('CID='))
    .map((l) => l.replace(/ SPARSE ".*"$/, ' SPARSE "…"'));
}

function headerOf(p: string) {
  const fd = openSync(p, 'r');
  const buf = Buffer.alloc(SECTOR);
  readSync(fd, buf, 0, SECTOR, 0);
  closeSync(fd);
  return decodeVmdk4(buf);
}

describe('sequential vmdk against qemu-img', () => {
  let src: string;
  beforeAll(() => {
    src = join(dir, 'src.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', src, `${48 * MiB + 3 * 512}`]);
    qemuIo(
      src,
      [
        'write -P 0x11 0 192k',
        'write -P 0x22 5m 2m',
        'write -P 0x33 33550000 70000',
        `write -P 0x44 ${48 * MiB} 1536`,
      ],
      'qcow2',
    );
  });

  const cases: Record<string, string>[] = [
    {},
    { subformat: 'streamOptimized' },
    { adapter_type: 'lsilogic', hwversion: '6' },
    { subformat: 'streamOptimized', adapter_type: 'buslogic', toolsversion: '10240' },
    { compat6: 'on', zeroed_grain: 'on' },
  ];
  for (const options of cases) {
    const label = JSON.stringify(options);
    it(`${label}: qemu-img info and the descriptor are qemu-img convert's`, async () => {
      const ref = join(dir, 'ref.vmdk');
      const out = join(dir, 'out.vmdk');
      const o = Object.entries(options).map(([k, v]) => `${k}=${v}`);
      qemuImgOk(['convert', '-f', 'qcow2', '-O', 'vmdk', ...(o.length ? ['-o', o.join(',')] : []), src, ref]);
      await writeImageSeq({ path: src, fmt: 'qcow2' }, 'vmdk', options, out);
      expectSame(out, src, 'qcow2');
      const a = info(out);
      const b = info(ref);
      for (const k of ['virtual-size', 'cluster-size', 'format', 'backing-filename'])
        expect(a[k], k).toEqual(b[k]);
      const spec = (i: { 'format-specific': { data: Record<string, unknown> } }) => {
        const { cid: _cid, ...rest } = i['format-specific'].data;
        return rest;
      };
      expect(JSON.stringify(spec(a)).replaceAll('out.vmdk', 'X')).toBe(
        JSON.stringify(spec(b)).replaceAll('ref.vmdk', 'X'),
      );
      expect(descriptorLines(out)).toEqual(descriptorLines(ref));
      const h = headerOf(out);
      const hr = headerOf(ref);
      expect([h.version, h.capacity, h.granularity, h.gtEntries, h.compressAlgorithm]).toEqual([
        hr.version,
        hr.capacity,
        hr.granularity,
        hr.gtEntries,
        hr.compressAlgorithm,
      ]);
      if (options['subformat'] === 'streamOptimized') {
        // A stream: the directory is found through the footer.
        expect(h.gdOffset).toBe(-1);
        expect(h.flags).toBe(hr.flags & ~2); // no redundant directory
      } else {
        expect(h).toEqual(hr);
      }
    });
  }

  it('monolithicSparse: the file is qemu-img convert’s, byte for byte, but the descriptor', async () => {
    const ref = join(dir, 'ref-bytes.vmdk');
    const out = join(dir, 'out-bytes.vmdk');
    qemuImgOk(['convert', '-f', 'qcow2', '-O', 'vmdk', src, ref]);
    const { seq, written } = await writeImageSeq({ path: src, fmt: 'qcow2' }, 'vmdk', {}, out);
    expect(seq.length).toBe(written);
    const a = readFileSync(out);
    const b = readFileSync(ref);
    expect(a.length).toBe(b.length);
    // Sector 0 the header, sectors 1-20 the descriptor (CID and extent name differ).
    expect(a.subarray(0, SECTOR).equals(b.subarray(0, SECTOR))).toBe(true);
    expect(a.subarray(21 * SECTOR).equals(b.subarray(21 * SECTOR))).toBe(true);
  });

  it('streamOptimized is read back by vdisk as the source', async () => {
    const out = join(dir, 'readback.vmdk');
    const { seq } = await writeImageSeq(
      { path: src, fmt: 'qcow2' },
      'vmdk',
      { subformat: 'streamOptimized' },
      out,
    );
    expect(seq.length).toBeNull();
    const a = await openImage(out, { format: 'vmdk' });
    const b = await openImage(src, { format: 'qcow2' });
    try {
      expect(a.size).toBe(b.size);
      expect(await digest(a)).toBe(await digest(b));
      const fs = a.driver.formatSpecific?.();
      expect(fs?.data['create-type']).toBe('streamOptimized');
    } finally {
      await a.close();
      await b.close();
    }
    // vdisk's compare says so too.
    const r = await vdisk(['compare', '-f', 'vmdk', '-F', 'qcow2', out, src]);
    expect(r.stdout).toMatch(/Images are identical/);
  });

  it('stopping a stream early settles its reads and compressions', async () => {
    const image = await openImage(src, { format: 'qcow2' });
    try {
      for (const subformat of ['monolithicSparse', 'streamOptimized']) {
        const seq = await (await getDriver('vmdk')).createSequential!(
          imageSeqSource(image, { flatten: true }),
          {
            subformat,
          },
        );
        let n = 0;
        for await (const _ of seq.chunks()) if (++n === 2) break;
        expect(n).toBe(2);
      }
    } finally {
      await image.close();
    }
  });
});

describe('sequential vmdk over a vmdk parent', () => {
  let base: string;
  let top: string;
  beforeAll(() => {
    // base.vmdk ← top.qcow2: the top layer writes data, zeros that hide base data, and a
    // range not on grain boundaries.
    base = join(dir, 'base.vmdk');
    top = join(dir, 'top.qcow2');
    qemuImgOk(['create', '-q', '-f', 'vmdk', base, `${40 * MiB}`]);
    qemuIo(base, ['write -P 0x61 0 8m', 'write -P 0x62 34m 2m'], 'vmdk');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'vmdk', top]);
    qemuIo(
      top,
      ['write -P 0x71 1m 1m', 'write -z 4m 2m', 'write -P 0x72 35m 100k', 'write -z 39m 64k'],
      'qcow2',
    );
  });

  for (const options of [
    {},
    { subformat: 'streamOptimized' },
    { zeroed_grain: 'off' },
    { subformat: 'streamOptimized', zeroed_grain: 'off' },
  ] as Record<string, string>[]) {
    it(`${JSON.stringify(options)}: the top layer alone reads as the chain, in qemu-img and vdisk`, async () => {
      const out = join(dir, 'layer.vmdk');
      const { written } = await writeImageSeq({ path: top, fmt: 'qcow2' }, 'vmdk', options, out, {
        backing: { filename: base, format: 'vmdk' },
      });
      // Only what the top layer holds: 1 MiB + the grains of 100k (+ zero grains when stored).
      expect(written).toBeLessThan(options['zeroed_grain'] === 'off' ? 6 * MiB : 2 * MiB);
      const i = info(out);
      expect(i['backing-filename']).toBe(base);
      expect(i['virtual-size']).toBe(40 * MiB);
      // The parentCID is the parent's CID, else QEMU would not read through it.
      expect(i['format-specific'].data['parent-cid']).toBe(info(base)['format-specific'].data.cid);
      const zeroFlag = (headerOf(out).flags & VMDK4_FLAG_ZERO_GRAIN) !== 0;
      expect(zeroFlag).toBe(options['zeroed_grain'] !== 'off');
      expectSame(out, top, 'qcow2');
      const a = await openImage(out, { format: 'vmdk', backing: 'follow' });
      const b = await openImage(top, { format: 'qcow2', backing: 'follow' });
      try {
        expect(await digest(a)).toBe(await digest(b));
      } finally {
        await a.close();
        await b.close();
      }
    });
  }

  it('a relative backing name is recorded as given; the parent is never opened by that name', async () => {
    const out = join(dir, 'layer-rel.vmdk');
    // The working directory has no base.vmdk: the CID comes from the opened backing image.
    await writeImageSeq({ path: top, fmt: 'qcow2' }, 'vmdk', {}, out, {
      backing: { filename: 'base.vmdk', format: 'vmdk' },
    });
    expect(info(out)['backing-filename']).toBe('base.vmdk');
    expectSame(out, top, 'qcow2');
  });
});

describe('sequential vmdk refusals', () => {
  const source = (backing?: { filename: string; format: string; image?: Image }): SeqSource => ({
    size: 4 * MiB,
    backing: backing === undefined ? undefined : { ...backing, size: 4 * MiB, image: backing.image },
    read: () => Promise.reject(new Error('read before the refusal')),
    map: () => Promise.reject(new Error('map before the refusal')),
  });
  const refused = async (
    options: Record<string, string>,
    backing?: { filename: string; format: string; image?: Image },
  ) => {
    const driver = await getDriver('vmdk');
    return driver.createSequential!(source(backing), options);
  };

  for (const subformat of ['monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat']) {
    it(`subformat=${subformat} (several files) before any byte`, async () => {
      await expect(refused({ subformat })).rejects.toThrow(
        `subformat '${subformat}' is several files; a sequential vmdk is monolithicSparse or streamOptimized`,
      );
    });
  }

  it('options create does not take, backing options, a non-vmdk parent', async () => {
    await expect(refused({ cluster_size: '65536' })).rejects.toThrow("Invalid parameter 'cluster_size'");
    await expect(refused({ backing_file: 'x.vmdk' })).rejects.toThrow("Invalid parameter 'backing_file'");
    await expect(refused({}, { filename: 'master.qcow2', format: 'qcow2' })).rejects.toThrow(
      'backing_file must be a vmdk image',
    );
  });

  it('a parent named vmdk that is another format', async () => {
    const q = join(dir, 'not-vmdk.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', q, '4M']);
    const image = await openImage(q, { format: 'qcow2' });
    try {
      await expect(refused({}, { filename: q, format: 'vmdk', image })).rejects.toThrow(
        'Invalid backing file format: qcow2. Must be vmdk',
      );
    } finally {
      await image.close();
    }
  });
});

describe('a large sparse disk', () => {
  it('tables in several pieces, the last grain short, in both subformats', async () => {
    // 100 GiB: 3200 grain tables (6.25 MiB per directory's tables), data far apart.
    const size = 100 * GiB + 7 * 512;
    const src = join(dir, 'big.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', src, String(size)]);
    qemuIo(
      src,
      [
        'write -P 0x11 0 64k',
        `write -P 0x22 ${40 * GiB - 4096} 8k`,
        `write -P 0x33 ${99 * GiB} 1m`,
        `write -P 0x44 ${100 * GiB} 3584`,
      ],
      'qcow2',
    );
    for (const options of [{}, { subformat: 'streamOptimized' }] as Record<string, string>[]) {
      const out = join(dir, 'big.vmdk');
      const { seq, written, largest } = await writeImageSeq(
        { path: src, fmt: 'qcow2' },
        'vmdk',
        options,
        out,
      );
      if (seq.length !== null) expect(seq.length).toBe(written);
      expect(statSync(out).size).toBe(written);
      // Metadata in bounded pieces (a few MiB), never the whole table area at once.
      expect(largest).toBeLessThanOrEqual(4 * MiB);
      expectSame(out, src, 'qcow2');
    }
  });
});
