/**
 * `convert`: copy one or more images (concatenated) into a new or existing target of any
 * format, as qemu-img.c img_convert (7.2) does:
 *
 * - the source is walked by block status, one extent at a time (never per cluster):
 *   ranges that read as zeros are skipped when the target is known to read as zeros
 *   (a new image, or --target-is-zero), written as zeroes with unmap otherwise; with -B
 *   only what the source's top layer holds is copied, the rest is left to the new backing;
 * - data is read in large chunks (2 MiB, or the target's cluster) and scanned for runs of
 *   at least -S bytes of zeros (default 4 KiB), which become holes or zero clusters;
 *   -S 0 writes everything;
 * - -m workers (default 8) read ahead concurrently; writes stay in offset order unless -W;
 * - -c writes whole clusters through the target driver's writeCompressed.
 *
 * Memory is bounded by workers × chunk size (16 MiB by default), whatever the image size.
 */
import { layerAt } from '../chain/allocation.js';
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import { type Extent, isAllZero } from '../core/device.js';
import type { FormatImage, WriteSource } from '../core/driver.js';
import { strerror, VdiskError } from '../core/errors.js';
import { getDriver } from '../core/formats.js';
import type { HostFile } from '../core/host-file.js';
import { Image, roundUp } from '../core/image.js';
import { ioBuffer } from '../core/io-buffer.js';
import { Mutex } from '../core/lock.js';
import { registerBuiltinFormats } from '../formats/index.js';
import { allocatedSectorsMin, SECTOR } from './buffers.js';
import { createTarget, prepareCreate } from './create.js';

export const IO_BUF_SIZE = 2 * 1024 * 1024;
const MAX_BUF_SIZE = 16 * 1024 * 1024;
/** QEMU's BDRV_REQUEST_MAX_SECTORS: one block status query covers at most this much. */
const MAX_REQUEST = Math.floor(0x7fffffff / SECTOR) * SECTOR;
export const MAX_COROUTINES = 16;

/** An internal snapshot to read the (first) source from: by id and/or name, or either. */
export type SnapshotRef = { id?: string | undefined; name?: string | undefined } | { idOrName: string };

export interface ConvertOptions extends OpenContext {
  sources: string[];
  /** Warnings printed while opening the images (chain/open.ts onWarning), whole lines. */
  onOpenWarning?: (message: string) => void;
  /**
   * Sources already opened by the caller (images that live elsewhere than in files: the
   * registry's blobs), in place of opening `sources`; the caller closes them.
   */
  sourceImages?: Image[];
  /** -f: format of every source (probed when absent). */
  sourceFormat?: string | undefined;
  output: string;
  /** -O (default raw). */
  outputFormat?: string | undefined;
  /**
   * The target's small writes on the calling thread (HostOpenOptions.inlineSmallWrites): the
   * CLI, where the conversion is all the process does; not the registry's conversions.
   */
  inlineSmallWrites?: boolean;
  /** -o: creation options of the target. */
  options?: Record<string, string>;
  /** -B / -F: make the target an overlay of this backing file (only the source's top layer is copied). */
  backingFile?: string | undefined;
  backingFormat?: string | undefined;
  /** -c */
  compressed?: boolean;
  /** -n: the target exists; do not create it. */
  skipCreate?: boolean;
  /** --target-image-opts: `output` is image options (needs skipCreate, as in qemu-img). */
  targetImageOpts?: boolean | undefined;
  /** --target-is-zero (with -n): zero ranges need not be written. */
  targetIsZero?: boolean;
  /** -S in bytes: shortest zero run to leave unwritten (default 4096); 0 writes everything. */
  minSparse?: number;
  /** -m: requests in flight (1..16, default 8). */
  coroutines?: number;
  /** -W: allow writes out of order. */
  outOfOrder?: boolean;
  /**
   * -C, qemu-img's copy offloading: data the source stores as it is (a raw file, uncompressed
   * qcow2 clusters) goes from file to file by copy_file_range(2), unread, so without zero
   * detection (as qemu-img -C: zeros inside data are copied as data). Where the host cannot
   * copy (another file system, not local files), the data is read and written after all.
   */
  copyOffload?: boolean;
  /** -l: read the source from an internal snapshot. */
  snapshot?: SnapshotRef | undefined;
  /** -U: open the sources without taking their locks. */
  forceShare?: boolean;
  /** -t: target cache mode; anything but 'unsafe' (the default) flushes the target at the end. */
  cache?: string;
  /** Progress: bytes handled so far out of the bytes the copy will read or write. */
  onProgress?: (done: number, total: number) => void;
  /**
   * --salvage: a source range whose block status or data cannot be read is retried sector by
   * sector; sectors that still fail are copied as data, read as zeros, and reported to `onWarning`
   * with qemu-img's wording (it warns unless -q).
   */
  salvage?: boolean;
  /** --bitmaps: copy the source's persistent bitmaps to the target (bitmap-copy.ts). */
  bitmaps?: boolean;
  /** --skip-broken-bitmaps: leave in-use bitmaps out (with a warning) instead of failing. */
  skipBrokenBitmaps?: boolean;
  /** Warnings qemu-img prints with warn_report (without the program prefix). */
  onWarning?: (message: string) => void;
  /**
   * A source whose length was not known when the target was created (a raw stream, read at a
   * provisional size: FormatDriver.streamTargetSize): the target's size once the copy is
   * done. The target is resized (shrunk) to it before it is closed.
   */
  finalSize?: (() => Promise<number>) | undefined;
  /** Called once the target has been created (not with -n): from then on it is this copy's. */
  onCreated?: (() => void) | undefined;
}

