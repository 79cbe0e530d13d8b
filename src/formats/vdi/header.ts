/**
 * The VDI header (VirtualBox "Virtual Disk Image", version 1.1), little endian, as QEMU's
 * block/vdi.c reads and writes it: a 0x40-byte text, then the fields below, 512 bytes in all.
 */
import { randomUUID } from 'node:crypto';
import { VdiskError } from '../../core/errors.js';
import { VDI_HEADER_SIZE, VDI_SIGNATURE } from './probe.js';

export const VDI_VERSION_1_1 = 0x00010001;
export const VDI_TYPE_DYNAMIC = 1;
export const VDI_TYPE_STATIC = 2;
/** A never-allocated block (reads as zeros: VDI has no backing file in QEMU). */
export const VDI_UNALLOCATED = 0xffffffff;
/** A discarded block: reads as zeros. */
export const VDI_DISCARDED = 0xfffffffe;
export const SECTOR_SIZE = 512;
export const DEFAULT_BLOCK_SIZE = 1 << 20;
/**
 * QEMU 7.2's VDI_BLOCKS_IN_IMAGE_MAX: the block map must fit one int-sized read,
 * QEMU_ALIGN_DOWN(INT_MAX, 512) / 4 = 0x1fffff80 entries; and VDI_DISK_SIZE_MAX.
 */
export const VDI_BLOCKS_IN_IMAGE_MAX = 0x1fffff80;
export const VDI_DISK_SIZE_MAX = VDI_BLOCKS_IN_IMAGE_MAX * DEFAULT_BLOCK_SIZE;
export const VDI_TEXT = '<<< QEMU VM Virtual Disk Image >>>\n';

/** Byte offsets of the fields in the 512-byte header. */
export const OFF = {
  signature: 0x40,
  version: 0x44,
  headerSize: 0x48,
  imageType: 0x4c,
  imageFlags: 0x50,
  description: 0x54,
  offsetBmap: 0x154,
  offsetData: 0x158,
  cylinders: 0x15c,
  heads: 0x160,
  sectors: 0x164,
  sectorSize: 0x168,
  diskSize: 0x170,
  blockSize: 0x178,
  blockExtra: 0x17c,
  blocksInImage: 0x180,
  blocksAllocated: 0x184,
  uuidImage: 0x188,
  uuidLastSnap: 0x198,
  uuidLink: 0x1a8,
  uuidParent: 0x1b8,
} as const;

export interface VdiHeader {
  signature: number;
  version: number;
  headerSize: number;
  imageType: number;
  imageFlags: number;
  offsetBmap: number;
  offsetData: number;
  sectorSize: number;
  /** Disk size as stored (QEMU rounds it up to a sector when opening). */
  diskSize: number;
  /** The stored disk size exactly (for messages about absurd values). */
  diskSizeExact: bigint;
  blockSize: number;
  blockExtra: number;
  blocksInImage: number;
  blocksAllocated: number;
  uuidLinkNull: boolean;
  uuidParentNull: boolean;
}

