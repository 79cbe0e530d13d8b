/**
 * Sector-granular buffer scans as qemu-img does them (find_nonzero, compare_buffers,
 * is_allocated_sectors[_min]), built on memcmp (Buffer.compare) so that a buffer that is all
 * zero or all equal costs one native call, and only a mismatch is looked at per sector.
 */
import { isAllZero } from '../core/device.js';
import { native } from '../native/index.js';

export const SECTOR = 512;

const ZERO_SECTOR = Buffer.alloc(SECTOR);

function view(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** Is the sector at [pos, pos+n) zero? (n ≤ 512) */
function sectorIsZero(b: Buffer, pos: number, n: number): boolean {
  // Data sectors almost always start with a non-zero byte: answer those without a native call.
  if (b[pos] !== 0 || b[pos + n - 1] !== 0) return false;
  return b.compare(ZERO_SECTOR, 0, n, pos, pos + n) === 0;
}

/**
 * qemu-img.c find_nonzero(): -1 when buf[0, n) is all zeros, else the offset of the first
 * sector (512-byte block) holding a non-zero byte.
 */
export function findNonzero(buf: Uint8Array, n = buf.length): number {
  const b = view(buf);
  if (isAllZero(b.subarray(0, n))) return -1;
  for (let i = 0; i < n; i += SECTOR) {
    if (!sectorIsZero(b, i, Math.min(SECTOR, n - i))) return i;
  }
  return -1;
}

/**
 * compare_buffers() reduced to what compare needs: -1 when a and b are equal over [0, n),
 * else the offset of the first sector where they differ.
 */
export function firstDifference(a: Uint8Array, b: Uint8Array, n: number): number {
  const x = view(a);
  const y = view(b);
  if (x.compare(y, 0, n, 0, n) === 0) return -1;
  // Narrow down with large blocks first, then sectors.
  let lo = 0;
  for (const step of [256 * 1024, 16 * 1024, SECTOR]) {
    for (let i = lo; i < n; i += step) {
      const end = Math.min(n, i + step);
      if (x.compare(y, i, end, i, end) !== 0) {
        lo = i;
        break;
      }
    }
  }
  return lo;
}

/**
 * qemu-img.c is_allocated_sectors(): of the n sectors at the start of buf, how many share the
 * first one's zero-ness, with the end aligned to `alignment` sectors (a zero run that would
 * only be a short tail counts as data). Returns [allocated, count].
 */
export function allocatedSectors(
  b: Buffer,
  pos: number,
  n: number,
  sectorNum: number,
  alignment: number,
): [boolean, number] {
  if (n <= 0) return [false, 0];
  let isZero = sectorIsZero(b, pos, SECTOR);
  let i = 1;
  if (isZero) {
    // Zero runs: skip 64 KiB at a time while whole blocks are zero.
    const BLOCK = 128;
    while (i + BLOCK <= n && isAllZero(b.subarray(pos + i * SECTOR, pos + (i + BLOCK) * SECTOR))) i += BLOCK;
  }
  while (i < n) {
    if (sectorIsZero(b, pos + i * SECTOR, SECTOR) !== isZero) break;
    i++;
  }
  // The rest of the buffer is all of one kind: no end to align (qemu-img 7.2 returns here, so
  // a request that ends inside a zero run leaves the run's unaligned end a hole).
  if (i === n) return [!isZero, i];
  const tail = (sectorNum + i) & (alignment - 1);
  if (tail) {
    if (isZero && i <= tail) {
      // An unallocated area that is only a small tail counts as allocated.
      isZero = false;
    }
    if (!isZero) {
      i = Math.min(i + alignment - tail, n);
    } else {
      i -= tail;
    }
  }
  return [!isZero, i];
}

/**
 * is_allocated_sectors_min(): like allocatedSectors, but a data run swallows zero runs shorter
 * than `min` sectors so that writes are not broken up for small sparse areas. The native addon
 * does the same scan where it is built (convert scans every byte it copies).
 */
export function allocatedSectorsMin(
  buf: Uint8Array,
  n: number,
  min: number,
  sectorNum: number,
  alignment: number,
): [boolean, number] {
  if (n > 0 && native?.allocatedSectorsMin !== undefined) {
    const r = native.allocatedSectorsMin(buf, n, min, sectorNum, alignment);
    return r > 0 ? [true, r] : [false, -r];
  }
  return allocatedSectorsMinJs(buf, n, min, sectorNum, alignment);
}

/** allocatedSectorsMin in JavaScript (without the native addon; the reference its tests use). */
export function allocatedSectorsMinJs(
  buf: Uint8Array,
  n: number,
  min: number,
  sectorNum: number,
  alignment: number,
): [boolean, number] {
  const b = view(buf);
  if (n < min) min = n;
  let [ret, pnum] = allocatedSectors(b, 0, n, sectorNum, alignment);
  if (!ret) return [ret, pnum];
  let numUsed = pnum;
  let pos = pnum;
  let left = n - pnum;
  let sector = sectorNum + pnum;
  let numChecked = numUsed;
  while (left > 0) {
    [ret, pnum] = allocatedSectors(b, pos * SECTOR, left, sector, alignment);
    pos += pnum;
    left -= pnum;
    sector += pnum;
    numChecked += pnum;
    if (ret) numUsed = numChecked;
    else if (pnum >= min) break;
  }
  return [true, numUsed];
}
