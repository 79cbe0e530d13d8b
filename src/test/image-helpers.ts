/** Test helpers over opened images: whole-image reads and qemu-img map side by side. */
import { createHash } from 'node:crypto';
import { openImage } from '../chain/open.js';
import { extentsOf } from '../core/device.js';
import type { Image } from '../core/image.js';
import { qemuImgOk } from './oracle.js';

export async function readAll(img: Image): Promise<Buffer> {
  const buf = Buffer.alloc(img.size);
  await img.readAt(buf, 0);
  return buf;
}

/** sha256 of the whole image, read in 16 MiB pieces. */
export async function digest(img: Image): Promise<string> {
  const h = createHash('sha256');
  const chunk = Buffer.alloc(16 << 20);
  for (let off = 0; off < img.size; off += chunk.length) {
    const n = Math.min(chunk.length, img.size - off);
    await img.readAt(chunk.subarray(0, n), off);
    h.update(chunk.subarray(0, n));
  }
  return h.digest('hex');
}

/** vdisk's block status in the shape of `qemu-img map --output=json`. */
export async function vdiskMap(p: string, format?: string) {
  const img = await openImage(p, { backing: 'follow', format });
  const out = [];
  try {
    for await (const e of extentsOf(img)) {
      out.push({
        start: e.offset,
        length: e.length,
        depth: e.depth ?? 0,
        present: e.allocated,
        zero: e.zero,
        data: e.data,
        ...(e.hostOffset !== undefined ? { offset: e.hostOffset } : {}),
      });
    }
  } finally {
    await img.close();
  }
  return out;
}

export function qemuMap(p: string, format?: string) {
  return JSON.parse(qemuImgOk(['map', '--output=json', ...(format ? ['-f', format] : []), p])) as Array<
    Record<string, unknown>
  >;
}
