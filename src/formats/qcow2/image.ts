/**
 * Qcow2Image: one open qcow2 image behind the FormatImage contract: the I/O paths. Opening
 * is in open.ts, the metadata state (header, tables, caches, refcounts) in metadata.ts, the
 * entry bit layout in l2-entry.ts.
 *
 * Reads map guest ranges to runs (unallocated / zero / data / compressed) through the L1
 * table and a bounded LRU of L2 tables; unallocated runs come from the backing chain
 * through ctx.readBacking.
 *
 * Writes keep this order, so that a process killed at any instant leaves at worst leaked
 * clusters (qemu-img check exit 3):
 *   1. refcounts of new clusters are raised in the refcount cache;
 *   2. guest data goes to the new clusters;
 *   3. the L2 entries are changed in the L2 cache; before any L2 table is written, the
 *      refcount cache is flushed (TableCache.beforeWriteback);
 *   4. a new L2 table is written before the L1 entry points at it;
 *   5. freed clusters are decremented only after the L2 tables that dropped them are on
 *      disk (pendingFrees).
 * With lazy_refcounts the dirty bit goes to the header first and step 3's ordering is
 * relaxed, as in QEMU; opening a dirty image for writing rebuilds the refcounts.
 */
import { type Extent, isAllZero } from '../../core/device.js';
import type {
  AmendValues,
  CheckResult,
  DriverContext,
  FileRef,
  FormatImage,
  FormatSpecific,
  SnapshotInfo,
  WriteSource,
} from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { Mutex } from '../../core/lock.js';
import type { SectorCipher } from '../luks/crypto.js';
import type { BitmapInfo, PersistentBitmaps } from './bitmap-state.js';
import {
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  l1EntriesFor,
  MAX_L1_BYTES,
  type Qcow2Header,
} from './header.js';
import {
  ALL_SUBCLUSTERS,
  copiedEntry,
  encodeCompressed,
  entryOffset,
  isCompressed,
  isCopied,
  isZero,
} from './l2-entry.js';
import { type L1Table, type L2EntryView, Qcow2Metadata, readL1 } from './metadata.js';
import type { Refcounts } from './refcount.js';

// Loaded when an image needs them (encrypted images, compressed clusters): they pull in
// node:crypto, zlib and worker_threads, ~15 ms of start-up that most commands never use.
type CryptoModule = typeof import('./crypto.js');
type CompressModule = typeof import('./compress.js');
let compressModule: Promise<CompressModule> | null = null;
const loadCompress = (): Promise<CompressModule> => (compressModule ??= import('./compress.js'));
// Kept once loaded, as compress.js: an import() resolves its specifier again on every call (a
// round trip to the loader thread under tsx), which the fuzzer paid on every input it checked.
let cryptoModule: Promise<CryptoModule> | null = null;
export const loadCrypto = (): Promise<CryptoModule> => (cryptoModule ??= import('./crypto.js'));
type CheckModule = typeof import('./check.js');
let checkModule: Promise<CheckModule> | null = null;
export const loadCheck = (): Promise<CheckModule> => (checkModule ??= import('./check.js'));

/**
 * New clusters in untouched space get their host blocks this far ahead (prepareInTable); what
 * no write reached is given back at close. 16 MiB: the Debian-like raw→qcow2 took 0.33 s with
 * 1 MiB, 0.31 s with 4 and 0.29 s with 16 or 64 (qemu-img 0.28 s, 11 interleaved rounds):
 * fewer fallocate calls, each of which waits on the file's lock behind the writes in flight,
 * on the main thread, and the data written into blocks already allocated.
 */
const RESERVE_AHEAD = 16 << 20;

export const Kind = { Unalloc: 0, Zero: 1, ZeroAlloc: 2, Data: 3, Compressed: 4, UnallocAlloc: 5 } as const;
export type Kind = (typeof Kind)[keyof typeof Kind];

export interface Run {
  kind: Kind;
  length: number;
  /** Host offset of the run's first byte (Data, ZeroAlloc). */
  host: number;
  /** Compressed: host offset and byte length of the compressed data of the first cluster. */
  cOffset: number;
  cSize: number;
}

interface Piece {
  host: number;
  bufs: Uint8Array[];
  length: number;
  /** Where the piece's bytes lie in the write's source file (WriteSource), or null. */
  src: number | null;
}

interface Prepared {
  l2off: number;
  pieces: Piece[];
  updates: L2Update[];
  frees: Array<[number, number]>;
  /** The write's source (WriteSource): pieces with `src` may be copied from it by the host. */
  from?: WriteSource | undefined;
  /** Clusters this write takes in place beside others (Claim.shared). */
  shares: number[];
  /** Clusters with a pending allocation (Qcow2Image.pending) that the updates settle. */
  pending: number[];
}

/** One cluster's part of a write and its L2 entry (prepareInTable). */
interface ClusterPart extends L2EntryView {
  hh: boolean;
  copied: boolean;
  cs: number;
  /** Guest offset of the cluster, and the part's start and end within it. */
  clusterStart: number;
  a: number;
  b: number;
  /** The part's data, at byte `pos` of the write; `ci` its entry in the table. */
  chunk: Uint8Array;
  pos: number;
  ci: number;
}

/** What prepareInTable gathers for one L2 table: data pieces, L2 updates, clusters to free. */
class TablePlan {
  readonly pieces: Piece[] = [];
  readonly updates: L2Update[] = [];
  readonly frees: Array<[number, number]> = [];
  readonly shares: number[] = [];
  readonly pending: number[] = [];

  constructor(
    readonly l2off: number,
    readonly v: DataView,
    readonly from: WriteSource | undefined,
  ) {}

  /**
   * Data for the host at `host`. src: the piece is the write's data[pos, …) as it is, which
   * lies in the source at from.offset + pos (null: bytes put together here, which only the
   * buffer holds).
   */
  addPiece(host: number, b: Uint8Array, src: number | null): void {
    const last = this.pieces[this.pieces.length - 1];
    if (
      last !== undefined &&
      last.host + last.length === host &&
      last.bufs.length < 512 &&
      (src === null ? last.src === null : last.src !== null && last.src + last.length === src)
    ) {
      last.bufs.push(b);
      last.length += b.length;
    } else {
      this.pieces.push({ host, bufs: [b], length: b.length, src });
    }
  }

  srcAt(pos: number): number | null {
    return this.from === undefined ? null : this.from.offset + pos;
  }

  /** The write's bytes, before a piece is put together from them. */
  async bytes(): Promise<void> {
    if (this.from !== undefined) await this.from.fill();
  }

  prepared(): Prepared {
    return {
      l2off: this.l2off,
      pieces: this.pieces,
      updates: this.updates,
      frees: this.frees,
      from: this.from,
      shares: this.shares,
      pending: this.pending,
    };
  }
}

/**
 * An operation's hold on the clusters of [start, end) (whole clusters) while it works on the
 * bytes [from, to). A write that has no byte in common with another may work beside it in the
 * clusters the other has put in `shared` once prepared: those it writes in place, at a host
 * cluster that stays where it is (an allocated cluster with refcount 1, or the fresh zeroed
 * cluster of a pending allocation). convert's requests start and end at 4 KiB boundaries, so
 * one request's last cluster is often the next one's first: this lets the next request's data
 * go to the host while the last one's is still in flight, where QEMU's convert waits for it.
 */
interface Claim {
  start: number;
  end: number;
  from: number;
  to: number;
  write: boolean;
  /** The clusters a write takes in place (null until it is prepared). */
  shared: Set<number> | null;
  prepared: Promise<void>;
  done: Promise<void>;
}

interface ClaimHold {
  /** A write's clusters taken in place, once its plan is made (Claim.shared). */
  share(clusters: number[]): void;
  release(): void;
}

/** Whether `shared` holds every cluster of [start, end). */
function sharesAll(shared: Set<number>, start: number, end: number, cs: number): boolean {
  for (let g = start; g < end; g += cs) if (!shared.has(g)) return false;
  return true;
}

/** An L2 update naming the (refcount 1) cluster `host`. */
function copiedUpdate(index: number, host: number, bhi: number, blo: number): L2Update {
  const [hi, lo] = copiedEntry(host);
  return { index, hi, lo, bhi, blo };
}

interface L2Update {
  index: number;
  hi: number;
  lo: number;
  /** Extended L2 bitmap (zero bits hi, alloc bits lo). */
  bhi: number;
  blo: number;
}

