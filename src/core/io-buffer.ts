/**
 * Buffers for bulk I/O that start on a page boundary. The kernel copies between the page cache
 * and user memory with `rep movs`, which is markedly slower into a destination that is not
 * 64-byte aligned; a large Buffer.allocUnsafe lands 16 bytes past a page (glibc's chunk header).
 * Measured here: 2 MiB preads of a cached file, 2.5 GB, 0.33 s of system time into such a
 * buffer against 0.24 s into a page-aligned one (docs/benchmarks.md, "Aligned I/O buffers").
 */
import { native } from '../native/index.js';

const PAGE = 4096;

/** `size` bytes (uninitialised) whose first byte is page-aligned where the native addon can tell. */
export function ioBuffer(size: number): Buffer {
  const n = native;
  if (n?.misalignment === undefined || size < PAGE) return Buffer.allocUnsafe(size);
  const raw = Buffer.allocUnsafeSlow(size + PAGE);
  const mis = n.misalignment(raw, PAGE);
  const skip = mis === 0 ? 0 : PAGE - mis;
  return raw.subarray(skip, skip + size);
}
