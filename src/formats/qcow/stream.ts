/**
 * qcow (version 1), written sequentially: what `qemu-img create -f qcow` makes, with the data
 * in it. In file order:
 *
 *   header, backing file name, L1 table at the next 8-byte boundary (in whole sectors, as
 *     create writes it), zeros up to the next cluster
 *   L2 tables, one per L1 entry that maps any non-HOLE block
 *   data clusters, in guest order
 *
 * qemu appends L2 tables and data clusters at the end of the file, cluster-aligned, as they
 * are allocated; here the tables come first. qcow has no zero clusters: a ZERO block (over a
 * backing file) is stored as a cluster of zeros. L2 entries: the cluster's offset, or 0.
 */
import type { CreateOptions } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { joinBuffers, type SeqOutput, type SeqSource } from '../../core/seq.js';
import { clusteredOutput, refuseOptions, tablesNeeded } from '../../core/seq-clusters.js';
import { l1TableBytes, newQcowHeader } from './driver.js';
import { encodeHeader, setU64 } from './header.js';

export async function createQcowSequential(src: SeqSource, options: CreateOptions): Promise<SeqOutput> {
  const { header, name } = newQcowHeader(options, src.size, src.backing);
  refuseOptions('qcow', options, ['size', 'encryption', 'encrypt.format', 'encrypt.key-secret']);
  if (header.l1Size * 8 > 32 << 20)
    throw new VdiskError('TOO_LARGE', 'Image is too big for qcow (L1 table larger than 32 MiB)');
  const cs = 2 ** header.clusterBits;
  const l2Entries = 2 ** header.l2Bits;
  const l2Bytes = l2Entries * 8;

  const map = await src.map(cs);
  const { need: needL2, count: l2Tables } = tablesNeeded(map, l2Entries, header.l1Size);
  const l1End = header.l1Offset + l1TableBytes(header);
  const l2Offset = Math.ceil(l1End / cs) * cs;
  // The backing file name follows the header (at HEADER_BYTES).
  const head = joinBuffers([encodeHeader(header), name ?? Buffer.alloc(0)]);
  return clusteredOutput(src, map, true, l2Offset + l2Tables * l2Bytes, function* (meta) {
    yield* meta.bytes(head, header.l1Offset);
    // The L1 table, with the padding up to the first L2 table.
    const l2 = { offset: l2Offset, bytes: l2Bytes };
    yield* meta.l1Table(l2Offset - header.l1Offset, needL2, l2, (v, off, at) => setU64(v, off, at));
    // No zero clusters: every non-HOLE block is stored, so `host` is never null.
    yield* meta.l2Tables(needL2, { bytes: l2Bytes, entryBytes: 8 }, (v, off, host) => setU64(v, off, host!));
  });
}
