/**
 * What a format driver provides. Drivers see only aligned, in-range requests: bounds,
 * alignment (read-modify-write) and the backing chain live once in core/image.ts.
 */
import type { BlockDevice, Extent } from './device.js';
import type { HostFile } from './host-file.js';
import type { Image } from './image.js';
import type { Secrets } from './secrets.js';
import type { SeqOutput, SeqSource } from './seq.js';

/** A file named by an image: a backing file or a data file, as the image stores it. */
export interface FileRef {
  /** The name exactly as stored in the image. */
  filename: string;
  /** The format stored with it, if any. */
  format?: string | undefined;
}

export interface DriverContext {
  /**
   * Read the content below this layer (the backing chain, zero past its end, zeros without
   * one) into buf. Drivers call it for unallocated ranges and for copy-on-write.
   */
  readBacking(buf: Uint8Array, offset: number): Promise<void>;
  /** Whether a backing image is attached (drivers may skip copy-on-write reads without one). */
  readonly hasBacking: boolean;
  /**
   * The driver of the attached backing image, for formats that check their parent (vmdk
   * compares its parentCID with the parent's CID before reading through it).
   */
  readonly backingImage?: FormatImage | undefined;
}

export interface DriverOpenOptions {
  writable: boolean;
  /** -U: take no image lock. */
  forceShare: boolean;
  /** Open an external data file the image names (qcow2 data_file). */
  openDataFile?: (ref: FileRef, writable: boolean) => Promise<HostFile>;
  /**
   * Open a file that the image's descriptor names as one of its own extents (vmdk). The chain
   * layer allows a relative name inside the image's directory and refuses an absolute name or
   * one that leaves the directory unless the caller allowed external extents (CVE-2022-47951).
   */
  openExtentFile?: (name: string, writable: boolean) => Promise<HostFile>;
  /** Repair what can be repaired on open (e.g. lazy refcounts after a crash), as QEMU does when writable. */
  repairOnOpen?: boolean;
  /**
   * Opened by `check` (QEMU's BDRV_O_CHECK): a writable open of an image that needs repair
   * succeeds so that check can repair it (parallels refuses it otherwise).
   */
  forCheck?: boolean;
  /**
   * Driver options given with --image-opts (or carried from create options, as qemu-img
   * convert carries `*key-secret`), keyed as QEMU names them: `key-secret` (luks),
   * `encrypt.key-secret` (qcow2).
   */
  options?: Readonly<Record<string, string>>;
  /** The secrets the options name by id (this command's --object secrets). */
  secrets?: Secrets | undefined;
  /**
   * Open for metadata only (QEMU's BDRV_O_NO_IO, as qemu-img info opens): an encrypted image
   * opens without its key and no data is read.
   */
  noIo?: boolean;
  /**
   * Warnings QEMU prints while opening the image (the whole text, lines without their last
   * newline), e.g. qcow2 bitmaps that a program without bitmap support has invalidated.
   */
  onWarning?: (message: string) => void;
  /**
   * A backing file opened writable (commit's base): QEMU opens it read-only and reopens it
   * read-write, which makes none of the header updates of a writable open (the stale bitmaps
   * extension stays).
   */
  reopened?: boolean;
}

/** One entry of the image's format-specific information, in qemu-img's shape. */
export type FormatSpecific = { type: string; data: Record<string, unknown> };

/**
 * Marks a CheckResult message that QEMU prints with error_report: the CLI prefixes it with the
 * program name ("vdisk: "), as qemu-img's lines carry "qemu-img: ".
 */
export const CHECK_ERROR_REPORT = '\u0001';

export interface CheckResult {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  allocatedClusters?: number;
  totalClusters?: number;
  fragmentedClusters?: number;
  compressedClusters?: number;
  imageEndOffset?: number;
  /** Messages qemu-img prints on stderr/stdout while checking (ERROR/Leaked cluster lines). */
  messages: string[];
  /**
   * The check itself failed (QEMU's check returned an error, as vmdk's does on its first
   * corruption): qemu-img prints the messages, then "Check failed: <failure>", and exits 1
   * without the summary.
   */
  failure?: string;
}

