/**
 * The qcow (version 1) header, big-endian (QEMU's block/qcow.c):
 *   magic u32, version u32, backing_file_offset u64, backing_file_size u32, mtime u32,
 *   size u64, cluster_bits u8, l2_bits u8, padding u16, crypt_method u32, l1_table_offset u64.
 */
import { VdiskError } from '../../core/errors.js';

export const HEADER_BYTES = 48;
export const QCOW_MAGIC = 0x514649fb;
/** L2 entry flag of a compressed cluster. */
export const COMPRESSED_HI = 0x80000000;

export interface QcowHeader {
  backingOffset: number;
  backingSize: number;
  mtime: number;
  size: number;
  clusterBits: number;
  l2Bits: number;
  cryptMethod: number;
  l1Offset: number;
  /** Entries in the L1 table (derived from size). */
  l1Size: number;
}

function u64(v: DataView, at: number, what: string): number {
  const hi = v.getUint32(at);
  if (hi >= 2 ** 21) throw new VdiskError('INVALID_IMAGE', `${what} is too large`);
  return hi * 2 ** 32 + v.getUint32(at + 4);
}

export function setU64(v: DataView, at: number, n: number): void {
  v.setUint32(at, Math.floor(n / 2 ** 32));
  v.setUint32(at + 4, n % 2 ** 32);
}

/** Decode and validate, with QEMU's limits (cluster_bits 9..16, l2_bits 6..16). */
export function decodeHeader(buf: Uint8Array, fileSize: number): QcowHeader {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.length);
  if (buf.length < HEADER_BYTES || v.getUint32(0) !== QCOW_MAGIC || v.getUint32(4) !== 1) {
    throw new VdiskError('INVALID_IMAGE', 'Image not in qcow format');
  }
  const h: QcowHeader = {
    backingOffset: u64(v, 8, 'Backing file offset'),
    backingSize: v.getUint32(16),
    mtime: v.getUint32(20),
    size: u64(v, 24, 'Image size'),
    clusterBits: v.getUint8(32),
    l2Bits: v.getUint8(33),
    cryptMethod: v.getUint32(36),
    l1Offset: u64(v, 40, 'L1 table offset'),
    l1Size: 0,
  };
  if (h.size === 0) throw new VdiskError('INVALID_IMAGE', 'Image size is zero');
  if (h.clusterBits < 9 || h.clusterBits > 16)
    throw new VdiskError('INVALID_IMAGE', 'Cluster size must be between 512 and 64k');
  if (h.l2Bits < 6 || h.l2Bits > 16)
    throw new VdiskError('INVALID_IMAGE', 'L2 table size must be between 512 and 64k');
  if (h.cryptMethod > 1) throw new VdiskError('INVALID_IMAGE', `invalid encryption method in qcow header`);
  // crypt method 1 (AES) is read with luks/legacy-aes.ts.
  const shift = h.clusterBits + h.l2Bits;
  h.l1Size = Math.ceil(h.size / 2 ** shift);
  if (h.l1Size * 8 > 32 << 20)
    throw new VdiskError('TOO_LARGE', 'Image is too big (L1 table larger than 32 MiB)');
  if (h.l1Offset < HEADER_BYTES || h.l1Offset > fileSize) {
    throw new VdiskError('INVALID_IMAGE', `Invalid L1 table offset ${h.l1Offset}`);
  }
  if (h.backingOffset !== 0) {
    if (h.backingSize === 0 || h.backingSize > 1023 || h.backingOffset + h.backingSize > fileSize) {
      throw new VdiskError('INVALID_IMAGE', 'Invalid backing file name location');
    }
  }
  return h;
}

export function encodeHeader(h: QcowHeader): Uint8Array {
  const buf = new Uint8Array(HEADER_BYTES);
  const v = new DataView(buf.buffer);
  v.setUint32(0, QCOW_MAGIC);
  v.setUint32(4, 1);
  setU64(v, 8, h.backingOffset);
  v.setUint32(16, h.backingSize);
  v.setUint32(20, h.mtime);
  setU64(v, 24, h.size);
  v.setUint8(32, h.clusterBits);
  v.setUint8(33, h.l2Bits);
  v.setUint32(36, h.cryptMethod);
  setU64(v, 40, h.l1Offset);
  return buf;
}
