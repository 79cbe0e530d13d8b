/**
 * Sequential images: an image produced front to back as a stream of bytes, without seeking
 * and without a temporary copy, for outputs that cannot seek (an HTTP response, a pipe, a
 * blob store's multipart upload).
 *
 * The recipe is the same for every format: first walk the source's block status into a
 * compact map of what each block of the output holds (a BlockMap: hole, zero or data), then
 * lay the metadata out from the map (headers, tables: every offset is known once the map is),
 * then stream the data blocks in guest order. Memory is the map (2 bits per block: 4 MiB for
 * 1 TiB in 64 KiB clusters) plus a bounded window of reads in flight, whatever the image size.
 *
 * A format's writer is `FormatDriver.createSequential` (src/core/driver.ts). The source is a
 * SeqSource; `imageSeqSource` makes one from an opened Image (its whole chain flattened, or
 * its top layer alone over a backing file that the output will name).
 */
import { isAllZero } from './device.js';
import { VdiskError } from './errors.js';
import type { Image } from './image.js';

/** What one block of the output holds. */
export const HOLE = 0;
/** Reads as zeros and must be stored as such (it hides the backing file's data). */
export const ZERO = 1;
export const DATA = 2;
export type BlockKind = typeof HOLE | typeof ZERO | typeof DATA;

/**
 * The content of a sequential output, block by block: HOLE (not stored: reads as zeros, or
 * falls through to the backing file the output names), ZERO (stored as a zero block: only
 * where there is a backing file) or DATA (stored; its bytes come from SeqSource.read).
 */
export class BlockMap {
  /** Number of blocks (the last one may be short: size need not be a multiple). */
  readonly count: number;
  private readonly bits: Uint8Array;
  private readonly counts = [0, 0, 0];

  constructor(
    readonly size: number,
    readonly granularity: number,
  ) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`invalid size ${size}`);
    if (!Number.isSafeInteger(granularity) || granularity <= 0)
      throw new RangeError(`invalid granularity ${granularity}`);
    this.count = Math.ceil(size / granularity);
    this.bits = new Uint8Array(Math.ceil(this.count / 4));
    this.counts[HOLE] = this.count;
  }

  get(i: number): BlockKind {
    return ((this.bits[i >> 2]! >> ((i & 3) * 2)) & 3) as BlockKind;
  }

  set(i: number, kind: BlockKind): void {
    if (i < 0 || i >= this.count) throw new RangeError(`block ${i} outside the map`);
    const old = this.get(i);
    if (old === kind) return;
    const shift = (i & 3) * 2;
    this.bits[i >> 2] = (this.bits[i >> 2]! & ~(3 << shift)) | (kind << shift);
    this.counts[old]!--;
    this.counts[kind]!++;
  }

  /** Blocks of this kind. */
  countOf(kind: BlockKind): number {
    return this.counts[kind]!;
  }

  /** Guest offset and length of block i (the last block ends at `size`). */
  range(i: number): { offset: number; length: number } {
    const offset = i * this.granularity;
    return { offset, length: Math.min(this.granularity, this.size - offset) };
  }

  /** Maximal runs of blocks of the same kind within [start, end), in order. */
  *runs(start = 0, end = this.count): Generator<{ start: number; count: number; kind: BlockKind }> {
    let i = start;
    while (i < end) {
      const kind = this.get(i);
      let j = i + 1;
      while (j < end && this.get(j) === kind) j++;
      yield { start: i, count: j - i, kind };
      i = j;
    }
  }

  /** Does any block in [start, end) have this kind? */
  any(kind: BlockKind, start: number, end: number): boolean {
    for (let i = start; i < Math.min(end, this.count); i++) if (this.get(i) === kind) return true;
    return false;
  }
}