type Status = 'data' | 'zero' | 'backing';

interface Part {
  image: Image;
  /** The image's size. */
  size: number;
  /** Where the part starts in the concatenation. */
  start: number;
  /** Its span in the concatenation: the size rounded up to whole sectors, as qemu counts. */
  span: number;
}

function hostText(err: unknown): string {
  const cause = err instanceof VdiskError ? err.cause : err;
  if (cause !== undefined && cause !== null && (cause as { code?: unknown }).code !== undefined)
    return strerror(cause);
  return err instanceof Error ? err.message : String(err);
}

/**
 * An error as QEMU's block layer returns it to qemu-img, strerror'd: a host error keeps its
 * errno; a driver's refusal (a corrupt image) is -EIO there.
 */
function errnoText(err: unknown): string {
  const cause = err instanceof VdiskError ? err.cause : err;
  if (cause !== undefined && cause !== null && typeof (cause as { code?: unknown }).code === 'string') {
    return strerror(cause);
  }
  return 'Input/output error';
}

function fail(message: string, code: VdiskError['code'] = 'INVALID_ARGUMENT'): never {
  throw new VdiskError(code, message);
}

export async function convertCommand(o: ConvertOptions): Promise<void> {
  registerBuiltinFormats();
  const outFmt = o.outputFormat ?? 'raw';
  const minSparse = o.minSparse ?? 4096;
  const coroutines = o.coroutines ?? 8;
  const compressed = o.compressed === true;
  const skipCreate = o.skipCreate === true;
  const options = o.options ?? {};
  if (minSparse % SECTOR !== 0 || minSparse < 0 || minSparse > MAX_BUF_SIZE) {
    fail(
      `Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to ${MAX_BUF_SIZE}. Select 0 to disable sparse detection (fully allocates output).`,
    );
  }
  if (!Number.isInteger(coroutines) || coroutines < 1 || coroutines > MAX_COROUTINES) {
    fail(`Invalid number of coroutines. Allowed number of coroutines is between 1 and ${MAX_COROUTINES}`);
  }
  if (skipCreate && Object.keys(options).length > 0) fail('-o has no effect when skipping image creation');
  if (o.targetIsZero && !skipCreate) fail('--target-is-zero requires use of -n flag');
  if (o.sources.length < 1 && (o.sourceImages?.length ?? 0) < 1) fail('Must specify image file name');

  const parts: Part[] = [];
  const closers: Array<() => Promise<void>> = [];
  let target: Image | null = null;
  try {
    let total = 0;
    const given = o.sourceImages;
    for (const name of given === undefined ? o.sources : given) {
      let image: Image;
      if (typeof name === 'string') {
        const opened = await openImage(name, {
          ...openContext(o),
          format: o.sourceFormat,
          forceShare: o.forceShare === true,
          backing: 'follow',
          allowDataFile: true,
          onWarning: o.onOpenWarning,
        });
        closers.push(() => opened.close());
        image = opened;
      } else image = name;
      const span = roundUp(image.size, SECTOR);
      parts.push({ image, size: image.size, start: total, span });
      total += span;
    }
    if (o.snapshot !== undefined) {
      if ('idOrName' in o.snapshot && parts.length > 1)
        fail('No support for concatenating multiple snapshot');
      const first = parts[0]!;
      const snap = await loadSnapshot(first.image, o.snapshot);
      closers.push(() => snap.driver.close());
      first.image = snap;
    }

    if (o.bitmaps === true) {
      if (parts.length > 1) fail('Copying bitmaps only possible with single source');
      checkSourceBitmaps(parts[0]!.image, o.skipBrokenBitmaps === true);
    }

    const backingFile = o.backingFile ?? (skipCreate ? undefined : options['backing_file']);
    const backingFormat = o.backingFormat ?? (skipCreate ? undefined : options['backing_fmt']);
    const targetHasBacking = backingFile !== undefined;
    if (!skipCreate) {
      const driver = await getDriver(outFmt);
      if (driver.create === undefined) {
        fail(`Format driver '${outFmt}' does not support image creation`, 'UNSUPPORTED');
      }
      const known = new Set((driver.createOptions ?? []).map((s) => s.name));
      for (const k of Object.keys(options)) if (!known.has(k)) fail(`Invalid parameter '${k}'`);
      if (o.backingFile !== undefined && !known.has('backing_file'))
        fail(`Backing file not supported for file format '${outFmt}'`);
      if (o.backingFormat !== undefined && !known.has('backing_fmt'))
        fail(`Backing file format not supported for file format '${outFmt}'`);
    }
    if (o.targetIsZero && targetHasBacking)
      fail('Cannot use --target-is-zero when the destination image has a backing file');
    if (parts.length > 1 && targetHasBacking)
      fail('Having a backing file for the target makes no sense when concatenating multiple input images');
    if (!skipCreate && targetHasBacking && backingFormat === undefined)
      fail('Use of backing file requires explicit backing format');
    if (compressed && !skipCreate) {
      const driver = await getDriver(outFmt);
      if (driver.compressedWrites !== true)
        fail('Compression not supported for this file format', 'UNSUPPORTED');
      if (options['encryption'] !== undefined || options['encrypt.format'] !== undefined)
        fail('Compression and encryption not supported at the same time', 'UNSUPPORTED');
      const prealloc = options['preallocation'];
      if (prealloc !== undefined && prealloc !== 'off')
        fail('Compression and preallocation not supported at the same time', 'UNSUPPORTED');
    }
    if (!skipCreate) {
      const prepared = await prepareCreate({
        optionErrors: 'bare',
        filename: o.output,
        format: outFmt,
        size: total,
        options,
        backingFile,
        backingFormat,
        unsafe: true,
        secrets: o.secrets,
      });
      await createTarget(prepared, o.output, `converting ${outFmt}`);
      o.onCreated?.();
    }
    const cache = o.cache ?? 'unsafe';
    if (!['none', 'off', 'writeback', 'writethrough', 'directsync', 'unsafe'].includes(cache))
      fail(`Invalid cache option: ${cache}`);

    // qemu-img carries the create options that name secrets (img_add_key_secrets: every
    // `*key-secret`) into the target's open; --target-image-opts names the target by options.
    const keySecrets = Object.fromEntries(Object.entries(options).filter(([k]) => k.endsWith('key-secret')));
    // img_open_opts: options name the driver; -O may not name another.
    const targetImageOpts = o.targetImageOpts === true;
    if (targetImageOpts && o.outputFormat !== undefined) {
      fail('--image-opts and --format are mutually exclusive');
    }
    target = await openImage(o.output, {
      // With --target-image-opts the options' driver= names the format (probed without it).
      format: targetImageOpts ? undefined : outFmt,
      writable: true,
      backing: 'follow',
      allowDataFile: true,
      imageOpts: targetImageOpts,
      secrets: o.secrets,
      noFlush: cache === 'unsafe',
      ...(o.inlineSmallWrites === true ? { inlineSmallWrites: true } : {}),
      ...(skipCreate ? {} : { driverOptions: keySecrets }),
    });
    if (compressed && target.driver.writeCompressed === undefined)
      fail('Compression not supported for this file format', 'UNSUPPORTED');
    if (skipCreate && target.size < total) fail('output file is smaller than input file');
    if (o.bitmaps === true && target.driver.dirtyBitmaps?.supported !== true) {
      fail(`Format driver '${target.driver.format}' does not support bitmaps`, 'UNSUPPORTED');
    }

    const clusterSize = target.driver.clusterSize ?? 0;
    // qemu-img sizes its buffer from the target's opt_transfer / discard alignment, not its
    // cluster size: 2 MiB for every format vdisk writes (a vhdx block of 32 MiB does not make
    // 16 MiB requests). Compressed output works in whole clusters.
    let bufSize = IO_BUF_SIZE;
    if (compressed) {
      if (clusterSize <= 0 || clusterSize > MAX_BUF_SIZE) fail('invalid cluster size');
      bufSize = clusterSize;
    }
    const copier = new Copier({
      parts,
      total,
      target,
      compressed,
      precompress:
        !compressed &&
        target.driver.compressesWrites === true &&
        target.driver.prepareCompressedRange !== undefined &&
        clusterSize > 0,
      minSparse,
      bufSize,
      clusterSize,
      coroutines,
      inOrder: o.outOfOrder !== true,
      copyOffload: o.copyOffload === true,
      targetHasBacking,
      hasZeroInit:
        o.targetIsZero === true ||
        (!skipCreate && minSparse > 0 && !targetHasBacking && target.driver.zeroInit !== false),
      // Ranges past the end of the new backing file read as zeros there already.
      targetBackingSize:
        targetHasBacking && !skipCreate && target.backing !== null
          ? roundUp(target.backing.size, SECTOR)
          : -1,
      alignment: Math.max(pow2floor(minSparse / SECTOR), Math.ceil(target.driver.alignment / SECTOR)),
      onProgress: o.onProgress,
      salvage: o.salvage === true,
      onWarning: o.onWarning,
    });
    await copier.run();
    if (o.finalSize !== undefined) await target.resize(await o.finalSize(), { shrink: true });
    if (o.bitmaps === true) {
      await copyBitmaps(parts[0]!.image, target, o.skipBrokenBitmaps === true, o.onWarning);
    }
    if (cache !== 'unsafe') await target.flush();
  } catch (err) {
    // Errors while closing after a failure are secondary: the first error wins.
    await closeAll();
    throw err;
  }
  const errors = await closeAll();
  if (errors.length > 0) throw errors[0];

  async function closeAll(): Promise<unknown[]> {
    const errors: unknown[] = [];
    if (target !== null) await target.close().catch((e: unknown) => errors.push(e));
    for (const c of closers.reverse()) await c().catch((e: unknown) => errors.push(e));
    return errors;
  }
}

