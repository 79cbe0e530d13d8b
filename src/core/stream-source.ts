/**
 * A byte stream (standard input) read as a ReadSource, for formats whose images can be read
 * front to back: the drivers open it as any file (HostFile.fromSource) and a copy that walks
 * the image in guest order finds its bytes arriving in order.
 *
 * The stream is consumed forward only. A read ahead of the stream's position skips the bytes
 * between; those are kept (they may be read later: a table after the data it describes, or
 * clusters stored out of guest order), in memory up to a small budget and then in a sparse
 * temporary file (the "spill", created only when needed, bounded, announced by onSpill).
 * Blocks of zeros that are skipped are not stored: they read back as zeros. Small reads (headers,
 * tables) are also remembered in memory, in a bounded LRU, because drivers read them again.
 * A read of bytes that went by and were not kept (a data range read twice) is refused with a
 * one-line error rather than buffered: memory stays bounded whatever the stream.
 *
 * `size` is the file size the drivers see; the stream's length is unknown until its end, so
 * the caller gives a bound, and a read past the actual end fails as a cut-short input.
 */
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { isAllZero } from './device.js';
import { strerror, VdiskError } from './errors.js';
import type { ReadSource } from './host-file.js';

export interface StreamSourceOptions {
  /** The size drivers see (an upper bound of the stream's length). */
  size: number;
  /** Where to create the spill file when one is needed (a directory the caller removes). */
  spillDir: string;
  /** Most bytes the spill may store. */
  spillLimit: number;
  /** The spill file has been created (once). */
  onSpill?: (() => void) | undefined;
  /** Memory for skipped bytes before they go to the spill (default 4 MiB). */
  memoryBudget?: number;
}

const KEEP_READS_MAX = 1 << 20;
const KEEP_READS_BUDGET = 16 << 20;
const BLOCK = 64 << 10;
/** Most separate skipped (or spilled) ranges tracked: a layout more scattered is refused. */
const MAX_RANGES = 1 << 20;

interface Piece {
  offset: number;
  data: Buffer;
}

/**
 * A Readable's bytes pulled in pieces of at most `max` bytes, one at a time (StreamSource, and
 * the raw stream convert reads: src/formats/raw/stream-read.ts). A failing stream becomes one
 * VdiskError line.
 */
export class ChunkReader {
  private leftover: Buffer | null = null;
  private done = false;
  private readonly it: AsyncIterator<unknown>;

  constructor(input: Readable) {
    this.it = input[Symbol.asyncIterator]();
  }

  /** The stream's end has been read. */
  get ended(): boolean {
    return this.done;
  }

  /** Up to `max` bytes from the stream, or null at its end. */
  async next(max: number): Promise<Buffer | null> {
    let chunk = this.leftover;
    this.leftover = null;
    while (chunk === null || chunk.length === 0) {
      if (this.done) return null;
      let r: IteratorResult<unknown>;
      try {
        r = await this.it.next();
      } catch (err) {
        throw new VdiskError('EIO', `error while reading standard input: ${strerror(err)}`, { cause: err });
      }
      if (r.done === true) {
        this.done = true;
        return null;
      }
      const v = r.value;
      chunk = Buffer.isBuffer(v) ? v : Buffer.from(v as Uint8Array);
    }
    if (chunk.length > max) {
      this.leftover = chunk.subarray(max);
      chunk = chunk.subarray(0, max);
    }
    return chunk;
  }

  /** Put bytes taken by next() back in front of the rest. */
  unread(chunk: Buffer): void {
    this.leftover = this.leftover === null ? chunk : Buffer.concat([chunk, this.leftover]);
  }
}

