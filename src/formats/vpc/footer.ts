/**
 * The VHD footer and dynamic disk header (Microsoft's "Virtual Hard Disk Image Format
 * Specification"), big-endian, with their one's-complement byte-sum checksums, and the CHS
 * geometry rules exactly as QEMU 7.2 applies them (block/vpc.c).
 */

export const FOOTER_SIZE = 512;
export const DYN_HEADER_SIZE = 1024;

export const VHD_FIXED = 2;
export const VHD_DYNAMIC = 3;
export const VHD_DIFFERENCING = 4;

/** Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC (the VHD timestamp base). */
export const VHD_TIMESTAMP_BASE = 946684800;

export const VHD_CHS_MAX_C = 65535;
export const VHD_CHS_MAX_H = 16;
export const VHD_CHS_MAX_S = 255;
/** 2040 GiB in 512-byte sectors: QEMU's largest VHD. */
export const VHD_MAX_SECTORS = 0xff000000;
export const VHD_MAX_GEOMETRY = VHD_CHS_MAX_C * VHD_CHS_MAX_H * VHD_CHS_MAX_S;

export const DEFAULT_BLOCK_SIZE = 0x200000;

export interface Footer {
  creator: string;
  features: number;
  version: number;
  dataOffset: bigint;
  timestamp: number;
  creatorApp: string;
  major: number;
  minor: number;
  creatorOs: string;
  origSize: number;
  currentSize: number;
  cyls: number;
  heads: number;
  secsPerCyl: number;
  type: number;
  checksum: number;
  uuid: Uint8Array;
  inSavedState: number;
}

export interface DynHeader {
  magic: string;
  dataOffset: bigint;
  tableOffset: number;
  version: number;
  maxTableEntries: number;
  blockSize: number;
  checksum: number;
}

/** One's complement of the byte sum, the checksum field (4 bytes at `at`) counted as zero. */
export function vpcChecksum(buf: Uint8Array, at: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) {
    if (i >= at && i < at + 4) continue;
    sum = (sum + buf[i]!) >>> 0;
  }
  return ~sum >>> 0;
}

function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

function ascii(buf: Uint8Array, start: number, len: number): string {
  return Buffer.from(buf.buffer, buf.byteOffset + start, len).toString('latin1');
}

export function decodeFooter(buf: Uint8Array): Footer {
  const v = view(buf);
  return {
    creator: ascii(buf, 0, 8),
    features: v.getUint32(8),
    version: v.getUint32(12),
    dataOffset: v.getBigUint64(16),
    timestamp: v.getUint32(24),
    creatorApp: ascii(buf, 28, 4),
    major: v.getUint16(32),
    minor: v.getUint16(34),
    creatorOs: ascii(buf, 36, 4),
    origSize: Number(v.getBigUint64(40)),
    currentSize: Number(v.getBigUint64(48)),
    cyls: v.getUint16(56),
    heads: v.getUint8(58),
    secsPerCyl: v.getUint8(59),
    type: v.getUint32(60),
    checksum: v.getUint32(64),
    uuid: buf.slice(68, 84),
    inSavedState: v.getUint8(84),
  };
}

/** The 512-byte footer, checksum computed. */
export function encodeFooter(f: Omit<Footer, 'checksum'>): Uint8Array {
  const buf = new Uint8Array(FOOTER_SIZE);
  const v = view(buf);
  buf.set(Buffer.from(f.creator, 'latin1').subarray(0, 8), 0);
  v.setUint32(8, f.features);
  v.setUint32(12, f.version);
  v.setBigUint64(16, f.dataOffset);
  v.setUint32(24, f.timestamp >>> 0);
  buf.set(Buffer.from(f.creatorApp, 'latin1').subarray(0, 4), 28);
  v.setUint16(32, f.major);
  v.setUint16(34, f.minor);
  buf.set(Buffer.from(f.creatorOs, 'latin1').subarray(0, 4), 36);
  v.setBigUint64(40, BigInt(f.origSize));
  v.setBigUint64(48, BigInt(f.currentSize));
  v.setUint16(56, f.cyls);
  v.setUint8(58, f.heads);
  v.setUint8(59, f.secsPerCyl);
  v.setUint32(60, f.type);
  buf.set(f.uuid.subarray(0, 16), 68);
  v.setUint8(84, f.inSavedState);
  v.setUint32(64, vpcChecksum(buf, 64));
  return buf;
}

