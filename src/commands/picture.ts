/**
 * An image's allocation map as a picture: the virtual disk cut into `buckets` equal parts,
 * each with the share of its bytes that this image stores (plain or compressed), that it
 * declares zero, and that it reads from its masters (the backing chain); the rest is
 * unallocated (reads as zeros, stored nowhere). The registry's dashboard draws it.
 *
 * One chain-aware block-status query per extent (never per cluster), so the work is bounded by
 * the number of extents, not the virtual size: a sparse 64 TiB image costs as little as an empty
 * one. Memory: the buckets.
 */
import type { Image } from '../core/image.js';

export const PICTURE_KINDS = ['data', 'compressed', 'zero', 'master'] as const;
export type PictureKind = (typeof PICTURE_KINDS)[number];

export interface Picture {
  virtualSize: number;
  bucketSize: number;
  /** Per bucket, the bytes of each kind (PICTURE_KINDS order). */
  buckets: number[][];
  /** Bytes of each kind over the whole image. */
  totals: Record<PictureKind, number>;
  /** Extents walked (block-status answers). */
  extents: number;
}

export async function allocationPicture(image: Image, buckets: number): Promise<Picture> {
  const size = image.size;
  const n = Math.max(1, Math.min(buckets, Math.ceil(size / 512) || 1));
  const bucketSize = Math.max(512, Math.ceil(size / n / 512) * 512);
  const count = Math.max(1, Math.ceil(size / bucketSize));
  const out = Array.from({ length: count }, () => [0, 0, 0, 0]);
  const totals: Record<PictureKind, number> = { data: 0, compressed: 0, zero: 0, master: 0 };
  let extents = 0;
  let pos = 0;
  while (pos < size) {
    const e = await image.blockStatus(pos, size - pos);
    extents++;
    const depth = e.depth ?? 0;
    let kind: number;
    if (depth > 0 && e.allocated) kind = 3;
    else if (depth === 0 && e.allocated && !e.zero) kind = e.compressed === true ? 1 : 0;
    else if (depth === 0 && e.allocated && e.zero) kind = 2;
    else kind = -1; // unallocated: reads as zeros, stored nowhere
    if (kind >= 0) {
      totals[PICTURE_KINDS[kind]!] += e.length;
      // Spread the extent over the buckets it covers.
      let at = pos;
      const end = pos + e.length;
      while (at < end) {
        const b = Math.floor(at / bucketSize);
        const stop = Math.min(end, (b + 1) * bucketSize);
        out[b]![kind]! += stop - at;
        at = stop;
      }
    }
    pos += e.length;
  }
  return { virtualSize: size, bucketSize, buckets: out, totals, extents };
}
