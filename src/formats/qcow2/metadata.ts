/**
 * Qcow2Metadata: the metadata state of one open qcow2 image — the header and its write
 * paths, the active L1 table, the L2 table cache, the refcounts, the file's known end, the
 * snapshot table and the persistent bitmaps — and the operations on it that keep it
 * consistent (table allocation, L1 updates, crash-safe flush order).
 *
 * The I/O paths (image.ts) and the tools that rewrite metadata (amend, check, prealloc,
 * snapshot-write) all work on this object; none of them imports the image class.
 */
import type { FileRef } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import type { LuksVolume } from '../luks/block.js';
import type { PersistentBitmaps } from './bitmap-state.js';
import { type BitmapsExt, encodeBitmapsExt } from './bitmaps.js';
import { TableCache } from './cache.js';
import type { CryptoHeaderRef } from './crypto.js';
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO,
  EXT_DATA_FILE,
  EXT_FEATURE_TABLE,
  encodeHeader,
  featureTableExtension,
  type HeaderExtension,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  type Qcow2Header,
  setU64,
  V3_HEADER_LENGTH,
} from './header.js';
import {
  COPIED_HI,
  decodeCompressed,
  decodeL1,
  entryOffset,
  isCompressed,
  isCopied,
  putEntry,
} from './l2-entry.js';
import { DiscardRuns, Refcounts } from './refcount.js';
import type { Qcow2Snapshot } from './snapshot.js';

/** L2 cache bound (QEMU's default maximum is 32 MiB). */
const L2_CACHE_BYTES = 32 << 20;

/** An L1 table as read from the file. */
export interface L1Table {
  off: Float64Array;
  copied: Uint8Array;
  tableOffset: number;
}

/** One L2 entry as the write paths read it (Qcow2Metadata.entryAt). */
export interface L2EntryView {
  /** Byte offset of the entry in its table. */
  e: number;
  hi: number;
  lo: number;
  compressed: boolean;
  /** Host cluster of a standard entry (0 for a compressed one). */
  host: number;
  /** The entry names a host cluster (hasHost). */
  hasHost: boolean;
}

export class Qcow2Metadata {
  readonly clusterSize: number;
  readonly clusterBits: number;
  readonly subclusterSize: number;
  readonly extL2: boolean;
  readonly entryBytes: number;
  readonly l2Entries: number;
  backing: FileRef | undefined;
  readonly l2Cache: TableCache;
  refcounts: Refcounts | null = null;
  l1Off: Float64Array;
  l1Copied: Uint8Array;
  l1Size: number;
  l1TableOffset: number;
  snapshotList: Qcow2Snapshot[] = [];
  snapshotTableBytes = 0;
  /** Persistent dirty bitmaps (bitmap-state.ts); undefined on snapshot views. */
  persistentBitmaps: PersistentBitmaps | undefined;
  /** Host end of the image file as far as we know (tables and data must lie before it). */
  fileEnd: number;
  /** Opened for check (QEMU's BDRV_O_CHECK): tables were read without validating entries. */
  forCheck = false;
  /** Clusters dropped by L2 updates, freed once those tables are on disk (settleFrees). */
  pendingFrees: Array<[number, number]> = [];
  /** Something was written (the header, tables or data): flush and close have work. */
  modified = false;
  /** Host clusters that hold metadata (in-place data writes must not touch them). */
  readonly metadataClusters = new Set<number>();
  /**
   * The fixed metadata areas (header, L1 table, refcount table, snapshot table, LUKS header) as
   * cluster-aligned [start, end) byte ranges, not cluster by cluster: a header may claim any
   * length (a fuzzed crypto header extension of 2^56 bytes, which QEMU opens, filled the Set
   * past its limit: an internal error after seconds).
   */
  private metadataRanges: Array<[number, number]> = [];
  /** encrypt.format=luks: the unlocked volume and where its header lies (crypto.ts). */
  luks: { vol: LuksVolume; ref: CryptoHeaderRef } | undefined;

