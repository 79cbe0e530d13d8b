import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockMap, DATA, type SeqOutput, type SeqSource } from '../../core/seq.js';
import { META_CHUNK } from '../../core/seq-clusters.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../../test/oracle.js';
import { runSeqConformance, writeImageSeq, writeSeq } from '../../test/seq-conformance.js';
import { registerBuiltinFormats } from '../index.js';
import { createRawSequential } from '../raw/stream.js';
import { createQcow2Sequential } from './stream.js';

const MiB = 1 << 20;

runSeqConformance({
  format: 'qcow2',
  variants: [
    {},
    { compat: '0.10' },
    { cluster_size: '4096' },
    { cluster_size: '2M' },
    { refcount_bits: '1' },
    { refcount_bits: '64' },
    { extended_l2: 'on' },
    { lazy_refcounts: 'on' },
  ],
  backing: true,
  knownLength: () => true,
  checkable: true,
  refused: [
    { options: { cluster_size: '1000' } },
    { options: { refcount_bits: '3' } },
    { options: { compat: '0.10', lazy_refcounts: 'on' } },
    { options: { compat: '0.10', refcount_bits: '8' } },
    { options: { extended_l2: 'on', cluster_size: '4096' } },
    { options: { cluster_size: '512' }, size: 2 ** 50 },
  ],
  unsupported: [
    { options: { preallocation: 'metadata' }, code: 'UNSUPPORTED' },
    { options: { preallocation: 'full' }, code: 'UNSUPPORTED' },
    { options: { encryption: 'on' }, code: 'UNSUPPORTED' },
    { options: { 'encrypt.format': 'luks', 'encrypt.key-secret': 's0' }, code: 'UNSUPPORTED' },
    { options: { data_file: 'data.raw' }, code: 'UNSUPPORTED' },
    { options: { compression_type: 'zstd' }, code: 'UNSUPPORTED' },
    { options: { backing_file: 'base.qcow2' }, code: 'INVALID_ARGUMENT' },
    { options: { backing_fmt: 'qcow2' }, code: 'INVALID_ARGUMENT' },
    { options: { nocow: 'on' }, code: 'UNSUPPORTED' },
    { options: { subformat: 'fixed' }, code: 'INVALID_ARGUMENT' },
  ],
  // 2 MiB clusters: five metadata clusters and three data clusters make the 16 MiB layer
  // (the chain flattened is 24 MiB).
  layerLimit: (o) => (o['cluster_size'] === '2M' ? 20 * MiB : 8 * MiB),
});

/**
 * A source of `size` bytes whose first `dataBytes` are data (each sector filled with a byte
 * of its own), the rest a hole.
 */
function patternSource(size: number, dataBytes: number): SeqSource {
  return {
    size,
    async read(buf, offset) {
      buf.fill(0);
      for (let pos = offset; pos < Math.min(offset + buf.length, dataBytes); ) {
        const end = Math.min(Math.floor(pos / 512) * 512 + 512, offset + buf.length, dataBytes);
        buf.fill((Math.floor(pos / 512) * 7 + 1) & 0xff, pos - offset, end - offset);
        pos = end;
      }
    },
    async map(g) {
      const map = new BlockMap(size, g);
      for (let b = 0; b < Math.ceil(dataBytes / g); b++) map.set(b, DATA);
      return map;
    },
  };
}

