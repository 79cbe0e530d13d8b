/**
 * Safe rebase: give `image` a new backing (or none) without changing what it reads. Ranges the
 * image does not allocate and where the old and new backing differ are first copied into the
 * image from the old backing; then the backing reference is rewritten.
 *
 * Crash safety: the copies write into the image data that the old backing already shows there,
 * so until the reference is rewritten (one header write) the image reads as before; after it, as
 * after.
 */
import type { FileRef } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';
import type { Image } from '../core/image.js';

export interface RebaseOptions {
  /** Percent done (0..100). */
  onProgress?: (percent: number) => void;
  /** Write copied clusters compressed (qemu-img rebase -c). */
  compress?: boolean;
  chunkSize?: number;
}

const SECTOR = 512;

export async function rebaseSafe(
  image: Image,
  newBacking: Image | null,
  ref: FileRef | undefined,
  opts: RebaseOptions = {},
) {
  // Refused before anything is copied, in Image.changeBackingFile's words.
  if (!image.supports('backingFile')) return image.changeBackingFile(ref);
  if (opts.compress && image.driver.writeCompressed === undefined) {
    throw new VdiskError('UNSUPPORTED', `Compression not supported for format '${image.format}'`);
  }
  const size = image.size;
  const chunk = opts.chunkSize ?? 2 << 20;
  const oldBuf = Buffer.allocUnsafe(chunk);
  const newBuf = Buffer.allocUnsafe(chunk);
  let pos = 0;
  opts.onProgress?.(0);
  while (pos < size) {
    const st = await image.driver.blockStatus(pos, Math.min(chunk, size - pos));
    const n = st.length;
    if (!st.allocated) {
      const oldPart = oldBuf.subarray(0, n);
      const newPart = newBuf.subarray(0, n);
      await image.readBacking(oldPart, pos);
      await readOrZero(newBacking, newPart, pos);
      await copyDifferences(image, oldPart, newPart, pos, opts.compress === true);
    }
    pos += n;
    opts.onProgress?.((pos / size) * 100);
  }
  await image.flush();
  await image.changeBackingFile(ref);
  await image.flush();
}

async function readOrZero(img: Image | null, buf: Buffer, offset: number): Promise<void> {
  if (img === null || offset >= img.size) {
    buf.fill(0);
    return;
  }
  const n = Math.min(buf.length, img.size - offset);
  await img.readAt(buf.subarray(0, n), offset);
  if (n < buf.length) buf.fill(0, n);
}

/** Write into the image the runs of sectors where the old content differs from the new. */
async function copyDifferences(
  image: Image,
  oldPart: Buffer,
  newPart: Buffer,
  base: number,
  compress: boolean,
) {
  if (oldPart.equals(newPart)) return;
  if (compress) {
    // Compressed writes go by whole clusters: write every cluster that holds a difference.
    const cs = image.driver.clusterSize ?? SECTOR;
    for (let off = 0; off < oldPart.length; off += cs) {
      const end = Math.min(off + cs, oldPart.length);
      if (oldPart.subarray(off, end).equals(newPart.subarray(off, end))) continue;
      const at = base + off;
      if (at % cs === 0 && (end - off === cs || at + (end - off) === image.size)) {
        await image.driver.writeCompressed!(oldPart.subarray(off, end), at);
      } else {
        await image.writeAt(oldPart.subarray(off, end), at);
      }
    }
    return;
  }
  let i = 0;
  const len = oldPart.length;
  while (i < len) {
    const end = Math.min(i + SECTOR, len);
    if (oldPart.subarray(i, end).equals(newPart.subarray(i, end))) {
      i = end;
      continue;
    }
    let j = end;
    while (j < len) {
      const e2 = Math.min(j + SECTOR, len);
      if (oldPart.subarray(j, e2).equals(newPart.subarray(j, e2))) break;
      j = e2;
    }
    await image.writeAt(oldPart.subarray(i, j), base + i);
    i = j;
  }
}
