/**
 * VHDX on-disk structures (Microsoft's "VHDX Format Specification v1.00"), little-endian:
 * file identifier, the two headers, the region table, the metadata table and items, BAT
 * entries. GUIDs are kept as their 16 stored bytes (Microsoft's mixed-endian layout).
 */
import { randomBytes } from 'node:crypto';
import { checksumValid, setChecksum } from './crc32c.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const TiB = 1024 * 1024 * MiB;

export const HEADER_BLOCK = 64 * KiB;
export const HEADER1_OFFSET = 64 * KiB;
export const HEADER2_OFFSET = 128 * KiB;
export const REGION_TABLE_OFFSET = 192 * KiB;
export const REGION_TABLE2_OFFSET = 256 * KiB;
export const HEADER_SECTION_END = MiB;
/** The header's checksum covers its first 4 KiB. */
export const HEADER_SIZE = 4 * KiB;

export const BLOCK_SIZE_MIN = MiB;
export const BLOCK_SIZE_MAX = 256 * MiB;
export const MAX_IMAGE_SIZE = 64 * TiB;
export const DEFAULT_LOG_SIZE = MiB;
/** The spec's chunk: 2^23 sectors of payload per sector bitmap block. */
export const MAX_SECTORS_PER_BLOCK = 1 << 23;

// Payload block states (QEMU 7.2's vhdx.h).
export const PAYLOAD_BLOCK_NOT_PRESENT = 0;
export const PAYLOAD_BLOCK_UNDEFINED = 1;
export const PAYLOAD_BLOCK_ZERO = 2;
export const PAYLOAD_BLOCK_UNMAPPED = 3;
export const PAYLOAD_BLOCK_UNMAPPED_V095 = 5;
export const PAYLOAD_BLOCK_FULLY_PRESENT = 6;
export const PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7;

export const PARAMS_LEAVE_BLOCKS_ALLOCATED = 1;
export const PARAMS_HAS_PARENT = 2;

export const META_IS_REQUIRED = 4;
export const META_IS_VIRTUAL_DISK = 2;
export const REGION_IS_REQUIRED = 1;

const g = (hex: string): Uint8Array => Uint8Array.from(Buffer.from(hex, 'hex'));
// Stored byte order of the spec's GUIDs.
export const BAT_GUID = g('6677c22d23f600429d64115e9bfd4a08');
export const METADATA_GUID = g('06a27c8b90479a4bb8fe575f050f886e');
export const FILE_PARAMS_GUID = g('3767a1ca36fa434db3b633f0aa44e76b');
export const VIRTUAL_SIZE_GUID = g('2442a52f1bcd7648b2115dbed83bf4b8');
export const PAGE83_GUID = g('ab12cabee6b2234593efc309e000c746');
export const LOGICAL_SECTOR_GUID = g('1dbf41816fa90947ba47f233a8faab5f');
export const PHYSICAL_SECTOR_GUID = g('c748a3cd5d4471449cc9e9885251c556');
export const PARENT_LOCATOR_GUID = g('2d5fd3a80bb34d45abf7d3d84834ab0c');
export const ZERO_GUID = new Uint8Array(16);

