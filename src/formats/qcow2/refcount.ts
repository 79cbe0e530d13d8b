/**
 * Refcounts and the cluster allocator.
 *
 * The placement policy is QEMU's (block/qcow2-refcount.c), so that images vdisk writes are
 * laid out as qemu lays them out: first fit from a moving free-cluster index; a missing
 * refcount block is placed at the next free cluster (describing itself when it can) and the
 * allocation restarts; a full refcount table is replaced by a self-describing area of new
 * refcount blocks and a 50 % larger table at the end of the file.
 *
 * Crash safety: a new refcount block is written before the table points at it; a new table
 * and its blocks are written before the header points at them; increments wait in the
 * cache (the owner flushes them before any L2 table that references the clusters), and the
 * owner applies decrements only after the referencing metadata has left the disk.
 */
import { isAllZero } from '../../core/device.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { TableCache } from './cache.js';
import { getU64, MAX_REFTABLE_BYTES, setU64 } from './header.js';

/** QEMU's qcow2_refcount_metadata_size: refcount blocks + table clusters covering `clusters`. */
export function refcountMetadataSize(
  clusters: number,
  clusterSize: number,
  refcountOrder: number,
  generousIncrease: boolean,
): { bytes: number; blocks: number } {
  const blocksPerTableCluster = clusterSize / 8;
  const refcountsPerBlock = (clusterSize * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  let generous = generousIncrease;
  let c = clusters;
  do {
    last = n;
    blocks = Math.ceil((c + table + blocks) / refcountsPerBlock);
    table = Math.ceil(blocks / blocksPerTableCluster);
    n = c + blocks + table;
    if (n === last && generous) {
      c += Math.ceil(table / 2);
      n = 0;
      generous = false;
    }
  } while (n !== last);
  return { bytes: (blocks + table) * clusterSize, blocks };
}

/**
 * Set entry i of a refcount block whose entries are `bits` wide: entries under a byte are
 * packed from the low bits up, wider ones are big-endian (qcow2.rst, "refcount block").
 */
export function setRefcountIn(buf: Uint8Array, i: number, value: number, bits: number): void {
  switch (bits) {
    case 1:
    case 2:
    case 4: {
      const per = 8 / bits;
      const byte = Math.floor(i / per);
      const shift = (i % per) * bits;
      const mask = ((1 << bits) - 1) << shift;
      buf[byte] = (buf[byte]! & ~mask) | ((value << shift) & mask);
      return;
    }
    case 8:
      buf[i] = value;
      return;
    case 16:
      buf[2 * i] = value >>> 8;
      buf[2 * i + 1] = value & 0xff;
      return;
    case 32:
      new DataView(buf.buffer, buf.byteOffset).setUint32(4 * i, value);
      return;
    default:
      setU64(new DataView(buf.buffer, buf.byteOffset), 8 * i, value);
  }
}

const AGAIN = Symbol('again');

/**
 * Clusters freed by refcount updates, to go back to the host: QEMU's update_refcount_discard
 * queues them and merges adjacent ranges, qcow2_process_discards then discards each range
 * (a hole in a local file) when the operation ends. Merging matters below the host's block
 * size: 512-byte clusters punched one by one free nothing. Nothing is punched where the host
 * cannot (the blocks then stay, as before).
 */
export class DiscardRuns {
  private readonly clusters: number[] = [];
  constructor(private readonly clusterSize: number) {}

  add(cluster: number): void {
    this.clusters.push(cluster);
  }

  punch(file: HostFile): void {
    const c = this.clusters.sort((a, b) => a - b);
    for (let i = 0; i < c.length; ) {
      let j = i + 1;
      while (j < c.length && c[j]! <= c[j - 1]! + 1) j++;
      file.punchHole(c[i]! * this.clusterSize, (c[j - 1]! - c[i]! + 1) * this.clusterSize);
      i = j;
    }
    this.clusters.length = 0;
  }
}

export interface RefcountHost {
  file: HostFile;
  clusterBits: number;
  refcountOrder: number;
  /** Rewrite the header's refcount table fields (offset 48: u64 offset, u32 clusters). */
  writeHeaderReftable(offset: number, clusters: number): Promise<void>;
}

export class Refcounts {
  table: Float64Array;
  tableOffset: number;
  tableClusters: number;
  readonly clusterSize: number;
  readonly bits: number;
  readonly maxRefcount: number;
  /** Refcounts per block (QEMU's refcount_block_size). */
  readonly blockEntries: number;
  readonly cache: TableCache;
  freeClusterIndex = 0;
  /** Offset of the next free byte for compressed data (0: none). */
  freeByteOffset = 0;

  private constructor(
    private readonly host: RefcountHost,
    table: Float64Array,
    tableOffset: number,
    tableClusters: number,
    cacheBytes: number,
  ) {
    this.table = table;
    this.tableOffset = tableOffset;
    this.tableClusters = tableClusters;
    this.clusterSize = 2 ** host.clusterBits;
    this.bits = 2 ** host.refcountOrder;
    this.maxRefcount = this.bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** this.bits - 1;
    this.blockEntries = (this.clusterSize * 8) / this.bits;
    this.cache = new TableCache(
      host.file,
      this.clusterSize,
      Math.max(4, Math.floor(cacheBytes / this.clusterSize)),
      'Refcount block',
    );
  }

  static async load(
    host: RefcountHost,
    tableOffset: number,
    tableClusters: number,
    fileSize: number,
    cacheBytes = 4 << 20,
    /** For check (BDRV_O_CHECK): keep bad entries; check reports them, get() refuses them. */
    tolerant = false,
  ): Promise<Refcounts> {
    const clusterSize = 2 ** host.clusterBits;
    const bytes = tableClusters * clusterSize;
    if (bytes > MAX_REFTABLE_BYTES) {
      throw new VdiskError('TOO_LARGE', 'Reference count table too large', { path: host.file.path });
    }
    const raw = new Uint8Array(bytes);
    // A check open reads a table past the end of the file as zeros (as QEMU does).
    if (!tolerant || tableOffset < fileSize) await host.file.read(raw, tableOffset);
    const v = new DataView(raw.buffer);
    const table = new Float64Array(bytes / 8);
    for (let i = 0; i < table.length; i++) {
      // Runs of empty entries (most of a table) are skipped 4 KiB at a time: this loop runs
      // cold at every open for writing, ~0.3 µs an entry (2.2 ms of a small convert's 42).
      if (i % 512 === 0 && isAllZero(raw.subarray(i * 8, (i + 512) * 8))) {
        i += 511;
        continue;
      }
      const e = getU64(v, i * 8);
      // Bits 0-8 are reserved; QEMU masks them (REFT_OFFSET_MASK).
      const off = e === Number.POSITIVE_INFINITY ? e : e - (e % 512);
      if (
        !tolerant &&
        off !== 0 &&
        (!Number.isFinite(off) || off % clusterSize !== 0 || off + clusterSize > fileSize)
      ) {
        throw new VdiskError(
          'CORRUPT_IMAGE',
          `Refcount block offset ${Number.isFinite(off) ? `0x${off.toString(16)}` : '(huge)'} (reftable index ${i}) is ${
            Number.isFinite(off) && off % clusterSize === 0 ? 'past the end of the file' : 'invalid'
          }`,
          { path: host.file.path, offset: tableOffset + i * 8 },
        );
      }
      table[i] = off;
    }
    const r = new Refcounts(host, table, tableOffset, tableClusters, cacheBytes);
    r.cache.fileEnd = fileSize;
    return r;
  }

  /** A fresh manager over an in-memory table (create). */
  static fresh(
    host: RefcountHost,
    table: Float64Array,
    tableOffset: number,
    tableClusters: number,
  ): Refcounts {
    return new Refcounts(host, table, tableOffset, tableClusters, 4 << 20);
  }

  get blockBits(): number {
    return Math.log2(this.blockEntries);
  }

  getIn(buf: Uint8Array, i: number): number {
    switch (this.bits) {
      case 1:
        return (buf[i >>> 3]! >>> (i & 7)) & 1;
      case 2:
        return (buf[i >>> 2]! >>> (2 * (i & 3))) & 3;
      case 4:
        return (buf[i >>> 1]! >>> (4 * (i & 1))) & 15;
      case 8:
        return buf[i]!;
      case 16:
        return (buf[2 * i]! << 8) | buf[2 * i + 1]!;
      case 32:
        return new DataView(buf.buffer, buf.byteOffset).getUint32(4 * i);
      default: {
        const v = getU64(new DataView(buf.buffer, buf.byteOffset), 8 * i);
        return Number.isFinite(v) ? v : Number.MAX_SAFE_INTEGER;
      }
    }
  }

  setIn(buf: Uint8Array, i: number, value: number): void {
    setRefcountIn(buf, i, value, this.bits);
  }

  /** The refcount blocks the table names (its non-zero entries; empty runs skipped quickly). */
  blocks(): number[] {
    const t = this.table;
    const bytes = new Uint8Array(t.buffer, t.byteOffset, t.byteLength);
    const out: number[] = [];
    for (let i = 0; i < t.length; i += 512) {
      if (isAllZero(bytes.subarray(i * 8, (i + 512) * 8))) continue;
      for (let j = i; j < Math.min(t.length, i + 512); j++) if (t[j]! !== 0) out.push(t[j]!);
    }
    return out;
  }

  /** Refcount of a cluster (0 where no refcount block covers it). */
  async get(clusterIndex: number): Promise<number> {
    const ti = Math.floor(clusterIndex / this.blockEntries);
    if (ti >= this.table.length) return 0;
    const off = this.table[ti]!;
    if (off === 0) return 0;
    // Only a check open keeps entries like these (see load). Past any file: reads as zeros.
    if (!Number.isSafeInteger(off)) return 0;
    if (off % this.clusterSize !== 0) {
      // Only a check open keeps such an entry (QEMU's qcow2_get_refcount: -EIO).
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `Refblock offset 0x${off.toString(16)} unaligned (reftable index: ${ti === 0 ? '0' : `0x${ti.toString(16)}`})`,
        { path: this.host.file.path },
      );
    }
    const block = await this.cache.get(off);
    return this.getIn(block, clusterIndex % this.blockEntries);
  }

  /**
   * How many of clusters [0, end) have a non-zero refcount, counting stops at `limit`. Walks the
   * refcount table, skipping whole blocks that are not allocated: a sparse file can claim
   * billions of clusters (qcow2_detect_metadata_preallocation loops over every one).
   */
  async countInUse(end: number, limit: number): Promise<number> {
    let count = 0;
    const blocks = Math.min(this.table.length, Math.ceil(end / this.blockEntries));
    for (let ti = 0; ti < blocks && count < limit; ti++) {
      const off = this.table[ti]!;
      if (off === 0) continue;
      const block = await this.cache.get(off);
      const n = Math.min(this.blockEntries, end - ti * this.blockEntries);
      for (let i = 0; i < n && count < limit; i++) if (this.getIn(block, i) !== 0) count++;
    }
    return count;
  }

  private async loadBlock(off: number): Promise<Uint8Array> {
    return this.cache.get(off);
  }

  /**
   * QEMU's alloc_clusters_noref: the first run of `n` free clusters at or after the free
   * index (the index moves past it; refcounts are not touched).
   */
  async allocNoref(n: number): Promise<number> {
    let run = 0;
    while (run < n) {
      const idx = this.freeClusterIndex++;
      // Synchronous fast path through a cached (or absent) refcount block.
      const ti = Math.floor(idx / this.blockEntries);
      const off = ti < this.table.length ? this.table[ti]! : 0;
      let rc: number;
      if (off === 0) rc = 0;
      else {
        const b = this.cache.peek(off);
        rc = b !== undefined ? this.getIn(b, idx % this.blockEntries) : await this.get(idx);
      }
      if (rc !== 0) run = 0;
      else run++;
    }
    const start = this.freeClusterIndex - n;
    const off = start * this.clusterSize;
    if (!Number.isSafeInteger(off + n * this.clusterSize)) {
      throw new VdiskError('TOO_LARGE', 'Image file would grow beyond what vdisk supports', {
        path: this.host.file.path,
      });
    }
    return off;
  }

  /** Allocate `n` contiguous clusters with refcount 1; returns the host offset. */
  async allocClusters(n: number): Promise<number> {
    for (;;) {
      const off = await this.allocNoref(n);
      const r = await this.update(off, n * this.clusterSize, 1, false);
      if (r !== AGAIN) return off;
    }
  }

  /**
   * Allocate `n` clusters at exactly `offset` if they are free (QEMU's
   * qcow2_alloc_clusters_at); returns how many were free and got allocated.
   */
  async allocClustersAt(offset: number, n: number): Promise<number> {
    for (;;) {
      let i = 0;
      const first = offset / this.clusterSize;
      while (i < n && (await this.get(first + i)) === 0) i++;
      if (i === 0) return 0;
      const r = await this.update(offset, i * this.clusterSize, 1, false);
      if (r !== AGAIN) return i;
    }
  }

  /** QEMU's qcow2_alloc_bytes: byte-granular space for compressed clusters. */
  async allocBytes(size: number): Promise<number> {
    let offset = this.freeByteOffset;
    if (offset !== 0) {
      const rc = await this.get(Math.floor(offset / this.clusterSize));
      if (rc === this.maxRefcount) offset = 0;
    }
    let freeInCluster = this.clusterSize - (offset % this.clusterSize);
    for (;;) {
      if (offset === 0 || freeInCluster < size) {
        const fresh = await this.allocNoref(1);
        if (offset === 0 || Math.ceil(offset / this.clusterSize) * this.clusterSize !== fresh) {
          offset = fresh;
          freeInCluster = this.clusterSize;
        } else {
          freeInCluster += this.clusterSize;
        }
      }
      const r = await this.update(offset, size, 1, false);
      if (r !== AGAIN) break;
      // A refcount block landed where we meant to write: search again.
      offset = 0;
    }
    this.freeByteOffset = (offset + size) % this.clusterSize === 0 ? 0 : offset + size;
    return offset;
  }

  /**
   * Decrement the refcounts of every cluster touched by [offset, offset+length). With
   * `discard`, clusters whose refcount reaches 0 are deallocated in the file (see update).
   */
  async free(offset: number, length: number, discard: boolean | DiscardRuns = false): Promise<void> {
    await this.update(offset, length, 1, true, discard);
  }

  /**
   * Add (or subtract) `addend` to the refcount of every cluster touched by the range.
   * `discard` (true, or a DiscardRuns the caller punches when its operation ends): QEMU's
   * discard types that qemu-img passes to the file by default
   * (QCOW2_DISCARD_ALWAYS: check's repairs, a shrink; QCOW2_DISCARD_SNAPSHOT, pass-discard-
   * snapshot=on: snapshot and snapshot-table frees): a cluster whose refcount reaches 0 gets
   * a hole punched, so that the space goes back to the host (measured: `qemu-img check -r
   * leaks` and `snapshot -d` leave holes there; the other frees, QCOW2_DISCARD_OTHER and
   * _REQUEST, are off by default and keep the blocks).
   */
  async update(
    offset: number,
    length: number,
    addend: number,
    decrease: boolean,
    discard: boolean | DiscardRuns = false,
  ): Promise<typeof AGAIN | undefined> {
    if (length <= 0) return undefined;
    // Collected here and handed on only when the whole update stands: the undo paths below
    // (a new block needed, a count out of range) put these clusters back in use.
    const zeroed: number[] | undefined = decrease && discard !== false ? [] : undefined;
    const cs = this.clusterSize;
    const start = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    let block: Uint8Array | null = null;
    let blockOff = -1;
    let oldTi = -1;
    for (let ci = start; ci <= last; ci++) {
      const ti = Math.floor(ci / this.blockEntries);
      if (ti !== oldTi || block === null) {
        const got = await this.blockForUpdate(ci);
        if (got === AGAIN) {
          // The caller searches again from the clusters it chose, as QEMU's update_refcount
          // has it try them first: they are still free unless the new block took one. (A search
          // from past the new block would leave a free cluster before it at every new block.)
          if (this.freeClusterIndex > start) this.freeClusterIndex = start;
          // Undo what this call did (QEMU does the same), then let the caller search again.
          if (ci > start) await this.update(start * cs, (ci - start) * cs, addend, !decrease);
          return AGAIN;
        }
        [blockOff, block] = got;
        oldTi = ti;
      }
      const bi = ci % this.blockEntries;
      const rc = this.getIn(block, bi);
      const next = decrease ? rc - addend : rc + addend;
      if (next < 0 || next > this.maxRefcount) {
        if (ci > start) await this.update(start * cs, (ci - start) * cs, addend, !decrease);
        throw new VdiskError(
          'CORRUPT_IMAGE',
          `Refcount of cluster ${ci} would ${next < 0 ? 'drop below zero' : 'overflow'}`,
          { path: this.host.file.path, offset: ci * cs },
        );
      }
      if (next === 0 && ci < this.freeClusterIndex) this.freeClusterIndex = ci;
      // A freed cluster may be reused whole: compressed data must not be appended to it.
      if (next === 0 && this.freeByteOffset !== 0 && Math.floor(this.freeByteOffset / cs) === ci) {
        this.freeByteOffset = 0;
      }
      this.setIn(block, bi, next);
      this.cache.markDirty(blockOff, block);
      if (next === 0) zeroed?.push(ci);
    }
    if (zeroed !== undefined && zeroed.length > 0) {
      const runs = discard instanceof DiscardRuns ? discard : new DiscardRuns(this.clusterSize);
      for (const c of zeroed) runs.add(c);
      if (discard === true) runs.punch(this.host.file);
    }
    return undefined;
  }

  /**
   * QEMU's qcow2_shrink_reftable, the last step of a shrink: refcount blocks that count
   * nothing but themselves leave the table, which is rewritten whole (measured: qemu-img's
   * shrink leaves the table's whole cluster written); each such block's own refcount goes
   * to 0 and its cluster back to the host (qcow2_discard_refcount_block).
   */
  async shrinkTable(): Promise<void> {
    const cs = this.clusterSize;
    const next = new Float64Array(this.table.length);
    for (let i = 0; i < this.table.length; i++) {
      const off = this.table[i]!;
      if (off === 0) continue;
      const block = await this.loadBlock(off);
      const self = off / cs;
      let unused: boolean;
      if (Math.floor(self / this.blockEntries) === i) {
        // The block's count of itself does not keep it.
        const bi = self % this.blockEntries;
        const own = this.getIn(block, bi);
        this.setIn(block, bi, 0);
        unused = isAllZero(block);
        this.setIn(block, bi, own);
      } else {
        unused = isAllZero(block);
      }
      next[i] = unused ? 0 : off;
    }
    const raw = new Uint8Array(this.tableClusters * cs);
    const v = new DataView(raw.buffer);
    for (let i = 0; i < next.length; i++) setU64(v, i * 8, next[i]!);
    await this.host.file.write(raw, this.tableOffset);
    await this.host.file.flush();
    const freed = new DiscardRuns(cs);
    for (let i = 0; i < this.table.length; i++) {
      const off = this.table[i]!;
      if (off === 0 || next[i] !== 0) continue;
      this.table[i] = 0;
      this.cache.drop(off);
      const k = off / cs;
      const cover = this.table[Math.floor(k / this.blockEntries)] ?? 0;
      if (cover !== 0) {
        const block = await this.loadBlock(cover);
        this.setIn(block, k % this.blockEntries, 0);
        this.cache.markDirty(cover, block);
      }
      if (k < this.freeClusterIndex) this.freeClusterIndex = k;
      freed.add(k);
    }
    freed.punch(this.host.file);
  }

  /** The refcount block covering a cluster, allocating it (QEMU's alloc_refcount_block). */
  private async blockForUpdate(clusterIndex: number): Promise<[number, Uint8Array] | typeof AGAIN> {
    const ti = Math.floor(clusterIndex / this.blockEntries);
    if (ti < this.table.length && this.table[ti]! !== 0) {
      const off = this.table[ti]!;
      return [off, await this.loadBlock(off)];
    }
    const newBlock = await this.allocNoref(1);
    const newIndex = newBlock / this.clusterSize;
    if (Math.floor(newIndex / this.blockEntries) === ti) {
      // The block describes itself.
      const buf = await this.cache.create(newBlock);
      this.setIn(buf, newIndex % this.blockEntries, 1);
    } else {
      const r = await this.update(newBlock, this.clusterSize, 1, false);
      if (r === AGAIN) return AGAIN;
      await this.cache.create(newBlock);
    }
    this.cache.fileEnd = Math.max(this.cache.fileEnd, newBlock + this.clusterSize);
    // The block (and the refcounts describing it) reach the disk before the table names it.
    await this.cache.flush();
    if (ti < this.table.length) {
      const e = new Uint8Array(8);
      setU64(new DataView(e.buffer), 0, newBlock);
      await this.host.file.write(e, this.tableOffset + ti * 8);
      this.table[ti] = newBlock;
      return AGAIN;
    }
    // The table is full: build a self-describing area past everything used so far.
    const blocksUsed = Math.ceil(Math.max(clusterIndex + 1, newIndex + 1) / this.blockEntries);
    const metaOffset = blocksUsed * this.blockEntries * this.clusterSize;
    await this.refcountArea(metaOffset, 0, false, ti, newBlock);
    return AGAIN;
  }

  /**
   * QEMU's qcow2_refcount_area: at `startOffset` (end of the used file), new refcount blocks
   * and a new refcount table that cover themselves and `additionalClusters` beyond.
   * Returns the offset after the new structures.
   */
  async refcountArea(
    startOffset: number,
    additionalClusters: number,
    exactSize: boolean,
    newRefblockIndex: number,
    newRefblockOffset: number,
  ): Promise<number> {
    const cs = this.clusterSize;
    const { blocks: totalBlocks } = refcountMetadataSize(
      startOffset / cs + additionalClusters,
      cs,
      Math.log2(this.bits),
      !exactSize,
    );
    let tableSize = exactSize ? totalBlocks : totalBlocks + Math.ceil(totalBlocks / 2);
    tableSize = Math.ceil(tableSize / (cs / 8)) * (cs / 8);
    const tableClusters = (tableSize * 8) / cs;
    if (tableSize * 8 > MAX_REFTABLE_BYTES) {
      throw new VdiskError('TOO_LARGE', 'Reference count table too large', { path: this.host.file.path });
    }
    const areaIndex = Math.floor(startOffset / cs / this.blockEntries);
    const newTable = new Float64Array(tableSize);
    newTable.set(this.table.subarray(0, Math.min(this.table.length, tableSize)));
    if (newRefblockOffset !== 0) newTable[newRefblockIndex] = newRefblockOffset;
    let additional = 0;
    for (let i = areaIndex; i < totalBlocks; i++) if (newTable[i] === 0) additional++;
    const tableOffset = startOffset + additional * cs;
    const endOffset = tableOffset + tableClusters * cs;
    this.cache.fileEnd = Math.max(this.cache.fileEnd, endOffset);
    let blockOffset = startOffset;
    for (let i = areaIndex; i < totalBlocks; i++) {
      let buf: Uint8Array;
      let off = newTable[i]!;
      if (off !== 0) {
        buf = await this.cache.get(off);
      } else {
        off = blockOffset;
        buf = await this.cache.create(off);
        newTable[i] = off;
        blockOffset += cs;
      }
      const firstCovered = i * this.blockEntries * cs;
      if (firstCovered < endOffset) {
        const j0 = firstCovered < startOffset ? (startOffset - firstCovered) / cs : 0;
        const jEnd = Math.min((endOffset - firstCovered) / cs, this.blockEntries);
        for (let j = j0; j < jEnd; j++) this.setIn(buf, j, 1);
        this.cache.markDirty(off, buf);
      }
    }
    await this.cache.flush();
    const raw = new Uint8Array(tableSize * 8);
    const v = new DataView(raw.buffer);
    for (let i = 0; i < tableSize; i++) setU64(v, i * 8, newTable[i]!);
    await this.host.file.write(raw, tableOffset);
    await this.host.writeHeaderReftable(tableOffset, tableClusters);
    const oldOffset = this.tableOffset;
    const oldBytes = this.tableClusters * cs;
    this.table = newTable;
    this.tableOffset = tableOffset;
    this.tableClusters = tableClusters;
    await this.free(oldOffset, oldBytes);
    return endOffset;
  }

  /** Write dirty refcount blocks. */
  flush(): Promise<void> {
    return this.cache.flush();
  }

  /** Number of clusters the table can describe. */
  get coveredClusters(): number {
    return this.table.length * this.blockEntries;
  }
}