  constructor(
    readonly file: HostFile,
    readonly header: Qcow2Header,
    readonly readOnly: boolean,
    l1: L1Table,
    fileSize: number,
  ) {
    this.clusterBits = header.clusterBits;
    this.clusterSize = 2 ** header.clusterBits;
    this.extL2 = (header.incompatible & INCOMPAT_EXTL2) !== 0;
    this.entryBytes = this.extL2 ? 16 : 8;
    this.l2Entries = this.clusterSize / this.entryBytes;
    this.subclusterSize = this.extL2 ? this.clusterSize / 32 : this.clusterSize;
    this.l1Off = l1.off;
    this.l1Copied = l1.copied;
    this.l1Size = l1.off.length;
    this.l1TableOffset = l1.tableOffset;
    this.fileEnd = fileSize;
    this.backing =
      header.backingFile !== undefined
        ? { filename: header.backingFile, format: header.backingFormat }
        : undefined;
    const maxL2 = Math.max(
      16,
      Math.min(Math.floor(L2_CACHE_BYTES / this.clusterSize), Math.max(16, this.l1Size + 8)),
    );
    this.l2Cache = new TableCache(file, this.clusterSize, maxL2, 'L2 table', async () => {
      if (this.refcounts !== null && !this.lazy) await this.refcounts.flush();
    });
    this.l2Cache.fileEnd = fileSize;
  }

  get size(): number {
    // QEMU 7.2 (qcow2_do_open) keeps total_sectors = size / 512: a header size that is not a
    // multiple of 512 (qemu-img never writes one) reads as the whole sectors it covers.
    return Math.floor(this.header.size / 512) * 512;
  }

  get version(): 2 | 3 {
    return this.header.version;
  }

  get lazy(): boolean {
    return !this.readOnly && (this.header.compatible & COMPAT_LAZY_REFCOUNTS) !== 0;
  }

  get dirty(): boolean {
    return (this.header.incompatible & INCOMPAT_DIRTY) !== 0;
  }

  get hasDataFile(): boolean {
    return (this.header.incompatible & INCOMPAT_DATA_FILE) !== 0;
  }

  get dataFileRaw(): boolean {
    return (this.header.autoclear & AUTOCLEAR_DATA_FILE_RAW) !== 0;
  }

  get compressionType(): number {
    return this.header.compressionType;
  }

  /**
   * Does a (non-compressed) L2 entry name a host cluster? Offset 0 means "none", except in
   * an external data file, where 0 is a real offset and the COPIED flag (always set there)
   * tells them apart (as QEMU's qcow2_get_cluster_type).
   */
  hasHost(hi: number, host: number): boolean {
    return host !== 0 || (this.hasDataFile && isCopied(hi));
  }

  /** Load the refcount table (done at open for writing, on demand for check). */
  async loadRefcounts(): Promise<Refcounts> {
    if (this.refcounts !== null) return this.refcounts;
    const h = this.header;
    this.refcounts = await Refcounts.load(
      {
        file: this.file,
        clusterBits: h.clusterBits,
        refcountOrder: h.refcountOrder,
        writeHeaderReftable: async (offset, clusters) => {
          const b = new Uint8Array(12);
          const v = new DataView(b.buffer);
          setU64(v, 0, offset);
          v.setUint32(8, clusters);
          await this.file.write(b, 48);
          h.refcountTableOffset = offset;
          h.refcountTableClusters = clusters;
          this.indexMetadata();
        },
      },
      h.refcountTableOffset,
      h.refcountTableClusters,
      this.fileEnd,
      undefined,
      this.forCheck,
    );
    this.refcounts.cache.fileEnd = Number.POSITIVE_INFINITY;
    for (const off of this.refcounts.blocks()) this.metadataClusters.add(off);
    return this.refcounts;
  }

  /** Forget the refcount state and read it again (after check rebuilt the structures). */
  async reloadRefcounts(): Promise<Refcounts> {
    this.refcounts = null;
    const rc = await this.loadRefcounts();
    this.indexMetadata();
    return rc;
  }

  /** Remember which host clusters hold metadata (in-place data writes must not touch them). */
  indexMetadata(): void {
    const m = this.metadataClusters;
    const cs = this.clusterSize;
    m.clear();
    this.metadataRanges = [];
    const addRange = (off: number, len: number) => {
      this.metadataRanges.push([Math.floor(off / cs) * cs, off + len]);
    };
    addRange(0, cs);
    addRange(this.l1TableOffset, this.l1Size * 8);
    addRange(this.header.refcountTableOffset, this.header.refcountTableClusters * cs);
    addRange(this.header.snapshotsOffset, this.snapshotTableBytes);
    if (this.luks !== undefined) addRange(this.luks.ref.offset, this.luks.ref.length);
    for (let i = 0; i < this.l1Size; i++) if (this.l1Off[i]! !== 0) m.add(this.l1Off[i]!);
    if (this.refcounts !== null) for (const off of this.refcounts.blocks()) m.add(off);
  }