export function guidEq(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== 16 || b.length !== 16) return false;
  for (let i = 0; i < 16; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A random (version 4) GUID, as QEMU's vhdx_guid_generate. */
export function newGuid(): Uint8Array {
  const b = randomBytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  return Uint8Array.from(b);
}

export function dv(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

export interface VhdxHeader {
  sequenceNumber: bigint;
  fileWriteGuid: Uint8Array;
  dataWriteGuid: Uint8Array;
  logGuid: Uint8Array;
  logVersion: number;
  version: number;
  logLength: number;
  logOffset: number;
}

const HEAD_SIGNATURE = 0x64616568; // "head"

/** Decode a 4 KiB header block; null when its signature, checksum or version is wrong. */
export function decodeHeader(buf: Uint8Array): VhdxHeader | null {
  const v = dv(buf);
  if (!checksumValid(buf, 4)) return null;
  if (v.getUint32(0, true) !== HEAD_SIGNATURE) return null;
  const version = v.getUint16(66, true);
  if (version !== 1) return null;
  return {
    sequenceNumber: v.getBigUint64(8, true),
    fileWriteGuid: buf.slice(16, 32),
    dataWriteGuid: buf.slice(32, 48),
    logGuid: buf.slice(48, 64),
    logVersion: v.getUint16(64, true),
    version,
    logLength: v.getUint32(68, true),
    logOffset: Number(v.getBigUint64(72, true)),
  };
}

/** Write header h over the 4 KiB block `base` (keeping its reserved bytes), checksum updated. */
export function encodeHeader(h: VhdxHeader, base: Uint8Array = new Uint8Array(HEADER_SIZE)): Uint8Array {
  const buf = Uint8Array.from(base);
  const v = dv(buf);
  v.setUint32(0, HEAD_SIGNATURE, true);
  v.setBigUint64(8, h.sequenceNumber, true);
  buf.set(h.fileWriteGuid, 16);
  buf.set(h.dataWriteGuid, 32);
  buf.set(h.logGuid, 48);
  v.setUint16(64, h.logVersion, true);
  v.setUint16(66, h.version, true);
  v.setUint32(68, h.logLength, true);
  v.setBigUint64(72, BigInt(h.logOffset), true);
  setChecksum(buf, 4);
  return buf;
}

/** The first 80 bytes are the header proper; QEMU compares these for equal sequence numbers. */
export const HEADER_STRUCT_SIZE = 80;

export interface RegionEntry {
  guid: Uint8Array;
  fileOffset: number;
  length: number;
  required: boolean;
}

const REGI_SIGNATURE = 0x69676572; // "regi"

export function encodeRegionTable(entries: RegionEntry[]): Uint8Array {
  const buf = new Uint8Array(HEADER_BLOCK);
  const v = dv(buf);
  v.setUint32(0, REGI_SIGNATURE, true);
  v.setUint32(8, entries.length, true);
  entries.forEach((e, i) => {
    const at = 16 + 32 * i;
    buf.set(e.guid, at);
    v.setBigUint64(at + 16, BigInt(e.fileOffset), true);
    v.setUint32(at + 24, e.length, true);
    v.setUint32(at + 28, e.required ? REGION_IS_REQUIRED : 0, true);
  });
  setChecksum(buf, 4);
  return buf;
}

export type RegionTable = { ok: true; entries: RegionEntry[] } | { ok: false; reason: string };

export function decodeRegionTable(buf: Uint8Array): RegionTable {
  const v = dv(buf);
  if (!checksumValid(buf, 4)) return { ok: false, reason: 'bad region table checksum' };
  if (v.getUint32(0, true) !== REGI_SIGNATURE) return { ok: false, reason: 'bad region table signature' };
  const count = v.getUint32(8, true);
  // Per the spec, at most 2047 entries (they fill the 64 KiB block).
  if (count > 2047) return { ok: false, reason: `region table with ${count} entries` };
  const entries: RegionEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = 16 + 32 * i;
    entries.push({
      guid: buf.slice(at, at + 16),
      fileOffset: Number(v.getBigUint64(at + 16, true)),
      length: v.getUint32(at + 24, true),
      required: (v.getUint32(at + 28, true) & REGION_IS_REQUIRED) !== 0,
    });
  }
  return { ok: true, entries };
}

export interface MetadataEntry {
  itemId: Uint8Array;
  offset: number;
  length: number;
  flags: number;
}

const METADATA_SIGNATURE = 'metadata';
/** The metadata table: a 32-byte header and up to 2047 entries of 32 bytes. */
export const METADATA_TABLE_SIZE = 64 * KiB;

export function decodeMetadataTable(buf: Uint8Array): MetadataEntry[] | null {
  if (Buffer.from(buf.buffer, buf.byteOffset, 8).toString('latin1') !== METADATA_SIGNATURE) return null;
  const v = dv(buf);
  const count = v.getUint16(10, true);
  if (32 + count * 32 > METADATA_TABLE_SIZE) return null;
  const out: MetadataEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = 32 + 32 * i;
    out.push({
      itemId: buf.slice(at, at + 16),
      offset: v.getUint32(at + 16, true),
      length: v.getUint32(at + 20, true),
      flags: v.getUint32(at + 24, true),
    });
  }
  return out;
}