/** A bitmap's bits: bit i covers guest bytes [i * 2^granularityBits, (i + 1) * 2^granularityBits). */
export interface BitmapBits {
  bits: Uint8Array;
  granularityBits: number;
}

/**
 * An image's persistent dirty bitmaps, with the operations of qemu-img bitmap (QMP
 * block-dirty-bitmap-*). Errors carry QEMU's messages; changes reach the image at close.
 */
export interface DirtyBitmaps {
  /** QEMU's bdrv_supports_persistent_dirty_bitmap (qcow2: v3 only). */
  readonly supported: boolean;
  list(): Array<{ name: string; granularity: number; enabled: boolean; inconsistent: boolean }>;
  /** `node` names the image in messages (QEMU prints its node name there). */
  add(name: string, granularity: number | undefined, disabled: boolean, node: string): void;
  remove(name: string): Promise<void>;
  clear(name: string): Promise<void>;
  enable(name: string, on: boolean): void;
  merge(name: string, source: BitmapBits): Promise<void>;
  /** A usable bitmap's bits (merge source, convert --bitmaps). */
  source(name: string): Promise<BitmapBits>;
  /**
   * A usable bitmap's bits as they are now, kept up to date (an enabled bitmap takes every
   * later guest write at once) for readers such as `vdisk nbd -B`; the caller must not change
   * them. QEMU's messages when the bitmap is absent or inconsistent.
   */
  live?(name: string): Promise<BitmapBits>;
}

export interface SnapshotInfo {
  id: string;
  name: string;
  vmStateSize: number;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  icount?: number;
  diskSize?: number;
}

/**
 * Where the bytes of a write also lie (convert's source): `file` holds them at `offset`. A
 * driver may have the host copy them there (HostFile.copyFrom, `how`) instead of writing the
 * buffer, and falls back to the buffer where the host cannot. Before it uses any byte of the
 * buffer it awaits `fill()`: under copy offloading (convert -C) the buffer is read only then.
 */
export interface WriteSource {
  file: HostFile;
  offset: number;
  how: 'clone' | 'copy';
  /** The buffer's bytes, read from the source (once; a no-op when it already holds them). */
  fill(): Promise<void>;
}