/** qemu-img's convert_check_bitmaps. */
function checkSourceBitmaps(src: Image, skipBroken: boolean): void {
  const bitmaps = src.driver.dirtyBitmaps;
  if (bitmaps?.supported !== true) fail('Source lacks bitmap support', 'UNSUPPORTED');
  if (skipBroken) return;
  const broken = bitmaps.list().find((b) => b.inconsistent);
  if (broken !== undefined) {
    fail(
      `Cannot copy inconsistent bitmap '${broken.name}'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it`,
    );
  }
}

/** qemu-img's convert_copy_bitmaps: add each bitmap to the target, then merge the source's bits in. */
async function copyBitmaps(
  src: Image,
  dst: Image,
  skipBroken: boolean,
  onWarning?: (message: string) => void,
): Promise<void> {
  const from = src.driver.dirtyBitmaps!;
  const to = dst.driver.dirtyBitmaps!;
  for (const b of from.list()) {
    if (skipBroken && b.inconsistent) {
      onWarning?.(`Skipping inconsistent bitmap '${b.name}'`);
      continue;
    }
    const why = (err: unknown) => (err instanceof VdiskError ? err.message : String(err));
    try {
      to.add(b.name, b.granularity, !b.enabled, dst.displayName ?? '');
    } catch (err) {
      fail(`Failed to create bitmap ${b.name}: ${why(err)}`);
    }
    try {
      await to.merge(b.name, await from.source(b.name));
    } catch (err) {
      await to.remove(b.name).catch(() => {});
      fail(`Failed to populate bitmap ${b.name}: ${why(err)}`);
    }
  }
}

