/**
 * `dd`: copy an image, or part of it, into a new image (qemu-img.c img_dd, 7.2).
 *
 * As qemu-img: the output is created with the size of the input, or of `count` blocks when
 * that is smaller, minus the `skip` blocks (so, as in qemu-img, count includes the skipped
 * blocks); a skip past the end creates an empty output and is reported, not fatal.
 * Unlike qemu-img, which writes every byte in bs-sized requests, vdisk copies by extents:
 * ranges the input reports as zeros are left unwritten in the new (zero-initialized)
 * output, and data moves in large requests. The content is the same; the output is sparse.
 */
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import { VdiskError } from '../core/errors.js';
import type { Image } from '../core/image.js';
import { ioBuffer } from '../core/io-buffer.js';
import { registerBuiltinFormats } from '../formats/index.js';
import { createTarget, prepareCreate } from './create.js';

const CHUNK = 4 * 1024 * 1024;
const INT64_MAX = (1n << 63n) - 1n;

export interface DdOptions extends OpenContext {
  input: string;
  output: string;
  inputFormat?: string | undefined;
  /** -O (default raw). */
  outputFormat?: string | undefined;
  /** bs= (default 512). */
  blockSize?: number;
  /** count= in blocks. */
  count?: bigint | undefined;
  /** skip= in blocks. */
  skip?: bigint | undefined;
  forceShare?: boolean;
  /** Warnings printed while opening the images (chain/open.ts onWarning), whole lines. */
  onOpenWarning?: ((message: string) => void) | undefined;
}

export interface DdResult {
  /** Bytes of input copied (including ranges left as holes). */
  copied: number;
  /** skip= pointed past the end of the input: qemu-img reports it, and the output is empty. */
  skippedPastEnd: boolean;
}

export async function ddCommand(o: DdOptions): Promise<DdResult> {
  registerBuiltinFormats();
  const bs = BigInt(o.blockSize ?? 512);
  const outFmt = o.outputFormat ?? 'raw';
  const input = await openImage(o.input, {
    ...openContext(o),
    format: o.inputFormat,
    forceShare: o.forceShare === true,
    backing: 'follow',
    allowDataFile: true,
    onWarning: o.onOpenWarning,
  });
  let output: Image | null = null;
  try {
    let size = BigInt(input.size);
    if (o.count !== undefined && o.count <= INT64_MAX / bs && o.count * bs < size) size = o.count * bs;
    const skipPast = o.skip !== undefined && (o.skip > INT64_MAX / bs || size < bs * o.skip);
    const inPos = skipPast ? size : (o.skip ?? 0n) * bs;
    const outSize = size - inPos;
    let prepared: Awaited<ReturnType<typeof prepareCreate>>;
    try {
      prepared = await prepareCreate({
        filename: o.output,
        format: outFmt,
        size: Number(outSize),
        options: {},
        secrets: o.secrets,
      });
    } catch (err) {
      if (err instanceof VdiskError && err.code === 'UNKNOWN_FORMAT') {
        throw new VdiskError('UNKNOWN_FORMAT', 'Unknown file format', { cause: err });
      }
      throw err;
    }
    await createTarget(prepared, o.output, 'creating output image');
    // qemu-img 7.2 opens the output by its name, --image-opts or not (img_dd: image_opts false).
    output = await openImage(o.output, {
      ...openContext(o),
      imageOpts: false,
      format: outFmt,
      writable: true,
      backing: 'refuse',
    });
    await copyExtents(input, output, Number(inPos), Number(size));
    return { copied: Number(outSize), skippedPastEnd: skipPast };
  } finally {
    if (output !== null) await output.close().catch(() => {});
    await input.close().catch(() => {});
  }
}

/** Copy input [from, to) to output offset 0.., data extents only (the output is new: zeros). */
async function copyExtents(input: Image, output: Image, from: number, to: number): Promise<void> {
  const buf = ioBuffer(Math.min(CHUNK, Math.max(to - from, 1)));
  let pos = from;
  while (pos < to) {
    const e = await input.blockStatus(pos, to - pos);
    const end = pos + e.length;
    if (!e.zero) {
      for (let p = pos; p < end; p += buf.length) {
        const n = Math.min(buf.length, end - p);
        const b = buf.subarray(0, n);
        try {
          await input.readAt(b, p);
        } catch (err) {
          throw wrap(err, 'error while reading from input image file');
        }
        try {
          await output.writeAt(b, p - from);
        } catch (err) {
          throw wrap(err, 'error while writing to output image file');
        }
      }
    }
    pos = end;
  }
}

function wrap(err: unknown, what: string): VdiskError {
  const msg = err instanceof Error ? err.message : String(err);
  return new VdiskError(err instanceof VdiskError ? err.code : 'EIO', `${what}: ${msg}`, { cause: err });
}