/** The image to write sequentially, as a writer sees it. */
export interface SeqSource {
  /** Virtual size of the output. */
  readonly size: number;
  /** Read the output's guest content at [offset, offset + buf.length) (in range, any alignment). */
  read(buf: Uint8Array, offset: number): Promise<void>;
  /**
   * The block map at this granularity (a power of two, at least 512). A writer asks once, for
   * its cluster/grain/block size.
   */
  map(granularity: number): Promise<BlockMap>;
  /**
   * The backing file the output names (its HOLE blocks fall through to it); absent for a
   * standalone output, whose map then has no ZERO blocks.
   */
  readonly backing?: SeqBacking | undefined;
}

/** The backing file a layered output names, and the opened image behind that name. */
export interface SeqBacking {
  filename: string;
  format: string;
  size: number;
  /**
   * The backing image itself, for formats that record something of their parent (vmdk: its
   * CID). Writers read it from here and never open `filename`, which may not be a local path;
   * a writer that needs it refuses a source without it.
   */
  image?: Image | undefined;
}

/** A sequential image: its length when known before the first byte, and its bytes in order. */
export interface SeqOutput {
  /** Total bytes `chunks` yields, or null when only known at the end (compressed outputs). */
  readonly length: number | null;
  /**
   * The bytes, front to back. Each yielded buffer belongs to the consumer (the writer does not
   * touch it again; consumers never modify what they are given, so a writer may yield views of
   * one shared zero buffer). Stopping the iteration early (break, return) releases everything.
   */
  chunks(): AsyncIterable<Uint8Array>;
}

export const SEQ_READ_CHUNK = 2 << 20;
/** At most 2^28 blocks in a map (64 MiB of map: 16 TiB in 64 KiB clusters). */
export const MAX_MAP_BLOCKS = 1 << 28;
const SEQ_READS_IN_FLIGHT = 4;

/**
 * Read a sequence of guest ranges with a few reads in flight, yielding each range's bytes in
 * order. Ranges longer than `chunk` are split. Each yielded buffer is fresh (the consumer
 * keeps it). Memory: `depth` × `chunk` at most.
 */
export async function* orderedReads(
  read: (buf: Uint8Array, offset: number) => Promise<void>,
  ranges: Iterable<{ offset: number; length: number }>,
  opts: { depth?: number; chunk?: number } = {},
): AsyncGenerator<{ offset: number; data: Buffer }> {
  const depth = opts.depth ?? SEQ_READS_IN_FLIGHT;
  const chunk = opts.chunk ?? SEQ_READ_CHUNK;
  function* pieces(): Generator<{ offset: number; length: number }> {
    for (const r of ranges) {
      for (let pos = r.offset; pos < r.offset + r.length; pos += chunk)
        yield { offset: pos, length: Math.min(chunk, r.offset + r.length - pos) };
    }
  }
  const it = pieces();
  const queue: Array<{ offset: number; done: Promise<Buffer> }> = [];
  const start = () => {
    const n = it.next();
    if (n.done === true) return false;
    const { offset, length } = n.value;
    const buf = Buffer.allocUnsafe(length);
    const done = read(buf, offset).then(() => buf);
    // Awaited in order below; a failure after an early stop must not be unhandled.
    done.catch(() => {});
    queue.push({ offset, done });
    return true;
  };
  try {
    while (queue.length < depth && start()) {}
    while (queue.length > 0) {
      const head = queue.shift()!;
      const data = await head.done;
      start();
      yield { offset: head.offset, data };
    }
  } finally {
    // Stopped early or failed: let the reads in flight settle before the source is closed.
    await Promise.allSettled(queue.map((q) => q.done));
  }
}

/** The data blocks of a map as guest ranges (adjacent blocks merged), in order. */
export function* dataRanges(map: BlockMap): Generator<{ offset: number; length: number }> {
  for (const run of map.runs()) {
    if (run.kind !== DATA) continue;
    const offset = run.start * map.granularity;
    const end = Math.min(map.size, (run.start + run.count) * map.granularity);
    yield { offset, length: end - offset };
  }
}

