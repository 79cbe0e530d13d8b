/**
 * vdi, written sequentially, as `qemu-img create -f vdi` lays an image out and as QEMU's vdi
 * driver then fills it (block/vdi.c: a block is appended whole, 1 MiB, when first written;
 * here in guest order). The size is create's: whole sectors, at most VDI_DISK_SIZE_MAX.
 *
 *   dynamic:  header (512) | block map (4 bytes a block, whole sectors; DATA blocks numbered
 *             0, 1, 2… in guest order, the others unallocated) | the DATA blocks, 1 MiB each
 *   static:   header (512) | block map (block i at i) | every block: the guest bytes (holes as
 *             zeros, never read), the last block completed with zeros
 *
 * The length is known up front. QEMU's vdi driver has no backing files: a layered source is
 * refused.
 */
import type { CreateOptions } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { parseBoolOption } from '../../core/options.js';
import {
  DATA,
  dataRanges,
  joinBuffers,
  orderedReads,
  type SeqOutput,
  type SeqSource,
} from '../../core/seq.js';
import { createRawSequential } from '../raw/stream.js';
import { newVdiSize } from './create.js';
import { bmapPieces, bmapSize, DEFAULT_BLOCK_SIZE, encodeNewHeader, VDI_UNALLOCATED } from './header.js';
import { VDI_HEADER_SIZE } from './probe.js';

const BLOCK = DEFAULT_BLOCK_SIZE;
const ZEROS = Buffer.alloc(BLOCK);

export async function createVdiSequential(src: SeqSource, options: CreateOptions): Promise<SeqOutput> {
  for (const k of Object.keys(options))
    if (k !== 'size' && k !== 'static') throw new VdiskError('INVALID_ARGUMENT', `Invalid parameter '${k}'`);
  const isStatic = parseBoolOption('static', options['static'] ?? 'off');
  if (src.backing !== undefined)
    throw new VdiskError('UNSUPPORTED', "Backing file not supported for file format 'vdi'");
  const size = newVdiSize(src.size);
  const blocks = Math.ceil(size / BLOCK);
  const dataStart = VDI_HEADER_SIZE + bmapSize(blocks);

  /** The header with the block map's first piece (all of it below 256 GiB), then the rest. */
  function* metadata(allocated: number, entry: (i: number) => number): Generator<Buffer | Uint8Array> {
    const header = encodeNewHeader(size, isStatic, allocated);
    const map = bmapPieces(blocks, entry);
    const first = map.next();
    yield first.done === true ? header : joinBuffers([header, first.value]);
    yield* map;
  }

  if (isStatic) {
    // The raw image of the source is exactly the data area, but for the last block's tail.
    const raw = await createRawSequential(src, {});
    const tail = blocks * BLOCK - raw.length!;
    return {
      length: dataStart + blocks * BLOCK,
      async *chunks() {
        yield* metadata(blocks, (i) => i);
        yield* raw.chunks();
        if (tail > 0) yield ZEROS.subarray(0, tail);
      },
    };
  }

  const map = await src.map(BLOCK);
  const allocated = map.countOf(DATA);
  return {
    length: dataStart + allocated * BLOCK,
    async *chunks() {
      let next = 0;
      yield* metadata(allocated, (i) => (map.get(i) === DATA ? next++ : VDI_UNALLOCATED));
      // Ranges start on block boundaries; only the one ending at the source's end can end
      // inside a block: zeros complete it.
      for await (const { offset, data } of orderedReads((b, o) => src.read(b, o), dataRanges(map))) {
        yield data;
        const end = offset + data.length;
        const pad = Math.ceil(end / BLOCK) * BLOCK - end;
        if (pad > 0) yield ZEROS.subarray(0, pad);
      }
    },
  };
}
