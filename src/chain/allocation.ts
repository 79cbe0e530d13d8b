/** Allocation questions about a chain, as QEMU's bdrv_is_allocated_above. */
import type { Image } from '../core/image.js';

/**
 * Is [offset, offset+length) allocated in some layer from `top` down to, but excluding, `base`
 * (null: the whole chain)? Returns the answer for a prefix of the range and its length.
 */
export async function allocatedAbove(
  top: Image,
  base: Image | null,
  offset: number,
  length: number,
): Promise<{ allocated: boolean; length: number }> {
  let n = length;
  for (let layer: Image | null = top; layer !== null && layer !== base; layer = layer.backing) {
    if (offset >= layer.size) continue;
    const st = await layer.driver.blockStatus(offset, Math.min(n, layer.size - offset));
    if (st.allocated) return { allocated: true, length: st.length };
    // Unallocated here for st.length bytes: lower layers decide within that prefix.
    n = Math.min(n, st.length);
  }
  return { allocated: false, length: n };
}

/** The image of `top`'s chain at `depth` (0 is top), or null. */
export function layerAt(top: Image, depth: number): Image | null {
  let layer: Image | null = top;
  for (let i = 0; i < depth && layer !== null; i++) layer = layer.backing;
  return layer;
}
