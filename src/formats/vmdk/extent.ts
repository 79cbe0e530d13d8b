/** What the image asks of one extent (flat or sparse). Offsets are relative to the extent. */
import type { Extent } from '../../core/device.js';
import type { HostFile } from '../../core/host-file.js';

/** The layer below, as an extent sees it (virtual offsets of the whole image). */
export interface Below {
  readonly hasBacking: boolean;
  /** Content below this image at [offset, offset + buf.length) (checks the parent CID first). */
  read(buf: Uint8Array, offset: number): Promise<void>;
}

export interface CheckProblem {
  message: string;
  /** strerror of the error QEMU's check returns. */
  failure: string;
}

export interface VmdkExtent {
  readonly file: HostFile;
  /** Virtual offset of the extent's first byte in the image. */
  readonly start: number;
  /** Virtual bytes the extent holds. */
  readonly size: number;
  readonly flat: boolean;
  readonly compressed: boolean;
  /** Grain size in bytes (sparse extents). */
  readonly grainSize: number | undefined;
  /** Extent type as the descriptor names it ('' for a monolithic sparse file, as QEMU prints). */
  readonly type: string;
  /** File name as qemu-img info shows it. */
  readonly infoFilename: string;
  status(offset: number, length: number): Promise<Extent>;
  read(buf: Uint8Array, offset: number, below: Below): Promise<void>;
  write(buf: Uint8Array, offset: number, below: Below): Promise<void>;
  writeZeroes(offset: number, length: number, below: Below): Promise<void>;
  /** One whole grain, compressed (streamOptimized). */
  writeCompressed?(buf: Uint8Array, offset: number): Promise<void>;
  /** Compress now, write (in the caller's order) when the returned function runs. */
  prepareCompressed?(buf: Uint8Array, offset: number): Promise<() => Promise<void>>;
  /** prepareCompressed for a run of whole grains: one append and one table update for all. */
  prepareCompressedRange?(buf: Uint8Array, offset: number): Promise<() => Promise<void>>;
  /** qemu-img check's walk: the first problem (its message and QEMU's error), or null. */
  check(): Promise<CheckProblem | null>;
  /** Write back pending metadata. */
  flushMetadata(): Promise<void>;
}

/**
 * Requests in flight: each is observed at once (a failure while later ones are still being
 * issued is not an unhandled rejection), and done() waits for all, then throws the first error.
 */
export class Jobs {
  private readonly list: Promise<void>[] = [];
  add(p: Promise<void>): void {
    p.catch(() => {});
    this.list.push(p);
  }
  async done(): Promise<void> {
    const r = await Promise.allSettled(this.list);
    for (const x of r) if (x.status === 'rejected') throw x.reason;
  }
}
