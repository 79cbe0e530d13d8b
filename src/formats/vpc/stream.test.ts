import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgOk, qemuIo, tempDir } from '../../test/oracle.js';
import { runSeqConformance, writeImageSeq } from '../../test/seq-conformance.js';
import { registerBuiltinFormats } from '../index.js';
import { decodeFooter, FOOTER_SIZE, VHD_FIXED, VHD_TIMESTAMP_BASE, vpcChecksum } from './footer.js';

runSeqConformance({
  format: 'vpc',
  variants: [{}, { subformat: 'fixed' }, { subformat: 'fixed', force_size: 'on' }, { force_size: 'on' }],
  backing: false,
  knownLength: () => true,
  // qemu-img 7.2: "This image format does not support checks" (vpc has no bdrv_co_check).
  checkable: false,
  sizeMayGrow: true,
  refused: [
    { size: 2041 * 2 ** 30 }, // past 2040 GiB (VHD_MAX_SECTORS)
    { size: 2041 * 2 ** 30, options: { subformat: 'fixed', force_size: 'on' } },
    { options: { subformat: 'sparse' } },
    { options: { force_size: 'maybe' } },
    { options: { static: 'on' } },
  ],
});

const MiB = 1 << 20;
const GiB = 1 << 30;

const optionString = (o: Record<string, string>) =>
  Object.entries(o)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
/** qemu-img convert -O vpc with these options (qemu-img refuses an empty -o). */
const qemuConvert = (src: string, fmt: string, options: Record<string, string>, out: string) =>
  qemuImgOk([
    'convert',
    '-f',
    fmt,
    '-O',
    'vpc',
    ...(Object.keys(options).length > 0 ? ['-o', optionString(options)] : []),
    src,
    out,
  ]);
const virtualSize = (path: string) =>
  JSON.parse(qemuImgOk(['info', '--output=json', '-f', 'vpc', path]))['virtual-size'] as number;

/** The footer's timestamp, checksum and UUID (create makes them new each time). */
const FOOTER_VOLATILE: Array<[number, number]> = [
  [24, 28],
  [64, 84],
];

/** A copy of a VHD with the volatile footer fields of both footer copies zeroed. */
function masked(path: string, dynamic: boolean): Buffer {
  const b = readFileSync(path);
  for (const at of dynamic ? [0, b.length - FOOTER_SIZE] : [b.length - FOOTER_SIZE])
    for (const [from, to] of FOOTER_VOLATILE) b.fill(0, at + from, at + to);
  return b;
}