export class Qcow2Image implements FormatImage {
  readonly format = 'qcow2';
  readonly alignment = 512;
  get encrypted(): boolean {
    return this.header.cryptMethod !== 0;
  }
  readonly dataFile: FileRef | undefined;
  /** The metadata state (metadata.ts): header, tables, caches, refcounts, snapshots, bitmaps. */
  readonly meta: Qcow2Metadata;
  ctx: DriverContext = {
    readBacking: async (buf) => {
      buf.fill(0);
    },
    hasBacking: false,
  };
  get backing(): FileRef | undefined {
    return this.meta.backing;
  }
  get dirtyBitmaps(): PersistentBitmaps | undefined {
    return this.meta.persistentBitmaps;
  }
  get bitmaps(): BitmapInfo[] {
    return this.meta.persistentBitmaps?.info() ?? [];
  }
  private readonly writeLock = new Mutex();
  private readonly claims = new Set<Claim>();
  /**
   * Pending allocations: guest clusters whose fresh host cluster a write in flight took (zeroed
   * by the host, the write's bytes only), before its L2 update. A write beside it in the same
   * cluster (Claim.shared) writes its bytes into that host cluster instead of waiting; the
   * first L2 update of the cluster ends the entry.
   */
  private readonly pending = new Map<number, number>();
  /** Opens the external data file on first use (read-only opens). */
  dataOpener: (() => Promise<HostFile>) | null = null;
  private dataOpening: Promise<HostFile> | null = null;
  private metadataPrealloc: boolean | null = null;
  private lastCompressed: { key: number; data: Uint8Array } | null = null;
  private closed = false;
  /** The crypto module, loaded when the header names an encryption method (open.ts). */
  crypto: CryptoModule | undefined;
  /** crypt_method 1: the legacy AES cipher (read only; IV from the guest offset). */
  aes: SectorCipher | undefined;

  constructor(
    readonly file: HostFile,
    /** The data file when open (the image file itself without an external data file). */
    private dataHostFile: HostFile | null,
    readonly header: Qcow2Header,
    readonly readOnly: boolean,
    l1: L1Table,
    fileSize: number,
    /** A snapshot view shares the file and must not close it. */
    private readonly ownsFiles = true,
  ) {
    this.meta = new Qcow2Metadata(file, header, readOnly, l1, fileSize);
    this.dataFile = header.dataFile !== undefined ? { filename: header.dataFile } : undefined;
  }

  get clusterSize(): number {
    return this.meta.clusterSize;
  }

  get size(): number {
    return this.meta.size;
  }

  get version(): 2 | 3 {
    return this.meta.version;
  }

  get dirty(): boolean {
    return this.meta.dirty;
  }

  attach(ctx: DriverContext): void {
    this.ctx = ctx;
  }

  /** The file holding guest data (the external data file, opened on first use). */
  async data(): Promise<HostFile> {
    if (this.dataHostFile !== null) return this.dataHostFile;
    if (this.dataOpener === null) throw this.meta.corrupt('The external data file is not available');
    this.dataOpening ??= this.dataOpener();
    this.dataHostFile = await this.dataOpening;
    return this.dataHostFile;
  }

  /** Name of the file holding guest data (for block status). */
  private get dataPath(): string {
    return this.dataHostFile?.path ?? this.header.dataFile ?? this.file.path;
  }

  // ---------------------------------------------------------------- mapping

  /** The uniform run of guest space starting at `offset`, at most maxLen bytes (within one L2 table). */
  async mapRun(offset: number, maxLen: number): Promise<Run> {
    const cs = this.meta.clusterSize;
    const span = this.meta.l2Entries * cs;
    const l1i = Math.floor(offset / span);
    const spanEnd = Math.min((l1i + 1) * span, offset + maxLen);
    const l2off = l1i < this.meta.l1Size ? this.meta.l1Off[l1i]! : 0;
    const run: Run = { kind: Kind.Unalloc, length: spanEnd - offset, host: 0, cOffset: 0, cSize: 0 };
    if (l2off === 0) return this.extendUnallocated(run, offset, maxLen, l1i);
    if (this.meta.l2Cache.peek(l2off) === undefined) this.readAhead(l1i, offset + maxLen);
    const table = await this.meta.l2Cache.get(l2off);
    const v = new DataView(table.buffer, table.byteOffset, table.length);
    const unit = this.meta.subclusterSize;
    let pos = offset;
    let started = false;
    // Entries that are all zero (unallocated, no flags) in a row, the common case of a sparse
    // image (frag2: 16.7 M entries, 200,000 in use), skipped two words at a time.
    if (!this.meta.extL2 && table.byteOffset % 4 === 0) {
      const u = new Uint32Array(table.buffer, table.byteOffset, table.length >>> 2);
      const base = l1i * span;
      let ci = Math.floor((offset - base) / cs);
      const last = Math.ceil((spanEnd - base) / cs);
      if (u[2 * ci] === 0 && u[2 * ci + 1] === 0) {
        do ci++;
        while (ci < last && u[2 * ci] === 0 && u[2 * ci + 1] === 0);
        pos = Math.min(spanEnd, base + ci * cs);
        run.length = pos - offset;
        started = true;
      }
    }
    while (pos < spanEnd) {
      const ci = Math.floor((pos % span) / cs);
      const inCluster = pos % cs;
      const unitEnd = Math.min(pos - (pos % unit) + unit, spanEnd);
      const e = ci * this.meta.entryBytes;
      const hi = v.getUint32(e);
      const lo = v.getUint32(e + 4);
      let kind: Kind;
      let host = 0;
      let cOffset = 0;
      let cSize = 0;
      if (isCompressed(hi)) {
        kind = Kind.Compressed;
        [cOffset, cSize] = this.meta.compressedRange(hi, lo, l2off, ci);
      } else {
        const h = entryOffset(hi, lo);
        const hh = this.meta.hasHost(hi, h);
        if (this.meta.extL2) {
          const sc = Math.floor(inCluster / unit);
          const zbit = (v.getUint32(e + 8) >>> sc) & 1;
          const abit = (v.getUint32(e + 12) >>> sc) & 1;
          if (abit && zbit) throw this.meta.corrupt(`Invalid subcluster bitmap in L2 entry ${ci}`, l2off + e);
          if (hh) {
            kind = zbit ? Kind.ZeroAlloc : abit ? Kind.Data : Kind.UnallocAlloc;
          } else {
            if (abit)
              throw this.meta.corrupt(
                `Allocated subcluster without a host cluster (L2 entry ${ci})`,
                l2off + e,
              );
            kind = zbit ? Kind.Zero : Kind.Unalloc;
          }
        } else if (isZero(lo)) {
          kind = hh ? Kind.ZeroAlloc : Kind.Zero;
        } else {
          kind = hh ? Kind.Data : Kind.Unalloc;
        }
        if (hh) {
          this.meta.checkDataCluster(h, l2off, ci);
          host = h + inCluster;
        }
        if (kind === Kind.Unalloc) host = 0;
      }
      const len = unitEnd - pos;
      if (!started) {
        run.kind = kind;
        run.host = host;
        run.cOffset = cOffset;
        run.cSize = cSize;
        run.length = len;
        started = true;
      } else if (
        kind === run.kind &&
        ((kind !== Kind.Data && kind !== Kind.ZeroAlloc && kind !== Kind.UnallocAlloc) ||
          run.host + run.length === host)
      ) {
        run.length += len;
      } else {
        break;
      }
      pos = unitEnd;
    }
    if (run.kind === Kind.Unalloc && pos === (l1i + 1) * span)
      return this.extendUnallocated(run, offset, maxLen, l1i);
    return run;
  }

  /**
   * On an L2 cache miss, start loading the next few tables of the range too: walks over
   * many small tables (map, convert of a sparse image) then keep several reads in flight.
   */
  private readAhead(l1i: number, end: number): void {
    if (this.file.sequential) return;
    const span = this.meta.l2Entries * this.meta.clusterSize;
    let started = 0;
    for (let i = l1i + 1; i < this.meta.l1Size && i * span < end && started < 16; i++) {
      const off = this.meta.l1Off[i]!;
      if (off === 0 || this.meta.l2Cache.peek(off) !== undefined) continue;
      this.meta.l2Cache.prefetch(off);
      started++;
    }
  }