export interface FormatImage {
  readonly format: string;
  /** Virtual size in bytes. */
  readonly size: number;
  /** Requests reaching read/write are multiples of this and aligned to it (a power of two). */
  readonly alignment: number;
  readonly readOnly: boolean;
  /** Cluster (or block/grain) size, when the format has one. */
  readonly clusterSize?: number;
  /** The backing file the image names, if any. */
  readonly backing?: FileRef | undefined;
  /** The external data file the image names, if any. */
  readonly dataFile?: FileRef | undefined;
  /** Called once by core after open, before any I/O. */
  attach(ctx: DriverContext): void;
  /** Layer-local status: allocated=false means the range falls through to the backing chain. */
  blockStatus(offset: number, length: number): Promise<Extent>;
  read(buf: Uint8Array, offset: number): Promise<void>;
  write(buf: Uint8Array, offset: number): Promise<void>;
  writeZeroes(offset: number, length: number, unmap: boolean): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  /** Bytes the image occupies on the host (all files). */
  actualSize(): Promise<number>;
  /** qemu-img info's "Format specific information". */
  formatSpecific?(): FormatSpecific | undefined;
  check?(repair: 'none' | 'leaks' | 'all'): Promise<CheckResult>;
  snapshots?(): SnapshotInfo[];
  /** Persistent dirty bitmaps (qcow2 v3): what qemu-img bitmap works on. */
  readonly dirtyBitmaps?: DirtyBitmaps | undefined;
  /**
   * False for formats whose QEMU driver has no get_info (bochs, cloop, dmg): qemu-img info then
   * prints neither cluster size nor dirty flag.
   */
  readonly hasInfo?: boolean;
  /**
   * False when a freshly created image does not read as zeros (QEMU's bdrv_has_zero_init = 0,
   * e.g. luks: its payload decrypts to noise), so convert must write zeros too.
   */
  readonly zeroInit?: boolean;
  /**
   * QEMU's driver for this format has no block status (vhdx in 7.2): qemu-img map and measure
   * see every range as allocated data without a host offset. vdisk keeps its precise status for
   * copies and comparisons (zero blocks cost no read) and shows QEMU's view where qemu-img
   * prints it (Image.reportedStatus).
   */
  readonly noBlockStatus?: boolean;
  /** The image's data is encrypted (qemu-img info prints "encrypted: yes"). */
  readonly encrypted?: boolean;
  /** Is the image marked dirty (e.g. lazy refcounts, need-check)? */
  readonly dirty?: boolean;
  /**
   * write() in two steps, for copies that keep qemu-img's file layout while several writes
   * are in flight (convert): the returned promise settles once the write has its place in the
   * file (clusters allocated, in call order); the returned function does the data I/O and the
   * metadata updates that follow it, and must be called exactly once. offset and length are
   * multiples of `alignment`. With `from`, the data may come from a file (WriteSource).
   */
  prepareWrite?(buf: Uint8Array, offset: number, from?: WriteSource): Promise<() => Promise<void>>;
  /** prepareWrite honours `from` (WriteSource); other drivers get a filled buffer and no `from`. */
  readonly takesWriteSource?: boolean;
  /**
   * Write one whole cluster compressed (convert -c). offset is cluster-aligned; buf is one
   * cluster long, or shorter only for the last cluster of the image.
   */
  writeCompressed?(buf: Uint8Array, offset: number): Promise<void>;
  /**
   * writeCompressed in two steps: compress now (off the main thread, several at once), write
   * when the returned function is called. convert -c compresses clusters in parallel and still
   * writes them in order, so the file's layout is qemu-img's.
   */
  prepareCompressed?(buf: Uint8Array, offset: number): Promise<() => Promise<void>>;
  /**
   * True where every write of this image is stored compressed (vmdk streamOptimized): convert
   * then compresses runs of whole clusters with prepareCompressedRange before their ordered
   * write, as it does for -c.
   */
  readonly compressesWrites?: boolean;
  /** prepareCompressed for a run of whole clusters (offset cluster-aligned, the last may be short at the end). */
  prepareCompressedRange?(buf: Uint8Array, offset: number): Promise<() => Promise<void>>;
  /**
   * The host file holding, byte for byte, the data of an extent this image reported with a
   * host offset (blockStatus): for formats that store guest data unchanged (no encryption, no
   * compression), so that a server may send it straight from the file (the NBD server's
   * sendfile). Undefined (or absent): read through the driver.
   */
  directFile?(extent: Extent): HostFile | undefined;
  /** Rewrite the backing file reference stored in the image (rebase, amend); undefined detaches. */
  setBacking?(ref: FileRef | undefined): Promise<void>;
  /** Make every cluster unallocated (after commit), as QEMU's bdrv_make_empty. */
  makeEmpty?(): Promise<void>;
  /** Change the virtual size (resize). Shrinking discards what lies past the new end. */
  resize?(size: number, opts: { preallocation?: string; shrink: boolean }): Promise<void>;
  /**
   * Whether a growth can be made to read as zeros where a longer backing file would show
   * through (QEMU's BDRV_REQ_ZERO_WRITE on truncate): undefined when it can (Image.resize then
   * zeroes the new area with writeZeroes), else the error QEMU gives. Left out: QEMU's "Block
   * driver does not support requested flags".
   */
  zeroGrowthError?(): string | undefined;
  /** A read-only view of the image as it was at an internal snapshot (convert -s/-l). */
  openSnapshot?(idOrName: { id?: string; name?: string }): Promise<FormatImage>;
  /**
   * Internal snapshots (qemu-img snapshot -c/-a/-d). A format without them leaves these out;
   * the command then reports qemu-img's error for that case. createSnapshot picks the id;
   * applySnapshot finds the snapshot by id first, then by name (QEMU's goto) and throws
   * NOT_FOUND; deleteSnapshot removes the entry with exactly this id and name.
   */
  createSnapshot?(name: string, date: { sec: number; nsec: number }): Promise<SnapshotInfo>;
  applySnapshot?(idOrName: string): Promise<void>;
  deleteSnapshot?(which: { id: string; name: string }): Promise<void>;
  /**
   * qemu-img amend: change the options given (names from FormatDriver.amendOptions, values
   * already typed: sizes and numbers as numbers, booleans as booleans). onProgress(done, total)
   * reports work in any unit.
   */
  amend?(opts: AmendValues, onProgress?: (done: number, total: number) => void): Promise<void>;
}