export function decodeDynHeader(buf: Uint8Array): DynHeader {
  const v = view(buf);
  return {
    magic: ascii(buf, 0, 8),
    dataOffset: v.getBigUint64(8),
    tableOffset: Number(v.getBigUint64(16)),
    version: v.getUint32(24),
    maxTableEntries: v.getUint32(28),
    blockSize: v.getUint32(32),
    checksum: v.getUint32(36),
  };
}

/** The 1024-byte dynamic disk header as QEMU writes it (no parent), checksum computed. */
export function encodeDynHeader(tableOffset: number, maxTableEntries: number, blockSize: number): Uint8Array {
  const buf = new Uint8Array(DYN_HEADER_SIZE);
  const v = view(buf);
  buf.set(Buffer.from('cxsparse', 'latin1'), 0);
  // The spec says 0xFFFFFFFF, but Microsoft's tools expect all 64 bits set (QEMU's comment).
  v.setBigUint64(8, 0xffffffffffffffffn);
  v.setBigUint64(16, BigInt(tableOffset));
  v.setUint32(24, 0x00010000);
  v.setUint32(28, maxTableEntries);
  v.setUint32(32, blockSize);
  v.setUint32(36, vpcChecksum(buf, 36));
  return buf;
}

export interface Geometry {
  cyls: number;
  heads: number;
  secsPerCyl: number;
}

/**
 * The VHD specification's CHS algorithm as QEMU implements it (calculate_geometry): the
 * geometry may round the sector count down.
 */
export function calculateGeometry(totalSectors: number): Geometry {
  const total = Math.min(totalSectors, VHD_MAX_GEOMETRY);
  let secsPerCyl: number;
  let heads: number;
  let cylsTimesHeads: number;
  if (total >= 65535 * 16 * 63) {
    secsPerCyl = 255;
    heads = 16;
    cylsTimesHeads = Math.floor(total / secsPerCyl);
  } else {
    secsPerCyl = 17;
    cylsTimesHeads = Math.floor(total / secsPerCyl);
    heads = Math.ceil(cylsTimesHeads / 1024);
    if (heads < 4) heads = 4;
    if (cylsTimesHeads >= heads * 1024 || heads > 16) {
      secsPerCyl = 31;
      heads = 16;
      cylsTimesHeads = Math.floor(total / secsPerCyl);
    }
    if (cylsTimesHeads >= heads * 1024) {
      secsPerCyl = 63;
      heads = 16;
      cylsTimesHeads = Math.floor(total / secsPerCyl);
    }
  }
  // QEMU stores cylinders in a uint16_t.
  return { cyls: Math.floor(cylsTimesHeads / heads) & 0xffff, heads, secsPerCyl };
}

export interface RoundedSize extends Geometry {
  /** Sectors the image really has. */
  totalSectors: number;
}

/**
 * QEMU's calculate_rounded_image_size: without force_size, search upward from the requested
 * sector count for the first geometry that holds it (so convert never truncates); with
 * force_size, or when the geometry hits its maximum, the size itself counts. Returns null
 * when the size is beyond 2040 GiB.
 */
export function roundedImageSize(size: number, forceSize: boolean): RoundedSize | null {
  let g: Geometry = { cyls: 0, heads: 0, secsPerCyl: 0 };
  if (forceSize) {
    g = { cyls: VHD_CHS_MAX_C, heads: VHD_CHS_MAX_H, secsPerCyl: VHD_CHS_MAX_S };
  } else {
    const want = Math.min(VHD_MAX_GEOMETRY, Math.floor(size / 512));
    for (let i = 0; want > g.cyls * g.heads * g.secsPerCyl; i++) g = calculateGeometry(want + i);
  }
  const chs = g.cyls * g.heads * g.secsPerCyl;
  let totalSectors: number;
  if (chs === VHD_MAX_GEOMETRY) {
    totalSectors = Math.floor(size / 512);
    if (totalSectors > VHD_MAX_SECTORS) return null;
  } else {
    totalSectors = chs;
  }
  return { ...g, totalSectors };
}

/**
 * The virtual size QEMU gives an image (vpc_open): the CHS geometry, except for the creator
 * applications known to use current_size (Hyper-V, disk2vhd, XenServer, XenConverter, QEMU
 * with force_size) and for the maximum geometry.
 */
export function virtualSectors(f: Footer): number {
  const chs = f.cyls * f.heads * f.secsPerCyl;
  const app = f.creatorApp;
  const usesCurrentSize =
    app === 'win ' || app === 'qem2' || app === 'd2v ' || app === 'CTXS' || app === 'tap\0';
  if (usesCurrentSize || chs === VHD_MAX_GEOMETRY) return Math.floor(f.currentSize / 512);
  return chs;
}