  /** Grow an unallocated run that reached the end of L1 entry `l1i` over the L1 entries without a table. */
  private extendUnallocated(run: Run, offset: number, maxLen: number, l1i: number): Run {
    const span = this.meta.l2Entries * this.meta.clusterSize;
    const end = offset + maxLen;
    let i = l1i + 1;
    while (i * span < end && (i >= this.meta.l1Size || this.meta.l1Off[i] === 0)) i++;
    run.length = Math.min(end, i * span) - offset;
    return run;
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    // Object literals, not spreads of a common base, and no await on the cached prealloc
    // answer: map of an image with 200,000 extents calls this 400,000 times.
    const r = await this.mapRun(offset, length);
    const len = r.length;
    switch (r.kind) {
      case Kind.Unalloc:
        return { offset, length: len, allocated: false, zero: false, data: false };
      case Kind.UnallocAlloc:
        return {
          offset,
          length: len,
          allocated: false,
          zero: false,
          data: false,
          hostOffset: r.host,
          file: this.dataPath,
        };
      case Kind.Zero:
        return { offset, length: len, allocated: true, zero: true, data: false };
      case Kind.ZeroAlloc:
        // An encrypted image reports no host offset (qcow2_co_block_status: `&& !s->crypto`).
        if (this.meta.luks !== undefined)
          return { offset, length: len, allocated: true, zero: true, data: false };
        return {
          offset,
          length: len,
          allocated: true,
          zero: true,
          data: false,
          hostOffset: r.host,
          file: this.dataPath,
        };
      case Kind.Compressed:
        return { offset, length: len, allocated: true, zero: false, data: true, compressed: true };
      default: {
        if (this.meta.luks !== undefined)
          return { offset, length: len, allocated: true, zero: false, data: true };
        // QEMU asks the file layer whether preallocated (or raw external) data reads as zeros.
        let zero = false;
        let dataLen = len;
        if (this.metadataPrealloc ?? (await this.hasMetadataPrealloc())) {
          const [first] = await (await this.data()).extents(r.host, len);
          if (first === undefined) zero = true;
          else {
            zero = !first.data;
            dataLen = Math.max(512, first.length - (first.length % 512));
            dataLen = Math.min(dataLen, len);
          }
        }
        return {
          offset,
          length: dataLen,
          allocated: true,
          zero,
          data: true,
          hostOffset: r.host,
          file: this.dataPath,
        };
      }
    }
  }

  /**
   * Uncompressed data clusters of an unencrypted image hold the guest's bytes as they are
   * (FormatImage.directFile): in the image file, or in the external data file once opened.
   */
  directFile(e: Extent): HostFile | undefined {
    if (this.encrypted || e.compressed === true || !e.data || e.zero || e.hostOffset === undefined)
      return undefined;
    return this.meta.hasDataFile ? (this.dataHostFile ?? undefined) : this.file;
  }

  /** QEMU's qcow2_detect_metadata_preallocation: more clusters in use than the file allocates. */
  private async hasMetadataPrealloc(): Promise<boolean> {
    if (this.metadataPrealloc !== null) return this.metadataPrealloc;
    const rc = await this.meta.loadRefcounts().catch(() => null);
    if (rc === null) {
      this.metadataPrealloc = false;
      return false;
    }
    const fileLength = await this.file.size();
    // A file whose allocation is unknown (an NBD export, a URL) is not preallocated (qemu: an
    // error of bdrv_get_allocated_file_size makes metadata_preallocation false).
    const allocated = await this.file.allocatedSize().catch(() => null);
    if (allocated === null) {
      this.metadataPrealloc = false;
      return false;
    }
    const realClusters = Math.floor(allocated / this.meta.clusterSize);
    const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
    const end = Math.ceil(fileLength / this.meta.clusterSize);
    this.metadataPrealloc = (await rc.countInUse(end, threshold)) >= threshold;
    return this.metadataPrealloc;
  }

  // ---------------------------------------------------------------- read

  async read(buf: Uint8Array, offset: number): Promise<void> {
    let pos = 0;
    const pending: Promise<void>[] = [];
    while (pos < buf.length) {
      const r = await this.mapRun(offset + pos, buf.length - pos);
      let len = r.length;
      const sub = () => buf.subarray(pos, pos + len);
      switch (r.kind) {
        case Kind.Unalloc:
        case Kind.UnallocAlloc:
          pending.push(this.ctx.readBacking(sub(), offset + pos));
          break;
        case Kind.Zero:
        case Kind.ZeroAlloc:
          sub().fill(0);
          break;
        case Kind.Data:
          {
            const target = sub();
            const file = this.dataHostFile ?? (await this.data());
            const luks = this.meta.luks;
            const aes = this.aes;
            const host = r.host;
            const guest = offset + pos;
            pending.push(
              luks !== undefined
                ? file.read(target, host).then(() => this.crypto!.decryptAt(luks.vol, target, host))
                : aes !== undefined
                  ? file.read(target, host).then(() => aes.run(false, target, target, guest / 512))
                  : file.read(target, host),
            );
          }
          break;
        case Kind.Compressed: {
          const g = offset + pos;
          const inCluster = g % this.meta.clusterSize;
          len = Math.min(len, this.meta.clusterSize - inCluster);
          const data = await this.readCompressed(r.cOffset, r.cSize);
          buf.set(data.subarray(inCluster, inCluster + len), pos);
          break;
        }
      }
      if (pending.length >= 8) await Promise.all(pending.splice(0));
      pos += len;
    }
    await Promise.all(pending);
  }

  /** Decompress one cluster (the last one is kept: small sequential reads hit it again). */
  async readCompressed(cOffset: number, cSize: number): Promise<Uint8Array> {
    if (this.lastCompressed !== null && this.lastCompressed.key === cOffset) return this.lastCompressed.data;
    const src = new Uint8Array(Math.min(cSize, 2 * this.meta.clusterSize + 512));
    await this.file.read(src, cOffset);
    const out = new Uint8Array(this.meta.clusterSize);
    await (await loadCompress()).decompressCluster(
      this.meta.compressionType,
      src,
      out,
      this.file.path,
      cOffset,
    );
    this.lastCompressed = { key: cOffset, data: out };
    return out;
  }

  // ---------------------------------------------------------------- write

  /** First modification: with lazy refcounts the dirty bit reaches the header before anything else. */
  private async beginWrite(): Promise<Refcounts> {
    const rc = this.meta.checkWritable();
    if (!this.meta.modified) {
      this.meta.modified = true;
      if (this.meta.lazy && !this.meta.dirty)
        await this.meta.setIncompatible(this.header.incompatible | INCOMPAT_DIRTY);
      await this.meta.persistentBitmaps?.beginWrite();
    }
    return rc;
  }

  /**
   * Several writes may be in flight: allocation and the L2 update run under the metadata
   * lock, the data pwrites in between run without it. Writes to overlapping clusters wait
   * for each other (claim), so that two writers never allocate the same guest cluster.
   */
  async write(buf: Uint8Array, offset: number): Promise<void> {
    await (await this.prepareWrite(buf, offset))();
  }

  /**
   * write() in two steps (convert keeps qemu-img's layout with several writes in flight):
   * the claim and the allocation now, in call order; the data and the L2 update when the
   * returned function runs.
   */
  readonly takesWriteSource = true;

  async prepareWrite(buf: Uint8Array, offset: number, from?: WriteSource): Promise<() => Promise<void>> {
    const hold = await this.claim(offset, buf.length, true);
    const prepared: Prepared[] = [];
    // Encrypted clusters are written from the buffer (encryptAt reads it).
    if (from !== undefined && this.meta.luks !== undefined) {
      await from.fill();
      from = undefined;
    }
    try {
      const release = await this.writeLock.lock();
      try {
        await this.beginWrite();
        this.meta.persistentBitmaps?.noteWrite(offset, buf.length);
        await this.forEachTableChunk(buf, offset, async (l1i, chunk, g) => {
          const at = from === undefined ? undefined : { ...from, offset: from.offset + (g - offset) };
          prepared.push(await this.prepareInTable(l1i, chunk, g, at));
        });
      } finally {
        release();
      }
    } catch (err) {
      hold.release();
      throw err;
    }
    hold.share(prepared.flatMap((p) => p.shares));
    return async () => {
      try {
        await Promise.all(prepared.map((p) => this.writePieces(p)));
        const release = await this.writeLock.lock();
        try {
          for (const p of prepared) await this.applyPrepared(p);
          await this.meta.settleFrees();
        } finally {
          release();
        }
      } finally {
        hold.release();
      }
    };
  }

