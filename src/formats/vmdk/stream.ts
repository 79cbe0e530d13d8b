/**
 * vmdk, written sequentially: the two subformats that are one file. Grains are 64 KiB, grain
 * tables (GT) 512 entries (32 MiB of disk each); sectors are 512 bytes.
 *
 *   monolithicSparse, as `qemu-img create -f vmdk` lays it out (vmdk_init_extent) and QEMU
 *   then fills it (a grain is appended whole when first written; here in guest order):
 *     header | descriptor (20 sectors) | redundant grain directory (GD) | its GTs | GD | its
 *     GTs | zeros up to the grain offset (a multiple of 128 sectors) | the stored grains
 *   The GTs come from the block map: DATA → the grain's sector, ZERO → 1 (the zeroed-grain
 *   feature: header flag and version 2, as QEMU's zeroed_grain=on), HOLE → 0. The length is
 *   known up front.
 *
 *   streamOptimized, as a stream (VMware's layout, which QEMU and vdisk read through the
 *   footer): the grains' sectors are only known once they are compressed, so the tables
 *   follow them:
 *     header (gd_offset "at the end") | descriptor | zeros up to sector 128 | for each GT: its
 *     grains (marker: LBA, zlib length; zlib data; whole sectors), then the GT marker and the
 *     GT (a GT with no entry is left out: GD entry 0) | GD marker | GD | footer marker |
 *     footer (the header with the real gd_offset) | end-of-stream marker
 *   The length is null. qemu-img convert writes the same grains but keeps QEMU's seekable
 *   layout (tables before the grains, filled in afterwards); both read alike.
 *
 * With a backing file, the descriptor names it (parentFileNameHint) with the parent's CID:
 * QEMU (vmdk_is_cid_valid) and vdisk read through a parent only when its CID is the
 * parentCID, and a vmdk's parent is always read as a vmdk.
 */
import type { CreateOptions } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { Slots } from '../../core/lock.js';
import {
  type BlockMap,
  DATA,
  HOLE,
  joinBuffers,
  orderedReads,
  type SeqOutput,
  type SeqSource,
  ZERO,
} from '../../core/seq.js';
import {
  checkSparseSize,
  directoryPiece,
  embeddedDescriptor,
  newDescriptor,
  newSparseHeader,
  parseVmdkOptions,
  type SparseLayout,
  SUBFORMATS,
  sparseLayout,
} from './create.js';
import {
  encodeFooter,
  encodeMarker,
  MARKER_GRAIN_DIRECTORY,
  MARKER_GRAIN_TABLE,
  SECTOR,
  VMDK4_GD_AT_END,
} from './header.js';
import { VmdkImage } from './image.js';
import { GTE_ZEROED, MAX_PACKING, MAX_SECTOR, packGrain } from './sparse.js';

const OPTIONS = new Set([
  'size',
  'adapter_type',
  'compat6',
  'hwversion',
  'toolsversion',
  'subformat',
  'zeroed_grain',
]);
const ONE_FILE = ['monolithicSparse', 'streamOptimized'];
/**
 * The name in the descriptor's extent line. A stream does not know the name it will be
 * stored under; QEMU and vdisk take a monolithic file's extent from the file itself.
 */
const EXTENT_NAME = 'disk.vmdk';
/** Metadata is yielded in pieces of about this size. */
const PIECE = 2 << 20;
/** A stream's first grain (sectors): the header and descriptor, then a grain boundary. */
const STREAM_GRAIN_OFFSET = 128;
/** Guest bytes read at once; each read is compressed as one unit of the window below. */
const READ_CHUNK = 1 << 20;
/**
 * Units compressing while the oldest is awaited: enough to keep libuv's pool busy (a writer
 * packs at most MAX_PACKING grains at once), with a few MiB of input held.
 */
const WINDOW = 4;
const ZEROS = Buffer.alloc(64 * 1024);