function u64(view: DataView, off: number): number {
  const v = view.getBigUint64(off, true);
  // Sizes beyond 2^53 are refused by the size check (VDI_DISK_SIZE_MAX is far below).
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

function isNull(buf: Uint8Array, off: number): boolean {
  for (let i = off; i < off + 16; i++) if (buf[i] !== 0) return false;
  return true;
}

export function decodeHeader(buf: Uint8Array): VdiHeader {
  const v = new DataView(buf.buffer, buf.byteOffset, VDI_HEADER_SIZE);
  return {
    signature: v.getUint32(OFF.signature, true),
    version: v.getUint32(OFF.version, true),
    headerSize: v.getUint32(OFF.headerSize, true),
    imageType: v.getUint32(OFF.imageType, true),
    imageFlags: v.getUint32(OFF.imageFlags, true),
    offsetBmap: v.getUint32(OFF.offsetBmap, true),
    offsetData: v.getUint32(OFF.offsetData, true),
    sectorSize: v.getUint32(OFF.sectorSize, true),
    diskSize: u64(v, OFF.diskSize),
    diskSizeExact: v.getBigUint64(OFF.diskSize, true),
    blockSize: v.getUint32(OFF.blockSize, true),
    blockExtra: v.getUint32(OFF.blockExtra, true),
    blocksInImage: v.getUint32(OFF.blocksInImage, true),
    blocksAllocated: v.getUint32(OFF.blocksAllocated, true),
    uuidLinkNull: isNull(buf, OFF.uuidLink),
    uuidParentNull: isNull(buf, OFF.uuidParent),
  };
}

const hex = (n: number) => n.toString(16);

/**
 * Validate a header as QEMU's vdi_open does (same order, same words), plus what QEMU leaves
 * unchecked but vdisk needs for bounded memory and safe writes: the block map must lie in the
 * file, after the header, and before the data area. Returns the virtual size.
 */
export function validateHeader(h: VdiHeader, fileSize: number): number {
  const unsupported = (msg: string) => new VdiskError('UNSUPPORTED', msg);
  if (h.diskSizeExact > BigInt(VDI_DISK_SIZE_MAX)) {
    throw unsupported(
      `Unsupported VDI image size (size is 0x${h.diskSizeExact.toString(16)}, max supported is 0x${hex(VDI_DISK_SIZE_MAX)})`,
    );
  }
  // 'VBoxManage convertfromraw' can write odd sizes; QEMU rounds them up to a sector.
  const size = Math.ceil(h.diskSize / SECTOR_SIZE) * SECTOR_SIZE;
  if (h.signature !== VDI_SIGNATURE) {
    throw new VdiskError(
      'INVALID_IMAGE',
      `Image not in VDI format (bad signature ${h.signature.toString(16).padStart(8, '0')})`,
    );
  }
  if (h.version !== VDI_VERSION_1_1) {
    throw unsupported(`unsupported VDI image (version ${h.version >>> 16}.${h.version & 0xffff})`);
  }
  if (h.offsetBmap % SECTOR_SIZE !== 0) {
    throw unsupported(`unsupported VDI image (unaligned block map offset 0x${hex(h.offsetBmap)})`);
  }
  if (h.offsetData % SECTOR_SIZE !== 0) {
    throw unsupported(`unsupported VDI image (unaligned data offset 0x${hex(h.offsetData)})`);
  }
  if (h.sectorSize !== SECTOR_SIZE) {
    throw unsupported(`unsupported VDI image (sector size ${h.sectorSize} is not ${SECTOR_SIZE})`);
  }
  if (h.blockSize !== DEFAULT_BLOCK_SIZE) {
    throw unsupported(`unsupported VDI image (block size ${h.blockSize} is not ${DEFAULT_BLOCK_SIZE})`);
  }
  if (size > h.blocksInImage * h.blockSize) {
    throw unsupported(
      `unsupported VDI image (disk size ${size}, image bitmap has room for ${h.blocksInImage * h.blockSize})`,
    );
  }
  if (!h.uuidLinkNull) throw unsupported('unsupported VDI image (non-NULL link UUID)');
  if (!h.uuidParentNull) throw unsupported('unsupported VDI image (non-NULL parent UUID)');
  if (h.blocksInImage > VDI_BLOCKS_IN_IMAGE_MAX) {
    throw unsupported(
      `unsupported VDI image (too many blocks ${h.blocksInImage}, max is ${VDI_BLOCKS_IN_IMAGE_MAX})`,
    );
  }
  // Beyond QEMU: the block map is read whole into memory, so it must be in the file; it must not
  // overlap the header, and the data area must not overlap it (writes would clobber the map).
  const bmapBytes = bmapSize(h.blocksInImage);
  if (h.offsetBmap < VDI_HEADER_SIZE) {
    throw new VdiskError(
      'INVALID_IMAGE',
      `Invalid VDI image (block map offset 0x${hex(h.offsetBmap)} overlaps the header)`,
    );
  }
  if (h.offsetBmap + bmapBytes > fileSize) {
    throw new VdiskError(
      'INVALID_IMAGE',
      `Invalid VDI image (block map of ${h.blocksInImage} entries at 0x${hex(h.offsetBmap)} runs past the end of the file)`,
    );
  }
  if (h.offsetData < h.offsetBmap + h.blocksInImage * 4) {
    throw new VdiskError(
      'INVALID_IMAGE',
      `Invalid VDI image (data offset 0x${hex(h.offsetData)} overlaps the block map)`,
    );
  }
  if (h.blocksAllocated > h.blocksInImage) {
    throw new VdiskError(
      'INVALID_IMAGE',
      `Invalid VDI image (${h.blocksAllocated} blocks allocated, but the image has ${h.blocksInImage})`,
    );
  }
  return size;
}

/** Bytes the block map takes on disk (QEMU reads and writes it in whole sectors). */
export function bmapSize(blocks: number): number {
  return Math.ceil((blocks * 4) / SECTOR_SIZE) * SECTOR_SIZE;
}

/**
 * The block map as written to disk, in pieces of at most `chunk` bytes (a 1 PiB image has a
 * 4 GiB map): entry(i) for each block in order (called once each, in order), then zeros to a
 * whole sector.
 */
export function* bmapPieces(
  blocks: number,
  entry: (i: number) => number,
  chunk = 1 << 20,
): Generator<Uint8Array> {
  const bytes = bmapSize(blocks);
  for (let pos = 0; pos < bytes; pos += chunk) {
    const out = new Uint8Array(Math.min(chunk, bytes - pos));
    const v = new DataView(out.buffer);
    const end = Math.min(blocks, (pos + out.length) / 4);
    for (let i = pos / 4; i < end; i++) v.setUint32(i * 4 - pos, entry(i), true);
    yield out;
  }
}

/** A UUID as VDI stores it: RFC 4122 bytes with the first three fields little endian. */
function vdiUuid(): Uint8Array {
  const b = Buffer.from(randomUUID().replaceAll('-', ''), 'hex');
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  return b;
}

/**
 * A new header as QEMU's vdi_co_do_create writes it; `allocated` blocks in use (create: all of
 * a static image's, none of a dynamic one's; a sequential output: its data blocks).
 */
export function encodeNewHeader(
  size: number,
  isStatic: boolean,
  allocated = isStatic ? Math.ceil(size / DEFAULT_BLOCK_SIZE) : 0,
): Uint8Array {
  const blocks = Math.ceil(size / DEFAULT_BLOCK_SIZE);
  const buf = new Uint8Array(VDI_HEADER_SIZE);
  const v = new DataView(buf.buffer);
  buf.set(Buffer.from(VDI_TEXT, 'latin1'), 0);
  v.setUint32(OFF.signature, VDI_SIGNATURE, true);
  v.setUint32(OFF.version, VDI_VERSION_1_1, true);
  // QEMU writes 0x180 here (its struct size without the pre-header text and padding).
  v.setUint32(OFF.headerSize, 0x180, true);
  v.setUint32(OFF.imageType, isStatic ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC, true);
  v.setUint32(OFF.offsetBmap, 0x200, true);
  v.setUint32(OFF.offsetData, 0x200 + bmapSize(blocks), true);
  v.setUint32(OFF.sectorSize, SECTOR_SIZE, true);
  v.setBigUint64(OFF.diskSize, BigInt(size), true);
  v.setUint32(OFF.blockSize, DEFAULT_BLOCK_SIZE, true);
  v.setUint32(OFF.blocksInImage, blocks, true);
  v.setUint32(OFF.blocksAllocated, allocated, true);
  buf.set(vdiUuid(), OFF.uuidImage);
  buf.set(vdiUuid(), OFF.uuidLastSnap);
  return buf;
}