/** Typed -o values given to amend. */
export type AmendValues = Record<string, string | number | boolean>;

export interface MeasureResult {
  /** Bytes the new image needs for the data in question. */
  required: number;
  /** Bytes it would need fully allocated. */
  fullyAllocated: number;
  /** Bytes for persistent bitmaps copied from the source (qemu-img prints it when set). */
  bitmaps?: number;
}

/** A value given to create with -o. */
export type CreateOptions = Record<string, string>;

export interface CreateRequest {
  path: string;
  size: number;
  options: CreateOptions;
  backing?: FileRef;
  /** Virtual size of the backing (already opened and measured by core, unless -u). */
  backingSize?: number;
  /** The secrets the options name by id (`key-secret`, `encrypt.key-secret`). */
  secrets?: Secrets | undefined;
  /**
   * Open another image alone (no backing chain), read-only and without a lock, the way the
   * command opens images (vmdk reads its parent's CID). Drivers never open chains themselves.
   */
  openImage?: ((path: string) => Promise<Image>) | undefined;
}

export interface CreateOptionSpec {
  name: string;
  type: 'size' | 'number' | 'bool' | 'string';
  help: string;
  /** Value printed in the "Formatting" line when the option is not given. */
  default?: string;
  /** A protocol-level option: accepted and printed, but not listed by `-o help` (qemu-img lists
   * only the format's own options there). */
  protocol?: boolean;
}

export interface FormatDriver {
  readonly name: string;
  /** Score 0..100 that the first bytes (up to 2 KiB) and name are this format. Raw has none. */
  probe?(head: Uint8Array, filename: string): number;
  open(file: HostFile, opts: DriverOpenOptions): Promise<FormatImage>;
  create?(req: CreateRequest): Promise<void>;
  readonly createOptions?: readonly CreateOptionSpec[];
  /** Does this format store a backing file reference? */
  readonly supportsBacking?: boolean;
  /**
   * Images of this format implement writeCompressed (qemu's block_driver_can_compress).
   * convert -c checks it before creating the target, as qemu-img does.
   */
  readonly compressedWrites?: boolean;
  /**
   * qemu-img measure: the size of an image of this format with these options holding `size`
   * bytes of virtual disk, or the content of `source` when given. `secrets` holds the secrets
   * the options name (QEMU checks an encrypted image's key-secret while measuring, too).
   */
  measure?(
    size: number,
    options: CreateOptions,
    source?: BlockDevice,
    secrets?: Secrets,
  ): Promise<MeasureResult>;
  /** The options `amend` accepts (images of this format implement FormatImage.amend). */
  readonly amendOptions?: readonly CreateOptionSpec[];
  /**
   * Write an image of this format front to back, without seeking (src/core/seq.ts): an
   * export streamed over HTTP, a pipe, a blob store's upload. `options` are create's -o
   * options (the writer refuses those it cannot honour with a VdiskError, before any byte);
   * the backing file, if any, is `source.backing`. Only formats that can be laid out from
   * the block map up front have it; others are written to a file and copied.
   */
  createSequential?(source: SeqSource, options: CreateOptions): Promise<SeqOutput>;
  /**
   * A target for a source whose length is not known yet (a raw stream) is created at this
   * size, filled, then resized to the source's length (a shrink: the image's resize must allow
   * it, and cost nothing when nothing lies past the new end). The largest size that makes the
   * image no bigger than a small one; undefined where the options rule the way out
   * (preallocation, an external data file, options that are not valid).
   */
  streamTargetSize?(options: CreateOptions): number | undefined;
}