export async function createVmdkSequential(src: SeqSource, options: CreateOptions): Promise<SeqOutput> {
  for (const k of Object.keys(options)) {
    if (k === 'backing_file' || k === 'backing_fmt')
      throw new VdiskError('INVALID_ARGUMENT', `Invalid parameter '${k}': the backing file is the source's`);
    if (!OPTIONS.has(k)) throw new VdiskError('INVALID_ARGUMENT', `Invalid parameter '${k}'`);
  }
  const subformat = options['subformat'] ?? 'monolithicSparse';
  if ((SUBFORMATS as readonly string[]).includes(subformat) && !ONE_FILE.includes(subformat)) {
    throw new VdiskError(
      'UNSUPPORTED',
      `subformat '${subformat}' is several files; a sequential vmdk is monolithicSparse or streamOptimized`,
    );
  }
  const backing = src.backing;
  // qemu-img create's words for -F other than vmdk (QEMU opens a vmdk's parent as a vmdk).
  if (backing !== undefined && backing.format !== 'vmdk')
    throw new VdiskError('INVALID_ARGUMENT', 'backing_file must be a vmdk image');
  const opts = parseVmdkOptions(options, backing?.filename);
  const size = Math.ceil(src.size / SECTOR) * SECTOR;
  checkSparseSize(size);
  // The parent's CID comes from the opened backing image: a stream has no directory to find a
  // relative name from, and the name may not be a local file at all (a registry's image id).
  const parent = backing?.image?.driver;
  if (backing !== undefined && !(parent instanceof VmdkImage))
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `Invalid backing file format: ${backing.image?.format ?? 'unknown (not opened)'}. Must be vmdk`,
    );
  const parentCid = parent instanceof VmdkImage ? parent.cid : 0xffffffff;
  const l = sparseLayout(size);
  const descriptor = embeddedDescriptor(
    newDescriptor(opts, {
      size,
      parentCid,
      backing: backing?.filename,
      extentLines: [`RW ${l.capacity} SPARSE "${EXTENT_NAME}"`],
    }),
  );
  const map = await src.map(l.granularity * SECTOR);
  // Zero blocks (only over a backing file) are a table entry with the zeroed-grain feature,
  // which is on when asked or needed; zeroed_grain=off stores them as grains of zeros.
  const zeroGrain = opts.zeroedGrain ?? map.countOf(ZERO) > 0;
  const w: Writer = { src, map, l, descriptor, zeroGrain, size };
  return opts.subformat === 'streamOptimized' ? streamOutput(w) : sparseOutput(w);
}

interface Writer {
  src: SeqSource;
  map: BlockMap;
  l: SparseLayout;
  descriptor: Buffer;
  zeroGrain: boolean;
  /** The virtual size, in whole sectors. */
  size: number;
}

/** Is a block stored as a grain? DATA, and ZERO without the zeroed-grain feature. */
function stored(w: Writer, kind: number): boolean {
  return kind !== HOLE && (kind !== ZERO || !w.zeroGrain);
}

/**
 * The stored grains as guest ranges in order, each of one kind and inside one GT (so that no
 * read crosses a table), with the function that reads them: ZERO grains are zeros, never read.
 */
function storedReads(w: Writer): {
  ranges: Generator<{ offset: number; length: number }>;
  read: (buf: Uint8Array, offset: number) => Promise<void>;
} {
  const { map, l } = w;
  const gs = map.granularity;
  function* ranges(): Generator<{ offset: number; length: number }> {
    for (const run of map.runs()) {
      if (!stored(w, run.kind)) continue;
      for (let b = run.start; b < run.start + run.count; ) {
        const e = Math.min(run.start + run.count, (Math.floor(b / l.gtEntries) + 1) * l.gtEntries);
        const offset = b * gs;
        yield { offset, length: Math.min(map.size, e * gs) - offset };
        b = e;
      }
    }
  }
  const read = async (buf: Uint8Array, offset: number) => {
    if (map.get(Math.floor(offset / gs)) === ZERO) buf.fill(0);
    else await w.src.read(buf, offset);
  };
  return { ranges: ranges(), read };
}

/** Small pieces gathered into buffers of about PIECE bytes. */
class Gather {
  private parts: Uint8Array[] = [];
  private bytes = 0;

  /** Add pieces; yields what is gathered once it is large enough. */
  *push(...pieces: Uint8Array[]): Generator<Buffer> {
    for (const p of pieces) {
      this.parts.push(p);
      this.bytes += p.length;
    }
    if (this.bytes >= PIECE) yield* this.flush();
  }