function pow2floor(n: number): number {
  if (n < 1) return 0;
  return 2 ** Math.floor(Math.log2(n));
}

/**
 * bdrv_snapshot_load_tmp[_by_id_or_name]: a read-only view of the image at a snapshot, on the
 * image's backing chain. Close it with `snap.driver.close()` before the image itself.
 */
export async function loadSnapshot(image: Image, ref: SnapshotRef): Promise<Image> {
  const d = image.driver;
  const failLoad = (msg: string, code: VdiskError['code'] = 'NOT_FOUND'): never => {
    throw new VdiskError(code, `Failed to load snapshot: ${msg}`, { path: image.path });
  };
  if (d.openSnapshot === undefined) {
    failLoad(
      `Block format '${d.format}' used by device '' does not support temporarily loading internal snapshots`,
      'UNSUPPORTED',
    );
  }
  const open = async (id: string | undefined, name: string | undefined): Promise<FormatImage | null> => {
    try {
      return await d.openSnapshot!({
        ...(id !== undefined ? { id } : {}),
        ...(name !== undefined ? { name } : {}),
      });
    } catch (err) {
      if (err instanceof VdiskError && err.code === 'NOT_FOUND') return null;
      throw err;
    }
  };
  let view: FormatImage | null;
  if ('idOrName' in ref) {
    view = (await open(ref.idOrName, undefined)) ?? (await open(undefined, ref.idOrName));
  } else {
    view = await open(ref.id, ref.name);
  }
  if (view === null) failLoad("Can't find snapshot");
  const snap = new Image(view!, image.path);
  snap.setBacking(image.backing);
  return snap;
}

