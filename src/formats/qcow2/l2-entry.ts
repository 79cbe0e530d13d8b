/**
 * The L1/L2 entry codec (qcow2.rst, "Cluster mapping"): the one place that knows the bit
 * layout of table entries. Entries are read as their two big-endian 32-bit halves (hi =
 * bits 63-32, lo = bits 31-0) so that every field stays a safe integer.
 *
 * Standard cluster descriptor: bits 9-55 host offset, bit 0 QCOW_OFLAG_ZERO (v3), bit 62
 * QCOW_OFLAG_COMPRESSED clear, bit 63 QCOW_OFLAG_COPIED (refcount is 1). An extended L2 entry
 * adds a 64-bit subcluster bitmap: zero bits in its high half, allocation bits in its low half.
 *
 * Compressed cluster descriptor (x = 62 - (cluster_bits - 8)): bits 0..x-1 host byte offset,
 * bits x..61 the number of additional 512-byte sectors.
 */

/** QCOW_OFLAG_COPIED (bit 63) in the high half. */
export const COPIED_HI = 0x80000000;
/** QCOW_OFLAG_COMPRESSED (bit 62) in the high half. */
export const COMPRESSED_HI = 0x40000000;
/** QCOW_OFLAG_ZERO (bit 0) in the low half. */
export const ZERO_LO = 1;
/** L1E_RESERVED_MASK (bits 0-8 and 56-62), as its two halves. */
export const L1_RESERVED_HI = 0x7f000000;
export const L1_RESERVED_LO = 0x1ff;
/** L2E_STD_RESERVED_MASK (bits 1-8 and 56-61) of a standard cluster descriptor. */
export const L2_STD_RESERVED_HI = 0x3f000000;
export const L2_STD_RESERVED_LO = 0x1fe;
/** An extended L2 entry's bitmap with every subcluster set. */
export const ALL_SUBCLUSTERS = 0xffffffff;

const HI_OFFSET_MASK = 0x00ffffff;
const LO_OFFSET_MASK = 0xfffffe00;
const TWO_32 = 0x100000000;

/** Host offset of an L1 entry or a standard L2 entry (bits 9-55). */
export function entryOffset(hi: number, lo: number): number {
  return (hi & HI_OFFSET_MASK) * TWO_32 + ((lo & LO_OFFSET_MASK) >>> 0);
}

export function isCompressed(hi: number): boolean {
  return (hi & COMPRESSED_HI) !== 0;
}

export function isCopied(hi: number): boolean {
  return (hi & COPIED_HI) !== 0;
}

export function isZero(lo: number): boolean {
  return (lo & ZERO_LO) !== 0;
}

/** The high half with COPIED set or cleared. */
export function withCopied(hi: number, copied: boolean): number {
  return copied ? (hi | COPIED_HI) >>> 0 : (hi & ~COPIED_HI) >>> 0;
}

/** The halves of an entry naming `host` (a cluster-aligned offset), with the given high flags. */
export function encodeOffset(host: number, flagsHi = 0): [number, number] {
  return [(flagsHi | Math.floor(host / TWO_32)) >>> 0, host >>> 0];
}

/** The halves of a standard entry naming `host` with COPIED set (a cluster of refcount 1). */
export function copiedEntry(host: number): [number, number] {
  return encodeOffset(host, COPIED_HI);
}

/** Write one 64-bit entry naming `host` at byte `at` of a table. */
export function putEntry(v: DataView, at: number, host: number, flagsHi = 0): void {
  const [hi, lo] = encodeOffset(host, flagsHi);
  v.setUint32(at, hi);
  v.setUint32(at + 4, lo);
}

/** Set COPIED on the entry at byte `at` of a table, keeping its other bits. */
export function setCopiedAt(v: DataView, at: number): void {
  v.setUint32(at, (v.getUint32(at) | COPIED_HI) >>> 0);
}

/** Bits of host offset in a compressed descriptor (x = 62 - (cluster_bits - 8)). */
function compressedOffsetBits(clusterBits: number): number {
  return 70 - clusterBits;
}

/** A compressed descriptor's offset bits above bit 31, and its number of 512-byte sectors. */
function compressedFields(hi: number, clusterBits: number): { offsetHi: number; sectors: number } {
  const x = compressedOffsetBits(clusterBits);
  return { offsetHi: hi & ((1 << (x - 32)) - 1), sectors: ((hi & 0x3fffffff) >>> (x - 32)) + 1 };
}

/**
 * A compressed descriptor's fields: the host byte offset (up to 62 bits: as a BigInt, exact
 * for a corrupted entry) and the number of 512-byte sectors it spans.
 */
export function decodeCompressedBig(
  hi: number,
  lo: number,
  clusterBits: number,
): { offset: bigint; sectors: number } {
  const { offsetHi, sectors } = compressedFields(hi, clusterBits);
  return { offset: BigInt(offsetHi) * BigInt(TWO_32) + BigInt(lo >>> 0), sectors };
}

/**
 * A compressed descriptor's host byte offset and the byte length QEMU reads from it
 * (qcow2_parse_compressed_l2_entry: the sectors minus the offset within the first one).
 */
export function decodeCompressed(
  hi: number,
  lo: number,
  clusterBits: number,
): { offset: number; size: number } {
  const { offsetHi, sectors } = compressedFields(hi, clusterBits);
  const offset = offsetHi * TWO_32 + lo;
  return { offset, size: sectors * 512 - (offset % 512) };
}

/** The halves of a compressed descriptor for `length` bytes stored at `host`. */
export function encodeCompressed(host: number, length: number, clusterBits: number): [number, number] {
  const x = compressedOffsetBits(clusterBits);
  const sectors = Math.floor((host + length - 1) / 512) - Math.floor(host / 512);
  return [(COMPRESSED_HI | (sectors << (x - 32)) | Math.floor(host / TWO_32)) >>> 0, host >>> 0];
}

/** An L1 table in memory: each entry's L2 table offset and its COPIED flag (1 or 0). */
export interface L1Entries {
  off: Float64Array;
  copied: Uint8Array;
}

/** Decode the `count` entries of a raw L1 table. */
export function decodeL1(raw: Uint8Array, count: number): L1Entries {
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const off = new Float64Array(count);
  const copied = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    const hi = v.getUint32(i * 8);
    off[i] = entryOffset(hi, v.getUint32(i * 8 + 4));
    copied[i] = isCopied(hi) ? 1 : 0;
  }
  return { off, copied };
}