  /**
   * Before writing: L2 tables must not overlap the header, the L1 table, the refcount table
   * or each other (a looping image would make writes destroy its own metadata).
   */
  checkOverlaps(): void {
    const cs = this.clusterSize;
    const fixed = new Set<number>();
    const add = (off: number, len: number) => {
      for (let c = Math.floor(off / cs) * cs; c < off + len; c += cs) fixed.add(c);
    };
    add(0, cs);
    add(this.l1TableOffset, this.l1Size * 8);
    add(this.header.refcountTableOffset, this.header.refcountTableClusters * cs);
    const seen = new Set<number>();
    for (let i = 0; i < this.l1Size; i++) {
      const o = this.l1Off[i]!;
      if (o === 0) continue;
      if (fixed.has(o) || (seen.has(o) && this.l1Copied[i] === 1)) {
        throw this.corrupt(
          `L2 table at offset 0x${o.toString(16)} (L1 index ${i}) overlaps other metadata; the image is corrupt`,
          this.l1TableOffset + i * 8,
        );
      }
      seen.add(o);
    }
  }

  // ---------------------------------------------------------------- mapping

  corrupt(msg: string, offset?: number): VdiskError {
    return new VdiskError('CORRUPT_IMAGE', msg, {
      path: this.file.path,
      ...(offset !== undefined ? { offset } : {}),
    });
  }

  checkDataCluster(h: number, l2off: number, ci: number): void {
    if (h % this.clusterSize !== 0) {
      throw this.corrupt(
        `Cluster allocation offset 0x${h.toString(16)} unaligned (L2 offset: 0x${l2off.toString(16)}, L2 index: 0x${ci.toString(16)})`,
        l2off + ci * this.entryBytes,
      );
    }
    // (A cluster may end past end of file: qemu writes only the subclusters it needs.)
    if (!this.hasDataFile && h >= this.fileEnd) {
      throw this.corrupt(
        `Data cluster at host offset 0x${h.toString(16)} lies past the end of the image file (L2 offset: 0x${l2off.toString(16)}, L2 index: 0x${ci.toString(16)})`,
        l2off + ci * this.entryBytes,
      );
    }
  }

  /** Entry `ci` of an L2 table: its byte offset, its halves and its host cluster (0 if compressed). */
  entryAt(v: DataView, ci: number): L2EntryView {
    const e = ci * this.entryBytes;
    const hi = v.getUint32(e);
    const lo = v.getUint32(e + 4);
    const compressed = isCompressed(hi);
    const host = compressed ? 0 : entryOffset(hi, lo);
    return { e, hi, lo, compressed, host, hasHost: !compressed && this.hasHost(hi, host) };
  }

  /** Host byte offset and length of a compressed cluster's data (QEMU's qcow2_parse_compressed_l2_entry). */
  compressedRange(hi: number, lo: number, l2off: number, ci: number): [number, number] {
    const { offset: off, size } = decodeCompressed(hi, lo, this.clusterBits);
    if (off >= this.fileEnd || off === 0) {
      throw this.corrupt(
        `Compressed cluster at host offset 0x${off.toString(16)} lies outside the image file (L2 offset: 0x${l2off.toString(16)}, L2 index: 0x${ci.toString(16)})`,
        l2off + ci * this.entryBytes,
      );
    }
    return [off, size];
  }

  checkWritable(): Refcounts {
    if (this.readOnly || this.refcounts === null) {
      throw new VdiskError('READ_ONLY', `'${this.file.path}' is open read-only`, { path: this.file.path });
    }
    return this.refcounts;
  }

  async setIncompatible(value: number): Promise<void> {
    this.header.incompatible = value;
    if (this.version < 3) return;
    const b = new Uint8Array(8);
    setU64(new DataView(b.buffer), 0, value);
    await this.file.write(b, 72);
  }

