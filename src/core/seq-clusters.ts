/**
 * What the sequential writers of the qcow family share (qcow2, qed, qcow: a header, tables,
 * then the data clusters in guest order): the metadata, built in chunks of a few MiB filled in
 * file order, and the stored clusters, streamed from the source with several reads in flight.
 */
import type { CreateOptions } from './driver.js';
import { VdiskError } from './errors.js';
import {
  type BlockKind,
  type BlockMap,
  DATA,
  HOLE,
  orderedReads,
  type SeqOutput,
  type SeqSource,
  ZERO,
} from './seq.js';

/**
 * Does an image store a block of this kind as a cluster? DATA always; ZERO where `zeroAsData`
 * (no zero clusters: qcow, qcow2 v2), else it is a zero-cluster entry.
 */
const stores = (kind: BlockKind, zeroAsData: boolean) => kind === DATA || (zeroAsData && kind === ZERO);

/** Metadata is yielded in buffers of this size (the last one shorter). */
export const META_CHUNK = 4 << 20;
const ZEROS = Buffer.alloc(1 << 20);

/**
 * The metadata of an image (every byte before its first data cluster), built region by region
 * in file order; a chunk is yielded as soon as it is full. Memory: one chunk, whatever the size
 * of the tables. The stored clusters follow it, in guest order: the first at `total`.
 */
export class MetaChunks {
  private chunk: Buffer | null = null;
  private pos = 0;
  private left: number;

  constructor(
    readonly total: number,
    private readonly map: BlockMap,
    private readonly zeroAsData: boolean,
  ) {
    this.left = total;
  }

  /**
   * The next `length` bytes, zeroed, filled by `fill(view, at)` in one or more pieces (`at`:
   * where the piece starts in the region). Pieces split only at chunk boundaries, multiples of
   * 4 MiB from the start of the file: a table entry aligned to its size is never split.
   */
  *region(length: number, fill?: (view: Buffer, at: number) => void): Generator<Buffer> {
    for (let at = 0; at < length; ) {
      if (this.chunk === null) {
        if (this.left <= 0) throw new VdiskError('INTERNAL', 'image metadata larger than laid out');
        this.chunk = Buffer.alloc(Math.min(META_CHUNK, this.left));
        this.left -= this.chunk.length;
        this.pos = 0;
      }
      const n = Math.min(length - at, this.chunk.length - this.pos);
      fill?.(this.chunk.subarray(this.pos, this.pos + n), at);
      this.pos += n;
      at += n;
      if (this.pos === this.chunk.length) {
        const full = this.chunk;
        this.chunk = null;
        yield full;
      }
    }
  }

  /** A region holding `data` (zero-padded to `length`). */
  bytes(data: Uint8Array, length = data.length): Generator<Buffer> {
    return this.region(length, (view, at) => view.set(data.subarray(at, at + view.length)));
  }

  /** A table region: `put(v, off, i)` writes entry i at byte `off` of v (unset entries stay 0). */
  table(length: number, entryBytes: number, put: (v: DataView, off: number, i: number) => void) {
    return this.region(length, (view, at) => {
      const v = new DataView(view.buffer, view.byteOffset, view.length);
      for (let off = 0; off < view.length; off += entryBytes) put(v, off, (at + off) / entryBytes);
    });
  }

  /**
   * An L1 table of `bytes` bytes: entry t names the t-th needed L2 table through `set` (the L2
   * tables follow one another from `l2.offset`, `l2.bytes` each); the other entries stay 0.
   */
  l1Table(
    bytes: number,
    need: Uint8Array,
    l2: { offset: number; bytes: number },
    set: (v: DataView, off: number, l2Offset: number) => void,
  ): Generator<Buffer> {
    let next = l2.offset;
    return this.table(bytes, 8, (v, off, t) => {
      if (t >= need.length || need[t] === 0) return;
      set(v, off, next);
      next += l2.bytes;
    });
  }

  /**
   * The needed L2 tables in L1 order, `table.bytes` each: entry i of table t describes block
   * t × entries + i. `set` gets the host offset of each stored block (numbered in guest order
   * from `total`, as they follow), or null for a ZERO block not stored; HOLE entries stay 0.
   */
  *l2Tables(
    need: Uint8Array,
    table: { bytes: number; entryBytes: number },
    set: (v: DataView, off: number, host: number | null) => void,
  ): Generator<Buffer> {
    const { map } = this;
    const entries = table.bytes / table.entryBytes;
    let next = this.total;
    for (let t = 0; t < need.length; t++) {
      if (need[t] === 0) continue;
      const base = t * entries;
      yield* this.table(table.bytes, table.entryBytes, (v, off, i) => {
        const b = base + i;
        if (b >= map.count) return;
        const kind = map.get(b);
        if (stores(kind, this.zeroAsData)) {
          set(v, off, next);
          next += map.granularity;
        } else if (kind === ZERO) set(v, off, null);
      });
    }
  }

  /** Every region given: the metadata must have been exactly as long as laid out. */
  end(): void {
    if (this.chunk !== null || this.left !== 0)
      throw new VdiskError('INTERNAL', 'image metadata shorter than laid out');
  }
}