interface CopierConfig {
  parts: Part[];
  total: number;
  target: Image;
  compressed: boolean;
  /** The target compresses every write (prepareCompressedRange): compress ahead of the turn. */
  precompress: boolean;
  minSparse: number;
  bufSize: number;
  clusterSize: number;
  coroutines: number;
  inOrder: boolean;
  /** -C (ConvertOptions.copyOffload). */
  copyOffload: boolean;
  targetHasBacking: boolean;
  hasZeroInit: boolean;
  targetBackingSize: number;
  /** Alignment of zero-run ends, in sectors. */
  alignment: number;
  onProgress?: ((done: number, total: number) => void) | undefined;
  salvage: boolean;
  onWarning?: ((message: string) => void) | undefined;
}

interface WriteRun {
  /** Start within the request. */
  pos: number;
  length: number;
  kind: 'data' | 'zero' | 'backing';
  /** Data compressed ahead of the request's turn (precompress): the ordered write. */
  commit: (() => Promise<void>) | null;
}

/** The write runs of a data request that HostFile.readScan read and scanned (plan()'s cut). */
function scannedRuns(counts: Int32Array, n: number, length: number): WriteRun[] {
  const runs: WriteRun[] = [];
  let pos = 0;
  for (let i = 0; i < n && pos < length; i++) {
    const sectors = counts[i]!;
    const len = Math.min(length - pos, Math.abs(sectors) * SECTOR);
    runs.push({ pos, length: len, kind: sectors > 0 ? 'data' : 'zero', commit: null });
    pos += len;
  }
  return runs;
}

interface Item {
  offset: number;
  length: number;
  status: Status;
  /** Data that a source file holds as it is (FormatImage.directFile), here. */
  src?: { file: HostFile; offset: number } | undefined;
}

/**
 * convert_iteration_sectors(): hands out the next request of the walk. The status of the
 * current source extent is kept until the walk passes its end, as qemu-img does.
 */
class Planner {
  private status: Status = 'data';
  private statusEnd = 0;
  /** The source file holding the current data extent as it is, and where its first byte lies in it. */
  private srcFile: HostFile | undefined;
  private srcHost = 0;
  private srcStart = 0;

  constructor(private readonly c: CopierConfig) {}

  private part(offset: number): Part {
    const parts = this.c.parts;
    for (const p of parts) if (offset < p.start + p.span) return p;
    return parts[parts.length - 1]!;
  }