  /**
   * Wait until no other operation works on the clusters of [offset, offset+length), then own
   * them. A write (`write`) waits only for what it cannot do beside (Claim).
   */
  private async claim(offset: number, length: number, write = false): Promise<ClaimHold> {
    const cs = this.meta.clusterSize;
    const start = Math.floor(offset / cs) * cs;
    const end = Math.ceil((offset + length) / cs) * cs;
    const to = offset + length;
    for (;;) {
      let wait: Promise<void> | undefined;
      for (const c of this.claims) {
        if (c.end <= start || end <= c.start) continue;
        if (write && c.write && (c.to <= offset || to <= c.from)) {
          if (c.shared === null) {
            wait = c.prepared;
            break;
          }
          if (sharesAll(c.shared, Math.max(start, c.start), Math.min(end, c.end), cs)) continue;
        }
        wait = c.done;
        break;
      }
      if (wait === undefined) break;
      await wait;
    }
    // A pending allocation that no operation in flight shares any more is one whose writes
    // failed before an L2 update: dropped (its cluster leaks, as a failed allocation does).
    if (this.pending.size > 0) {
      for (let g = start; g < end; g += cs) {
        if (!this.pending.has(g)) continue;
        let held = false;
        for (const c of this.claims) if (c.start <= g && g < c.end) held = true;
        if (!held) this.pending.delete(g);
      }
    }
    let resolveDone!: () => void;
    let resolvePrepared!: () => void;
    const done = new Promise<void>((r) => {
      resolveDone = r;
    });
    const prepared = new Promise<void>((r) => {
      resolvePrepared = r;
    });
    const c: Claim = { start, end, from: offset, to, write, shared: null, prepared, done };
    this.claims.add(c);
    return {
      share: (clusters) => {
        c.shared = new Set(clusters);
        resolvePrepared();
      },
      release: () => {
        this.claims.delete(c);
        resolvePrepared();
        resolveDone();
      },
    };
  }

  private async forEachTableChunk(
    buf: Uint8Array,
    offset: number,
    fn: (l1i: number, chunk: Uint8Array, g: number) => Promise<void>,
  ): Promise<void> {
    const span = this.meta.l2Entries * this.meta.clusterSize;
    let pos = 0;
    while (pos < buf.length) {
      const g = offset + pos;
      const l1i = Math.floor(g / span);
      const n = Math.min(buf.length - pos, (l1i + 1) * span - g);
      await fn(l1i, buf.subarray(pos, pos + n), g);
      pos += n;
    }
  }

  /** A whole write with the lock held throughout (zero fallbacks use it). */
  private async writeLocked(buf: Uint8Array, offset: number): Promise<void> {
    await this.forEachTableChunk(buf, offset, async (l1i, chunk, g) => {
      const p = await this.prepareInTable(l1i, chunk, g);
      await this.writePieces(p);
      await this.applyPrepared(p);
    });
  }

  /** Data first (copied by the host from the write's source where it can)... */
  private async writePieces(p: Prepared): Promise<void> {
    if (p.pieces.length === 0) return;
    const target = await this.data();
    const luks = this.meta.luks;
    const from = p.from;
    await Promise.all(
      p.pieces.map(async (x) => {
        if (from !== undefined && x.src !== null) {
          if (await target.copyFrom(from.file, x.src, x.host, x.length, from.how)) return;
          await from.fill();
        }
        await target.writev(
          luks === undefined ? x.bufs : this.crypto!.encryptAt(luks.vol, x.bufs, x.host),
          x.host,
        );
      }),
    );
  }

  /** ...then the L2 entries that point at it; the clusters they dropped are freed later. */
  private async applyPrepared(p: Prepared): Promise<void> {
    if (p.updates.length > 0) {
      const table = await this.meta.l2Cache.get(p.l2off);
      const v = new DataView(table.buffer, table.byteOffset, table.length);
      this.lastCompressed = null;
      for (const u of p.updates) this.setEntry(v, u);
      this.meta.l2Cache.markDirty(p.l2off, table);
    }
    for (const g of p.pending) this.pending.delete(g);
    this.meta.pendingFrees.push(...p.frees);
  }

  /** Current guest content of one cluster, as this layer (and the chain below) reads it. */
  private async readCluster(clusterStart: number): Promise<Uint8Array> {
    const tmp = new Uint8Array(this.meta.clusterSize);
    await this.read(tmp, clusterStart);
    return tmp;
  }

  /**
   * Plan a write of guest data that lies within one L2 table: allocate what is needed (the
   * refcounts go up now), gather the data pieces (with copy-on-write content around partial
   * (sub)clusters) and the L2 updates to make once the data is on disk.
   */
  private async prepareInTable(
    l1i: number,
    data: Uint8Array,
    offset: number,
    from?: WriteSource,
  ): Promise<Prepared> {
    const rc = this.meta.refcounts!;
    const cs = this.meta.clusterSize;
    const [l2off, table] = await this.meta.l2ForWrite(l1i);
    const plan = new TablePlan(l2off, new DataView(table.buffer, table.byteOffset, table.length), from);
    const span = this.meta.l2Entries * cs;
    const wholeRuns = !this.meta.extL2 && !this.meta.hasDataFile;
    let pos = 0;
    while (pos < data.length) {
      const g = offset + pos;
      const ci = Math.floor((g % span) / cs);
      // Whole unallocated clusters in a row (a new image's, convert's) get their host clusters
      // in one allocation, as QEMU's handle_alloc does (one refcount update instead of one per
      // cluster), and one piece: what prepareCluster would do cluster by cluster.
      if (wholeRuns && g % cs === 0) {
        const k = this.unallocatedRun(plan.v, ci, data.length - pos);
        if (k > 0) {
          const fresh = await rc.allocClusters(k);
          this.meta.noteAlloc(fresh, k * cs);
          this.meta.assertNotMetadata(fresh, k * cs);
          plan.addPiece(fresh, data.subarray(pos, pos + k * cs), plan.srcAt(pos));
          for (let j = 0; j < k; j++) plan.updates.push(copiedUpdate(ci + j, fresh + j * cs, 0, 0));
          pos += k * cs;
          continue;
        }
      }
      // Kept out of this loop, so that what runs for every cluster of a large write stays small.
      const part = this.clusterPart(plan, data, pos, g, ci);
      pos += this.meta.extL2
        ? await this.prepareSubclusters(plan, part)
        : await this.prepareCluster(plan, part);
    }
    return plan.prepared();
  }

  /** The cluster that byte `pos` of a write (guest offset `g`, L2 entry `ci`) falls in, and its entry. */
  private clusterPart(plan: TablePlan, data: Uint8Array, pos: number, g: number, ci: number): ClusterPart {
    const cs = this.meta.clusterSize;
    const clusterStart = g - (g % cs);
    const a = g - clusterStart;
    const b = Math.min(cs, a + data.length - pos);
    const x = this.meta.entryAt(plan.v, ci);
    if (x.hasHost) this.meta.checkDataCluster(x.host, plan.l2off, ci);
    // Every property written out: an object spread followed by more properties makes V8
    // (Node 20) build a fresh map per call, ~10 µs and kilobytes of garbage each (measured:
    // frag2→qcow2 allocated ~45 KB of heap per 4 KiB write).
    return {
      e: x.e,
      hi: x.hi,
      lo: x.lo,
      compressed: x.compressed,
      host: x.host,
      hasHost: x.hasHost,
      hh: x.hasHost,
      copied: isCopied(x.hi),
      cs,
      clusterStart,
      a,
      b,
      chunk: data.subarray(pos, pos + (b - a)),
      pos,
      ci,
    };
  }

