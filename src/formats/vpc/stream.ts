/**
 * vpc (VHD), written sequentially, as `qemu-img create -f vpc` lays an image out and as QEMU's
 * vpc driver then fills it (block/vpc.c alloc_block: blocks appended in the order they are
 * written, here guest order). The virtual size follows create's rules (whole sectors, then the
 * CHS geometry unless force_size), so the output may be larger than the source: the part past
 * the source's end reads as zeros. The footer (creator app, timestamp, UUID) is create's.
 *
 *   dynamic:  footer copy (512) | dynamic header (1024) | BAT (4 bytes a 2 MiB block, whole
 *             sectors, 0xFF padded) | each DATA block: sector bitmap (512, all ones), 2 MiB of
 *             data | footer
 *   fixed:    the guest bytes (holes as zeros) up to the virtual size | footer
 *
 * The length is known up front for both. QEMU's vpc driver has no backing files: a layered
 * source is refused.
 */
import type { CreateOptions } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import {
  DATA,
  dataRanges,
  joinBuffers,
  orderedReads,
  type SeqOutput,
  type SeqSource,
} from '../../core/seq.js';
import { createRawSequential } from '../raw/stream.js';
import { NEW_BAT_OFFSET, newVpc } from './create.js';
import { DEFAULT_BLOCK_SIZE, encodeDynHeader, FOOTER_SIZE } from './footer.js';

const BLOCK = DEFAULT_BLOCK_SIZE;
/** One bit a sector, in whole sectors (QEMU's bitmap_size): 512 bytes for 2 MiB blocks. */
const BITMAP_SIZE = Math.ceil(BLOCK / (8 * 512) / 512) * 512;
/** Every sector of a written block is present: QEMU's alloc_block sets the whole bitmap. */
const BITMAP = Buffer.alloc(BITMAP_SIZE, 0xff);
const ZEROS = Buffer.alloc(BLOCK);
/** BAT entries per yielded piece (1 MiB of table). */
const BAT_PIECE = 1 << 18;
const OPTIONS = new Set(['size', 'subformat', 'force_size']);

export async function createVpcSequential(src: SeqSource, options: CreateOptions): Promise<SeqOutput> {
  for (const k of Object.keys(options))
    if (!OPTIONS.has(k)) throw new VdiskError('INVALID_ARGUMENT', `Invalid parameter '${k}'`);
  if (src.backing !== undefined)
    throw new VdiskError('UNSUPPORTED', "Backing file not supported for file format 'vpc'");
  const vhd = newVpc(src.size, options);
  return vhd.fixed ? fixedOutput(src, vhd.size, vhd.footer) : dynamicOutput(src, vhd);
}

/** `n` bytes of zeros, as views of the shared buffer (the consumer never writes to them). */
function* zeros(n: number): Generator<Buffer> {
  for (let left = n; left > 0; left -= ZEROS.length) yield ZEROS.subarray(0, Math.min(left, ZEROS.length));
}

/** The raw image of the source (its own holes never read), zeros up to the geometry's size, the footer. */
async function fixedOutput(src: SeqSource, size: number, footer: Uint8Array): Promise<SeqOutput> {
  const raw = await createRawSequential(src, {});
  const rawLength = raw.length!;
  return {
    length: size + FOOTER_SIZE,
    async *chunks() {
      yield* raw.chunks();
      yield* zeros(size - rawLength);
      yield footer;
    },
  };
}

async function dynamicOutput(src: SeqSource, vhd: ReturnType<typeof newVpc>): Promise<SeqOutput> {
  const { footer, batEntries, batBytes } = vhd;
  const map = await src.map(BLOCK);
  // The map covers the source; the BAT covers the (possibly larger) virtual size.
  if (map.count > batEntries) throw new Error(`vpc: ${map.count} source blocks, ${batEntries} BAT entries`);
  const dataStart = NEW_BAT_OFFSET + batBytes;
  const span = BITMAP_SIZE + BLOCK;
  const allocated = map.countOf(DATA);
  const head = joinBuffers([footer, encodeDynHeader(NEW_BAT_OFFSET, batEntries, BLOCK)]);

  /** The BAT in pieces: the k-th DATA block (guest order) is the k-th block after the BAT. */
  function* bat(): Generator<Buffer> {
    let k = 0;
    for (let first = 0; first * 4 < batBytes; first += BAT_PIECE) {
      // Entries past the map, and the padding to a whole sector, stay 0xFF (unallocated).
      const piece = Buffer.alloc(Math.min(BAT_PIECE * 4, batBytes - first * 4), 0xff);
      const end = Math.min(first + BAT_PIECE, map.count);
      for (let i = first; i < end; i++)
        if (map.get(i) === DATA) piece.writeUInt32BE((dataStart + k++ * span) / 512, (i - first) * 4);
      yield piece;
    }
  }

  return {
    length: dataStart + allocated * span + FOOTER_SIZE,
    async *chunks() {
      const table = bat();
      const first = table.next();
      // The headers travel with the first piece of the BAT (all of it below 512 GiB).
      yield first.done === true ? head : joinBuffers([head, first.value]);
      yield* table;
      // Ranges start on block boundaries and are read a block at a time: one piece, one block
      // (the last one short where the source ends inside it: zeros complete it).
      for await (const { data } of orderedReads((b, o) => src.read(b, o), dataRanges(map), {
        chunk: BLOCK,
      })) {
        // A fresh view of the shared bitmap each time (the consumer owns what it is given).
        yield BITMAP.subarray();
        yield data;
        if (data.length < BLOCK) yield ZEROS.subarray(0, BLOCK - data.length);
      }
      yield footer;
    },
  };
}
