/**
 * `compare`: are two images' guest contents identical? As qemu-img.c img_compare (7.2):
 * both chains are walked by block status, ranges both report as zeros are skipped, ranges
 * allocated on one side only must read as zeros on that side, ranges allocated on both are
 * read and compared. Reads go in 2 MiB chunks, several ahead of the comparison and both
 * images at once; memory stays bounded (READ_AHEAD × 2 × 2 MiB).
 *
 * Outcomes and qemu-img's exit statuses: identical (0), different (1), open failure (2),
 * block status failure (3), read failure (4).
 */
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import { strerror, VdiskError } from '../core/errors.js';
import type { Image } from '../core/image.js';
import { ioBuffer } from '../core/io-buffer.js';
import { findNonzero, firstDifference } from './buffers.js';
import { type ChainStatus, statusAbove, statusFlags } from './status.js';

export const IO_BUF_SIZE = 2 * 1024 * 1024;
const READ_AHEAD = 4;
/** Bound on chunks queued behind reads (zero chunks are cheap, but not free). */
const MAX_PENDING = 1024;

export interface CompareOptions extends OpenContext {
  /** Warnings printed while opening the images (chain/open.ts onWarning), whole lines. */
  onOpenWarning?: (message: string) => void;
  filename1: string;
  filename2: string;
  format1?: string | undefined;
  format2?: string | undefined;
  /** -s: fail on different sizes or different allocation. */
  strict?: boolean;
  forceShare?: boolean;
  /**
   * Progress: called with 0 once both images are open, then once per chunk in offset order
   * with the bytes walked so far, out of `total` (the larger size).
   */
  onProgress?: (done: number, total: number) => void;
  /** Called when the common part is identical and the sizes differ, before the rest is checked. */
  onSizeMismatch?: () => void;
}

export type CompareOutcome =
  | { identical: true }
  | { identical: false; reason: 'content'; offset: number }
  | { identical: false; reason: 'size' } // strict mode only
  | { identical: false; reason: 'status'; offset: number }; // strict mode only

export interface CompareResult {
  /** The sizes differ (non-strict): qemu-img prints "Warning: Image size mismatch!". */
  sizeMismatch: boolean;
  outcome: CompareOutcome;
}

/** Why compare failed, with qemu-img's exit status (2 open, 3 block status, 4 read). */
export class CompareError extends VdiskError {
  constructor(
    readonly exitCode: 2 | 3 | 4,
    err: VdiskError,
  ) {
    super(err.code, err.message, { path: err.path, offset: err.offset, op: err.op, cause: err.cause });
  }
}

function hostText(err: unknown): string {
  const cause = err instanceof VdiskError ? err.cause : err;
  if (cause !== undefined && (cause as { code?: unknown }).code !== undefined) return strerror(cause);
  return err instanceof Error ? err.message : String(err);
}

async function open(
  filename: string,
  format: string | undefined,
  forceShare: boolean,
  onWarning: ((message: string) => void) | undefined,
  ctx: OpenContext,
): Promise<Image> {
  try {
    return await openImage(filename, {
      ...openContext(ctx),
      format,
      forceShare,
      backing: 'follow',
      allowDataFile: true,
      onWarning,
    });
  } catch (err) {
    if (err instanceof VdiskError) throw new CompareError(2, err);
    throw err;
  }
}

/**
 * Block status of one image through the walk, from `offset` to the image's end. A run is asked
 * for once and handed out chunk by chunk: the walk takes at most 2 MiB of a run at a time, and
 * asking again from each chunk re-walked the run from there (a qcow2 L2 table's entries,
 * 256 times over for a 512 MiB run: ~70 ms of compare's ~0.3 s on a 650 MiB disk). The rest of
 * a run is what asking again would answer (the images do not change under compare).
 */
class StatusWalk {
  private last: ChainStatus | null = null;

  constructor(
    private readonly img: Image,
    private readonly name: string,
  ) {}

  async at(offset: number): Promise<ChainStatus> {
    const l = this.last;
    if (l !== null && offset >= l.offset && offset < l.offset + l.length) {
      return {
        offset,
        length: l.offset + l.length - offset,
        allocated: l.allocated,
        zero: l.zero,
        data: l.data,
        offsetValid: l.offsetValid,
        eof: l.eof,
        depth: l.depth,
      };
    }
    try {
      this.last = await statusAbove(this.img, offset, this.img.size - offset);
      return this.last;
    } catch (err) {
      const name = this.name;
      throw new CompareError(
        3,
        new VdiskError('EIO', `Sector allocation test failed for ${name}`, {
          path: name,
          offset,
          cause: err,
        }),
      );
    }
  }
}

async function read(img: Image, name: string, buf: Uint8Array, offset: number): Promise<void> {
  try {
    await img.readAt(buf, offset);
  } catch (err) {
    throw new CompareError(
      4,
      new VdiskError('EIO', `Error while reading offset ${offset} of ${name}: ${hostText(err)}`, {
        path: name,
        offset,
        cause: err,
      }),
    );
  }
}

/** One step of the walk, with its reads started ahead of time. */
interface Step {
  offset: number;
  length: number;
  /** The step holds buffers (reads). */
  reads: boolean;
  /** Resolves to the offset of the first mismatch, or -1. */
  result: Promise<number>;
}

const NO_MISMATCH: Promise<number> = Promise.resolve(-1);

export async function compareCommand(o: CompareOptions): Promise<CompareResult> {
  const forceShare = o.forceShare === true;
  const img1 = await open(o.filename1, o.format1, forceShare, o.onOpenWarning, o);
  let img2: Image;
  try {
    img2 = await open(o.filename2, o.format2, forceShare, o.onOpenWarning, o);
  } catch (err) {
    await img1.close();
    throw err;
  }
  try {
    return await compareImages(img1, img2, o);
  } finally {
    await img2.close().catch(() => {});
    await img1.close().catch(() => {});
  }
}