/**
 * Which of `tables` second-level tables (each mapping `perTable` blocks) a layout needs: those
 * that map any non-HOLE block. One byte per table: at most a few MiB (the L1 table is bounded).
 */
export function tablesNeeded(
  map: BlockMap,
  perTable: number,
  tables: number,
): { need: Uint8Array; count: number } {
  const need = new Uint8Array(tables);
  let count = 0;
  for (const run of map.runs()) {
    if (run.kind === HOLE) continue;
    const last = Math.floor((run.start + run.count - 1) / perTable);
    for (let t = Math.floor(run.start / perTable); t <= last; t++) {
      if (need[t] === 0) count++;
      need[t] = 1;
    }
  }
  return { need, count };
}

function* zeros(n: number): Generator<Buffer> {
  // Views of one shared buffer: consumers never modify what they are given.
  for (let left = n; left > 0; left -= ZEROS.length) yield ZEROS.subarray(0, Math.min(left, ZEROS.length));
}

/**
 * The clusters an image stores, in guest order, `map.granularity` bytes each: DATA blocks read
 * from the source, and ZERO blocks as zeros when `zeroAsData` (a format or version without
 * zero clusters). A short last block is padded to a whole cluster, as qemu allocates it.
 */
async function* storedClusters(src: SeqSource, map: BlockMap, zeroAsData: boolean): AsyncGenerator<Buffer> {
  const g = map.granularity;
  function* ranges(): Generator<{ offset: number; length: number }> {
    for (const run of map.runs()) {
      if (!stores(run.kind, zeroAsData)) continue;
      const offset = run.start * g;
      yield { offset, length: Math.min(map.size, (run.start + run.count) * g) - offset };
    }
  }
  // Runs of different kinds are separate ranges, so a piece is all of one kind.
  const read = async (buf: Uint8Array, offset: number) => {
    if (map.get(Math.floor(offset / g)) === DATA) await src.read(buf, offset);
    else buf.fill(0);
  };
  for await (const { offset, data } of orderedReads(read, ranges())) {
    yield data;
    if (offset + data.length === map.size) yield* zeros(map.count * g - map.size);
  }
}

/**
 * Refuse, before any byte, what a sequential writer does not take: the backing file (it is
 * the source's, not an option), the host file's options (a stream is no file: only
 * preallocation=off, which changes nothing) and any option not in `accepted`.
 */
export function refuseOptions(format: string, options: CreateOptions, accepted: readonly string[]): void {
  const where = `a sequential ${format} image`;
  for (const [k, v] of Object.entries(options)) {
    if (k === 'backing_file' || k === 'backing_fmt')
      throw new VdiskError(
        'INVALID_ARGUMENT',
        `'${k}' is not an option of ${where}: its backing file is the source's`,
      );
    if (k === 'preallocation') {
      if (v !== 'off')
        throw new VdiskError(
          'UNSUPPORTED',
          `Preallocation mode '${v}' is not supported for ${where} (only off)`,
        );
    } else if (k === 'nocow' || k === 'extent_size_hint') {
      throw new VdiskError('UNSUPPORTED', `'${k}' applies to a host file, not to ${where}`);
    } else if (!accepted.includes(k)) {
      throw new VdiskError('INVALID_ARGUMENT', `Invalid parameter '${k}'`);
    }
  }
}

/**
 * The output's chunks, checked against the length announced before the first byte (a consumer
 * may have sent it as Content-Length): a layout error fails loudly instead of a short file.
 */
async function* exactly(length: number, chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const c of chunks) {
    n += c.length;
    if (n > length) throw new VdiskError('INTERNAL', `image longer than its announced ${length} bytes`);
    yield c;
  }
  if (n !== length) throw new VdiskError('INTERNAL', `image of ${n} bytes, ${length} announced`);
}

/** Blocks an image stores: DATA, and ZERO too where `zeroAsData`. */
export function storedCount(map: BlockMap, zeroAsData: boolean): number {
  return map.countOf(DATA) + (zeroAsData ? map.countOf(ZERO) : 0);
}

/**
 * A sequential image of this family: `metaBytes` of metadata (every byte before the first data
 * cluster, built region by region by `metadata`), then the stored clusters in guest order: DATA
 * blocks, and ZERO blocks too where `zeroAsData`. The length is known before the first byte, and
 * checked.
 */
export function clusteredOutput(
  src: SeqSource,
  map: BlockMap,
  zeroAsData: boolean,
  metaBytes: number,
  metadata: (meta: MetaChunks) => Generator<Buffer>,
): SeqOutput {
  const length = metaBytes + storedCount(map, zeroAsData) * map.granularity;
  async function* chunks(): AsyncGenerator<Buffer> {
    const meta = new MetaChunks(metaBytes, map, zeroAsData);
    yield* metadata(meta);
    meta.end();
    yield* storedClusters(src, map, zeroAsData);
  }
  return { length, chunks: () => exactly(length, chunks()) };
}