  /** The L2 table for a guest offset, ready to be modified (allocated or copied as needed). */
  async l2ForWrite(l1i: number): Promise<[number, Uint8Array]> {
    if (l1i >= this.l1Size) throw this.corrupt(`Write beyond the L1 table (index ${l1i})`);
    const old = this.l1Off[l1i]!;
    if (old !== 0 && this.l1Copied[l1i] === 1) return [old, await this.l2Cache.get(old)];
    const rc = this.refcounts!;
    const fresh = await rc.allocClusters(1);
    this.noteAlloc(fresh, this.clusterSize);
    // A table shared with a snapshot is copied; its clusters keep their (shared) refcounts.
    const content = old !== 0 ? (await this.l2Cache.get(old)).slice() : undefined;
    const buf = await this.l2Cache.create(fresh, content);
    this.metadataClusters.add(fresh);
    await this.l2Cache.writeOne(fresh);
    await this.writeL1Entry(l1i, fresh, true);
    if (old !== 0) {
      this.l2Cache.drop(old);
      await rc.free(old, this.clusterSize);
    }
    return [fresh, buf];
  }

  async writeL1Entry(i: number, offset: number, copied: boolean): Promise<void> {
    const b = new Uint8Array(8);
    putEntry(new DataView(b.buffer), 0, offset, copied ? COPIED_HI : 0);
    await this.file.write(b, this.l1TableOffset + i * 8);
    this.l1Off[i] = offset;
    this.l1Copied[i] = copied ? 1 : 0;
  }

  noteAlloc(host: number, len: number): void {
    if (this.hasDataFile) return;
    this.fileEnd = Math.max(this.fileEnd, host + len);
    // New L2 tables may leave the cache and be read back (many of them after a resize).
    this.l2Cache.fileEnd = Math.max(this.l2Cache.fileEnd, this.fileEnd);
  }

  /** Data writes must never land on metadata (QEMU's overlap check, "cached" mode). */
  assertNotMetadata(host: number, len: number): void {
    if (this.hasDataFile) return;
    const cs = this.clusterSize;
    for (let c = Math.floor(host / cs) * cs; c < host + len; c += cs) {
      if (this.metadataClusters.has(c) || this.metadataRanges.some(([a, b]) => c >= a && c < b)) {
        throw this.corrupt(
          `Preventing invalid write on metadata (overlaps with qcow2 metadata at 0x${c.toString(16)}); the image is corrupt`,
          c,
        );
      }
    }
  }

  /** The host range QEMU frees for a compressed cluster (qcow2_free_any_cluster). */
  compressedFreeRange(hi: number, lo: number, l2off: number, ci: number): [number, number] {
    const [off, size] = this.compressedRange(hi, lo, l2off, ci);
    const start = off - (off % 512);
    return [start, size + (off % 512)];
  }

  /**
   * Apply pending decrements once the L2 tables that dropped the clusters are on disk.
   * `discard`: what reaches refcount 0 goes back to the host (a shrink's frees,
   * QCOW2_DISCARD_ALWAYS; see Refcounts.update).
   */
  async settleFrees(discard = false): Promise<void> {
    if (this.pendingFrees.length === 0) return;
    if (!this.lazy || discard) await this.l2Cache.flush();
    const frees = this.pendingFrees;
    this.pendingFrees = [];
    const freed = discard ? new DiscardRuns(this.clusterSize) : false;
    for (const [off, len] of frees) await this.refcounts!.free(off, len, freed);
    if (freed !== false) freed.punch(this.file);
  }

  // ---------------------------------------------------------------- zero, discard

  /** The header extensions in QEMU's qcow2_update_header order (see writeBacking). */
  private layoutExtensions(backingFormat: string | undefined, bitmaps: HeaderExtension[]): HeaderExtension[] {
    const h = this.header;
    const byType = (t: number) => h.extensions.filter((e) => e.type === t);
    const known = new Set([EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_CRYPTO, EXT_FEATURE_TABLE, EXT_BITMAPS]);
    const exts: HeaderExtension[] = [];
    if (backingFormat !== undefined) {
      exts.push({ type: EXT_BACKING_FORMAT, data: Buffer.from(backingFormat, 'latin1') });
    }
    exts.push(...byType(EXT_DATA_FILE), ...byType(EXT_CRYPTO));
    if (h.version === 3 && this.clusterSize > 4096) exts.push(featureTableExtension());
    exts.push(...bitmaps, ...h.extensions.filter((e) => !known.has(e.type)));
    return exts;
  }

