/**
 * qcow2, written sequentially: what `qemu-img create -f qcow2` makes, with the data in it.
 * Every cluster has refcount 1; in file order:
 *
 *   header cluster (extensions and backing file name as create writes them: newHeader)
 *   refcount table | L1 table | refcount blocks
 *   L2 tables, one per L1 entry that maps any non-HOLE block, in L1 order
 *   data clusters, in guest order
 *
 * The refcount blocks count themselves and the table that points at them, so their number is
 * a fixed point (refcountMetadataSize); everything is laid out from the block map before the
 * first byte. L2 entries: DATA → host offset | COPIED; ZERO (over a backing) → the zero flag,
 * or in a v2 image (no zero flag) a cluster of stored zeros; HOLE → 0. With extended L2 a data
 * cluster has all its subclusters allocated, a ZERO one all its subclusters zero.
 */
import type { CreateOptions } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { parseBoolOption } from '../../core/options.js';
import type { SeqOutput, SeqSource } from '../../core/seq.js';
import { clusteredOutput, refuseOptions, storedCount, tablesNeeded } from '../../core/seq-clusters.js';
import { newHeader, parseCreateOptions, type Qcow2CreateSettings } from './create.js';
import {
  encodeHeader,
  l1EntriesFor,
  MAX_BACKING_NAME,
  MAX_L1_BYTES,
  MAX_REFTABLE_BYTES,
  setU64,
} from './header.js';
import { ALL_SUBCLUSTERS, COPIED_HI, putEntry, ZERO_LO } from './l2-entry.js';
import { refcountMetadataSize, setRefcountIn } from './refcount.js';

const ACCEPTED = [
  'size',
  'compat',
  'cluster_size',
  'refcount_bits',
  'lazy_refcounts',
  'extended_l2',
  'compression_type',
  'encryption',
  'data_file_raw',
];

/** The create options a stream can honour, checked as create checks them; the rest refused. */
function streamSettings(options: CreateOptions, backing: SeqSource['backing']): Qcow2CreateSettings {
  for (const [k, v] of Object.entries(options)) {
    if (k.startsWith('encrypt.') || (k === 'encryption' && parseBoolOption(k, v)))
      throw new VdiskError('UNSUPPORTED', 'A sequential qcow2 image cannot be encrypted');
    if (k === 'data_file')
      throw new VdiskError('UNSUPPORTED', 'A sequential qcow2 image cannot have an external data file');
  }
  refuseOptions('qcow2', options, ACCEPTED);
  const s = parseCreateOptions(options, backing !== undefined);
  // Nothing is compressed; zstd would only set a feature bit older readers refuse.
  if (s.compressionType !== 0)
    throw new VdiskError('UNSUPPORTED', 'A sequential qcow2 image takes compression_type=zlib only');
  if (backing !== undefined && Buffer.byteLength(backing.filename, 'latin1') > MAX_BACKING_NAME)
    throw new VdiskError('INVALID_ARGUMENT', 'Backing file name too long');
  return s;
}

export async function createQcow2Sequential(src: SeqSource, options: CreateOptions): Promise<SeqOutput> {
  const s = streamSettings(options, src.backing);
  const cs = 2 ** s.clusterBits;
  const size = Math.ceil(src.size / 512) * 512;
  const entryBytes = s.extendedL2 ? 16 : 8;
  const l2Entries = cs / entryBytes;
  const l1Size = l1EntriesFor(size, s.clusterBits, s.extendedL2);
  if (l1Size * 8 > MAX_L1_BYTES)
    throw new VdiskError(
      'INVALID_ARGUMENT',
      "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
    );
  const header = newHeader(s, size, src.backing);
  encodeHeader(header); // refuses a header that does not fit in its cluster, before the map
  // v2 has no zero flag: a ZERO block is stored as a cluster of zeros.
  const zeroAsData = s.version === 2;

  const map = await src.map(cs);
  // The L2 tables: one per L1 entry that maps any block.
  const { need: needL2, count: l2Tables } = tablesNeeded(map, l2Entries, l1Size);
  const dataClusters = storedCount(map, zeroAsData);
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const described = 1 + l1Clusters + l2Tables + dataClusters;
  const rc = refcountMetadataSize(described, cs, s.refcountOrder, false);
  const refBlocks = rc.blocks;
  const reftableClusters = rc.bytes / cs - refBlocks;
  if (reftableClusters * cs > MAX_REFTABLE_BYTES)
    throw new VdiskError('TOO_LARGE', 'Reference count table too large: use larger clusters');
  const clusters = described + refBlocks + reftableClusters;

  const reftableOffset = cs;
  const l1Offset = reftableOffset + reftableClusters * cs;
  const refBlocksOffset = l1Offset + l1Clusters * cs;
  const l2Offset = refBlocksOffset + refBlocks * cs;
  const dataOffset = l2Offset + l2Tables * cs;
  header.l1Size = l1Size;
  header.l1TableOffset = l1Size > 0 ? l1Offset : 0;
  header.refcountTableOffset = reftableOffset;
  header.refcountTableClusters = reftableClusters;
  const headerBytes = encodeHeader(header);

  // Refcount 1 for clusters [0, clusters): the refcount blocks, end to end, are one array of
  // entries. `unit`: 8 bytes of entries of 1, to fill whole runs of them.
  const bits = 2 ** s.refcountOrder;
  const perUnit = 64 / bits;
  const unit = Buffer.alloc(8);
  for (let i = 0; i < perUnit; i++) setRefcountIn(unit, i, 1, bits);
  const wholeUnits = Math.floor(clusters / perUnit);

  return clusteredOutput(src, map, zeroAsData, dataOffset, function* (meta) {
    yield* meta.bytes(headerBytes, cs);
    yield* meta.table(reftableClusters * cs, 8, (v, off, j) => {
      if (j < refBlocks) setU64(v, off, refBlocksOffset + j * cs);
    });
    yield* meta.l1Table(l1Clusters * cs, needL2, { offset: l2Offset, bytes: cs }, (v, off, l2) =>
      putEntry(v, off, l2, COPIED_HI),
    );
    yield* meta.region(refBlocks * cs, (view, at) => {
      // `at` and the view's length are multiples of 8 (chunks split at multiples of 4 MiB).
      view.fill(unit, 0, Math.max(0, Math.min(view.length, wholeUnits * 8 - at)));
      const first = (at / 8) * perUnit;
      const entries = (view.length / 8) * perUnit;
      for (let i = wholeUnits * perUnit; i < clusters; i++)
        if (i >= first && i < first + entries) setRefcountIn(view, i - first, 1, bits);
    });
    yield* meta.l2Tables(needL2, { bytes: cs, entryBytes }, (v, off, host) => {
      if (host !== null) {
        putEntry(v, off, host, COPIED_HI);
        if (s.extendedL2) v.setUint32(off + 12, ALL_SUBCLUSTERS); // every subcluster allocated
      } else if (s.extendedL2) {
        v.setUint32(off + 8, ALL_SUBCLUSTERS); // every subcluster zero
      } else {
        v.setUint32(off + 4, ZERO_LO);
      }
    });
  });
}