  async next(pos: number): Promise<Item> {
    const c = this.c;
    const part = this.part(pos);
    let n = Math.min(c.total - pos, MAX_REQUEST);
    let postBackingZero = false;
    if (c.targetBackingSize >= 0) {
      if (pos >= c.targetBackingSize) postBackingZero = true;
      else if (pos + n > c.targetBackingSize) n = c.targetBackingSize - pos;
    }
    if (this.statusEnd <= pos) {
      const off = pos - part.start;
      const count = Math.min(n, part.span - off);
      let st: Extent;
      if (off >= part.size) {
        // The sector tail past an image's odd size reads as zeros.
        st = { offset: off, length: part.span - off, allocated: true, zero: true, data: false };
      } else {
        const len = Math.min(count, part.size - off);
        const query = (n: number) =>
          c.targetHasBacking ? part.image.layerStatus(off, n) : part.image.blockStatus(off, n);
        try {
          st = await query(len);
        } catch (err) {
          if (!c.salvage) throw err;
          // qemu-img --salvage: again for one sector; if that fails too, read it as data.
          try {
            st = await query(Math.min(SECTOR, len));
          } catch (err1) {
            c.onWarning?.(`error while reading block status at offset ${pos}: ${errnoText(err1)}`);
            st = { offset: off, length: SECTOR, allocated: true, zero: false, data: true };
          }
        }
      }
      const len = roundUp(st.length, SECTOR);
      if (st.zero) this.status = postBackingZero ? 'backing' : 'zero';
      else if (st.data) this.status = 'data';
      else this.status = c.targetHasBacking ? 'backing' : 'data';
      this.statusEnd = pos + len;
      this.srcFile = undefined;
      if (this.status === 'data' && st.hostOffset !== undefined && !c.salvage) {
        this.srcFile = layerAt(part.image, st.depth ?? 0)?.driver.directFile?.(st);
        this.srcHost = st.hostOffset;
        this.srcStart = pos;
      }
    }
    n = Math.min(n, this.statusEnd - pos);
    if (this.status === 'data') n = Math.min(n, c.bufSize);
    // Compressed images are written in whole clusters: a short range takes its whole cluster.
    if (c.compressed) {
      if (n < c.clusterSize) {
        n = Math.min(c.clusterSize, c.total - pos);
        this.status = 'data';
      } else {
        n -= n % c.clusterSize;
      }
    }
    if (c.minSparse === 0 && this.status === 'zero') n = Math.min(n, c.bufSize);
    // Whole data within the image's bytes (not the sector tail past an odd size) may be copied
    // from the source file by the host; compressed output is written from the buffer.
    const src =
      this.status === 'data' &&
      this.srcFile !== undefined &&
      !c.compressed &&
      !c.precompress &&
      pos + n <= part.start + part.size
        ? { file: this.srcFile, offset: this.srcHost + (pos - this.srcStart) }
        : undefined;
    return { offset: pos, length: n, status: this.status, src };
  }
}

class Copier {
  private readonly lock = new Mutex();
  private planner: Planner;
  private pos = 0;
  private error: unknown = null;
  private wrOffs = 0;
  private readonly waiters = new Map<number, () => void>();
  private done = 0;
  private allocated = 0;

  constructor(private readonly c: CopierConfig) {
    this.planner = new Planner(c);
  }

  /** Counts what will be read or written (for progress), then copies with c.coroutines workers. */
  async run(): Promise<void> {
    const c = this.c;
    // qemu-img walks the source once before copying (to count for progress): with --salvage,
    // its warnings about block status come from both walks.
    if (c.onProgress !== undefined || c.salvage) {
      const counter = new Planner(c);
      for (let pos = 0; pos < c.total; ) {
        const item = await counter.next(pos);
        if (this.counts(item)) this.allocated += item.length;
        pos += item.length;
      }
    }
    const workers: Promise<void>[] = [];
    for (let i = 0; i < c.coroutines; i++) workers.push(this.worker());
    await Promise.all(workers);
    if (this.error !== null) throw this.error;
  }

  private counts(item: Item): boolean {
    return item.status === 'data' || (this.c.minSparse === 0 && item.status === 'zero');
  }

  private setError(err: unknown): void {
    if (this.error === null) this.error = err;
    for (const w of this.waiters.values()) w();
    this.waiters.clear();
  }

  private async take(): Promise<Item | null> {
    return this.lock.run(async () => {
      if (this.error !== null || this.pos >= this.c.total) return null;
      const item = await this.planner.next(this.pos);
      this.pos += item.length;
      return item;
    });
  }

