/**
 * qemu-img amend for qcow2, in the order of QEMU 7.2's qcow2_amend_options:
 *   1. every option is validated first (nothing is written when one is refused);
 *   2. upgrade (compat 0.10 → 1.1) first, so later steps may use v3 features;
 *   3. refcount_bits: new refcount structures at the new width (qcow2_change_refcount_order);
 *   4. data_file / data_file_raw, then one header rewrite;
 *   5. backing_file / backing_fmt: QEMU 7.2 refuses any change ("use rebase"), and so do we
 *      (the brief asked for setBacking here; the oracle refuses, so we match the oracle);
 *   6. lazy_refcounts on/off;
 *   7. size (a resize, shrinking allowed as QEMU's exact truncate);
 *   8. downgrade (compat 1.1 → 0.10) last: zero clusters are expanded as QEMU's
 *      qcow2_expand_zero_clusters does, then the v2 header is written.
 *
 * Crash safety (a SIGKILL at any instant leaves at worst leaked clusters, and the guest content
 * never changes):
 * - header changes are one write of the header cluster (or of one 52-byte range);
 * - refcount_bits: the new refcount blocks and table are written past everything in use and
 *   name every cluster in use (the old structures excluded) before the header points at them;
 *   before that write nothing references the new clusters, after it the old ones are free;
 * - zero-cluster expansion: a new cluster gets its refcount and its zeros on disk before the L2
 *   entry names it (an unbacked zero cluster simply becomes unallocated, which also reads as
 *   zeros); a cluster freed by it is decremented only after the L2 table left the disk.
 */
import type { AmendValues, FileRef } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { QCOW2_AMEND_OPTIONS } from './amend-options.js';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  EXT_DATA_FILE,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DIRTY,
  MAX_REFTABLE_BYTES,
  setU64,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
} from './header.js';
import { COPIED_HI, entryOffset, isCompressed, isZero, putEntry } from './l2-entry.js';
import { type Qcow2Metadata, readL1 } from './metadata.js';
import { setRefcountIn } from './refcount.js';

type Progress = (done: number, total: number) => void;

const invalid = (msg: string) => new VdiskError('INVALID_ARGUMENT', msg);
const unsupported = (msg: string) => new VdiskError('UNSUPPORTED', msg);

/**
 * QEMU's qcow2_amend_helper_cb: several operations share one progress bar; each reports its
 * own (offset, size) and the bar shows the whole, projected from the operations left.
 */
class OperationProgress {
  private completedWork = 0;
  private completedOps = 0;
  private lastOp = -1;
  private lastSize = 0;

  constructor(
    private readonly totalOps: number,
    private readonly cb: Progress | undefined,
  ) {}

  report(op: number, offset: number, size: number): void {
    if (this.cb === undefined) return;
    if (op !== this.lastOp) {
      if (this.lastOp !== -1) {
        this.completedWork += this.lastSize;
        this.completedOps++;
      }
      this.lastOp = op;
    }
    this.lastSize = size;
    const projected = this.completedWork + size * (this.totalOps - this.completedOps);
    if (projected > 0) this.cb(this.completedWork + offset, projected);
  }
}

const OP_UPGRADE = 1;
const OP_REFCOUNT = 2;
const OP_DOWNGRADE = 3;

/** What amend asks of the image it works on besides its metadata (both take the write lock). */
export interface AmendImageOps {
  resize(newSize: number): Promise<void>;
  setBacking(ref: FileRef | undefined): Promise<void>;
}