  /** What bitmap-state.ts needs to store bitmaps in this image. */
  bitmapStore() {
    return {
      file: this.file,
      clusterSize: this.clusterSize,
      alloc: async (bytes: number) => {
        const n = Math.max(1, Math.ceil(bytes / this.clusterSize));
        const off = await this.checkWritable().allocClusters(n);
        this.noteAlloc(off, n * this.clusterSize);
        return off;
      },
      free: async (offset: number, length: number) => {
        await this.checkWritable().free(offset, length);
      },
      flushMetadata: () => this.flushMetadata(),
      writeExtension: (ext: BitmapsExt | undefined) => this.writeBitmapsExtension(ext),
    };
  }

  /**
   * Point the header at a new bitmap directory (or at none: the extension and the autoclear
   * bit go), in one write of the header cluster.
   */
  async writeBitmapsExtension(ext: BitmapsExt | undefined): Promise<void> {
    const h = this.header;
    this.assertStandardHeader();
    const bitmaps = ext === undefined ? [] : [{ type: EXT_BITMAPS, data: encodeBitmapsExt(ext) }];
    const exts = this.layoutExtensions(h.backingFormat, bitmaps);
    const autoclear = ext === undefined ? h.autoclear & ~AUTOCLEAR_BITMAPS : h.autoclear | AUTOCLEAR_BITMAPS;
    await this.writeHeaderCluster({ ...h, extensions: exts, autoclear });
    h.autoclear = autoclear;
  }

  /**
   * Rewrite the backing file name and format (rebase, amend) as QEMU's qcow2_update_header
   * lays the header cluster out: backing format, data file, crypto, the feature table (v3,
   * clusters above 4 KiB, measured on qemu-img 7.2), bitmaps, then the extensions QEMU does
   * not know, the end marker and the name. One write of the header cluster: a crash leaves
   * the old or the new reference. The caller holds the image's write lock.
   */
  async writeBacking(ref: FileRef | undefined): Promise<void> {
    const h = this.header;
    this.assertStandardHeader();
    await this.flushMetadata();
    const bitmaps = h.extensions.filter((e) => e.type === EXT_BITMAPS);
    const exts = this.layoutExtensions(ref?.format, bitmaps);
    const next: Qcow2Header = {
      ...h,
      extensions: exts,
      backingFile: ref?.filename,
      backingFormat: ref?.format,
    };
    if (ref !== undefined && Buffer.byteLength(ref.filename, 'latin1') > 1023) {
      throw new VdiskError('INVALID_ARGUMENT', 'Backing file name too long', { path: this.file.path });
    }
    await this.writeHeaderCluster(next);
    h.backingFile = next.backingFile;
    h.backingFormat = next.backingFormat;
    this.backing = ref === undefined ? undefined : { filename: ref.filename, format: ref.format };
  }

  /** Header fields past the standard v3 length would be lost by a rewrite: refuse. */
  private assertStandardHeader(): void {
    if (!this.standardHeader) {
      throw new VdiskError(
        'UNSUPPORTED',
        `qcow2 header of ${this.header.headerLength} bytes: rewriting unknown header fields is not supported`,
        { path: this.file.path },
      );
    }
  }

  /** One write of the header cluster holding `next`; the in-memory header takes its extensions. */
  private async writeHeaderCluster(next: Qcow2Header): Promise<void> {
    const bytes = encodeHeader(next);
    const cluster = new Uint8Array(this.clusterSize);
    cluster.set(bytes);
    await this.file.write(cluster, 0);
    this.modified = true;
    this.header.extensions = next.extensions;
    if (this.header.version === 3) this.header.headerLength = V3_HEADER_LENGTH;
  }