  private async worker(): Promise<void> {
    const c = this.c;
    let buf: Buffer | null = null;
    // The sector counts of a data request's runs when its source file read and scanned it.
    let scanRuns: Int32Array | null = null;
    for (;;) {
      let item: Item | null;
      try {
        item = await this.take();
      } catch (err) {
        this.setError(
          new VdiskError('EIO', `error while reading block status at offset ${this.pos}: ${hostText(err)}`, {
            offset: this.pos,
            cause: err,
          }),
        );
        return;
      }
      if (item === null) return;
      let status = item.status;
      if (this.counts(item)) {
        this.done += item.length;
        c.onProgress?.(this.done, this.allocated);
      }
      // Under copy offloading, data a source file holds is not read (unless a write needs it).
      let filled = true;
      let scanned = -1;
      try {
        if (status === 'data') {
          buf ??= ioBuffer(c.bufSize);
          if (c.copyOffload && item.src !== undefined) filled = false;
          else if (item.src !== undefined && c.minSparse > 0 && !c.compressed) {
            scanRuns ??= new Int32Array(c.bufSize / SECTOR);
            const b = buf.subarray(0, item.length);
            const scan = {
              min: c.minSparse / SECTOR,
              sectorNum: item.offset / SECTOR,
              alignment: c.alignment,
            };
            scanned = (await item.src.file.readScan(b, item.src.offset, scan, scanRuns)) ?? -1;
            if (scanned < 0) await this.read(b, item.offset);
          } else await this.read(buf.subarray(0, item.length), item.offset);
        } else if (c.minSparse === 0 && status === 'zero') {
          buf ??= ioBuffer(c.bufSize);
          buf.fill(0, 0, item.length);
          status = 'data';
        }
      } catch (err) {
        this.setError(
          new VdiskError('EIO', `error while reading at byte ${item.offset}: ${hostText(err)}`, {
            offset: item.offset,
            cause: err,
          }),
        );
        return;
      }
      // Compression runs before this request's turn to write comes: several clusters compress
      // at once (qemu-img compresses inside the ordered write, one cluster at a time).
      let prepared: (() => Promise<void>) | null = null;
      let runs: WriteRun[];
      const prepare = c.target.driver.prepareCompressed?.bind(c.target.driver);
      try {
        runs =
          scanned >= 0 ? scannedRuns(scanRuns!, scanned, item.length) : this.plan(item, status, buf, filled);
        if (c.compressed && status === 'data' && prepare !== undefined) {
          const b = buf!.subarray(0, item.length);
          if (runs.some((r) => r.kind === 'data')) prepared = await prepare(b, item.offset);
        } else if (c.precompress && status === 'data') {
          runs = await this.precompress(item, runs, buf!);
        }
      } catch (err) {
        this.setError(
          new VdiskError('EIO', `error while writing at byte ${item.offset}: ${hostText(err)}`, {
            offset: item.offset,
            cause: err,
          }),
        );
        return;
      }
      if (c.inOrder) {
        while (this.wrOffs !== item.offset && this.error === null) {
          await new Promise<void>((resolve) => this.waiters.set(item.offset, resolve));
        }
      }
      if (this.error !== null) return;
      const writeError = (err: unknown) =>
        new VdiskError(
          err instanceof VdiskError && err.code === 'ENOSPC' ? 'ENOSPC' : 'EIO',
          `error while writing at byte ${item.offset}: ${hostText(err)}`,
          { offset: item.offset, cause: err },
        );
      // The request takes its place in the target in order (qcow2: its clusters are allocated,
      // so the file's layout is qemu-img's); its data I/O then overlaps with the next requests'.
      const finishing: Promise<void>[] = [];
      try {
        await this.write(item, runs, buf, prepared, finishing, this.writeSource(item, buf, filled));
      } catch (err) {
        await Promise.allSettled(finishing);
        this.setError(writeError(err));
        return;
      }
      if (c.inOrder) {
        this.wrOffs = item.offset + item.length;
        const w = this.waiters.get(this.wrOffs);
        if (w !== undefined) {
          this.waiters.delete(this.wrOffs);
          w();
        }
      }
      try {
        await Promise.all(finishing);
      } catch (err) {
        await Promise.allSettled(finishing);
        this.setError(writeError(err));
        return;
      }
    }
  }