  /** Yields everything gathered, if anything is. */
  *flush(): Generator<Buffer> {
    if (this.parts.length === 0) return;
    yield joinBuffers(this.parts);
    this.parts = [];
    this.bytes = 0;
  }
}

function tooLarge(): VdiskError {
  return new VdiskError('TOO_LARGE', 'VMDK image too large: grain sectors are 32-bit');
}

// ---- monolithicSparse ----

function sparseOutput(w: Writer): SeqOutput {
  const { map, l } = w;
  let count = 0;
  for (const kind of [ZERO, DATA] as const) if (stored(w, kind)) count += map.countOf(kind);
  if (count > 0 && l.grainOffset + (count - 1) * l.granularity > MAX_SECTOR) throw tooLarge();
  const grainBytes = l.granularity * SECTOR;
  const metaEnd = (l.gdOffset + l.gdSectors + l.gtCount * l.gtSectors) * SECTOR;
  return {
    length: l.grainOffset * SECTOR + count * grainBytes,
    async *chunks() {
      const meta = new Gather();
      const head = Buffer.alloc(l.rgdOffset * SECTOR);
      head.set(newSparseHeader(l, headerOptions(w, false, l.gdOffset, l.grainOffset)), 0);
      head.set(w.descriptor, l.descOffset * SECTOR);
      yield* meta.push(head);
      // The redundant directory and its tables, then the same again: both name the same grains.
      for (const dir of [l.rgdOffset, l.gdOffset]) {
        const entries = l.gdSectors * (SECTOR / 4);
        for (let i0 = 0; i0 < entries; i0 += PIECE / 4)
          yield* meta.push(directoryPiece(l, dir + l.gdSectors, i0, Math.min(PIECE / 4, entries - i0)));
        for (const piece of sparseTables(w)) yield* meta.push(piece);
      }
      for (let pos = metaEnd; pos < l.grainOffset * SECTOR; pos += ZEROS.length)
        yield* meta.push(ZEROS.subarray(0, Math.min(ZEROS.length, l.grainOffset * SECTOR - pos)));
      yield* meta.flush();
      // The stored grains follow each other; only the disk's last grain can be short (the
      // map ends with the source): zeros complete it, as QEMU writes whole grains.
      const { ranges, read } = storedReads(w);
      for await (const { offset, data } of orderedReads(read, ranges, { chunk: READ_CHUNK })) {
        yield data;
        const end = offset + data.length;
        const pad = Math.ceil(end / grainBytes) * grainBytes - end;
        if (pad > 0) yield ZEROS.subarray(0, pad);
      }
    },
  };
}

/** The header options of this output. */
function headerOptions(w: Writer, compress: boolean, gdOffset: number | bigint, grainOffset: number) {
  return { compress, zeroedGrain: w.zeroGrain, redundant: !compress, gdOffset, grainOffset };
}

/**
 * The GTs of a monolithicSparse output, all of them back to back (512 entries fill their 4
 * sectors exactly), in pieces of about PIECE bytes: the n-th stored grain is at grainOffset +
 * n grains.
 */
function* sparseTables(w: Writer): Generator<Uint8Array> {
  const { map, l } = w;
  const tableBytes = l.gtSectors * SECTOR;
  const perPiece = Math.max(1, Math.floor(PIECE / tableBytes));
  let next = l.grainOffset;
  for (let t0 = 0; t0 < l.gtCount; t0 += perPiece) {
    const n = Math.min(perPiece, l.gtCount - t0);
    const buf = Buffer.alloc(n * tableBytes);
    const g0 = t0 * l.gtEntries;
    for (const run of map.runs(g0, Math.min(map.count, (t0 + n) * l.gtEntries))) {
      if (run.kind === HOLE) continue;
      const zeroed = !stored(w, run.kind);
      for (let g = run.start; g < run.start + run.count; g++) {
        buf.writeUInt32LE(zeroed ? GTE_ZEROED : next, (g - g0) * 4);
        if (!zeroed) next += l.granularity;
      }
    }
    yield buf;
  }
}

// ---- streamOptimized ----

