/**
 * Opening a damaged qcow2 image for `check` (QEMU's BDRV_O_CHECK): qcow2_do_open reads the
 * active L1 table and the refcount table without checking where their entries point (and
 * reads what lies past the end of the file as zeros), so that qcow2_check can report and
 * repair what is wrong. Every other open keeps vdisk's stricter checks (readL1 in image.ts,
 * Refcounts.load).
 */
import type { HostFile } from '../../core/host-file.js';
import { EXT_BITMAPS, getU64 } from './header.js';
import { decodeL1 } from './l2-entry.js';
import type { Qcow2Metadata } from './metadata.js';

/** The entries' offsets as QEMU masks them (bits 9-55), unvalidated; past EOF reads as zeros. */
export async function readL1ForCheck(
  file: HostFile,
  offset: number,
  size: number,
): Promise<{ off: Float64Array; copied: Uint8Array; tableOffset: number }> {
  const raw = new Uint8Array(size * 8);
  await readOrZeros(file, raw, offset, await file.size());
  return { ...decodeL1(raw, size), tableOffset: offset };
}

/**
 * Read what lies at `offset`, zeros past the end of the file (QEMU's reads past EOF), without
 * asking the host for offsets it cannot address (a corrupted entry can name any 56-bit offset).
 */
export async function readOrZeros(
  file: HostFile,
  buf: Uint8Array,
  offset: number,
  fileSize: number,
): Promise<void> {
  if (buf.length === 0) return;
  if (offset >= fileSize || !Number.isSafeInteger(offset)) {
    buf.fill(0);
    return;
  }
  await file.read(buf, offset);
}

/** QEMU's metadata kinds (QCow2MetadataOverlap) as qcow2_pre_write_overlap_check names them. */
export type Metadata =
  | 'qcow2_header'
  | 'active L1 table'
  | 'active L2 table'
  | 'refcount table'
  | 'refcount block'
  | 'snapshot table'
  | 'inactive L1 table'
  | 'inactive L2 table'
  | 'bitmap directory';

/**
 * QEMU's qcow2_check_metadata_overlap with its default overlap-check=cached (every kind but
 * inactive L2 tables), from the metadata as loaded at open: which metadata a write of
 * [offset, offset + size) would overwrite, if any. Check's repairs ask this before writing.
 */
export function metadataOverlap(
  meta: Qcow2Metadata,
  offset: number,
  size: number,
  ignore: Metadata | null,
): Metadata | null {
  if (size === 0) return null;
  const cs = meta.clusterSize;
  const h = meta.header;
  if (ignore !== 'qcow2_header' && offset < cs) return 'qcow2_header';
  const start = Math.floor(offset / cs) * cs;
  const len = Math.ceil((offset - start + size) / cs) * cs;
  const hits = (o: number, n: number) => n > 0 && start < o + n && o < start + len;
  if (ignore !== 'active L1 table' && meta.l1Size > 0 && hits(meta.l1TableOffset, meta.l1Size * 8)) {
    return 'active L1 table';
  }
  const rc = meta.refcounts;
  if (ignore !== 'refcount table' && rc !== null && hits(rc.tableOffset, rc.table.length * 8)) {
    return 'refcount table';
  }
  if (ignore !== 'snapshot table' && hits(h.snapshotsOffset, meta.snapshotTableBytes))
    return 'snapshot table';
  if (ignore !== 'inactive L1 table') {
    for (const s of meta.snapshotList) if (hits(s.l1TableOffset, s.l1Size * 8)) return 'inactive L1 table';
  }
  if (ignore !== 'active L2 table') {
    for (const l2 of meta.l1Off.subarray(0, meta.l1Size))
      if (l2 !== 0 && hits(l2, cs)) return 'active L2 table';
  }
  if (ignore !== 'refcount block' && rc !== null) {
    for (const b of rc.table) if (b !== 0 && Number.isFinite(b) && hits(b, cs)) return 'refcount block';
  }
  const ext = h.extensions.find((e) => e.type === EXT_BITMAPS);
  if (
    ignore !== 'bitmap directory' &&
    ext !== undefined &&
    (h.autoclear & 1) !== 0 &&
    ext.data.length >= 24
  ) {
    const v = new DataView(ext.data.buffer, ext.data.byteOffset, ext.data.length);
    if (hits(getU64(v, 16), getU64(v, 8))) return 'bitmap directory';
  }
  return null;
}
