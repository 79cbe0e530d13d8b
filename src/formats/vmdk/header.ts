/**
 * Sparse extent headers: VMDK4 hosted sparse ("KDMV", also streamOptimized with its footer)
 * and VMDK3 VMFS sparse ("COWD"), little endian, as QEMU's block/vmdk.c reads them.
 */
import { VdiskError } from '../../core/errors.js';

export const SECTOR = 512;
export const VMDK4_FLAG_NL_DETECT = 1 << 0;
export const VMDK4_FLAG_RGD = 1 << 1;
export const VMDK4_FLAG_ZERO_GRAIN = 1 << 2;
export const VMDK4_FLAG_COMPRESS = 1 << 16;
export const VMDK4_FLAG_MARKER = 1 << 17;
export const VMDK4_COMPRESSION_DEFLATE = 1;
/** gd_offset value meaning "the grain directory is found through the footer". */
export const VMDK4_GD_AT_END = 0xffffffffffffffffn;
export const MARKER_END_OF_STREAM = 0;
export const MARKER_GRAIN_TABLE = 1;
export const MARKER_GRAIN_DIRECTORY = 2;
export const MARKER_FOOTER = 3;

/** What a sparse extent's header tells, in one shape for both header kinds. */
export interface SparseHeader {
  kind: 'vmdk4' | 'cowd';
  version: number;
  flags: number;
  /** Capacity in sectors. */
  capacity: number;
  /** Grain size in sectors. */
  granularity: number;
  descOffset: number;
  descSize: number;
  gtEntries: number;
  /** Redundant grain directory (sectors; 0 when absent). */
  rgdOffset: number;
  /** Grain directory (sectors); -1 when at the end (read the footer). */
  gdOffset: number;
  grainOffset: number;
  /** Number of grain directory entries (COWD stores it; VMDK4 derives it from the capacity). */
  gdEntries: number;
  compressAlgorithm: number;
}

function safe(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VdiskError('INVALID_IMAGE', `Invalid VMDK header: ${what} ${v} is out of range`);
  }
  return Number(v);
}

/** Decode a "KDMV" header from the 512 bytes at `buf` (magic included). */
export function decodeVmdk4(buf: Uint8Array): SparseHeader {
  const v = new DataView(buf.buffer, buf.byteOffset, SECTOR);
  const gd = v.getBigUint64(56, true);
  const version = v.getUint32(4, true);
  const flags = v.getUint32(8, true);
  const capacity = safe(v.getBigUint64(12, true), 'capacity');
  const granularity = safe(v.getBigUint64(20, true), 'granularity');
  const gtEntries = v.getUint32(44, true);
  return {
    kind: 'vmdk4',
    version,
    flags,
    capacity,
    granularity,
    descOffset: safe(v.getBigUint64(28, true), 'descriptor offset'),
    descSize: safe(v.getBigUint64(36, true), 'descriptor size'),
    gtEntries,
    rgdOffset:
      flags & VMDK4_FLAG_RGD ? safe(v.getBigUint64(48, true), 'redundant grain directory offset') : 0,
    gdOffset: gd === VMDK4_GD_AT_END ? -1 : safe(gd, 'grain directory offset'),
    grainOffset: safe(v.getBigUint64(64, true), 'grain offset'),
    gdEntries: 0,
    compressAlgorithm: v.getUint16(77, true),
  };
}

/** Decode a "COWD" (VMDK3) header. QEMU uses 4096-entry grain tables for it. */
export function decodeCowd(buf: Uint8Array): SparseHeader {
  const v = new DataView(buf.buffer, buf.byteOffset, SECTOR);
  return {
    kind: 'cowd',
    version: v.getUint32(4, true),
    flags: v.getUint32(8, true),
    capacity: v.getUint32(12, true),
    granularity: v.getUint32(16, true),
    descOffset: 0,
    descSize: 0,
    gtEntries: 4096,
    rgdOffset: 0,
    gdOffset: v.getUint32(20, true),
    grainOffset: 0,
    gdEntries: v.getUint32(24, true),
    compressAlgorithm: 0,
  };
}

export interface NewSparseHeader {
  version: number;
  flags: number;
  capacity: number;
  granularity: number;
  descOffset: number;
  descSize: number;
  gtEntries: number;
  rgdOffset: number;
  /** A sector, or VMDK4_GD_AT_END in a stream's header. */
  gdOffset: number | bigint;
  grainOffset: number;
  compressAlgorithm: number;
}

/** Encode a VMDK4 header sector as QEMU's vmdk_init_extent writes it. */
export function encodeVmdk4(h: NewSparseHeader): Uint8Array {
  const buf = new Uint8Array(SECTOR);
  const v = new DataView(buf.buffer);
  buf.set([0x4b, 0x44, 0x4d, 0x56], 0); // "KDMV"
  v.setUint32(4, h.version, true);
  v.setUint32(8, h.flags, true);
  v.setBigUint64(12, BigInt(h.capacity), true);
  v.setBigUint64(20, BigInt(h.granularity), true);
  v.setBigUint64(28, BigInt(h.descOffset), true);
  v.setBigUint64(36, BigInt(h.descSize), true);
  v.setUint32(44, h.gtEntries, true);
  v.setBigUint64(48, BigInt(h.rgdOffset), true);
  v.setBigUint64(56, BigInt(h.gdOffset), true);
  v.setBigUint64(64, BigInt(h.grainOffset), true);
  // filler byte, then the newline-detection check bytes "\n \r\n".
  buf.set([0x0a, 0x20, 0x0d, 0x0a], 73);
  v.setUint16(77, h.compressAlgorithm, true);
  return buf;
}

/** A metadata marker sector of a stream: the sectors of what follows it (u64), size 0, its type. */
export function encodeMarker(sectors: number, type: number): Uint8Array {
  const buf = new Uint8Array(SECTOR);
  const v = new DataView(buf.buffer);
  v.setBigUint64(0, BigInt(sectors), true);
  v.setUint32(12, type, true);
  return buf;
}

/** The end of a stream, as decodeFooter reads it: footer marker, `header`, end-of-stream marker. */
export function encodeFooter(header: Uint8Array): Uint8Array {
  const buf = new Uint8Array(3 * SECTOR);
  buf.set(encodeMarker(1, MARKER_FOOTER), 0);
  buf.set(header, SECTOR);
  // The end-of-stream marker is a sector of zeros (value 0, size 0, type 0).
  return buf;
}

/**
 * The footer of a stream (gd_offset = GD_AT_END): 1536 bytes before the end of the file, a
 * footer marker, a copy of the header whose gd_offset is real, an end-of-stream marker.
 */
export function decodeFooter(buf: Uint8Array): SparseHeader {
  const v = new DataView(buf.buffer, buf.byteOffset, 3 * SECTOR);
  const ok =
    buf[512] === 0x4b &&
    buf[513] === 0x44 &&
    buf[514] === 0x4d &&
    buf[515] === 0x56 &&
    v.getUint32(8, true) === 0 &&
    v.getUint32(12, true) === MARKER_FOOTER &&
    v.getBigUint64(1024, true) === 0n &&
    v.getUint32(1032, true) === 0 &&
    v.getUint32(1036, true) === MARKER_END_OF_STREAM;
  if (!ok) throw new VdiskError('INVALID_IMAGE', 'Invalid footer');
  const h = decodeVmdk4(buf.subarray(512, 1024));
  if (h.gdOffset < 0) throw new VdiskError('INVALID_IMAGE', 'Invalid footer');
  return h;
}
