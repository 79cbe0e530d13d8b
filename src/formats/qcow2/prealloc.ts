/**
 * Preallocation of the area a resize adds (QEMU's qcow2_co_truncate with
 * --preallocation=metadata|falloc|full):
 * - metadata: every new cluster gets an L2 entry and a host cluster; the file is extended to
 *   cover them but stays sparse (qemu-img map then shows the area as zero data). As QEMU's
 *   preallocate_co: table by table, each L2 table allocated before its clusters, a new
 *   cluster holding the old end (unallocated in this layer) gets the guest's bytes before the
 *   end, the last cluster zeros after the new end (cowEnds). The file is qemu-img's, byte for
 *   byte (resize.test.ts compares both maps).
 * - falloc: the host clusters are also allocated in the file system (fallocate);
 * - full: the host clusters are written with zeros.
 * With extended L2 entries the subclusters stay unallocated, as QEMU leaves them.
 *
 * falloc and full: QEMU places the data area after a fresh refcount area at the end of the
 * file (qcow2_refcount_area: the refcount table moves); vdisk allocates as for metadata, with
 * its image's allocator. The layout differs there, not the result: same info, check clean,
 * same content. Where a backing file shows through an unaligned old end, they leave that
 * cluster alone (it is not reallocated).
 *
 * Order (crash safety): an L2 table exists before the L1 entry names it (l2ForWrite); host
 * clusters get their refcounts and their data (the copy-on-write ends, zeros, or fallocate);
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
  /**
   * metadata: the guest's bytes (through this image and its backing) at an offset, for the
   * copy-on-write of a new cluster's head. Given, the old end's cluster is reallocated
   * whenever this layer does not allocate it (oldEndUsed then says only that).
   */
  readGuest?: (buf: Uint8Array, offset: number) => Promise<void>,
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
      if (mode === 'metadata') await cowEnds(meta, free, host, l1i * span, oldSize, newSize, readGuest);
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

/**
 * The copy-on-write QEMU's preallocate_co does through qcow2_alloc_cluster_link_l2 (which runs
 * perform_cow even for preallocation): a new cluster holding the old end gets the guest's bytes
 * before it (zeros, or the backing's data), and the last cluster, when the new size ends inside
 * it, gets zeros after the end. Measured on qemu-img 7.2: those bytes are written, so its map
 * shows them as data and the file's blocks hold them.
 */
async function cowEnds(
  meta: Qcow2Metadata,
  clusters: number[],
  host: number,
  tableStart: number,
  oldSize: number,
  newSize: number,
  readGuest: ((buf: Uint8Array, offset: number) => Promise<void>) | undefined,
): Promise<void> {
  const cs = meta.clusterSize;
  for (const [k, ci] of clusters.entries()) {
    const g = tableStart + ci * cs;
    const at = host + k * cs;
    if (readGuest !== undefined && g < oldSize && oldSize < g + cs) {
      const head = new Uint8Array(oldSize - g);
      await readGuest(head, g);
      await meta.file.write(head, at);
    }
    if (g < newSize && newSize < g + cs) await writeZeros(meta, at + (newSize - g), at + cs);
  }
}

async function writeZeros(meta: Qcow2Metadata, from: number, to: number): Promise<void> {
  for (let p = from; p < to; p += ZEROS.length) {
    const n = Math.min(ZEROS.length, to - p);
    await meta.file.write(n === ZEROS.length ? ZEROS : ZEROS.subarray(0, n), p);
  }
}
