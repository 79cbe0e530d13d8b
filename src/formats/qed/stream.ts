/**
 * QED, written sequentially: what `qemu-img create -f qed` makes, with the data in it. In file
 * order:
 *
 *   header cluster (the header, then the backing file name at byte 64; a raw backing file
 *     sets the no-probe feature, as qemu)
 *   L1 table (table_size clusters)
 *   L2 tables (table_size clusters each), one per L1 entry that maps any non-HOLE block
 *   data clusters, in guest order
 *
 * qemu appends L2 tables and data clusters at the end of the file; here all the tables come
 * first, which QED allows (no reference counts: every cluster is referenced once). L2 entries:
 * DATA → the cluster's offset; ZERO (over a backing) → 1, QED's zero cluster; HOLE → 0.
 */
import type { CreateOptions } from '../../core/driver.js';
import { joinBuffers, type SeqOutput, type SeqSource } from '../../core/seq.js';
import { clusteredOutput, refuseOptions, tablesNeeded } from '../../core/seq-clusters.js';
import { newQedHeader } from './driver.js';
import { encodeHeader, setU64 } from './header.js';
import { ZERO_CLUSTER } from './table.js';

export async function createQedSequential(src: SeqSource, options: CreateOptions): Promise<SeqOutput> {
  refuseOptions('qed', options, ['size', 'cluster_size', 'table_size']);
  const { header, name } = newQedHeader(options, src.size, src.backing);
  const cs = header.clusterSize;
  const tableBytes = header.tableSize * cs;
  const entries = tableBytes / 8;

  const map = await src.map(cs);
  const l1Used = Math.ceil(map.count / entries);
  const { need: needL2, count: l2Tables } = tablesNeeded(map, entries, l1Used);
  const l2Offset = header.l1Offset + tableBytes;
  // The backing file name follows the header (at HEADER_BYTES).
  const head = joinBuffers([encodeHeader(header), name ?? Buffer.alloc(0)]);
  return clusteredOutput(src, map, false, l2Offset + l2Tables * tableBytes, function* (meta) {
    yield* meta.bytes(head, header.l1Offset);
    const l2 = { offset: l2Offset, bytes: tableBytes };
    yield* meta.l1Table(tableBytes, needL2, l2, (v, off, at) => setU64(v, off, at));
    yield* meta.l2Tables(needL2, { bytes: tableBytes, entryBytes: 8 }, (v, off, host) =>
      setU64(v, off, host ?? ZERO_CLUSTER),
    );
  });
}
