/**
 * raw, written sequentially: the guest bytes in order; holes and zero blocks are sent as
 * zeros (from one shared zero buffer, never read from the source). The length is the virtual
 * size rounded up to whole sectors, as `create -f raw` and `convert -O raw` make it.
 */
import type { CreateOptions } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { DATA, dataRanges, orderedReads, type SeqOutput, type SeqSource } from '../../core/seq.js';

const BLOCK = 64 * 1024;
const ZEROS = Buffer.alloc(1 << 20);

export async function createRawSequential(src: SeqSource, options: CreateOptions): Promise<SeqOutput> {
  for (const k of Object.keys(options))
    if (k !== 'size' && k !== 'preallocation')
      throw new VdiskError('INVALID_ARGUMENT', `Invalid parameter '${k}'`);
  if (src.backing !== undefined)
    throw new VdiskError('UNSUPPORTED', "Backing file not supported for file format 'raw'");
  const length = Math.ceil(src.size / 512) * 512;
  const map = await src.map(BLOCK);
  return {
    length,
    async *chunks() {
      let pos = 0;
      function* zeros(upTo: number): Generator<Buffer> {
        while (pos < upTo) {
          const n = Math.min(ZEROS.length, upTo - pos);
          pos += n;
          // A fresh view each time: the consumer owns what it is given (it never writes to it).
          yield ZEROS.subarray(0, n);
        }
      }
      if (map.countOf(DATA) > 0) {
        for await (const { offset, data } of orderedReads((b, o) => src.read(b, o), dataRanges(map))) {
          yield* zeros(offset);
          pos += data.length;
          yield data;
        }
      }
      yield* zeros(length);
    },
  };
}