  /** One cluster's part of a write (prepareInTable), with extended L2 entries: the bytes it took. */
  private async prepareSubclusters(plan: TablePlan, part: ClusterPart): Promise<number> {
    const { e, hi, lo, compressed, host, hh, copied, cs, clusterStart, a, b, chunk, pos, ci } = part;
    const { v, l2off } = plan;
    const rc = this.meta.refcounts!;
    const dataFile = this.meta.hasDataFile;
    const zbits = v.getUint32(e + 8);
    const abits = v.getUint32(e + 12);
    const sc = this.meta.subclusterSize;
    const sa = Math.floor(a / sc);
    const sb = Math.ceil(b / sc);
    const ea = sa * sc;
    const eb = sb * sc;
    let mask = 0;
    for (let i = sa; i < sb; i++) mask |= 1 << i;
    mask >>>= 0;
    // The written range widened to whole subclusters, with the current content around it.
    let piece = chunk;
    let pieceSrc = plan.srcAt(pos);
    if (ea !== a || eb !== b) {
      const cur = await this.readCluster(clusterStart);
      piece = cur.slice(ea, eb);
      await plan.bytes();
      piece.set(chunk, a - ea);
      pieceSrc = null;
    }
    if (hh && (copied || dataFile)) {
      this.meta.assertNotMetadata(host + ea, eb - ea);
      plan.addPiece(host + ea, piece, pieceSrc);
      plan.updates.push({
        index: ci,
        hi,
        lo,
        bhi: (zbits & ~mask) >>> 0,
        blo: (abits | mask) >>> 0,
      });
    } else {
      const fresh = dataFile ? clusterStart : await rc.allocClusters(1);
      this.meta.noteAlloc(fresh, cs);
      if (hh || compressed) {
        // The whole old cluster moves (shared or compressed): copy it with the new data.
        const cur = await this.readCluster(clusterStart);
        await plan.bytes();
        cur.set(chunk, a);
        plan.addPiece(fresh, cur, null);
        plan.updates.push(
          copiedUpdate(
            ci,
            fresh,
            compressed ? 0 : (zbits & ~mask) >>> 0,
            compressed ? ALL_SUBCLUSTERS : (abits | mask) >>> 0,
          ),
        );
        if (compressed) plan.frees.push(this.meta.compressedFreeRange(hi, lo, l2off, ci));
        else if (!dataFile) plan.frees.push([host, cs]);
      } else {
        plan.addPiece(fresh + ea, piece, pieceSrc);
        plan.updates.push(copiedUpdate(ci, fresh, (zbits & ~mask) >>> 0, (abits | mask) >>> 0));
      }
    }
    return b - a;
  }

  /** One cluster's part of a write (prepareInTable): the bytes it took. */
  private async prepareCluster(plan: TablePlan, part: ClusterPart): Promise<number> {
    const { hi, lo, compressed, host, hh, copied, cs, clusterStart, a, b, chunk, pos, ci } = part;
    const { l2off } = plan;
    const rc = this.meta.refcounts!;
    const dataFile = this.meta.hasDataFile;
    const zeroFlag = isZero(lo);
    // Clusters taken in place may be written beside other writes (Claim): not with a data
    // file or encryption, whose writes this does not cover.
    const inPlace = !dataFile && this.meta.luks === undefined;
    const pending = hh || compressed || !inPlace ? undefined : this.pending.get(clusterStart);
    if (hh && (copied || dataFile) && !zeroFlag) {
      this.meta.assertNotMetadata(host + a, b - a);
      plan.addPiece(host + a, chunk, plan.srcAt(pos));
      if (copied && inPlace) plan.shares.push(clusterStart);
    } else if (pending !== undefined) {
      // The fresh cluster an earlier write in flight took for this one (Qcow2Image.pending).
      plan.addPiece(pending + a, chunk, plan.srcAt(pos));
      plan.updates.push(copiedUpdate(ci, pending, 0, 0));
      plan.shares.push(clusterStart);
      plan.pending.push(clusterStart);
    } else {
      // The cluster's content around a partial write (null: zeros, with nothing below).
      // QEMU's handle_alloc_space: a new cluster whose copy-on-write areas read as zeros
      // is zeroed by the host (fallocate ZERO_RANGE) and only the data is written, instead
      // of a whole cluster of mostly zeros (frag2→qcow2: 4 KiB writes into 64 KiB clusters).
      // A cluster in untouched space (past the file's end, never written: a new image's
      // clusters) already reads as zeros; it gets its host blocks as QEMU's zeroing gives
      // them (the same map and disk size), but RESERVE_AHEAD at a time (HostFile.reserveZeroed).
      const partial = a !== 0 || b !== cs;
      const cur =
        !partial || (!hh && !compressed && !this.ctx.hasBacking)
          ? null
          : await this.readCluster(clusterStart);
      const zeroCow =
        partial &&
        !hh &&
        !compressed &&
        !dataFile &&
        this.meta.luks === undefined &&
        (cur === null || (isAllZero(cur.subarray(0, a)) && isAllZero(cur.subarray(b))));
      let fresh: number;
      if (dataFile) fresh = clusterStart;
      else if (hh && copied)
        fresh = host; // a zero cluster that keeps its allocation
      else fresh = await rc.allocClusters(1);
      const zeroed = zeroCow && this.file.reserveZeroed(fresh, cs, Math.max(cs, RESERVE_AHEAD));
      this.meta.noteAlloc(fresh, cs);
      if (fresh !== host) this.meta.assertNotMetadata(fresh, cs);
      if (zeroCow && (zeroed || this.file.zeroRange(fresh, cs))) {
        plan.addPiece(fresh + a, chunk, plan.srcAt(pos));
        if (fresh !== host) {
          this.pending.set(clusterStart, fresh);
          plan.shares.push(clusterStart);
          plan.pending.push(clusterStart);
        }
      } else if (!partial) plan.addPiece(fresh, chunk, plan.srcAt(pos));
      else {
        const whole = cur ?? new Uint8Array(cs);
        await plan.bytes();
        whole.set(chunk, a);
        plan.addPiece(fresh, whole, null);
      }
      plan.updates.push(copiedUpdate(ci, fresh, 0, 0));
      if (compressed) plan.frees.push(this.meta.compressedFreeRange(hi, lo, l2off, ci));
      else if (hh && fresh !== host && !dataFile) plan.frees.push([host, cs]);
    }
    return b - a;
  }

  /**
   * How many whole clusters from entry `ci` on (at most `bytes` of them, within the table) have
   * no host cluster and are not compressed: what a write allocates fresh, in one go.
   */
  private unallocatedRun(v: DataView, ci: number, bytes: number): number {
    const cs = this.meta.clusterSize;
    let k = 0;
    while (ci + k < this.meta.l2Entries && (k + 1) * cs <= bytes) {
      const x = this.meta.entryAt(v, ci + k);
      if (x.compressed || x.hasHost) break;
      k++;
    }
    return k;
  }

  private setEntry(v: DataView, u: L2Update): void {
    const e = u.index * this.meta.entryBytes;
    v.setUint32(e, u.hi >>> 0);
    v.setUint32(e + 4, u.lo >>> 0);
    if (this.meta.extL2) {
      v.setUint32(e + 8, u.bhi >>> 0);
      v.setUint32(e + 12, u.blo >>> 0);
    }
  }

