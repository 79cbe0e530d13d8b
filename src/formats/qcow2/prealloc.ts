/**
 * Preallocation of the area a resize adds (QEMU's qcow2_co_truncate with
 * --preallocation=metadata|falloc|full):
 * - metadata: every new cluster gets an L2 entry and a host cluster; the file is extended to
 *   cover them but stays sparse (qemu-img map then shows the area as zero data);
 * - falloc: the host clusters are also allocated in the file system (fallocate);
 * - full: the host clusters are written with zeros.
 * With extended L2 entries the subclusters stay unallocated, as QEMU leaves them.
 *
 * The cluster holding the old end (when the old size is not cluster-aligned) is included only
 * when it is unallocated and nothing shows through it (no backing file); QEMU reallocates it
 * with a copy of its head. Either way the guest reads the same.
 *
 * QEMU places the data area after a fresh refcount area at the end of the file (falloc/full);
 * we allocate it with the image's allocator, table by table, after the L2 tables it needs.
 * The layout differs, not the result: same info, check clean, same content.
 *
 * Order (crash safety): L2 tables exist first (l2ForWrite writes a new table before the L1
 * entry names it); host clusters get their refcounts and their data (zeros, or fallocate);
 * refcounts reach the disk before the L2 entries that name the clusters.
 */

import { COPIED_HI, putEntry } from './l2-entry.js';
import type { Qcow2Metadata } from './metadata.js';

const ZEROS = new Uint8Array(4 << 20);

export async function preallocateGrowth(
  meta: Qcow2Metadata,
  oldSize: number,
  newSize: number,
  mode: 'metadata' | 'falloc' | 'full',
  /** The cluster holding the old end (when unaligned) is in use or shows a backing file. */
  oldEndUsed: boolean,
): Promise<void> {
  const rc = meta.refcounts!;
  const cs = meta.clusterSize;
  const span = meta.l2Entries * cs;
  let start = Math.floor(oldSize / cs) * cs;
  if (start < oldSize && oldEndUsed) start += cs;
  const end = Math.ceil(newSize / cs) * cs;
  if (end <= start) return;
  // Clusters below the file's end before we started may hold old data; past it, the file
  // reads as zeros wherever nothing was written since.
  const oldFileSize = await meta.file.size();
  for (let l1i = Math.floor(start / span); l1i * span < end; l1i++) await meta.l2ForWrite(l1i);

  for (let g = start; g < end; ) {
    const l1i = Math.floor(g / span);
    const tableEnd = Math.min(end, (l1i + 1) * span);
    const [l2off, table] = await meta.l2ForWrite(l1i);
    const v = new DataView(table.buffer, table.byteOffset, table.length);
    const first = Math.floor((g % span) / cs);
    const count = (tableEnd - g) / cs;
    // Only entries that name nothing get a cluster.
    const free: number[] = [];
    for (let ci = first; ci < first + count; ci++) {
      const e = ci * meta.entryBytes;
      if (v.getUint32(e) === 0 && v.getUint32(e + 4) === 0) free.push(ci);
    }
    if (free.length > 0) {
      const host = await rc.allocClusters(free.length);
      const bytes = free.length * cs;
      meta.noteAlloc(host, bytes);
      const fileSize = await meta.file.size();
      if (mode === 'full' || (mode === 'falloc' && !meta.file.allocate(host, bytes))) {
        await writeZeros(meta, host, host + bytes);
      } else {
        // Clusters reused inside the file may hold old data: they must read as zeros.
        if (host < oldFileSize) await writeZeros(meta, host, Math.min(host + bytes, oldFileSize));
        // metadata: the file covers the clusters (sparse), as QEMU extends it.
        if (fileSize < host + bytes) await meta.file.truncate(host + bytes);
      }
      await rc.flush();
      free.forEach((ci, k) => {
        const off = host + k * cs;
        const e = ci * meta.entryBytes;
        putEntry(v, e, off, COPIED_HI);
        if (meta.extL2) {
          v.setUint32(e + 8, 0);
          v.setUint32(e + 12, 0);
        }
      });
      meta.l2Cache.markDirty(l2off, table);
      await meta.l2Cache.flush();
    }
    g = tableEnd;
  }
}

async function writeZeros(meta: Qcow2Metadata, from: number, to: number): Promise<void> {
  for (let p = from; p < to; p += ZEROS.length) {
    const n = Math.min(ZEROS.length, to - p);
    await meta.file.write(n === ZEROS.length ? ZEROS : ZEROS.subarray(0, n), p);
  }
}
