/** Test helpers for persistent dirty bitmaps: QEMU's view of a bitmap's contents. */
import { join } from 'node:path';
import { execOk, serveQemu } from './nbd-helpers.js';

/** qemu's view of a bitmap: nbdinfo's map of qemu:dirty-bitmap:NAME through qemu-nbd -B. */
export async function qemuBitmapMap(dir: string, image: string, name: string): Promise<string> {
  const sock = join(dir, `nbd-${process.pid}-${Math.random().toString(36).slice(2)}.sock`);
  const s = await serveQemu(image, sock, ['-r', '-f', 'qcow2', '-B', name]);
  try {
    return await execOk('nbdinfo', [`--map=qemu:dirty-bitmap:${name}`, s.uri]);
  } finally {
    await s.stop();
  }
}

/** The map nbdinfo prints for the dirty ranges [start, end) of an image of `size` bytes. */
export function expectedBitmapMap(size: number, ranges: Array<[number, number]>): string {
  const lines: string[] = [];
  let pos = 0;
  const line = (a: number, len: number, dirty: boolean) =>
    lines.push(
      `${String(a).padStart(10)}  ${String(len).padStart(10)}    ${dirty ? 1 : 0}  ${dirty ? 'dirty' : 'clean'}`,
    );
  for (const [a, b] of ranges) {
    if (a > pos) line(pos, a - pos, false);
    line(a, b - a, true);
    pos = b;
  }
  if (pos < size) line(pos, size - pos, false);
  return `${lines.join('\n')}\n`;
}
