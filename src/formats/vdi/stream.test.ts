import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../../test/oracle.js';
import { runSeqConformance, writeImageSeq } from '../../test/seq-conformance.js';
import { registerBuiltinFormats } from '../index.js';
import { OFF, VDI_DISK_SIZE_MAX } from './header.js';

runSeqConformance({
  format: 'vdi',
  variants: [{}, { static: 'on' }],
  backing: false,
  knownLength: () => true,
  checkable: true,
  refused: [
    { size: VDI_DISK_SIZE_MAX + 512 },
    { size: VDI_DISK_SIZE_MAX + 512, options: { static: 'on' } },
    { options: { static: 'maybe' } },
    { options: { subformat: 'fixed' } },
  ],
});

const MiB = 1 << 20;
const GiB = 1 << 30;

/** A VDI with its two UUIDs (image, last snapshot: random at create) zeroed. */
function withoutUuids(path: string): Buffer {
  const b = readFileSync(path);
  b.fill(0, OFF.uuidImage, OFF.uuidLink);
  return b;
}

describe('sequential vdi: the layout qemu-img convert makes', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    registerBuiltinFormats();
    ({ dir, cleanup } = tempDir('vdisk-seq-vdi-'));
  });
  afterAll(() => cleanup());
  const p = (n: string) => join(dir, n);

  it('lays the image out as qemu-img convert -O vdi does, but for the UUIDs', async () => {
    // 1 TiB: a block map of 1 Mi entries (4 MiB, streamed in pieces); data in a few blocks,
    // one write across a block boundary, the last block; and a small image with a short tail.
    const big = p('big.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', big, `${1024 * GiB}`]);
    qemuIo(
      big,
      [
        'write -P 0x11 0 64k',
        `write -P 0x22 ${3 * MiB - 512} 1024`,
        `write -P 0x33 ${700 * GiB} 1m`,
        `write -P 0x44 ${1024 * GiB - 4096} 4096`,
      ],
      'qcow2',
    );
    const small = p('small.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', small, `${5 * MiB + 3 * 512}`]);
    qemuIo(small, ['write -P 0x55 1m 1m', `write -P 0x66 ${5 * MiB} 1536`], 'qcow2');
    const cases: Array<[string, Record<string, string>]> = [
      [big, {}],
      [small, {}],
      [small, { static: 'on' }],
    ];
    for (const [src, options] of cases) {
      const ours = p('ours.vdi');
      const theirs = p('theirs.vdi');
      const { seq, written, largest } = await writeImageSeq(
        { path: src, fmt: 'qcow2' },
        'vdi',
        options,
        ours,
      );
      expect(written).toBe(seq.length);
      // Bounded buffers: the 4 MiB map of 1 TiB comes in 1 MiB pieces (the first with the
      // header), data in reads of 2 MiB.
      expect(largest).toBeLessThanOrEqual(2 * MiB);
      qemuImgOk([
        'convert',
        '-f',
        'qcow2',
        '-O',
        'vdi',
        ...(options['static'] !== undefined ? ['-o', 'static=on'] : []),
        src,
        theirs,
      ]);
      expect(withoutUuids(ours).equals(withoutUuids(theirs)), `${src} ${JSON.stringify(options)}`).toBe(true);
      expect(qemuImg(['check', '-f', 'vdi', ours]).code).toBe(0);
    }
  });
});