/** Free buffers for in-flight steps: each step takes two. */
class BufferPool {
  private free: Uint8Array[] = [];
  take(): Uint8Array {
    return this.free.pop() ?? ioBuffer(IO_BUF_SIZE);
  }
  give(...bufs: Uint8Array[]): void {
    this.free.push(...bufs);
  }
}

export async function compareImages(
  img1: Image,
  img2: Image,
  o: Pick<CompareOptions, 'filename1' | 'filename2' | 'strict' | 'onProgress' | 'onSizeMismatch'>,
): Promise<CompareResult> {
  const name1 = o.filename1;
  const name2 = o.filename2;
  const size1 = img1.size;
  const size2 = img2.size;
  const total = Math.min(size1, size2);
  const base = Math.max(size1, size2);
  const progress = (done: number) => o.onProgress?.(done, base);
  progress(0);
  if (o.strict && size1 !== size2)
    return { sizeMismatch: false, outcome: { identical: false, reason: 'size' } };

  const pool = new BufferPool();
  // Every chunk of the walk, in order; those that read hold buffers until they are settled.
  const pending: Step[] = [];
  let reading = 0;
  let mismatch: CompareOutcome | null = null;

  /** Wait for the oldest step; record a mismatch. */
  const settle = async (): Promise<void> => {
    const step = pending.shift()!;
    const at = await step.result;
    if (step.reads) reading--;
    if (at >= 0) {
      if (mismatch === null) mismatch = { identical: false, reason: 'content', offset: at };
      return;
    }
    progress(step.offset + step.length);
  };
  const drain = async (): Promise<void> => {
    try {
      while (pending.length > 0 && mismatch === null) await settle();
    } finally {
      // Let every read finish before the images close (their errors are superseded).
      await Promise.allSettled(pending.map((s) => s.result));
    }
  };

  /** Both images allocated: read both, compare sector by sector. */
  const compareBoth = (offset: number, length: number): Promise<number> => {
    const b1 = pool.take().subarray(0, length);
    const b2 = pool.take().subarray(0, length);
    const r = Promise.all([read(img1, name1, b1, offset), read(img2, name2, b2, offset)]).then(() => {
      const d = firstDifference(b1, b2, length);
      return d < 0 ? -1 : offset + d;
    });
    return r.finally(() => pool.give(bufOf(b1), bufOf(b2)));
  };
  /** One side allocated: it must read as zeros. */
  const checkEmpty = (img: Image, name: string, offset: number, length: number): Promise<number> => {
    const b = pool.take().subarray(0, length);
    const r = read(img, name, b, offset).then(() => {
      const i = findNonzero(b, length);
      return i < 0 ? -1 : offset + i;
    });
    return r.finally(() => pool.give(bufOf(b)));
  };
  const push = async (offset: number, length: number, result?: Promise<number>): Promise<void> => {
    const step = { offset, length, reads: result !== undefined, result: result ?? NO_MISMATCH };
    pending.push(step);
    if (step.reads) reading++;
    // Swallow rejections until the step is awaited in order (no unhandled rejection).
    step.result.catch(() => {});
    while (
      (reading >= READ_AHEAD || pending.length >= MAX_PENDING || (!step.reads && pending.length === 1)) &&
      mismatch === null
    )
      await settle();
  };

  const walk1 = new StatusWalk(img1, name1);
  const walk2 = new StatusWalk(img2, name2);
  try {
    let offset = 0;
    while (offset < total && mismatch === null) {
      const s1 = await walk1.at(offset);
      const s2 = await walk2.at(offset);
      let chunk = Math.min(s1.length, s2.length);
      if (o.strict && statusFlags(s1) !== statusFlags(s2)) {
        await drain();
        if (mismatch !== null) break;
        return { sizeMismatch: false, outcome: { identical: false, reason: 'status', offset } };
      }
      if (s1.zero && s2.zero) {
        await push(offset, chunk);
      } else if (s1.allocated === s2.allocated) {
        if (s1.allocated) {
          chunk = Math.min(chunk, IO_BUF_SIZE);
          await push(offset, chunk, compareBoth(offset, chunk));
        } else {
          await push(offset, chunk);
        }
      } else {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        const result = s1.allocated
          ? checkEmpty(img1, name1, offset, chunk)
          : checkEmpty(img2, name2, offset, chunk);
        await push(offset, chunk, result);
      }
      offset += chunk;
    }
    await drain();
    if (mismatch !== null) return { sizeMismatch: false, outcome: mismatch };

    if (size1 !== size2) {
      o.onSizeMismatch?.();
      const [over, name, walk] = size1 > size2 ? [img1, name1, walk1] : [img2, name2, walk2];
      while (offset < base && mismatch === null) {
        const s = await walk.at(offset);
        let chunk = s.length;
        if (s.allocated && !s.zero) {
          chunk = Math.min(chunk, IO_BUF_SIZE);
          await push(offset, chunk, checkEmpty(over, name, offset, chunk));
        } else {
          await push(offset, chunk);
        }
        offset += chunk;
      }
      await drain();
      return { sizeMismatch: true, outcome: mismatch ?? { identical: true } };
    }
    return { sizeMismatch: false, outcome: { identical: true } };
  } finally {
    await Promise.allSettled(pending.map((s) => s.result));
  }
}

function bufOf(b: Uint8Array): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, IO_BUF_SIZE);
}
