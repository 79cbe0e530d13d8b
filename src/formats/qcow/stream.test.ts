import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgOk, tempDir } from '../../test/oracle.js';
import { runSeqConformance, writeImageSeq } from '../../test/seq-conformance.js';

runSeqConformance({
  format: 'qcow',
  variants: [{}],
  backing: true,
  knownLength: () => true,
  // qemu-img check does not know qcow ("This image format does not support checks").
  checkable: false,
  refused: [{ options: { cluster_size: '4096' } }, { size: 0 }],
  unsupported: [
    { options: { encryption: 'on' }, code: 'UNSUPPORTED' },
    { options: { 'encrypt.format': 'aes', 'encrypt.key-secret': 's0' }, code: 'UNSUPPORTED' },
    { options: { preallocation: 'falloc' }, code: 'UNSUPPORTED' },
    { options: { backing_file: 'base.raw' }, code: 'INVALID_ARGUMENT' },
  ],
});

describe('sequential qcow: layout against qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  const p = (n: string) => join(dir, n);
  const size = 40 << 20;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('vdisk-seq-qcow-'));
    qemuImgOk(['create', '-f', 'raw', p('base.raw'), '8M']);
    qemuImgOk(['create', '-f', 'qcow2', p('alone.qcow2'), `${size}`]);
    qemuImgOk(['create', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', p('over.qcow2'), `${size}`]);
  });
  afterAll(() => cleanup());

  it('starts as qemu-img create writes an empty image, and pads its tables to a cluster', async () => {
    for (const backing of [undefined, { filename: 'base.raw', format: 'raw' }]) {
      const source = { path: p(backing ? 'over.qcow2' : 'alone.qcow2'), fmt: 'qcow2' };
      const { seq } = await writeImageSeq(source, 'qcow', {}, p('ours.qcow'), backing ? { backing } : {});
      qemuImgOk([
        'create',
        '-f',
        'qcow',
        ...(backing ? ['-b', 'base.raw', '-F', 'raw'] : []),
        p('theirs.qcow'),
        `${size}`,
      ]);
      const ours = readFileSync(p('ours.qcow'));
      const theirs = readFileSync(p('theirs.qcow'));
      // Where qemu would put its first L2 table: the next cluster (4 KiB alone, 512 B over a backing).
      const cluster = backing ? 512 : 4096;
      expect(seq.length).toBe(Math.ceil(theirs.length / cluster) * cluster);
      expect(ours.subarray(0, theirs.length).equals(theirs)).toBe(true);
      expect(ours.subarray(theirs.length).every((b) => b === 0)).toBe(true);
    }
  });
});
