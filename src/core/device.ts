/**
 * The BlockDevice contract that every driver, chain and command speaks.
 *
 * Offsets and lengths are byte counts held in JS numbers: exact up to 2^53 (8 PiB), which
 * bounds every image vdisk opens or creates (checked where sizes enter).
 */

/** What one range of a device holds, as QEMU's block status describes it. */
export interface Extent {
  /** Guest offset of the range. */
  offset: number;
  length: number;
  /**
   * This layer decides the content of the range (QEMU's BDRV_BLOCK_ALLOCATED). False: the
   * range falls through to the backing image (or reads as zeros without one).
   */
  allocated: boolean;
  /** The range reads as zeros. */
  zero: boolean;
  /** The range is backed by data stored in a file (QEMU's BDRV_BLOCK_DATA). */
  data: boolean;
  /** Where the data sits in `file`, when it is stored uncompressed and contiguous. */
  hostOffset?: number;
  /** The host file holding the data (the image file or an external data file). */
  file?: string;
  compressed?: boolean;
  /** Set by the chain: 0 for the top image, 1 for its backing, … */
  depth?: number;
}

/**
 * A copy of `e` at chain depth `depth`. Written out field by field: an object spread that
 * adds a property the source lacks (`{ ...e, depth }`) makes V8 (Node 20) build a new map on
 * every call, ~0.9 µs and a few hundred bytes of garbage per extent, on every block status of
 * a chain.
 */
export function extentAtDepth(e: Extent, depth: number): Extent {
  const x: Extent = {
    offset: e.offset,
    length: e.length,
    allocated: e.allocated,
    zero: e.zero,
    data: e.data,
    depth,
  };
  if (e.hostOffset !== undefined) x.hostOffset = e.hostOffset;
  if (e.file !== undefined) x.file = e.file;
  if (e.compressed !== undefined) x.compressed = e.compressed;
  return x;
}

export interface BlockDevice {
  /** Virtual size in bytes. */
  readonly size: number;
  readonly readOnly: boolean;
  /** Read buf.length bytes at offset. The range must lie within the device. */
  readAt(buf: Uint8Array, offset: number): Promise<void>;
  writeAt(buf: Uint8Array, offset: number): Promise<void>;
  /**
   * Status of the range starting at `offset`: one extent of uniform status, of at most
   * `length` bytes (and at least one byte). Callers loop to walk a range.
   */
  blockStatus(offset: number, length: number): Promise<Extent>;
  /** Make a range read as zeros; `unmap` lets the driver deallocate instead of writing. */
  writeZeroes(offset: number, length: number, opts?: { unmap?: boolean }): Promise<void>;
  /** Hint that a range is no longer needed (its content becomes unspecified or zero). */
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** Walk a range as a sequence of extents (merged where adjacent extents share a status). */
export async function* extentsOf(
  dev: BlockDevice,
  offset = 0,
  length = dev.size - offset,
): AsyncGenerator<Extent> {
  const end = offset + length;
  let pos = offset;
  let pending: Extent | null = null;
  while (pos < end) {
    const e = await dev.blockStatus(pos, end - pos);
    if (e.length <= 0) throw new Error(`blockStatus returned an empty extent at ${pos}`);
    if (pending !== null && sameStatus(pending, e)) {
      pending.length += e.length;
    } else {
      if (pending !== null) yield pending;
      pending = { ...e };
    }
    pos += e.length;
  }
  if (pending !== null) yield pending;
}

/** Can b be merged onto the end of a? (Same flags, same file, and host offsets that follow.) */
export function sameStatus(a: Extent, b: Extent): boolean {
  if (a.allocated !== b.allocated || a.zero !== b.zero || a.data !== b.data) return false;
  if (
    (a.depth ?? 0) !== (b.depth ?? 0) ||
    a.file !== b.file ||
    (a.compressed ?? false) !== (b.compressed ?? false)
  )
    return false;
  if (a.hostOffset === undefined || b.hostOffset === undefined) return a.hostOffset === b.hostOffset;
  return a.hostOffset + a.length === b.hostOffset;
}

const ZERO = new Uint8Array(1 << 20);

/** True when every byte of buf is zero (memcmp against a shared zero page, 1 MiB at a time). */
export function isAllZero(buf: Uint8Array): boolean {
  const zero = Buffer.from(ZERO.buffer, 0, ZERO.length);
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  for (let pos = 0; pos < b.length; pos += zero.length) {
    const n = Math.min(zero.length, b.length - pos);
    if (b.compare(zero, 0, n, pos, pos + n) !== 0) return false;
  }
  return true;
}
