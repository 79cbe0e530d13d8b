import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgOk, tempDir } from '../../test/oracle.js';
import { runSeqConformance, writeImageSeq } from '../../test/seq-conformance.js';

runSeqConformance({
  format: 'qed',
  variants: [{}, { cluster_size: '4096' }, { cluster_size: '4096', table_size: '2' }],
  backing: true,
  knownLength: () => true,
  checkable: true,
  refused: [{ options: { cluster_size: '1000' } }, { options: { table_size: '3' } }, { size: 2 ** 50 }],
  unsupported: [
    { options: { preallocation: 'full' }, code: 'UNSUPPORTED' },
    { options: { backing_file: 'base.raw' }, code: 'INVALID_ARGUMENT' },
    { options: { backing_fmt: 'raw' }, code: 'INVALID_ARGUMENT' },
    { options: { refcount_bits: '16' }, code: 'INVALID_ARGUMENT' },
  ],
});

describe('sequential qed: layout against qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  const p = (n: string) => join(dir, n);
  const size = 40 << 20;
  const backings = [
    undefined,
    { filename: 'base.qcow2', format: 'qcow2' },
    { filename: 'base.raw', format: 'raw' },
  ];
  /** An empty source, alone or over a backing file. */
  const emptyOver = (backing: { format: string } | undefined) =>
    p(`over-${backing?.format ?? 'nothing'}.qcow2`);
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('vdisk-seq-qed-'));
    for (const b of backings) {
      if (b !== undefined) qemuImgOk(['create', '-f', b.format, p(b.filename), '8M']);
      const over = b !== undefined ? ['-b', b.filename, '-F', b.format] : [];
      qemuImgOk(['create', '-f', 'qcow2', ...over, emptyOver(b), `${size}`]);
    }
  });
  afterAll(() => cleanup());

  it('writes an empty image byte for byte as qemu-img create does (a raw backing file is not probed)', async () => {
    for (const options of [{}, { cluster_size: '4096', table_size: '2' }] as Record<string, string>[]) {
      for (const backing of backings) {
        const source = { path: emptyOver(backing), fmt: 'qcow2' };
        await writeImageSeq(source, 'qed', options, p('ours.qed'), backing !== undefined ? { backing } : {});
        const o = Object.entries(options).map(([k, v]) => `${k}=${v}`);
        qemuImgOk([
          'create',
          '-f',
          'qed',
          ...(backing ? ['-b', backing.filename, '-F', backing.format] : []),
          ...(o.length > 0 ? ['-o', o.join(',')] : []),
          p('theirs.qed'),
          `${size}`,
        ]);
        const label = `${o.join(',')} over ${backing?.filename ?? 'nothing'}`;
        expect(readFileSync(p('ours.qed')).equals(readFileSync(p('theirs.qed'))), label).toBe(true);
        const info = JSON.parse(qemuImgOk(['info', '--output=json', p('ours.qed')]));
        // QED stores no backing format, but flags a raw one (the no-probe feature).
        expect(info['backing-filename-format'], label).toBe(backing?.format === 'raw' ? 'raw' : undefined);
      }
    }
  });
});