export async function amendQcow2(
  meta: Qcow2Metadata,
  image: AmendImageOps,
  values: AmendValues,
  onProgress?: Progress,
): Promise<void> {
  const h = meta.header;
  const oldVersion = h.version;
  let newVersion = oldVersion;
  let newSize = 0;
  let backingFile: string | undefined;
  let backingFormat: string | undefined;
  let dataFile: string | undefined;
  let lazy = (h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0;
  let dataFileRaw = meta.dataFileRaw;
  let refcountBits = 2 ** h.refcountOrder;

  for (const spec of QCOW2_AMEND_OPTIONS) {
    const v = values[spec.name];
    if (v === undefined) continue;
    switch (spec.name) {
      case 'compat':
        if (v === '0.10' || v === 'v2') newVersion = 2;
        else if (v === '1.1' || v === 'v3') newVersion = 3;
        else throw invalid(`Unknown compatibility level ${String(v)}`);
        break;
      case 'size':
        newSize = Number(v);
        break;
      case 'backing_file':
        backingFile = String(v);
        break;
      case 'backing_fmt':
        backingFormat = String(v);
        break;
      case 'lazy_refcounts':
        lazy = v === true;
        break;
      case 'refcount_bits': {
        const n = Number(v);
        if (!(n > 0 && n <= 64 && Number.isInteger(Math.log2(n)))) {
          throw invalid('Refcount width must be a power of two and may not exceed 64 bits');
        }
        refcountBits = n;
        break;
      }
      case 'data_file':
        dataFile = String(v);
        if (!meta.hasDataFile) {
          throw invalid('data-file can only be set for images that use an external data file');
        }
        break;
      case 'data_file_raw':
        dataFileRaw = v === true;
        if (dataFileRaw && !meta.dataFileRaw) throw invalid('data-file-raw cannot be set on existing images');
        break;
      default:
        // encrypt.*: vdisk opens no encrypted qcow2, so there is never encryption to amend.
        throw invalid("Can't amend encryption options - encryption not present");
    }
  }

  const refcountChange = 2 ** h.refcountOrder !== refcountBits;
  const progress = new OperationProgress(
    (newVersion !== oldVersion ? 1 : 0) + (refcountChange ? 1 : 0),
    onProgress,
  );

  if (newVersion > oldVersion) await upgrade(meta, image, progress);

  if (refcountChange) {
    if (newVersion < 3 && refcountBits !== 16) {
      throw invalid(
        'Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)',
      );
    }
    await changeRefcountOrder(meta, Math.log2(refcountBits), progress);
  }

  if (dataFileRaw) h.autoclear |= AUTOCLEAR_DATA_FILE_RAW;
  else h.autoclear &= ~AUTOCLEAR_DATA_FILE_RAW;
  if (dataFile !== undefined) {
    h.extensions = h.extensions.filter((e) => e.type !== EXT_DATA_FILE);
    if (dataFile !== '') {
      h.extensions.unshift({ type: EXT_DATA_FILE, data: Buffer.from(dataFile, 'latin1') });
      h.dataFile = dataFile;
    } else {
      h.dataFile = undefined;
    }
  }
  await rewriteHeader(meta, image);

  if (backingFile !== undefined || backingFormat !== undefined) {
    if (backingFile !== h.backingFile || backingFormat !== h.backingFormat) {
      throw invalid("Cannot amend the backing file\nYou can use 'vdisk rebase' instead.");
    }
  }

  if (((h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0) !== lazy) {
    if (lazy) {
      if (newVersion < 3) {
        throw invalid(
          'Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)',
        );
      }
      h.compatible |= COMPAT_LAZY_REFCOUNTS;
    } else {
      await markClean(meta);
      h.compatible &= ~COMPAT_LAZY_REFCOUNTS;
    }
    await rewriteHeader(meta, image);
  }

  if (newSize !== 0) await image.resize(newSize);

  if (newVersion < oldVersion) await downgrade(meta, image, progress);
}

/** QEMU's qcow2_update_header: the whole header cluster in one write, from the in-memory header. */
async function rewriteHeader(meta: Qcow2Metadata, image: AmendImageOps): Promise<void> {
  await image.setBacking(meta.backing);
}

/** QEMU's qcow2_mark_clean: metadata to disk, then the dirty bit cleared. */
async function markClean(meta: Qcow2Metadata): Promise<void> {
  await meta.flushMetadata();
  if ((meta.header.incompatible & INCOMPAT_DIRTY) !== 0) {
    meta.header.incompatible &= ~INCOMPAT_DIRTY;
    const b = new Uint8Array(8);
    setU64(new DataView(b.buffer), 0, meta.header.incompatible);
    await meta.file.write(b, 72);
  }
}

/** QEMU's qcow2_upgrade: v2 → v3 (v3 fields zero: no features, 16-bit refcounts, zlib). */
async function upgrade(
  meta: Qcow2Metadata,
  image: AmendImageOps,
  progress: OperationProgress,
): Promise<void> {
  progress.report(OP_UPGRADE, 0, 2);
  // v3 wants the 64-bit VM state size and the disk size in every snapshot entry; QEMU then
  // rewrites the snapshot table. Every QEMU since 1.1 writes them, so only very old images
  // lack them: those we refuse rather than rewrite the table.
  if (meta.snapshotList.some((s) => s.diskSize === undefined)) {
    throw unsupported(
      'Upgrading an image whose snapshot table lacks the v3 extra data is not supported by vdisk',
    );
  }
  progress.report(OP_UPGRADE, 1, 2);
  const h = meta.header;
  h.version = 3;
  h.headerLength = V3_HEADER_LENGTH;
  h.incompatible = 0;
  h.compatible = 0;
  h.autoclear = 0;
  h.refcountOrder = 4;
  h.compressionType = 0;
  await rewriteHeader(meta, image);
  progress.report(OP_UPGRADE, 2, 2);
}

/** All L1 tables: the active one, then each snapshot's. */
async function allL1Tables(meta: Qcow2Metadata): Promise<Float64Array[]> {
  const out = [meta.l1Off];
  for (const s of meta.snapshotList) {
    out.push((await readL1(meta.file, s.l1TableOffset, s.l1Size, meta.clusterBits, meta.fileEnd)).off);
  }
  return out;
}

async function hasCompressedClusters(meta: Qcow2Metadata): Promise<boolean> {
  const seen = new Set<number>();
  for (const l1 of await allL1Tables(meta)) {
    for (const l2off of l1) {
      if (l2off === 0 || seen.has(l2off)) continue;
      seen.add(l2off);
      const t = await meta.l2Cache.get(l2off);
      const v = new DataView(t.buffer, t.byteOffset, t.length);
      for (let e = 0; e < t.length; e += meta.entryBytes) {
        if (isCompressed(v.getUint32(e))) return true;
      }
    }
  }
  return false;
}

/** QEMU's qcow2_downgrade to v2, with every check it makes. */
async function downgrade(
  meta: Qcow2Metadata,
  image: AmendImageOps,
  progress: OperationProgress,
): Promise<void> {
  const h = meta.header;
  if (h.refcountOrder !== 4) throw unsupported('compat=0.10 requires refcount_bits=16');
  if (meta.hasDataFile) throw unsupported('Cannot downgrade an image with a data file');
  for (const s of meta.snapshotList) {
    if (s.vmStateSize > 0xffffffff || (s.diskSize ?? meta.size) !== meta.size) {
      throw unsupported('Internal snapshots prevent downgrade of image');
    }
  }
  await markClean(meta);
  const incompatible = h.incompatible & ~INCOMPAT_COMPRESSION;
  if (incompatible !== 0) {
    throw unsupported(
      `Cannot downgrade an image with incompatible features 0x${incompatible.toString(16)} set`,
    );
  }
  // QEMU checks the compressed clusters after expanding the zero clusters, and only in the
  // active layer; we check first (nothing changes when refused) and in the snapshots too (a
  // zstd cluster kept in a snapshot would be unreadable once the image says zlib).
  if (h.compressionType !== 0 && (await hasCompressedClusters(meta))) {
    throw unsupported(
      'Cannot downgrade an image with zstd compression type and existing compressed clusters',
    );
  }
  // Compatible features can be dropped (lazy refcounts: the image is clean now); so can the
  // autoclear ones (persistent bitmaps are then stale: QEMU keeps their extension in the v2
  // header and warns when it opens the image; we keep it too, as QEMU lays the header out).
  // In memory first: the refcounts are then written eagerly during the expansion.
  h.compatible = 0;
  h.autoclear = 0;
  await expandZeroClusters(meta, progress);
  h.incompatible &= ~INCOMPAT_COMPRESSION;
  h.compressionType = 0;
  h.version = 2;
  h.headerLength = V2_HEADER_LENGTH;
  await rewriteHeader(meta, image);
}

/**
 * QEMU's qcow2_expand_zero_clusters: v2 has no zero flag. In every L2 table reachable from the
 * active or a snapshot L1 table, a zero cluster becomes unallocated when there is no backing
 * file, and otherwise a cluster of zeros (a new one for a plain zero cluster; its own host
 * cluster, zeroed, for a preallocated one). Tables shared with snapshots are changed in place,
 * as QEMU does: the new cluster's refcount is the table's.
 */
async function expandZeroClusters(meta: Qcow2Metadata, progress: OperationProgress): Promise<void> {
  const rc = meta.refcounts!;
  const cs = meta.clusterSize;
  const l1s = await allL1Tables(meta);
  const total = l1s.reduce((n, t) => n + t.length, 0);
  const zeros = new Uint8Array(cs);
  const backed = meta.backing !== undefined;
  const done = new Set<number>();
  let step = 0;
  for (const l1 of l1s) {
    for (const l2off of l1) {
      step++;
      if (l2off === 0 || done.has(l2off)) {
        progress.report(OP_DOWNGRADE, step, total);
        continue;
      }
      done.add(l2off);
      const l2Refcount = await rc.get(l2off / cs);
      if (l2Refcount === 0) {
        throw new VdiskError(
          'CORRUPT_IMAGE',
          `L2 table at offset 0x${l2off.toString(16)} has a refcount of 0; run 'vdisk check -r all'`,
          { path: meta.file.path, offset: l2off },
        );
      }
      const table = await meta.l2Cache.get(l2off);
      const v = new DataView(table.buffer, table.byteOffset, table.length);
      const frees: number[] = [];
      let changed = false;
      for (let e = 0; e < table.length; e += meta.entryBytes) {
        const hi = v.getUint32(e);
        const lo = v.getUint32(e + 4);
        if (isCompressed(hi) || !isZero(lo)) continue;
        const host = entryOffset(hi, lo);
        let target = host;
        if (host === 0) {
          if (!backed) {
            v.setUint32(e, 0);
            v.setUint32(e + 4, 0);
            changed = true;
            continue;
          }
          target = await rc.allocClusters(1);
          if (l2Refcount > 1) await rc.update(target, cs, l2Refcount - 1, false);
        } else if ((await rc.get(host / cs)) > l2Refcount) {
          // The cluster is also referenced from another table (as data, perhaps): zeroing it
          // in place would change what that reference reads. A fresh cluster takes its place.
          target = await rc.allocClusters(1);
          if (l2Refcount > 1) await rc.update(target, cs, l2Refcount - 1, false);
          frees.push(host);
        }
        if (target % cs !== 0) {
          throw new VdiskError(
            'CORRUPT_IMAGE',
            `Cluster allocation offset 0x${target.toString(16)} unaligned`,
            {
              path: meta.file.path,
            },
          );
        }
        await meta.file.write(zeros, target);
        meta.fileEnd = Math.max(meta.fileEnd, target + cs);
        putEntry(v, e, target, l2Refcount === 1 ? COPIED_HI : 0);
        changed = true;
      }
      if (changed) {
        // Refcounts of the new clusters, then the table; then what it no longer references.
        await rc.flush();
        meta.l2Cache.markDirty(l2off, table);
        await meta.l2Cache.writeOne(l2off);
        for (const off of frees) await rc.update(off, cs, l2Refcount, true);
        await rc.flush();
      }
      progress.report(OP_DOWNGRADE, step, total);
    }
  }
}

/**
 * QEMU's qcow2_change_refcount_order: a complete new refcount table and blocks at the new
 * width, placed past every cluster in use, then the header switched to them in one write. The
 * new structures describe every cluster in use except the old refcount structures, which are
 * thereby free the moment the header names the new ones. (QEMU allocates the new clusters
 * through the old allocator and frees the old ones afterwards; the result on disk is the same
 * kind: old structures become free space.)
 */
async function changeRefcountOrder(
  meta: Qcow2Metadata,
  newOrder: number,
  progress: OperationProgress,
): Promise<void> {
  const h = meta.header;
  await meta.flushMetadata();
  const old = meta.refcounts!;
  const cs = meta.clusterSize;
  const newBits = 2 ** newOrder;
  const newMax = newBits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** newBits - 1;
  const perBlock = (cs * 8) / newBits;

  // Clusters of the old refcount structures (free in the new ones).
  const oldMeta = new Set<number>();
  for (let k = 0; k < old.tableClusters; k++) oldMeta.add(old.tableOffset / cs + k);
  for (const off of old.table) if (off !== 0) oldMeta.add(off / cs);

  // The first cluster past everything in use (by the refcounts and by the file's length).
  let end = Math.ceil(Math.max(await meta.file.size(), meta.fileEnd) / cs);
  for (let ti = old.table.length - 1; ti >= 0; ti--) {
    const off = old.table[ti]!;
    if (off === 0) continue;
    const block = await old.cache.get(off);
    let last = -1;
    for (let j = old.blockEntries - 1; j >= 0; j--) {
      if (old.getIn(block, j) !== 0) {
        last = j;
        break;
      }
    }
    if (last >= 0) {
      end = Math.max(end, ti * old.blockEntries + last + 1);
      break;
    }
  }

  // New blocks and table at `end`, covering themselves (a fixed point).
  let blocks = 0;
  let tableClusters = 0;
  for (;;) {
    const covered = end + blocks + tableClusters;
    const b = Math.ceil(covered / perBlock);
    const t = Math.ceil((b * 8) / cs);
    if (b === blocks && t === tableClusters) break;
    blocks = b;
    tableClusters = t;
  }
  if (tableClusters * cs > MAX_REFTABLE_BYTES) {
    throw new VdiskError('TOO_LARGE', 'Reference count table too large', { path: meta.file.path });
  }
  const areaEnd = end + blocks + tableClusters;
  const oldFileSize = await meta.file.size();
  const table = new Uint8Array(tableClusters * cs);
  const tv = new DataView(table.buffer);
  try {
    for (let b = 0; b < blocks; b++) {
      const buf = new Uint8Array(cs);
      const first = b * perBlock;
      const last = Math.min(first + perBlock, areaEnd);
      for (let c = first; c < last; ) {
        if (c >= end) {
          setRefcountIn(buf, c - first, 1, newBits);
          c++;
          continue;
        }
        // A run inside one old block: read it once.
        const ti = Math.floor(c / old.blockEntries);
        const runEnd = Math.min(last, end, (ti + 1) * old.blockEntries);
        const off = ti < old.table.length ? old.table[ti]! : 0;
        if (off === 0) {
          c = runEnd;
          continue;
        }
        const block = await old.cache.get(off);
        for (; c < runEnd; c++) {
          if (oldMeta.has(c)) continue;
          const r = old.getIn(block, c % old.blockEntries);
          if (r === 0) continue;
          if (r > newMax) {
            throw invalid(
              `Cannot decrease refcount entry width to ${newBits} bits: Cluster at offset 0x${(c * cs).toString(16)} has a refcount of ${r}`,
            );
          }
          setRefcountIn(buf, c - first, r, newBits);
        }
      }
      const at = (end + b) * cs;
      await meta.file.write(buf, at);
      setU64(tv, b * 8, at);
      progress.report(OP_REFCOUNT, b + 1, blocks + 1);
    }
    await meta.file.write(table, (end + blocks) * cs);
  } catch (err) {
    // Nothing references the new area yet: give the space back.
    if ((await meta.file.size()) > oldFileSize) await meta.file.truncate(oldFileSize).catch(() => {});
    throw err;
  }

  // The switch: refcount table offset and size (48..59) and the refcount order (96) in one
  // write of bytes 48..99, the fields in between rewritten with their current values.
  const hb = new Uint8Array(52);
  const hv = new DataView(hb.buffer);
  setU64(hv, 0, (end + blocks) * cs);
  hv.setUint32(8, tableClusters);
  hv.setUint32(12, h.nbSnapshots);
  setU64(hv, 16, h.snapshotsOffset);
  setU64(hv, 24, h.incompatible);
  setU64(hv, 32, h.compatible);
  setU64(hv, 40, h.autoclear);
  hv.setUint32(48, newOrder);
  await meta.file.write(hb, 48);
  h.refcountOrder = newOrder;
  h.refcountTableOffset = (end + blocks) * cs;
  h.refcountTableClusters = tableClusters;
  meta.fileEnd = Math.max(meta.fileEnd, areaEnd * cs);
  old.cache.clear();
  await meta.reloadRefcounts();
  progress.report(OP_REFCOUNT, blocks + 1, blocks + 1);
}