  /** convert_co_read(): a range of the concatenation, across parts, zeros past each part's size. */
  private async read(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      let part = this.c.parts[0]!;
      for (const p of this.c.parts) {
        if (pos < p.start + p.span) {
          part = p;
          break;
        }
      }
      const off = pos - part.start;
      const n = Math.min(buf.length - done, part.span - off);
      const inImage = Math.max(0, Math.min(n, part.size - off));
      if (inImage > 0) await this.readPart(part, buf.subarray(done, done + inImage), off, pos);
      if (inImage < n) buf.fill(0, done + inImage, done + n);
      done += n;
    }
  }

  /** A read of one part; with --salvage, sector by sector when it fails (zeros where that fails). */
  private async readPart(part: Part, buf: Buffer, off: number, pos: number): Promise<void> {
    try {
      await part.image.readAt(buf, off);
      return;
    } catch (err) {
      if (!this.c.salvage) throw err;
    }
    for (let i = 0; i < buf.length; i += SECTOR) {
      const sector = buf.subarray(i, Math.min(buf.length, i + SECTOR));
      try {
        await part.image.readAt(sector, off + i);
      } catch (err) {
        this.c.onWarning?.(`error while reading offset ${pos + i}: ${errnoText(err)}`);
        sector.fill(0);
      }
    }
  }

  /**
   * How convert_co_write() cuts a request: data runs, zero runs (holes or zero clusters) and
   * ranges left to the backing file. Computed before the request's turn to write comes, so the
   * zero scan runs outside the ordered part.
   */
  private plan(item: Item, status: Status, buf: Buffer | null, filled: boolean): WriteRun[] {
    const c = this.c;
    const runs: WriteRun[] = [];
    let sector = item.offset / SECTOR;
    let left = item.length;
    let pos = 0;
    while (left > 0) {
      let n = left;
      let kind: WriteRun['kind'] = status === 'backing' ? 'backing' : 'zero';
      if (status === 'data') {
        const b = buf!.subarray(pos, pos + left);
        let allocated = true;
        // Unread data (copy offloading) is all data, as qemu-img -C copies it.
        if (c.minSparse > 0 && filled) {
          if (c.compressed) {
            allocated = !isAllZero(b);
          } else {
            const [a, sectors] = allocatedSectorsMin(
              b,
              Math.ceil(left / SECTOR),
              c.minSparse / SECTOR,
              sector,
              c.alignment,
            );
            allocated = a;
            n = Math.min(left, sectors * SECTOR);
          }
        }
        kind = allocated ? 'data' : 'zero';
      }
      runs.push({ pos, length: n, kind, commit: null });
      sector += n / SECTOR;
      pos += n;
      left -= n;
    }
    return runs;
  }

  /**
   * Targets that compress every write (vmdk streamOptimized): the whole clusters of each data
   * run are compressed now, several requests at once; their ordered write only appends them.
   * Partial clusters at a run's edges go through the normal write at the request's turn.
   */
  private async precompress(item: Item, runs: WriteRun[], buf: Buffer): Promise<WriteRun[]> {
    const c = this.c;
    const t = c.target;
    const cs = c.clusterSize;
    const out: WriteRun[] = [];
    const jobs: Promise<void>[] = [];
    for (const r of runs) {
      if (r.kind !== 'data') {
        out.push(r);
        continue;
      }
      const off = item.offset + r.pos;
      const end = off + r.length;
      const a = roundUp(off, cs);
      const b = end === t.size ? end : end - (end % cs);
      if (b <= a) {
        out.push(r);
        continue;
      }
      if (a > off) out.push({ pos: r.pos, length: a - off, kind: 'data', commit: null });
      const mid: WriteRun = { pos: a - item.offset, length: b - a, kind: 'data', commit: null };
      out.push(mid);
      jobs.push(
        t.driver.prepareCompressedRange!(buf.subarray(mid.pos, mid.pos + mid.length), a).then((fn) => {
          mid.commit = fn;
        }),
      );
      if (end > b) out.push({ pos: b - item.offset, length: end - b, kind: 'data', commit: null });
    }
    await Promise.all(jobs);
    return out;
  }

  /**
   * Where a data run of the item also lies (WriteSource): the target may have the host copy
   * it, by a reflink where the file systems allow (the bytes were read for the zero scan, but
   * the target then shares the source's blocks instead of taking a copy) or, under copy
   * offloading, by copy_file_range. `fill` reads the item's buffer when it was not read.
   */
  private writeSource(
    item: Item,
    buf: Buffer | null,
    filled: boolean,
  ): ((pos: number) => WriteSource) | undefined {
    const src = item.src;
    if (src === undefined || buf === null) return undefined;
    let filling: Promise<void> | null = filled ? Promise.resolve() : null;
    const fill = () => (filling ??= this.read(buf.subarray(0, item.length), item.offset));
    const how = this.c.copyOffload ? 'copy' : 'clone';
    return (pos) => ({ file: src.file, offset: src.offset + pos, how, fill });
  }

  /** convert_co_write(). */
  private async write(
    item: Item,
    runs: WriteRun[],
    buf: Buffer | null,
    prepared: (() => Promise<void>) | null,
    finishing: Promise<void>[],
    from: ((pos: number) => WriteSource) | undefined,
  ): Promise<void> {
    const c = this.c;
    const t = c.target;
    for (const r of runs) {
      const off = item.offset + r.pos;
      if (r.kind === 'data') {
        const data = buf!.subarray(r.pos, r.pos + r.length);
        if (prepared !== null) await prepared();
        else if (r.commit !== null) await r.commit();
        else if (c.compressed) await t.driver.writeCompressed!(data, off);
        else {
          const finish = await t.prepareWrite(data, off, from?.(r.pos));
          const p = finish();
          // Handled by the caller (Promise.all): no unhandled rejection in the meantime.
          p.catch(() => {});
          finishing.push(p);
        }
      } else if (r.kind === 'zero' && !c.hasZeroInit) {
        await t.writeZeroes(off, r.length, { unmap: true });
      }
    }
  }
}