  /**
   * Clear the L1 entries from index `first` on (in memory, then on disk in one write) and
   * free the L2 tables they named (`discard`: those left unshared go back to the host).
   * Returns the freed tables' offsets.
   */
  async dropL2Tables(first: number, discard = false): Promise<number[]> {
    const rc = this.checkWritable();
    const freed: number[] = [];
    for (let i = first; i < this.l1Size; i++) {
      const off = this.l1Off[i]!;
      if (off === 0) continue;
      this.l1Off[i] = 0;
      this.l1Copied[i] = 0;
      this.l2Cache.drop(off);
      freed.push(off);
    }
    if (freed.length > 0) {
      await this.file.write(new Uint8Array((this.l1Size - first) * 8), this.l1TableOffset + first * 8);
      const runs = discard ? new DiscardRuns(this.clusterSize) : false;
      for (const off of freed) await rc.free(off, this.clusterSize, runs);
      await rc.flush();
      if (runs !== false) runs.punch(this.file);
      this.indexMetadata();
    }
    return freed;
  }

  /** Truncate the file after its last cluster still in use (refcount > 0). */
  async truncateUnused(rc: Refcounts): Promise<void> {
    const cs = this.clusterSize;
    const fileSize = await this.file.size();
    let last = Math.ceil(fileSize / cs) - 1;
    while (last > 0 && (await rc.get(last)) === 0) last--;
    if ((last + 1) * cs < fileSize) {
      await this.file.truncate((last + 1) * cs);
      this.fileEnd = (last + 1) * cs;
    }
  }

  async writeSize(size: number): Promise<void> {
    const b = new Uint8Array(8);
    setU64(new DataView(b.buffer), 0, size);
    await this.file.write(b, 24);
    this.header.size = size;
  }

  /** QEMU's qcow2_grow_l1_table with exact_size: new table, header, then free the old one. */
  async growL1(entries: number): Promise<void> {
    const rc = this.refcounts!;
    const bytes = entries * 8;
    await this.flushMetadata();
    const at = await rc.allocClusters(Math.ceil(bytes / this.clusterSize));
    await rc.flush();
    const raw = new Uint8Array(bytes);
    const v = new DataView(raw.buffer);
    for (let i = 0; i < this.l1Size; i++) {
      const off = this.l1Off[i]!;
      if (off === 0) continue;
      putEntry(v, i * 8, off, this.l1Copied[i] === 1 ? COPIED_HI : 0);
    }
    await this.file.write(raw, at);
    this.noteAlloc(at, bytes);
    const hb = new Uint8Array(12);
    const hv = new DataView(hb.buffer);
    hv.setUint32(0, entries);
    setU64(hv, 4, at);
    await this.file.write(hb, 36);
    const oldOff = this.l1TableOffset;
    const oldBytes = this.l1Size * 8;
    const off = new Float64Array(entries);
    off.set(this.l1Off);
    const copied = new Uint8Array(entries);
    copied.set(this.l1Copied);
    this.l1Off = off;
    this.l1Copied = copied;
    this.l1Size = entries;
    this.l1TableOffset = at;
    this.header.l1Size = entries;
    this.header.l1TableOffset = at;
    if (oldBytes > 0) await rc.free(oldOff, oldBytes);
    await rc.flush();
    this.indexMetadata();
  }

  // ---------------------------------------------------------------- compressed writes

  /** Metadata to disk in crash-safe order (no fsync). */
  async flushMetadata(): Promise<void> {
    if (this.refcounts === null) return;
    if (!this.lazy) await this.refcounts.flush();
    await this.l2Cache.flush();
    await this.settleFrees();
    await this.refcounts.flush();
  }

  /** Whether the header is v3 with the standard length (for rewrites). */
  get standardHeader(): boolean {
    return this.header.version === 2 || this.header.headerLength === V3_HEADER_LENGTH;
  }
}

/** Read and validate an L1 table. */
export async function readL1(
  file: HostFile,
  offset: number,
  size: number,
  clusterBits: number,
  fileSize: number,
): Promise<L1Table> {
  const raw = new Uint8Array(size * 8);
  if (size > 0) await file.read(raw, offset);
  const { off, copied } = decodeL1(raw, size);
  const cs = 2 ** clusterBits;
  for (let i = 0; i < size; i++) {
    const o = off[i]!;
    if (o !== 0 && (o % cs !== 0 || o + cs > fileSize)) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        o % cs !== 0
          ? `L2 table offset 0x${o.toString(16)} unaligned (L1 index: 0x${i.toString(16)})`
          : `L2 table at offset 0x${o.toString(16)} lies past the end of the file (L1 index: 0x${i.toString(16)})`,
        { path: file.path, offset: offset + i * 8 },
      );
    }
  }
  return { off, copied, tableOffset: offset };
}