describe('sequential vpc: the sizes and layout qemu-img convert makes', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    registerBuiltinFormats();
    ({ dir, cleanup } = tempDir('vdisk-seq-vpc-'));
    // A large sparse source: a BAT of 512 Ki entries (2 MiB, streamed in pieces), data far in.
    const big = join(dir, 'big.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', big, `${1024 * GiB}`]);
    qemuIo(
      big,
      [
        'write -P 0x11 0 64k',
        'write -P 0x22 3m 2m', // across a block boundary
        `write -P 0x33 ${600 * GiB - 512} 1024`,
        `write -P 0x44 ${1024 * GiB - 4096} 4096`, // the last block
      ],
      'qcow2',
    );
  });
  afterAll(() => cleanup());
  const p = (n: string) => join(dir, n);

  it('gives the virtual size qemu-img convert -O vpc gives, for every option set', async () => {
    // Sizes below, at and beyond the largest CHS geometry (127.5 GiB): rounded up to the
    // geometry, or kept (force_size, and beyond the geometry, where current_size counts).
    const dynamicSizes = [
      MiB,
      10 * MiB + 512,
      64 * MiB + 7 * 512,
      100 * GiB + 512,
      130 * GiB,
      1024 * GiB + 512,
    ];
    // Fixed outputs are written whole: small sizes only (the size rule is the same).
    const fixedSizes = [MiB, 10 * MiB + 512, 64 * MiB + 7 * 512];
    const cases: Array<[number, Record<string, string>]> = [
      ...dynamicSizes.flatMap((s) =>
        [{}, { force_size: 'on' }].map((o) => [s, o] as [number, Record<string, string>]),
      ),
      ...fixedSizes.flatMap((s) =>
        [{ subformat: 'fixed' }, { subformat: 'fixed', force_size: 'on' }].map(
          (o) => [s, o] as [number, Record<string, string>],
        ),
      ),
    ];
    let grew = 0;
    for (const [size, options] of cases) {
      const src = p(`size-${size}.raw`);
      if (!existsSync(src)) qemuImgOk(['create', '-f', 'raw', src, `${size}`]);
      const ours = p('ours.vhd');
      const theirs = p('theirs.vhd');
      const { seq, written } = await writeImageSeq({ path: src, fmt: 'raw' }, 'vpc', options, ours);
      expect(seq.length).toBe(written);
      qemuConvert(src, 'raw', options, theirs);
      const want = virtualSize(theirs);
      expect(virtualSize(ours), `${size} ${optionString(options)}`).toBe(want);
      if (want > size) grew++;
      qemuImgOk(['compare', '-f', 'raw', '-F', 'vpc', src, ours]);
    }
    // The geometry did round some sizes up (the rule under test is not the identity).
    expect(grew).toBeGreaterThan(0);
  });

  it('lays a dynamic VHD out as qemu-img convert does, but for the footer timestamp, checksum and UUID', async () => {
    const src = p('big.qcow2');
    for (const options of [{}, { force_size: 'on' }] as Record<string, string>[]) {
      const ours = p('big-ours.vhd');
      const theirs = p('big-theirs.vhd');
      const { seq, largest } = await writeImageSeq({ path: src, fmt: 'qcow2' }, 'vpc', options, ours);
      qemuConvert(src, 'qcow2', options, theirs);
      expect(seq.length).toBe(statSync(theirs).size);
      // Bounded buffers: a block (2 MiB) at most, the 2 MiB BAT in pieces (the first one with
      // the headers).
      expect(largest).toBeLessThanOrEqual(2 * MiB);
      expect(masked(ours, true).equals(masked(theirs, true))).toBe(true);
      // The footer is a fresh one: valid checksum, this second's timestamp, a UUID.
      const raw = readFileSync(ours).subarray(0, FOOTER_SIZE);
      const f = decodeFooter(raw);
      expect(vpcChecksum(raw, 64)).toBe(f.checksum);
      expect(Math.abs(f.timestamp + VHD_TIMESTAMP_BASE - Date.now() / 1000)).toBeLessThan(60);
      expect(f.uuid.some((b) => b !== 0)).toBe(true);
    }
  });

  it('writes the exact size with subformat=fixed,force_size=on (Azure: a multiple of 1 MiB)', async () => {
    const size = 10 * MiB;
    const src = p('azure.raw');
    qemuImgOk(['create', '-f', 'raw', src, `${size}`]);
    qemuIo(src, ['write -P 0x5a 0 1m', `write -P 0xa5 ${size - 4096} 4096`], 'raw');
    const out = p('azure.vhd');
    const { seq, written } = await writeImageSeq(
      { path: src, fmt: 'raw' },
      'vpc',
      {
        subformat: 'fixed',
        force_size: 'on',
      },
      out,
    );
    expect(seq.length).toBe(size + FOOTER_SIZE);
    expect(written).toBe(size + FOOTER_SIZE);
    const bytes = readFileSync(out);
    expect(bytes.subarray(0, size).equals(readFileSync(src))).toBe(true);
    const footer = bytes.subarray(size);
    const f = decodeFooter(footer);
    expect(f.creator).toBe('conectix');
    expect(f.type).toBe(VHD_FIXED);
    expect(f.creatorApp).toBe('qem2');
    expect(f.currentSize).toBe(size);
    expect(f.origSize).toBe(size);
    expect(f.dataOffset).toBe(0xffffffffffffffffn);
    expect(vpcChecksum(footer, 64)).toBe(f.checksum);
    expect(virtualSize(out)).toBe(size);
    // What qemu-img makes of the same request, but for the volatile fields.
    const theirs = p('azure-theirs.vhd');
    qemuConvert(src, 'raw', { subformat: 'fixed', force_size: 'on' }, theirs);
    expect(masked(out, false).equals(masked(theirs, false))).toBe(true);
    // Without force_size the geometry rounds this size: the option is what keeps it exact.
    const rounded = p('azure-chs.vhd');
    await writeImageSeq({ path: src, fmt: 'raw' }, 'vpc', { subformat: 'fixed' }, rounded);
    expect(virtualSize(rounded)).not.toBe(size);
  });
});