export class StreamSource implements ReadSource {
  readonly size: number;
  readonly sequential = true;
  /** Bytes consumed from the stream. */
  private pos = 0;
  private readonly reader: ChunkReader;
  /** Recent small reads (offset order irrelevant; most recent last). */
  private recent: Piece[] = [];
  private recentBytes = 0;
  /** Skipped non-zero blocks held in memory, in offset order. */
  private skipped: Piece[] = [];
  private skippedBytes = 0;
  /** Ranges skipped (not read), merged, in order: they read back as kept blocks or zeros. */
  private skips: Array<[number, number]> = [];
  private spillFile: FileHandle | null = null;
  /** Ranges stored in the spill file (at their stream offsets), in order. */
  private spilled: Array<[number, number]> = [];
  private spillBytes = 0;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    input: Readable,
    private readonly o: StreamSourceOptions,
  ) {
    this.size = o.size;
    this.reader = new ChunkReader(input);
  }

  /** Bytes consumed so far. */
  get position(): number {
    return this.pos;
  }

  /** Bytes stored in the spill file. */
  get spilledBytes(): number {
    return this.spillBytes;
  }

  read(buf: Uint8Array, offset: number): Promise<number> {
    // One at a time: the stream has one position.
    const r = this.queue.then(() => this.readNow(buf, offset));
    this.queue = r.catch(() => {});
    return r;
  }

  /**
   * Consume the rest of the stream, up to `max` bytes more (so that the writer of a pipe is not
   * cut off by an early close; an endless stream is not read forever). Answers whether the end
   * was reached.
   */
  async drain(max = 64 << 20): Promise<boolean> {
    await this.queue.catch(() => {});
    const stop = this.pos + max;
    while (this.pos < stop) if ((await this.next(Math.min(1 << 20, stop - this.pos))) === null) return true;
    return false;
  }

  async close(): Promise<void> {
    await this.spillFile?.close().catch(() => {});
    this.spillFile = null;
    this.recent = [];
    this.skipped = [];
  }

  private async readNow(buf: Uint8Array, offset: number): Promise<number> {
    const end = offset + buf.length;
    if (offset < this.pos) {
      const back = Math.min(end, this.pos);
      await this.readBehind(buf.subarray(0, back - offset), offset);
      if (back === end) return buf.length;
    }
    const from = Math.max(offset, this.pos);
    if (from > this.pos) await this.skip(from - this.pos);
    const out = buf.subarray(from - offset);
    let done = 0;
    while (done < out.length) {
      const chunk = await this.next(out.length - done);
      if (chunk === null) {
        throw new VdiskError(
          'INVALID_IMAGE',
          `standard input ended at byte ${this.pos}: the image is cut short`,
        );
      }
      out.set(chunk, done);
      done += chunk.length;
    }
    if (out.length <= KEEP_READS_MAX) this.remember(from, Buffer.from(out));
    return buf.length;
  }

  /** Up to `max` bytes from the stream, or null at its end. */
  private async next(max: number): Promise<Buffer | null> {
    const chunk = await this.reader.next(max);
    if (chunk !== null) this.pos += chunk.length;
    return chunk;
  }

  /** Consume n bytes, keeping their non-zero blocks. */
  private async skip(n: number): Promise<void> {
    const target = this.pos + n;
    const last = this.skips[this.skips.length - 1];
    if (last !== undefined && last[1] === this.pos) last[1] = target;
    else {
      if (this.skips.length >= MAX_RANGES) throw scattered();
      this.skips.push([this.pos, target]);
    }
    while (this.pos < target) {
      const at = this.pos;
      // Whole blocks where possible, so that zero detection sees whole blocks.
      const want = Math.min(target - at, BLOCK - (at % BLOCK));
      const block = Buffer.allocUnsafe(want);
      let got = 0;
      while (got < want) {
        const c = await this.next(want - got);
        if (c === null) {
          throw new VdiskError(
            'INVALID_IMAGE',
            `standard input ended at byte ${this.pos}: the image is cut short`,
          );
        }
        c.copy(block, got);
        got += c.length;
      }
      if (!isAllZero(block)) await this.keepSkipped(at, block);
    }
  }

  private async keepSkipped(offset: number, data: Buffer): Promise<void> {
    if (this.skippedBytes + data.length <= (this.o.memoryBudget ?? 4 << 20)) {
      this.skipped.push({ offset, data });
      this.skippedBytes += data.length;
      return;
    }
    if (this.spillBytes + data.length > this.o.spillLimit)
      throw new VdiskError(
        'ENOSPC',
        `standard input needs more than ${Math.max(this.o.spillLimit, 0)} bytes of temporary space`,
      );
    if (this.spillFile === null) {
      this.spillFile = await (await import('node:fs/promises')).open(
        join(this.o.spillDir, 'stdin-skipped'),
        'wx+',
        0o600,
      );
      this.o.onSpill?.();
    }
    await this.spillFile.write(data, 0, data.length, offset);
    this.spillBytes += data.length;
    const last = this.spilled[this.spilled.length - 1];
    if (last !== undefined && last[1] === offset) last[1] = offset + data.length;
    else {
      if (this.spilled.length >= MAX_RANGES) throw scattered();
      this.spilled.push([offset, offset + data.length]);
    }
  }

  private remember(offset: number, data: Buffer): void {
    this.recent.push({ offset, data });
    this.recentBytes += data.length;
    while (this.recentBytes > KEEP_READS_BUDGET && this.recent.length > 1) {
      const old = this.recent.shift()!;
      this.recentBytes -= old.data.length;
    }
  }

  /** The parts of [start, end) that were not skipped. */
  private gaps(start: number, end: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    // First skip range that ends after start (binary search: the list is in order).
    let lo = 0;
    let hi = this.skips.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.skips[mid]![1] <= start) lo = mid + 1;
      else hi = mid;
    }
    let at = start;
    for (let i = lo; i < this.skips.length && at < end; i++) {
      const [s, e] = this.skips[i]!;
      if (s >= end) break;
      if (s > at) out.push([at, s]);
      at = Math.max(at, e);
    }
    if (at < end) out.push([at, end]);
    return out;
  }

  /** Bytes before the stream's position: kept reads, kept skipped blocks, or zeros. */
  private async readBehind(buf: Uint8Array, offset: number): Promise<void> {
    const end = offset + buf.length;
    for (let i = this.recent.length - 1; i >= 0; i--) {
      const r = this.recent[i]!;
      if (r.offset <= offset && r.offset + r.data.length >= end) {
        buf.set(r.data.subarray(offset - r.offset, end - r.offset));
        return;
      }
    }
    // What was not skipped was read: it must be among the kept reads.
    for (const [a, b] of this.gaps(offset, end)) {
      if (!this.recent.some((r) => r.offset <= a && r.offset + r.data.length >= b))
        throw new VdiskError(
          'UNSUPPORTED',
          `standard input: bytes ${a}-${b - 1} were needed again after they went by; convert from a file instead`,
        );
    }
    buf.fill(0);
    for (const r of this.recent) overlay(buf, offset, r);
    for (const p of this.skipped) overlay(buf, offset, p);
    for (const [s, e] of this.spilled) {
      const a = Math.max(s, offset);
      const b = Math.min(e, end);
      if (a < b) await this.spillFile!.read(buf, a - offset, b - a, a);
    }
  }
}

function scattered(): VdiskError {
  return new VdiskError(
    'UNSUPPORTED',
    'standard input: the image is too scattered to read in order; convert from a file instead',
  );
}

function overlay(buf: Uint8Array, offset: number, p: Piece): void {
  const a = Math.max(p.offset, offset);
  const b = Math.min(p.offset + p.data.length, offset + buf.length);
  if (a < b) buf.set(p.data.subarray(a - p.offset, b - p.offset), a - offset);
}