describe('sequential qcow2: layout against qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  const p = (n: string) => join(dir, n);
  const backings = [
    undefined,
    { filename: 'base.qcow2', format: 'qcow2' },
    { filename: 'base.raw', format: 'raw' },
  ];
  /** A 16 MiB source with 1 MiB of data, alone or over a backing file (with a zeroed range then). */
  const sourceOver = (backing: { format: string } | undefined) =>
    p(`over-${backing?.format ?? 'nothing'}.qcow2`);
  beforeAll(() => {
    registerBuiltinFormats();
    ({ dir, cleanup } = tempDir('vdisk-seq-qcow2-'));
    for (const b of backings) {
      if (b !== undefined) qemuImgOk(['create', '-f', b.format, p(b.filename), `${8 * MiB}`]);
      qemuImgOk([
        'create',
        '-f',
        'qcow2',
        ...(b !== undefined ? ['-b', b.filename, '-F', b.format] : []),
        sourceOver(b),
        `${16 * MiB}`,
      ]);
      qemuIo(sourceOver(b), ['write -P 0x5a 0 1m', ...(b !== undefined ? ['write -z 2m 64k'] : [])], 'qcow2');
    }
  });
  afterAll(() => cleanup());

  const write = async (src: SeqSource, options: Record<string, string>, out: string): Promise<SeqOutput> => {
    const seq = await createQcow2Sequential(src, options);
    expect(await writeSeq(seq, out)).toBe(seq.length);
    return seq;
  };

  it('writes the header qemu-img create writes (info, and the header cluster but for the L1 offset)', async () => {
    const optionSets: Record<string, string>[] = [
      {},
      { compat: '0.10' },
      { cluster_size: '512' },
      { cluster_size: '4096', refcount_bits: '1' },
      { cluster_size: '2M', lazy_refcounts: 'on', refcount_bits: '64' },
      { extended_l2: 'on' },
    ];
    const pick = (info: Record<string, unknown>) => {
      const data = (info['format-specific'] as { data: Record<string, unknown> }).data;
      return {
        virtualSize: info['virtual-size'],
        clusterSize: info['cluster-size'],
        compat: data['compat'],
        refcountBits: data['refcount-bits'],
        lazyRefcounts: data['lazy-refcounts'],
        extendedL2: data['extended-l2'],
        compressionType: data['compression-type'],
        backingFilename: info['backing-filename'],
        backingFormat: info['backing-filename-format'],
      };
    };
    for (const options of optionSets) {
      for (const backing of backings) {
        const size = 16 * MiB;
        const ours = p('ours.qcow2');
        const theirs = p('theirs.qcow2');
        const { seq, written } = await writeImageSeq(
          { path: sourceOver(backing), fmt: 'qcow2' },
          'qcow2',
          options,
          ours,
          backing !== undefined ? { backing } : {},
        );
        expect(written).toBe(seq.length);
        const o = Object.entries(options).map(([k, v]) => `${k}=${v}`);
        qemuImgOk([
          'create',
          '-f',
          'qcow2',
          ...(backing ? ['-b', backing.filename, '-F', backing.format] : []),
          ...(o.length > 0 ? ['-o', o.join(',')] : []),
          theirs,
          `${size}`,
        ]);
        const info = (f: string) => pick(JSON.parse(qemuImgOk(['info', '--output=json', f], dir)));
        const label = `${o.join(',')} over ${backing?.filename ?? 'nothing'}`;
        expect(info(ours), label).toEqual(info(theirs));
        expect(info(ours).compat).toBe(options['compat'] === '0.10' ? '0.10' : '1.1');
        // The header cluster, byte for byte, but for the L1 table offset: qemu puts a refcount
        // block before the L1 table, the stream after it.
        const cs = info(ours).clusterSize as number;
        const head = (f: string) => readFileSync(f).subarray(0, cs).fill(0, 40, 48);
        expect(head(ours).equals(head(theirs)), label).toBe(true);
        const r = qemuImg(['check', ours], dir);
        expect(r.code, r.stdout + r.stderr).toBe(0);
        const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', ours, sourceOver(backing)], dir);
        expect(cmp.stdout + cmp.stderr, label).toMatch(/Images are identical/);
      }
    }
  });

  it('counts refcount blocks and refcount table clusters exactly across their boundaries', async () => {
    // 512-byte clusters with 64-bit refcounts: a refcount block covers 64 clusters and a
    // table cluster 64 blocks (4096 clusters). Over a window of data sizes, the metadata
    // grows by a cluster now and then (an L2 table, a refcount block, a table cluster): each
    // size on either side of a step is written and checked by qemu-img.
    const options = { cluster_size: '512', refcount_bits: '64' };
    const source = (clusters: number) => patternSource(clusters * 512, clusters * 512);
    const metadata = async (clusters: number) =>
      (await createQcow2Sequential(source(clusters), options)).length! / 512 - clusters;
    const edges: number[] = [];
    let before = await metadata(3900);
    for (let clusters = 3901; clusters <= 4100; clusters++) {
      const m = await metadata(clusters);
      if (m !== before) edges.push(clusters - 1, clusters);
      before = m;
    }
    // Three L2 tables, three refcount blocks and a table cluster, at least, in 200 clusters.
    expect(edges.length).toBeGreaterThanOrEqual(2 * 6);
    const tableClusters = new Set<number>();
    for (const clusters of edges) {
      const out = p('rc.qcow2');
      const seq = await write(source(clusters), options, out);
      const r = qemuImg(['check', '--output=json', '-f', 'qcow2', out]);
      expect(r.stderr).toBe('');
      expect(r.code, r.stdout).toBe(0);
      const check = JSON.parse(r.stdout);
      expect(check['image-end-offset']).toBe(seq.length);
      expect(check['allocated-clusters']).toBe(clusters);
      tableClusters.add(readFileSync(out).readUInt32BE(56));
      await writeSeq(await createRawSequential(source(clusters), {}), p('rc.raw'));
      const cmp = qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', p('rc.raw'), out]);
      expect(cmp.stdout + cmp.stderr).toMatch(/Images are identical/);
    }
    expect([...tableClusters].sort()).toEqual([1, 2]);
  });

  it('streams a 1 TiB sparse image in bounded buffers', async () => {
    const src = p('big.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', src, `${1024 * 1024 * MiB}`]);
    qemuIo(
      src,
      ['write -P 0x11 0 64k', 'write -P 0x22 300g 3m', `write -P 0x33 ${(1 << 30) * 1024 - 4096} 4096`],
      'qcow2',
    );
    const out = p('big-out.qcow2');
    // 1 TiB in 4 KiB clusters: a 4 MiB L1 table, which straddles a chunk boundary.
    const { seq, written, largest } = await writeImageSeq(
      { path: src, fmt: 'qcow2' },
      'qcow2',
      { cluster_size: '4096' },
      out,
    );
    expect(written).toBe(seq.length);
    expect(largest).toBeLessThanOrEqual(META_CHUNK);
    const r = qemuImg(['check', '-f', 'qcow2', out]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', src, out]);
    expect(cmp.stdout + cmp.stderr).toMatch(/Images are identical/);
  });

  it('honours the values of the refused options it can honour', async () => {
    const honoured: Record<string, string>[] = [
      { preallocation: 'off' },
      { encryption: 'off' },
      { compression_type: 'zlib' },
    ];
    for (const options of honoured)
      await expect(createQcow2Sequential(patternSource(MiB, 0), options)).resolves.toBeDefined();
  });
});