function streamOutput(w: Writer): SeqOutput {
  const { map, l } = w;
  const per = l.gtEntries;
  const grainBytes = l.granularity * SECTOR;
  return {
    length: null,
    async *chunks() {
      const head = Buffer.alloc(STREAM_GRAIN_OFFSET * SECTOR);
      head.set(newSparseHeader(l, headerOptions(w, true, VMDK4_GD_AT_END, STREAM_GRAIN_OFFSET)), 0);
      head.set(w.descriptor, l.descOffset * SECTOR);
      yield head;
      const meta = new Gather();
      const gd = new Uint32Array(l.gtCount);
      let sector = STREAM_GRAIN_OFFSET;
      /** The GT being filled, whether it has an entry, and its index. */
      let gt = Buffer.alloc(l.gtSectors * SECTOR);
      let used = false;
      let t = 0;
      /** Close GT t: its zeroed grains, then marker and table, unless it has no entry. */
      function* closeTable(): Generator<Buffer> {
        if (w.zeroGrain) {
          for (const run of map.runs(t * per, Math.min(map.count, (t + 1) * per))) {
            if (run.kind !== ZERO) continue;
            for (let g = run.start; g < run.start + run.count; g++)
              gt.writeUInt32LE(GTE_ZEROED, (g % per) * 4);
            used = true;
          }
        }
        t++;
        if (!used) return;
        if (sector + 1 > MAX_SECTOR) throw tooLarge();
        gd[t - 1] = sector + 1;
        sector += 1 + l.gtSectors;
        const table = gt;
        gt = Buffer.alloc(l.gtSectors * SECTOR);
        used = false;
        yield* meta.push(encodeMarker(l.gtSectors, MARKER_GRAIN_TABLE), table);
      }
      for await (const { offset, packed } of compressedGrains(w)) {
        const g0 = offset / grainBytes;
        while (t < Math.floor(g0 / per)) yield* closeTable();
        yield* meta.flush();
        packed.forEach((p, i) => {
          if (sector > MAX_SECTOR) throw tooLarge();
          gt.writeUInt32LE(sector, ((g0 + i) % per) * 4);
          sector += p.length / SECTOR;
        });
        used = true;
        yield joinBuffers(packed);
      }
      while (t < l.gtCount) yield* closeTable();
      const dir = Buffer.alloc(l.gdSectors * SECTOR);
      for (let i = 0; i < gd.length; i++) dir.writeUInt32LE(gd[i]!, i * 4);
      const footer = encodeFooter(
        newSparseHeader(l, headerOptions(w, true, sector + 1, STREAM_GRAIN_OFFSET)),
      );
      yield* meta.push(encodeMarker(l.gdSectors, MARKER_GRAIN_DIRECTORY), dir, footer);
      yield* meta.flush();
    },
  };
}

/**
 * The stored grains compressed (marker and zlib data, whole sectors each), in guest order, one
 * entry per read. Up to WINDOW reads compress at once while the oldest is awaited; the reads
 * themselves run ahead in orderedReads.
 */
async function* compressedGrains(w: Writer): AsyncGenerator<{ offset: number; packed: Uint8Array[] }> {
  const gs = w.map.granularity;
  const { ranges, read } = storedReads(w);
  const window: Array<{ offset: number; packed: Promise<Uint8Array[]> }> = [];
  const slots = new Slots(MAX_PACKING);
  try {
    for await (const { offset, data } of orderedReads(read, ranges, { chunk: READ_CHUNK })) {
      const grains: Promise<Uint8Array>[] = [];
      for (let at = 0; at < data.length; at += gs) {
        let grain: Uint8Array = data.subarray(at, Math.min(at + gs, data.length));
        // A source whose size is not whole sectors: the last grain covers the last sector whole.
        if (offset + at + grain.length === w.src.size && w.size > w.src.size)
          grain = Buffer.concat([grain, ZEROS.subarray(0, w.size - w.src.size)]);
        grains.push(packGrain(grain, (offset + at) / SECTOR, slots));
      }
      const packed = Promise.all(grains);
      // Awaited in order below; a failure after an early stop must not be unhandled.
      packed.catch(() => {});
      window.push({ offset, packed });
      if (window.length >= WINDOW) {
        const head = window.shift()!;
        yield { offset: head.offset, packed: await head.packed };
      }
    }
    while (window.length > 0) {
      const head = window.shift()!;
      yield { offset: head.offset, packed: await head.packed };
    }
  } finally {
    // Stopped early or failed: let the compressions in flight settle.
    await Promise.allSettled(window.map((x) => x.packed));
  }
}