  async writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    const hold = await this.claim(offset, length);
    const release = await this.writeLock.lock();
    try {
      await this.beginWrite();
      this.meta.persistentBitmaps?.noteWrite(offset, length);
      await this.zeroLocked(offset, length, unmap);
      // Clusters freed where unmapping is allowed go back to the host (QEMU's
      // zero_in_l2_slice frees them with QCOW2_DISCARD_REQUEST, passed through under
      // BDRV_O_UNMAP, which is what lets a zero write unmap at all).
      await this.meta.settleFrees(unmap);
    } finally {
      release();
      hold.release();
    }
  }

  private async zeroLocked(offset: number, length: number, unmap: boolean): Promise<void> {
    const unit = this.meta.subclusterSize;
    const end = offset + length;
    if (this.meta.version < 3) {
      // v2 has no zero flag: QEMU falls back to writing zeros.
      await this.writeZeroData(offset, length);
      return;
    }
    // Whole (sub)clusters get the zero flag; partial ones at either end are written.
    // (The image's last cluster counts as whole when the request runs to the end.)
    const vEnd = this.meta.size;
    let alignedStart = Math.ceil(offset / unit) * unit;
    let alignedEnd = end === vEnd ? Math.ceil(end / unit) * unit : end - (end % unit);
    if (alignedEnd <= alignedStart) {
      await this.writeZeroData(offset, length);
      return;
    }
    if (alignedStart > offset) await this.writeZeroData(offset, alignedStart - offset);
    if (end === vEnd) alignedEnd = Math.ceil(end / unit) * unit;
    alignedStart = Math.max(alignedStart, offset);
    await this.zeroRawDataFile(alignedStart, Math.min(alignedEnd, vEnd) - alignedStart, unmap);
    await this.forEachTable(alignedStart, alignedEnd - alignedStart, (l2off, table, ci, n, l1i) =>
      this.zeroInTable(l2off, table, ci, n, l1i, unmap),
    );
    if (end !== vEnd && alignedEnd < end) await this.writeZeroData(alignedEnd, end - alignedEnd);
  }

  /**
   * data_file_raw=on keeps the external data file the guest disk byte for byte: QEMU zeroes the
   * range in the data file before it sets the zero flags (qcow2_subcluster_zeroize), punching
   * it out when unmap is allowed.
   */
  private async zeroRawDataFile(offset: number, length: number, unmap: boolean): Promise<void> {
    if (!this.meta.dataFileRaw || length <= 0) return;
    const file = await this.data();
    if (await file.zeroOut(offset, length, unmap)) return;
    const chunk = new Uint8Array(Math.min(length, 4 << 20));
    for (let p = offset; p < offset + length; p += chunk.length) {
      const n = Math.min(chunk.length, offset + length - p);
      await file.write(n === chunk.length ? chunk : chunk.subarray(0, n), p);
    }
  }

  private async writeZeroData(offset: number, length: number): Promise<void> {
    const chunk = new Uint8Array(Math.min(length, 4 << 20));
    for (let p = offset; p < offset + length; p += chunk.length) {
      const n = Math.min(chunk.length, offset + length - p);
      await this.writeLocked(n === chunk.length ? chunk : chunk.subarray(0, n), p);
    }
  }

  /**
   * Call fn for each L2 table covering [offset, offset+length) with the first cluster index
   * and the number of units (clusters, or subclusters with extended L2) in it.
   */
  private async forEachTable(
    offset: number,
    length: number,
    fn: (l2off: number, table: Uint8Array, firstUnit: number, units: number, l1i: number) => Promise<void>,
  ): Promise<void> {
    const span = this.meta.l2Entries * this.meta.clusterSize;
    const unit = this.meta.subclusterSize;
    let g = offset;
    const end = offset + length;
    while (g < end) {
      const l1i = Math.floor(g / span);
      const n = Math.min(end, (l1i + 1) * span) - g;
      const [l2off, table] = await this.meta.l2ForWrite(l1i);
      await fn(l2off, table, Math.floor((g % span) / unit), n / unit, l1i);
      g += n;
    }
  }

  private async zeroInTable(
    l2off: number,
    tableIn: Uint8Array,
    firstUnit: number,
    units: number,
    l1i: number,
    unmap: boolean,
  ): Promise<void> {
    let table = tableIn;
    let v = new DataView(table.buffer, table.byteOffset, table.length);
    const per = this.meta.extL2 ? 32 : 1;
    let changed = false;
    for (let u = firstUnit; u < firstUnit + units; ) {
      const ci = Math.floor(u / per);
      const { e, hi, lo, compressed, host, hasHost: hh } = this.meta.entryAt(v, ci);
      if (this.meta.extL2) {
        const s0 = u % 32;
        const s1 = Math.min(32, s0 + (firstUnit + units - u));
        const whole = s0 === 0 && s1 === 32;
        let mask = 0;
        for (let i = s0; i < s1; i++) mask |= 1 << i;
        mask >>>= 0;
        if (compressed && !whole) {
          // Partial zeroing of a compressed cluster: rewrite it uncompressed.
          const cStart = (l1i * this.meta.l2Entries + ci) * this.meta.clusterSize;
          const cur = await this.readCluster(cStart);
          cur.fill(0, s0 * this.meta.subclusterSize, s1 * this.meta.subclusterSize);
          await this.writeLocked(cur, cStart);
          // The table may have left the cache meanwhile: continue on the current copy.
          table = await this.meta.l2Cache.get(l2off);
          v = new DataView(table.buffer, table.byteOffset, table.length);
        } else if (whole && (compressed || (unmap && hh))) {
          if (compressed) this.meta.pendingFrees.push(this.meta.compressedFreeRange(hi, lo, l2off, ci));
          else if (!this.meta.hasDataFile) this.meta.pendingFrees.push([host, this.meta.clusterSize]);
          this.setEntry(v, { index: ci, hi: 0, lo: 0, bhi: ALL_SUBCLUSTERS, blo: 0 });
          changed = true;
        } else {
          const zb = v.getUint32(e + 8);
          const ab = v.getUint32(e + 12);
          const nz = (zb | mask) >>> 0;
          const na = (ab & ~mask) >>> 0;
          if (nz !== zb || na !== ab) {
            v.setUint32(e + 8, nz);
            v.setUint32(e + 12, na);
            changed = true;
          }
        }
        u += s1 - s0;
        continue;
      }
      const allocated = hh;
      const drop = compressed || (unmap && allocated);
      let nhi = drop ? 0 : hi;
      let nlo = drop ? 1 : lo | 1;
      if (drop && !compressed && this.meta.hasDataFile) {
        // The data file keeps its (identity-mapped) cluster: nothing to free.
        nhi = 0;
        nlo = 1;
      }
      if (nhi !== hi || nlo !== lo) {
        v.setUint32(e, nhi >>> 0);
        v.setUint32(e + 4, nlo >>> 0);
        changed = true;
        if (compressed) this.meta.pendingFrees.push(this.meta.compressedFreeRange(hi, lo, l2off, ci));
        else if (drop && allocated && !this.meta.hasDataFile)
          this.meta.pendingFrees.push([host, this.meta.clusterSize]);
      }
      u++;
    }
    if (changed) {
      this.lastCompressed = null;
      this.meta.l2Cache.markDirty(l2off, table);
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    const cs = this.meta.clusterSize;
    // Only whole clusters are discarded (and the image's last, partial cluster).
    const start = Math.ceil(offset / cs) * cs;
    let end = offset + length;
    end = end === this.meta.size ? Math.ceil(end / cs) * cs : end - (end % cs);
    if (end <= start) return;
    const hold = await this.claim(start, end - start);
    const release = await this.writeLock.lock();
    try {
      await this.beginWrite();
      this.meta.persistentBitmaps?.noteWrite(start, end - start);
      const span = this.meta.l2Entries * cs;
      const dataDrops: Array<[number, number]> = [];
      for (let g = start; g < end; ) {
        const l1i = Math.floor(g / span);
        const n = Math.min(end, (l1i + 1) * span) - g;
        const [l2off, table] = await this.meta.l2ForWrite(l1i);
        this.discardInTable(l2off, table, Math.floor((g % span) / cs), n / cs, false, dataDrops);
        g += n;
      }
      // The clusters freed go back to the host: QEMU passes QCOW2_DISCARD_REQUEST through
      // when discards are honoured at all (BDRV_O_UNMAP), the only case this is called in.
      await this.meta.settleFrees(true);
      // A discard request passes on to the data file's clusters it drops (QEMU's
      // qcow2_free_any_cluster with discard passthrough, on when discards are honoured at all:
      // BDRV_O_UNMAP), so a raw data file reads zeros there too. Advisory, as every discard.
      if (dataDrops.length > 0) {
        const file = await this.data();
        for (const [at, len] of dataDrops) await file.discard(at, len);
      }
    } finally {
      release();
      hold.release();
    }
  }

  /**
   * Discard whole clusters of one L2 table. A full discard (QEMU's full_discard: make_empty,
   * shrink) leaves the entries unallocated, falling through to the backing; otherwise v3
   * images keep them reading as zeros.
   */
  private discardInTable(
    l2off: number,
    table: Uint8Array,
    first: number,
    count: number,
    full: boolean,
    /** Collects the data-file clusters dropped (images with an external data file). */
    dataDrops?: Array<[number, number]>,
  ): void {
    const v = new DataView(table.buffer, table.byteOffset, table.length);
    let changed = false;
    for (let ci = first; ci < first + count; ci++) {
      const { e, hi, lo, compressed, host, hasHost: hh } = this.meta.entryAt(v, ci);
      const allocated = compressed || hh;
      if (!full && !(this.ctx.hasBacking || allocated)) continue;
      let nhi = 0;
      let nlo = !full && this.meta.version >= 3 && !this.meta.extL2 ? 1 : 0;
      let nbhi = 0;
      if (this.meta.extL2) {
        nhi = 0;
        nlo = 0;
        nbhi = full ? 0 : ALL_SUBCLUSTERS;
      }
      const same =
        nhi === hi &&
        nlo === lo &&
        (!this.meta.extL2 || (v.getUint32(e + 8) === nbhi && v.getUint32(e + 12) === 0));
      if (same) continue;
      this.setEntry(v, { index: ci, hi: nhi, lo: nlo, bhi: nbhi, blo: 0 });
      changed = true;
      if (compressed) this.meta.pendingFrees.push(this.meta.compressedFreeRange(hi, lo, l2off, ci));
      else if (hh && !this.meta.hasDataFile) this.meta.pendingFrees.push([host, this.meta.clusterSize]);
      else if (hh) dataDrops?.push([host, this.meta.clusterSize]);
    }
    if (changed) {
      this.lastCompressed = null;
      this.meta.l2Cache.markDirty(l2off, table);
    }
  }

  // ---------------------------------------------------------------- chain operations

  /** Rewrite the backing file name and format (rebase, amend): Qcow2Metadata.writeBacking. */
  async setBacking(ref: FileRef | undefined): Promise<void> {
    const release = await this.writeLock.lock();
    try {
      this.meta.checkWritable();
      await this.meta.writeBacking(ref);
    } finally {
      release();
    }
  }

  /**
   * Every cluster becomes unallocated (after commit), as QEMU's fallback path of
   * qcow2_make_empty: a full discard of each L2 table, so the guest reads the backing. The L2
   * tables are written before the data clusters' refcounts drop, so a crash leaves at most
   * leaks. (QEMU 7.2 takes make_completely_empty on a v3 image without snapshots, which
   * truncates the file to four clusters but sets the dirty bit meanwhile; the guest-visible
   * result and qemu-img info are the same, only the file's end differs.)
   */
  /**
   * Empty the image after a commit (QEMU's qcow2_make_empty): every cluster is discarded, the
   * L2 tables are dropped from the L1 table and freed, freed clusters are punched out of the
   * file and the file is truncated after its last cluster in use, so the overlay shrinks back
   * to its metadata as qemu-img's does (QEMU rebuilds a minimal file under the dirty flag;
   * vdisk gets there in steps that leave at worst leaked clusters if killed in between).
   */
  async makeEmpty(): Promise<void> {
    const release = await this.writeLock.lock();
    try {
      const rc = await this.beginWrite();
      this.meta.persistentBitmaps?.noteWrite(0, this.meta.size);
      const cs = this.meta.clusterSize;
      const span = this.meta.l2Entries * cs;
      for (let l1i = 0; l1i < this.meta.l1Size; l1i++) {
        if (this.meta.l1Off[l1i]! === 0) continue;
        const clusters = Math.min(this.meta.l2Entries, Math.ceil((this.meta.size - l1i * span) / cs));
        if (clusters <= 0) continue;
        const [l2off, table] = await this.meta.l2ForWrite(l1i);
        this.discardInTable(l2off, table, 0, clusters, true);
      }
      // The clusters freed go back to the host once nothing on disk names them (QEMU passes
      // these discards through by default, pass-discard-snapshot): the data clusters after
      // the cleared tables reach the file, the tables after the L1 entries drop them. Only
      // clusters whose refcount reaches 0 (a snapshot may share them).
      await this.meta.settleFrees(true);
      // The cleared tables and the lower refcounts reach the file before anything else.
      await this.meta.flushMetadata();
      // Then the L1 entries (all at once), then the tables they named.
      await this.meta.dropL2Tables(0, true);
      await this.meta.truncateUnused(rc);
    } finally {
      release();
    }
  }

  /**
   * Change the virtual size (QEMU's qcow2_co_truncate). Growing enlarges the L1 table to the
   * exact size needed (a new table, then one header write, then the old one freed). Shrinking
   * discards the clusters past the new end, drops the L2 tables past it from the L1 table,
   * and truncates the file after its last used cluster. qemu-img 7.2 resizes images with
   * internal snapshots too (each snapshot keeps its own size).
   */
  async resize(newSize: number, opts: { preallocation?: string; shrink: boolean }): Promise<void> {
    const mode = opts.preallocation ?? 'off';
    if (!['off', 'metadata', 'falloc', 'full'].includes(mode)) {
      throw new VdiskError('INVALID_ARGUMENT', `Unsupported preallocation mode '${mode}'`);
    }
    if (newSize % 512 !== 0) {
      throw new VdiskError('INVALID_ARGUMENT', 'The new size must be a multiple of 512');
    }
    if (this.meta.hasDataFile) {
      throw new VdiskError(
        'UNSUPPORTED',
        'Resizing a qcow2 image with an external data file is not supported yet',
      );
    }
    // QEMU 7.2 resizes the bitmaps with the image, unless one is in use (inconsistent).
    this.meta.persistentBitmaps?.checkResize();
    const release = await this.writeLock.lock();
    try {
      const rc = await this.beginWrite();
      const cs = this.meta.clusterSize;
      const old = this.meta.size;
      if (newSize < old) {
        const start = Math.ceil(newSize / cs) * cs;
        const span = this.meta.l2Entries * cs;
        for (let g = start; g < Math.ceil(old / cs) * cs; ) {
          const l1i = Math.floor(g / span);
          const n = Math.min(Math.ceil(old / cs) * cs, (l1i + 1) * span) - g;
          if (this.meta.l1Off[l1i]! !== 0) {
            const [l2off, table] = await this.meta.l2ForWrite(l1i);
            this.discardInTable(l2off, table, Math.floor((g % span) / cs), n / cs, true);
          }
          g += n;
        }
        await this.meta.settleFrees(true);
        await this.meta.flushMetadata();
        // The size first: the L2 tables past the new end are not reachable from it any more.
        await this.meta.writeSize(newSize);
        // QEMU's qcow2_shrink_l1_table: the entries past the new size are zeroed (the L1
        // table keeps its size), then the L2 tables they named are freed.
        await this.meta.dropL2Tables(Math.ceil(newSize / span));
        await rc.shrinkTable();
        await rc.flush();
        await this.meta.truncateUnused(rc);
      } else if (newSize > old) {
        const need = l1EntriesFor(newSize, this.meta.clusterBits, this.meta.extL2);
        if (need * 8 > MAX_L1_BYTES) {
          throw new VdiskError('TOO_LARGE', 'Active L1 table too large', { path: this.file.path });
        }
        if (need > this.meta.l1Size) await this.meta.growL1(need);
        await this.meta.writeSize(newSize);
        if (mode !== 'off') {
          // QEMU's qcow2_co_truncate preallocates the new area (see prealloc.ts).
          const { preallocateGrowth } = await import('./prealloc.js');
          const oldEnd = Math.floor(old / cs) * cs;
          const allocated = oldEnd < old && (await this.mapRun(oldEnd, cs)).kind !== Kind.Unalloc;
          // metadata reallocates an old end this layer does not allocate, with a copy of its
          // head (as QEMU does); falloc and full, which fill whole clusters, leave it alone
          // where a backing file shows through it.
          const metadata = mode === 'metadata';
          await preallocateGrowth(
            this.meta,
            old,
            newSize,
            mode as 'metadata' | 'falloc' | 'full',
            allocated || (!metadata && oldEnd < old && this.ctx.hasBacking),
            metadata ? (buf, offset) => this.read(buf, offset) : undefined,
          );
        }
      }
      await this.meta.persistentBitmaps?.resize(newSize);
    } finally {
      release();
    }
  }

  /** qcow2 zeroes a growth with zero flags, which v2 images lack (QEMU: -ENOTSUP). */
  zeroGrowthError(): string | undefined {
    return this.meta.version < 3 ? 'Failed to zero out new clusters: Operation not supported' : undefined;
  }

  async writeCompressed(buf: Uint8Array, offset: number): Promise<void> {
    const commit = await this.prepareCompressed(buf, offset);
    await commit();
  }

  async prepareCompressed(buf: Uint8Array, offset: number): Promise<() => Promise<void>> {
    const cs = this.meta.clusterSize;
    if (offset % cs !== 0 || buf.length > cs || (buf.length < cs && offset + buf.length < this.meta.size)) {
      throw new VdiskError('INVALID_ARGUMENT', 'Compressed writes must cover exactly one cluster', {
        path: this.file.path,
        offset,
      });
    }
    if (this.meta.luks !== undefined) {
      throw new VdiskError('UNSUPPORTED', 'Compression and encryption not supported at the same time', {
        path: this.file.path,
      });
    }
    if (this.meta.hasDataFile) {
      throw new VdiskError('UNSUPPORTED', 'Compression is not supported with an external data file', {
        path: this.file.path,
      });
    }
    let src = buf;
    if (buf.length < cs) {
      src = new Uint8Array(cs);
      src.set(buf);
    }
    // Compress outside the lock: several clusters compress at once on the thread pool.
    const out = await (await loadCompress()).compressCluster(this.meta.compressionType, src, cs);
    if (out === null) return () => this.write(src.subarray(0, buf.length), offset);
    return () => this.storeCompressed(out, offset);
  }

  /** Allocate room for a compressed cluster, write it and point the L2 entry at it. */
  private async storeCompressed(out: Uint8Array, offset: number): Promise<void> {
    const cs = this.meta.clusterSize;
    const hold = await this.claim(offset, cs);
    const release = await this.writeLock.lock();
    try {
      const rc = await this.beginWrite();
      this.meta.persistentBitmaps?.noteWrite(offset, cs);
      const span = this.meta.l2Entries * cs;
      const l1i = Math.floor(offset / span);
      const [l2off, table] = await this.meta.l2ForWrite(l1i);
      const v = new DataView(table.buffer, table.byteOffset, table.length);
      const ci = Math.floor((offset % span) / cs);
      const e = ci * this.meta.entryBytes;
      const hi = v.getUint32(e);
      const lo = v.getUint32(e + 4);
      const host = await rc.allocBytes(out.length);
      this.meta.noteAlloc(host, out.length);
      this.meta.assertNotMetadata(host, out.length);
      await this.file.write(out, host);
      const [nhi, nlo] = encodeCompressed(host, out.length, this.meta.clusterBits);
      this.setEntry(v, { index: ci, hi: nhi, lo: nlo, bhi: 0, blo: 0 });
      this.lastCompressed = null;
      this.meta.l2Cache.markDirty(l2off, table);
      if (isCompressed(hi)) this.meta.pendingFrees.push(this.meta.compressedFreeRange(hi, lo, l2off, ci));
      else {
        const old = entryOffset(hi, lo);
        if (old !== 0) this.meta.pendingFrees.push([old, cs]);
      }
      await this.meta.settleFrees();
    } finally {
      release();
      hold.release();
    }
  }

  // ---------------------------------------------------------------- flush, close

  async flush(): Promise<void> {
    const release = await this.writeLock.lock();
    try {
      await this.meta.flushMetadata();
      if (this.meta.modified) {
        await this.file.flush();
        if (this.dataHostFile !== null && this.dataHostFile !== this.file) await this.dataHostFile.flush();
      }
    } finally {
      release();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    let err: unknown = null;
    try {
      if (!this.readOnly) {
        await this.meta.persistentBitmaps?.close();
        await this.meta.flushMetadata();
        if (this.meta.modified && this.meta.dirty && this.meta.lazy) {
          await this.meta.setIncompatible(this.header.incompatible & ~INCOMPAT_DIRTY);
        }
        // No fsync on close (as the raw driver, and qemu-img's default cache=unsafe for
        // convert targets): durability is flush()'s job; crash safety only needs the
        // order of the writes above.
      }
    } catch (e) {
      err = e;
    }
    if (this.ownsFiles) {
      if (this.dataHostFile !== null && this.dataHostFile !== this.file) {
        await this.dataHostFile.close().catch(() => {});
      }
      await this.file.close().catch(() => {});
    }
    if (err !== null) throw err;
  }

  // ---------------------------------------------------------------- info

  /**
   * The image file's allocation only: qemu-img 7.2 leaves an external data file out of
   * "disk size" (measured; the brief expected the sum, the oracle says otherwise).
   */
  async actualSize(): Promise<number> {
    return this.file.allocatedSize();
  }

  formatSpecific(): FormatSpecific {
    const h = this.header;
    const compression = h.compressionType === 1 ? 'zstd' : 'zlib';
    if (h.version === 2) {
      const v2: Record<string, unknown> = {
        compat: '0.10',
        'compression-type': compression,
        'refcount-bits': 2 ** h.refcountOrder,
      };
      if (this.meta.luks !== undefined) v2['encrypt'] = this.crypto!.qcow2EncryptInfo(this.meta.luks.vol);
      else if (h.cryptMethod === 1) v2['encrypt'] = { format: 'aes' };
      return { type: 'qcow2', data: v2 };
    }
    const data: Record<string, unknown> = {
      compat: '1.1',
      'compression-type': compression,
      'lazy-refcounts': (h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0,
      'refcount-bits': 2 ** h.refcountOrder,
      corrupt: (h.incompatible & INCOMPAT_CORRUPT) !== 0,
      'extended-l2': this.meta.extL2,
    };
    if (this.bitmaps.length > 0) {
      data['bitmaps'] = this.bitmaps.map((b) => ({
        flags: b.flags,
        name: b.name,
        granularity: b.granularity,
      }));
    }
    if (this.meta.luks !== undefined) data['encrypt'] = this.crypto!.qcow2EncryptInfo(this.meta.luks.vol);
    else if (h.cryptMethod === 1) data['encrypt'] = { format: 'aes' };
    if (h.dataFile !== undefined) data['data-file'] = h.dataFile;
    if (this.meta.hasDataFile) data['data-file-raw'] = this.meta.dataFileRaw;
    return { type: 'qcow2', data };
  }

  snapshots(): SnapshotInfo[] {
    return this.meta.snapshotList.map(({ l1TableOffset: _o, l1Size: _s, entryOffset: _e, ...rest }) => rest);
  }

  async check(repair: 'none' | 'leaks' | 'all'): Promise<CheckResult> {
    const release = await this.writeLock.lock();
    try {
      await this.meta.flushMetadata();
      const { checkImage } = await loadCheck();
      return await checkImage(this.meta, repair);
    } finally {
      release();
    }
  }

  async openSnapshot(which: { id?: string; name?: string }): Promise<FormatImage> {
    const s =
      (which.id !== undefined ? this.meta.snapshotList.find((x) => x.id === which.id) : undefined) ??
      (which.name !== undefined ? this.meta.snapshotList.find((x) => x.name === which.name) : undefined);
    if (
      s === undefined ||
      (which.id !== undefined && which.name !== undefined && (s.id !== which.id || s.name !== which.name))
    ) {
      const label = which.id ?? which.name ?? '';
      throw new VdiskError('NOT_FOUND', `Can't find snapshot '${label}'`, { path: this.file.path });
    }
    const l1 = await readL1(this.file, s.l1TableOffset, s.l1Size, this.meta.clusterBits, this.meta.fileEnd);
    const header: Qcow2Header = { ...this.header, size: s.diskSize ?? this.header.size };
    const view = new Qcow2Image(this.file, this.dataHostFile, header, true, l1, this.meta.fileEnd, false);
    view.ctx = this.ctx;
    view.meta.luks = this.meta.luks;
    view.aes = this.aes;
    view.dataOpener = () => this.data();
    return view;
  }

  // ---------------------------------------------------------------- internal snapshots
  // (the write logic lives in snapshot-write.ts)

  async createSnapshot(name: string, date: { sec: number; nsec: number }): Promise<SnapshotInfo> {
    const w = await import('./snapshot-write.js');
    const s = await this.snapshotOp(() =>
      w.createSnapshot(this.meta, { name, dateSec: date.sec, dateNsec: date.nsec }),
    );
    const { l1TableOffset: _o, l1Size: _s, entryOffset: _e, ...info } = s;
    return info;
  }

  async applySnapshot(idOrName: string): Promise<void> {
    const w = await import('./snapshot-write.js');
    await this.snapshotOp(async () => {
      // QEMU refuses a data-file image before looking for the snapshot.
      if (this.meta.hasDataFile)
        throw new VdiskError('UNSUPPORTED', 'Operation not supported', { path: this.file.path });
      const i = w.findByIdOrName(this.meta, idOrName);
      if (i < 0)
        throw new VdiskError('NOT_FOUND', `Can't find snapshot '${idOrName}'`, { path: this.file.path });
      await w.applySnapshot(this.meta, i);
    }, true);
  }

  async deleteSnapshot(which: { id: string; name: string }): Promise<void> {
    const w = await import('./snapshot-write.js');
    await this.snapshotOp(async () => {
      const i = this.meta.snapshotList.findIndex((s) => s.id === which.id && s.name === which.name);
      if (i < 0)
        throw new VdiskError('NOT_FOUND', `Can't find snapshot '${which.name}'`, { path: this.file.path });
      await w.deleteSnapshot(this.meta, i);
    });
  }

  /** contentChanges (apply): the guest content changes, so persistent bitmaps go stale as on any write. */
  private async snapshotOp<T>(fn: () => Promise<T>, contentChanges = false): Promise<T> {
    const release = await this.writeLock.lock();
    try {
      this.meta.checkWritable();
      if (contentChanges) {
        await this.beginWrite();
        this.meta.persistentBitmaps?.noteWrite(0, this.meta.size);
      }
      await this.meta.flushMetadata();
      this.meta.modified = true;
      this.lastCompressed = null;
      return await fn();
    } finally {
      release();
    }
  }

  /** qemu-img amend (QEMU's qcow2_amend_options): the work is in amend.ts. */
  async amend(opts: AmendValues, onProgress?: (done: number, total: number) => void): Promise<void> {
    this.meta.checkWritable();
    const { amendQcow2 } = await import('./amend.js');
    await amendQcow2(
      this.meta,
      { resize: (size) => this.resize(size, { shrink: true }), setBacking: (ref) => this.setBacking(ref) },
      opts,
      onProgress,
    );
  }
}