/** The metadata region as QEMU writes it: the table (64 KiB) and the five items after it. */
export function encodeMetadata(
  virtualSize: number,
  blockSize: number,
  sectorSize: number,
  fixed: boolean,
  page83: Uint8Array,
): { table: Uint8Array; items: Uint8Array } {
  const table = new Uint8Array(METADATA_TABLE_SIZE);
  const tv = dv(table);
  table.set(Buffer.from(METADATA_SIGNATURE, 'latin1'), 0);
  tv.setUint16(10, 5, true);
  const items = new Uint8Array(8 + 8 + 16 + 4 + 4);
  const iv = dv(items);
  iv.setUint32(0, blockSize, true);
  iv.setUint32(4, fixed ? PARAMS_LEAVE_BLOCKS_ALLOCATED : 0, true);
  iv.setBigUint64(8, BigInt(virtualSize), true);
  items.set(page83, 16);
  iv.setUint32(32, sectorSize, true);
  iv.setUint32(36, sectorSize, true);
  const defs: Array<[Uint8Array, number, number]> = [
    [FILE_PARAMS_GUID, 8, META_IS_REQUIRED],
    [VIRTUAL_SIZE_GUID, 8, META_IS_REQUIRED | META_IS_VIRTUAL_DISK],
    [PAGE83_GUID, 16, META_IS_REQUIRED | META_IS_VIRTUAL_DISK],
    [LOGICAL_SECTOR_GUID, 4, META_IS_REQUIRED | META_IS_VIRTUAL_DISK],
    [PHYSICAL_SECTOR_GUID, 4, META_IS_REQUIRED | META_IS_VIRTUAL_DISK],
  ];
  let offset = 64 * KiB;
  defs.forEach(([guid, length, flags], i) => {
    const at = 32 + 32 * i;
    table.set(guid, at);
    tv.setUint32(at + 16, offset, true);
    tv.setUint32(at + 20, length, true);
    tv.setUint32(at + 24, flags, true);
    offset += length;
  });
  return { table, items };
}

/** Payload blocks per sector bitmap block. */
export function chunkRatio(logicalSectorSize: number, blockSize: number): number {
  return (MAX_SECTORS_PER_BLOCK * logicalSectorSize) / blockSize;
}

/**
 * BAT entries as QEMU 7.2 counts them (vhdx_calc_bat_entries), in 32-bit arithmetic: for a
 * zero-sized disk `data_blocks - 1` wraps, so QEMU sizes (and creates) a large BAT; vdisk
 * reproduces that so its files and checks agree with qemu-img's.
 */
export function qemuBatEntries(virtualSize: number, blockSize: number, ratio: number): number {
  const dataBlocks = Math.ceil(virtualSize / blockSize) >>> 0;
  const bits = Math.log2(ratio);
  return (dataBlocks + (((dataBlocks - 1) >>> 0) >>> bits)) >>> 0;
}

/** Index in the BAT of payload block `block` (sector bitmap entries interleave every chunk). */
export function batIndex(block: number, ratio: number): number {
  return block + Math.floor(block / ratio);
}

/** BAT entry: the file offset (1 MiB units, bits 20..63) and the state (bits 0..2). */
export function batState(entry: bigint): number {
  return Number(entry & 7n);
}

export function batOffset(entry: bigint): number {
  return Number(entry & 0xfffffffffff00000n);
}