export interface ImageSeqOptions {
  /**
   * true: the whole chain as one standalone image. false: the top layer alone, over a backing
   * file named `backing` (what the top layer does not allocate falls through to it).
   */
  flatten: boolean;
  /** The backing file the output names when not flattening (required then, if the image has one). */
  backing?: { filename: string; format: string } | undefined;
  /**
   * Read data blocks and turn the all-zero ones into holes (or zero blocks over a backing), as
   * qemu-img convert does. Worth it where block status cannot tell (raw layers).
   */
  scanZeros?: boolean;
  /** Reads in flight while scanning. */
  depth?: number;
}

/**
 * A SeqSource over an opened image. Flattened: the chain's block status decides (what reads as
 * zeros is a hole, the rest data). Not flattened: the top layer's own status (allocated zeros
 * are ZERO blocks, unallocated ranges holes over the backing). Reads go through the chain
 * either way: a block that is partly allocated in the top layer is stored whole, with what the
 * chain reads there.
 */
export function imageSeqSource(image: Image, opts: ImageSeqOptions): SeqSource {
  const layered = !opts.flatten && image.backing !== null;
  if (layered && opts.backing === undefined)
    throw new VdiskError('INVALID_ARGUMENT', 'a layered output needs the name of its backing file');
  const backing = layered
    ? { ...opts.backing!, size: image.backing!.size, image: image.backing! }
    : undefined;
  const read = (buf: Uint8Array, offset: number) => image.readAt(buf, offset);
  return {
    size: image.size,
    backing,
    read,
    async map(granularity: number): Promise<BlockMap> {
      if (granularity < 512 || (granularity & (granularity - 1)) !== 0)
        throw new VdiskError('INVALID_ARGUMENT', `invalid block size ${granularity}`);
      if (Math.ceil(image.size / granularity) > MAX_MAP_BLOCKS)
        throw new VdiskError(
          'TOO_LARGE',
          `a ${image.size}-byte image in ${granularity}-byte blocks is too many blocks to lay out; use larger clusters`,
        );
      const map = new BlockMap(image.size, granularity);
      // The block being gathered and which kinds its extents had (1 hole, 2 zero, 4 data).
      let block = -1;
      let seen = 0;
      const kindOf = (bits: number): BlockKind => {
        if (bits & 4) return DATA;
        if (bits === 2) return layered ? ZERO : HOLE;
        if (bits === 1) return HOLE;
        return layered ? DATA : HOLE; // holes and zeros in one block over a backing
      };
      const close = () => {
        if (block >= 0) map.set(block, kindOf(seen));
        block = -1;
        seen = 0;
      };
      const gather = (b: number, bit: number) => {
        if (b !== block) {
          close();
          block = b;
        }
        seen |= bit;
      };
      /** The extent [from, to) has the kind `bit`. */
      const mark = (from: number, to: number, bit: number) => {
        const first = Math.floor(from / granularity);
        const last = Math.floor((to - 1) / granularity);
        gather(first, bit);
        if (first === last) return;
        close();
        const kind = kindOf(bit);
        if (kind !== HOLE) for (let b = first + 1; b < last; b++) map.set(b, kind);
        gather(last, bit);
      };
      let pos = 0;
      while (pos < image.size) {
        const e = layered
          ? await image.layerStatus(pos, image.size - pos)
          : await image.blockStatus(pos, image.size - pos);
        const bit = layered ? (!e.allocated ? 1 : e.zero ? 2 : 4) : e.zero ? 1 : 4;
        mark(pos, pos + e.length, bit);
        pos += e.length;
      }
      close();
      if (opts.scanZeros === true) await scanZeros(map, read, layered ? ZERO : HOLE, opts.depth);
      return map;
    },
  };
}

