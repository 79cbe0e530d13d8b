/**
 * Block status with the flags QEMU's bdrv_block_status_above() returns for a whole chain,
 * as compare and convert see it (map uses Image.blockStatus directly).
 *
 * Image.blockStatus stops at the first layer that decides the range, as qemu-img map does.
 * _above differs in two details that `compare -s` can see: a range past the end of a backing
 * image counts as allocated (zeros synthesized "at" that layer), and the EOF flag is kept
 * only for a status that comes from the top layer or from an unallocated chain's bottom.
 */
import type { Extent } from '../core/device.js';
import type { Image } from '../core/image.js';

export interface ChainStatus {
  offset: number;
  length: number;
  allocated: boolean;
  zero: boolean;
  data: boolean;
  /** QEMU's BDRV_BLOCK_OFFSET_VALID. */
  offsetValid: boolean;
  /** QEMU's BDRV_BLOCK_EOF: the range runs to the end of the layer that answered. */
  eof: boolean;
  depth: number;
}

function layerAt(top: Image, depth: number): Image {
  let img = top;
  for (let i = 0; i < depth && img.backing !== null; i++) img = img.backing;
  return img;
}

export async function statusAbove(image: Image, offset: number, length: number): Promise<ChainStatus> {
  const e: Extent = await image.blockStatus(offset, length);
  const depth = e.depth ?? 0;
  const layer = layerAt(image, depth);
  // Unallocated, reads as zeros because the layer has a backing image that ends before it.
  const pastBackingEnd = !e.allocated && e.zero && layer.backing !== null;
  const end = e.offset + e.length;
  const eof = pastBackingEnd ? false : depth === 0 || !e.allocated ? end === layer.size : false;
  return {
    offset: e.offset,
    length: e.length,
    allocated: e.allocated || pastBackingEnd,
    zero: e.zero,
    data: e.data,
    offsetValid: e.hostOffset !== undefined,
    eof,
    depth,
  };
}

/** The flag word compare -s compares (DATA, ZERO, OFFSET_VALID, ALLOCATED, EOF). */
export function statusFlags(s: ChainStatus): number {
  return (
    (s.data ? 1 : 0) | (s.zero ? 2 : 0) | (s.offsetValid ? 4 : 0) | (s.allocated ? 8 : 0) | (s.eof ? 32 : 0)
  );
}
