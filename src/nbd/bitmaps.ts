/**
 * Dirty bitmaps exported over NBD as the metadata context `qemu:dirty-bitmap:NAME` (qemu-nbd
 * -B): finding a bitmap in the chain as qemu-nbd 7.2 does (nbd/server.c nbd_export_create),
 * and its BLOCK_STATUS extents as qemu's bitmap_to_extents sends them.
 */
import type { BitmapBits } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';
import type { Image } from '../core/image.js';
import type { StatusExtent } from './export.js';
import { STATE_DIRTY } from './protocol.js';

export const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';

/** A bitmap offered on an export: its name and its live bits. */
export interface ExportBitmap {
  name: string;
  bits: BitmapBits;
}

/**
 * The bitmaps named, looked up as qemu-nbd does: in the exported image, else in its backing
 * file, and so on down the chain (the first image that has one of that name wins). A bitmap
 * that is not found, or inconsistent (in use when the image was opened), fails with
 * qemu-nbd's message. A name given twice is exported twice, as by qemu-nbd.
 */
export async function findExportBitmaps(image: Image, names: readonly string[]): Promise<ExportBitmap[]> {
  const out: ExportBitmap[] = [];
  for (const name of names) {
    let bits: BitmapBits | undefined;
    for (let layer: Image | null = image; layer !== null && bits === undefined; layer = layer.backing) {
      const db = layer.driver.dirtyBitmaps;
      const found = db?.list().find((b) => b.name === name);
      if (db?.live === undefined || found === undefined) continue;
      // qemu-nbd prints the message of bdrv_dirty_bitmap_check without QEMU's hint.
      if (found.inconsistent) {
        throw new VdiskError('INVALID_ARGUMENT', `Bitmap '${name}' is inconsistent and cannot be used`);
      }
      bits = await db.live(name);
    }
    if (bits === undefined) throw new VdiskError('INVALID_ARGUMENT', `Bitmap '${name}' is not found`);
    out.push({ name, bits });
  }
  return out;
}

/** The first granule in [from, limit) whose bit is `set`, else limit. Skips whole bytes. */
function nextGranule(bits: Uint8Array, from: number, limit: number, set: boolean): number {
  const skip = set ? 0 : 0xff;
  let i = from;
  while (i < limit) {
    if ((i & 7) === 0) {
      let byte = i >> 3;
      const lastByte = limit >> 3;
      while (byte < lastByte && bits[byte] === skip) byte++;
      i = Math.max(i, byte * 8);
      if (i >= limit) return limit;
    }
    if ((((bits[i >> 3] ?? 0) >> (i & 7)) & 1) === (set ? 1 : 0)) return i;
    i++;
  }
  return limit;
}

/**
 * BLOCK_STATUS extents of a bitmap over [offset, offset + length) of an image of `size`
 * bytes: NBD_STATE_DIRTY where a granule's bit is set, 0 elsewhere, a dirty run clipped to the
 * request (QEMU's hbitmap_next_dirty_area), neighbours with the same flags merged, at most
 * `max` extents (when the array is full the rest is left out, as qemu's
 * nbd_extent_array_add).
 */
export function dirtyExtents(
  b: BitmapBits,
  size: number,
  offset: number,
  length: number,
  max: number,
): StatusExtent[] {
  const out: StatusExtent[] = [];
  const add = (len: number, flags: number): boolean => {
    if (len <= 0) return true;
    const last = out[out.length - 1];
    if (last !== undefined && last.flags === flags) {
      last.length += len;
      return true;
    }
    if (out.length >= max) return false;
    out.push({ length: len, flags });
    return true;
  };
  const g = 2 ** b.granularityBits;
  const end = Math.min(offset + length, size);
  const limit = Math.ceil(end / g);
  let pos = offset;
  while (pos < end) {
    const d = nextGranule(b.bits, Math.floor(pos / g), limit, true);
    const dirtyStart = Math.max(pos, Math.min(d * g, end));
    if (!add(dirtyStart - pos, 0)) return out;
    if (dirtyStart >= end) return out;
    const c = nextGranule(b.bits, d, limit, false);
    const dirtyEnd = Math.min(c * g, end);
    if (!add(dirtyEnd - dirtyStart, STATE_DIRTY)) return out;
    pos = dirtyEnd;
  }
  return out;
}
