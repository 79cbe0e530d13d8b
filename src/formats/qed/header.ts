/**
 * The QED header (docs/interop/qed_spec.rst): little-endian, in the first cluster, with the
 * backing file name stored within the first header_size clusters.
 */
import { VdiskError } from '../../core/errors.js';

export const QED_MAGIC = 0x00444551;
export const HEADER_BYTES = 64;
export const F_BACKING_FILE = 1;
export const F_NEED_CHECK = 2;
export const F_BACKING_FORMAT_NO_PROBE = 4;
const KNOWN_FEATURES = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE;

export const CLUSTER_MIN = 4096;
export const CLUSTER_MAX = 64 << 20;
export const TABLE_MAX = 16;

export interface QedHeader {
  clusterSize: number;
  tableSize: number;
  headerSize: number;
  features: number;
  compatFeatures: number;
  autoclearFeatures: number;
  l1Offset: number;
  imageSize: number;
  backingNameOffset: number;
  backingNameSize: number;
}

/** Read a little-endian u64 as a number; refuses values past 2^53. */
export function u64(view: DataView, at: number, what: string): number {
  const lo = view.getUint32(at, true);
  const hi = view.getUint32(at + 4, true);
  if (hi >= 2 ** 21)
    throw new VdiskError(
      'INVALID_IMAGE',
      `${what} is too large (0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')})`,
    );
  return hi * 2 ** 32 + lo;
}

export function setU64(view: DataView, at: number, v: number): void {
  view.setUint32(at, v % 2 ** 32, true);
  view.setUint32(at + 4, Math.floor(v / 2 ** 32), true);
}

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

/** Decode and validate a header against the file size. */
export function decodeHeader(buf: Uint8Array, fileSize: number): QedHeader {
  if (buf.length < HEADER_BYTES)
    throw new VdiskError('INVALID_IMAGE', 'Image is not in qed format (truncated header)');
  const v = new DataView(buf.buffer, buf.byteOffset, buf.length);
  if (v.getUint32(0, true) !== QED_MAGIC) throw new VdiskError('INVALID_IMAGE', 'Image not in QED format');
  const high = (at: number) => v.getUint32(at + 4, true);
  if (high(16) !== 0 || high(24) !== 0 || high(32) !== 0) {
    throw new VdiskError(
      'UNSUPPORTED',
      'Unsupported QED features: 0x' + high(16).toString(16).padStart(8, '0') + '00000000',
    );
  }
  const h: QedHeader = {
    clusterSize: v.getUint32(4, true),
    tableSize: v.getUint32(8, true),
    headerSize: v.getUint32(12, true),
    features: v.getUint32(16, true),
    compatFeatures: v.getUint32(24, true),
    autoclearFeatures: v.getUint32(32, true),
    l1Offset: u64(v, 40, 'L1 table offset'),
    imageSize: u64(v, 48, 'Image size'),
    backingNameOffset: v.getUint32(56, true),
    backingNameSize: v.getUint32(60, true),
  };
  if (h.features & ~KNOWN_FEATURES) {
    throw new VdiskError(
      'UNSUPPORTED',
      `Unsupported QED features: 0x${(h.features & ~KNOWN_FEATURES).toString(16)}`,
    );
  }
  if (!isPow2(h.clusterSize) || h.clusterSize < CLUSTER_MIN || h.clusterSize > CLUSTER_MAX) {
    throw new VdiskError('INVALID_IMAGE', `Invalid QED cluster size ${h.clusterSize}`);
  }
  if (!isPow2(h.tableSize) || h.tableSize > TABLE_MAX) {
    throw new VdiskError('INVALID_IMAGE', `Invalid QED table size ${h.tableSize}`);
  }
  if (h.headerSize === 0 || h.headerSize > 1024 || h.headerSize * h.clusterSize > 64 << 20) {
    throw new VdiskError('INVALID_IMAGE', `Invalid QED header size ${h.headerSize}`);
  }
  // QEMU's qed_is_image_size_valid (whole sectors, within what the tables map), in its words.
  const entries = (h.tableSize * h.clusterSize) / 8;
  if (h.imageSize % 512 !== 0 || h.imageSize > entries * entries * h.clusterSize) {
    throw new VdiskError('INVALID_IMAGE', 'QED image size is invalid');
  }
  if (h.l1Offset % h.clusterSize !== 0 || h.l1Offset < h.clusterSize * h.headerSize) {
    throw new VdiskError('INVALID_IMAGE', `Invalid QED L1 table offset ${h.l1Offset}`);
  }
  if (h.l1Offset >= fileSize) {
    throw new VdiskError('INVALID_IMAGE', `QED L1 table offset ${h.l1Offset} is past the end of the file`);
  }
  if (h.features & F_BACKING_FILE) {
    const end = h.backingNameOffset + h.backingNameSize;
    if (h.backingNameSize === 0 || h.backingNameSize > 1023 || end > h.headerSize * h.clusterSize) {
      throw new VdiskError('INVALID_IMAGE', 'Invalid QED backing file name location');
    }
  }
  return h;
}

export function encodeHeader(h: QedHeader): Uint8Array {
  const buf = new Uint8Array(HEADER_BYTES);
  const v = new DataView(buf.buffer);
  v.setUint32(0, QED_MAGIC, true);
  v.setUint32(4, h.clusterSize, true);
  v.setUint32(8, h.tableSize, true);
  v.setUint32(12, h.headerSize, true);
  setU64(v, 16, h.features);
  setU64(v, 24, h.compatFeatures);
  setU64(v, 32, h.autoclearFeatures);
  setU64(v, 40, h.l1Offset);
  setU64(v, 48, h.imageSize);
  v.setUint32(56, h.backingNameOffset, true);
  v.setUint32(60, h.backingNameSize, true);
  return buf;
}
