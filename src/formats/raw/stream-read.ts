/**
 * A raw image read from a stream (standard input) whose length is not known until its end.
 * convert uses it as its source when a raw stream goes into a target that is created at a
 * provisional size and set to the stream's length once the copy is done
 * (FormatDriver.streamTargetSize; src/commands/convert-pipe.ts).
 *
 * - `size` is that provisional size. Before the end is seen every range is data; after it,
 *   the rest reads as zeros and block status says so, so the copy skips it in one step.
 * - The stream is consumed once, front to back. Reads may be issued out of order by the copy's
 *   workers: a read waits until the reads before it have consumed their bytes. A read of bytes
 *   that went by is refused (the copy never asks for them twice).
 * - Memory: the chunks the stream hands out, copied straight into the callers' buffers.
 */
import type { Readable } from 'node:stream';
import type { Extent } from '../../core/device.js';
import type { FormatImage } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { ChunkReader } from '../../core/stream-source.js';
import { readOnlyError } from '../readonly.js';

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class RawStreamImage implements FormatImage {
  readonly format = 'raw';
  readonly alignment = 512;
  readonly readOnly = true;
  /** Bytes consumed from the stream. */
  private pos = 0;
  private failure: unknown = null;
  private readonly reader: ChunkReader;
  /** Reads waiting for the stream to reach their offset, by offset. */
  private readonly waiting = new Map<number, Waiter>();

  constructor(
    input: Readable,
    /** The provisional size (an upper bound of the stream's length). */
    readonly size: number,
  ) {
    this.reader = new ChunkReader(input);
  }

  private get ended(): boolean {
    return this.reader.ended;
  }

  /** The stream's length, once its end has been read; null before. */
  get length(): number | null {
    return this.ended ? this.pos : null;
  }

  /** Whether the stream holds bytes past `size` (reads one more byte when the end is not known). */
  async longer(): Promise<boolean> {
    if (this.ended) return false;
    const more = await this.reader.next(1);
    if (more === null) return false;
    this.reader.unread(more);
    return true;
  }

  attach(): void {}

  async blockStatus(offset: number, length: number): Promise<Extent> {
    if (this.ended && offset >= this.pos) return { offset, length, allocated: true, zero: true, data: false };
    const n = this.ended ? Math.min(length, this.pos - offset) : length;
    return { offset, length: n, allocated: true, zero: false, data: true };
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    if (this.failure !== null) throw this.failure;
    if (offset > this.pos && !this.ended) {
      await new Promise<void>((resolve, reject) => this.waiting.set(offset, { resolve, reject }));
    }
    if (offset < this.pos || (offset > this.pos && !this.ended)) {
      throw new VdiskError(
        'UNSUPPORTED',
        `standard input: bytes at ${offset} were needed again after they went by; convert from a file instead`,
      );
    }
    let done = 0;
    try {
      while (done < buf.length && !this.ended) {
        const chunk = await this.reader.next(buf.length - done);
        if (chunk === null) break;
        buf.set(chunk, done);
        done += chunk.length;
      }
    } catch (err) {
      this.fail(err);
      throw err;
    }
    buf.fill(0, done);
    this.pos += done;
    if (this.ended) {
      for (const w of this.waiting.values()) w.resolve();
      this.waiting.clear();
    } else {
      const w = this.waiting.get(this.pos);
      this.waiting.delete(this.pos);
      w?.resolve();
    }
  }

  private fail(err: unknown): void {
    this.failure = err;
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
  }

  async write(): Promise<void> {
    throw readOnlyError('raw stream');
  }
  async writeZeroes(): Promise<void> {
    throw readOnlyError('raw stream');
  }
  async discard(): Promise<void> {}
  async flush(): Promise<void> {}
  async close(): Promise<void> {
    this.fail(new VdiskError('EIO', 'standard input: closed'));
  }
  async actualSize(): Promise<number> {
    return 0;
  }
}