/** Data blocks that read as zeros become `as` (HOLE, or ZERO over a backing). */
async function scanZeros(
  map: BlockMap,
  read: (buf: Uint8Array, offset: number) => Promise<void>,
  as: BlockKind,
  depth?: number,
): Promise<void> {
  const g = map.granularity;
  for await (const { offset, data } of orderedReads(read, dataRanges(map), {
    ...(depth !== undefined ? { depth } : {}),
    chunk: Math.max(g, SEQ_READ_CHUNK - (SEQ_READ_CHUNK % g)),
  })) {
    for (let at = 0; at < data.length; at += g) {
      const piece = data.subarray(at, Math.min(at + g, data.length));
      if (isAllZero(piece)) map.set((offset + at) / g, as);
    }
  }
}

/** Concatenate small buffers (headers, tables) into one. */
export function joinBuffers(parts: Uint8Array[]): Buffer {
  return Buffer.concat(
    parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.length))),
  );
}

/**
 * The same source with its virtual size raised to `size` (the added part reads as zeros and
 * is a hole): a vhd for Azure wants a whole number of MiB.
 */
export function padSource(src: SeqSource, size: number): SeqSource {
  if (size <= src.size) return src;
  return {
    size,
    backing: src.backing,
    async read(buf: Uint8Array, offset: number) {
      const inside = Math.max(0, Math.min(buf.length, src.size - offset));
      if (inside > 0) await src.read(buf.subarray(0, inside), offset);
      buf.fill(0, inside);
    },
    async map(granularity: number) {
      const inner = await src.map(granularity);
      const map = new BlockMap(size, granularity);
      for (const run of inner.runs())
        if (run.kind !== HOLE) for (let i = run.start; i < run.start + run.count; i++) map.set(i, run.kind);
      return map;
    },
  };
}

/**
 * The difference between `image` (its whole chain) and `base`: the top layer of an overlay
 * of `base` that reads as `image` does (what `qemu-img rebase` onto `base` leaves in an
 * overlay, written fresh). Blocks that read the same in both are holes (they fall through to
 * `base`), blocks that read as zeros where `base` has data are ZERO, the rest DATA. Building
 * the map reads both images once, block by block, with reads in flight on both.
 */
export function diffSeqSource(
  image: Image,
  base: Image,
  backing: { filename: string; format: string },
): SeqSource {
  const readBase = async (buf: Uint8Array, offset: number) => {
    // The base may be smaller: past its end it reads as zeros (the backing rule).
    const inside = Math.max(0, Math.min(buf.length, base.size - offset));
    if (inside > 0) await base.readAt(buf.subarray(0, inside), offset);
    buf.fill(0, inside);
  };
  return {
    size: image.size,
    backing: { ...backing, size: base.size, image: base },
    read: (buf, offset) => image.readAt(buf, offset),
    async map(granularity: number): Promise<BlockMap> {
      if (granularity < 512 || (granularity & (granularity - 1)) !== 0)
        throw new VdiskError('INVALID_ARGUMENT', `invalid block size ${granularity}`);
      if (Math.ceil(image.size / granularity) > MAX_MAP_BLOCKS)
        throw new VdiskError(
          'TOO_LARGE',
          `a ${image.size}-byte image in ${granularity}-byte blocks is too many blocks`,
        );
      const map = new BlockMap(image.size, granularity);
      const whole = [{ offset: 0, length: image.size }];
      const chunk = Math.max(granularity, SEQ_READ_CHUNK - (SEQ_READ_CHUNK % granularity));
      const mine = orderedReads((b, o) => image.readAt(b, o), whole, { chunk, depth: 2 });
      const theirs = orderedReads(readBase, whole, { chunk, depth: 2 });
      try {
        for (;;) {
          const [a, b] = await Promise.all([mine.next(), theirs.next()]);
          if (a.done === true || b.done === true) break;
          const x = a.value.data;
          const y = b.value.data;
          for (let at = 0; at < x.length; at += granularity) {
            const end = Math.min(at + granularity, x.length);
            const p = x.subarray(at, end);
            if (p.equals(y.subarray(at, end))) continue;
            map.set((a.value.offset + at) / granularity, isAllZero(p) ? ZERO : DATA);
          }
        }
      } finally {
        await mine.return(undefined);
        await theirs.return(undefined);
      }
      return map;
    },
  };
}
