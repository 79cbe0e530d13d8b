/**
 * qcow2 persistent dirty bitmaps (qemu docs/interop/qcow2.rst "Bitmaps extension", QEMU's
 * block/qcow2-bitmap.c): the header extension, the bitmap directory and the per-bitmap tables,
 * read with QEMU's checks and messages, and written back as QEMU stores them at close (data
 * clusters for the parts with a dirty bit, a new table, a new directory, the header, then the
 * old clusters freed).
 *
 * The in-memory bitmap is QEMU's serialization: bit i covers guest bytes [i*g, (i+1)*g), bit
 * i lives in byte i/8 at position i%8 (least significant first); each data cluster holds
 * clusterSize * 8 bits.
 */

import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { getU64, setU64 } from './header.js';
import { entryOffset, isZero } from './l2-entry.js';

export const BME_MAX_TABLE_SIZE = 0x8000000;
/** QEMU restricts a bitmap's size in RAM (and on disk) to 512 MiB. */
export const BME_MAX_PHYS_SIZE = 0x20000000;
export const BME_MAX_GRANULARITY_BITS = 31;
export const BME_MIN_GRANULARITY_BITS = 9;
export const BME_MAX_NAME_SIZE = 1023;
export const MAX_BITMAPS = 65535;
export const MAX_BITMAP_DIRECTORY_SIZE = 1024 * MAX_BITMAPS;
export const FLAG_IN_USE = 1;
export const FLAG_AUTO = 2;
const RESERVED_FLAGS = 0xfffffffc;
const TYPE_DIRTY_TRACKING = 1;

/** One bitmap directory entry. */
export interface BitmapEntry {
  name: string;
  flags: number;
  granularityBits: number;
  tableOffset: number;
  tableSize: number;
}

/** The bitmaps header extension's fields. */
export interface BitmapsExt {
  count: number;
  dirSize: number;
  dirOffset: number;
}

const invalid = (msg: string, path: string) => new VdiskError('INVALID_IMAGE', msg, { path });

/**
 * Decode the extension's 24 bytes with QEMU's checks (qcow2_read_extensions). `undefined`
 * when there is none or when the autoclear bit says a program without bitmap support has
 * modified the image (QEMU then ignores the bitmaps, whose clusters check reports as leaks).
 */
export function parseBitmapsExt(
  data: Uint8Array | undefined,
  autoclearBit: boolean,
  clusterSize: number,
  path: string,
): BitmapsExt | undefined {
  if (data === undefined) return undefined;
  if (data.length !== 24) throw invalid('bitmaps_ext: Invalid extension length', path);
  if (!autoclearBit) return undefined;
  const v = new DataView(data.buffer, data.byteOffset, data.length);
  if (v.getUint32(4) !== 0) throw invalid('bitmaps_ext: Reserved field is not zero', path);
  const count = v.getUint32(0);
  const dirSize = getU64(v, 8);
  const dirOffset = getU64(v, 16);
  if (count > MAX_BITMAPS) {
    throw invalid(
      `bitmaps_ext: Image has ${count} bitmaps, exceeding the QEMU supported maximum of ${MAX_BITMAPS}`,
      path,
    );
  }
  if (count === 0) throw invalid('found bitmaps extension with zero bitmaps', path);
  if (!Number.isSafeInteger(dirOffset) || dirOffset % clusterSize !== 0) {
    throw invalid('bitmaps_ext: invalid bitmap directory offset', path);
  }
  if (dirSize > MAX_BITMAP_DIRECTORY_SIZE) {
    const shown = Number.isFinite(dirSize) ? String(dirSize) : BigInt(dirSize).toString();
    throw invalid(
      `bitmaps_ext: bitmap directory size (${shown}) exceeds the maximum supported size (${MAX_BITMAP_DIRECTORY_SIZE})`,
      path,
    );
  }
  return { count, dirSize, dirOffset };
}

export function encodeBitmapsExt(ext: BitmapsExt): Uint8Array {
  const out = new Uint8Array(24);
  const v = new DataView(out.buffer);
  v.setUint32(0, ext.count);
  setU64(v, 8, ext.dirSize);
  setU64(v, 16, ext.dirOffset);
  return out;
}

/** Bytes of the serialized bitmap of `size` guest bytes at granularity 2^bits. */
export function bitmapBytes(size: number, granularityBits: number): number {
  return Math.ceil(Math.ceil(size / 2 ** granularityBits) / 8);
}

/** Entries of the bitmap table. */
export function tableEntries(size: number, granularityBits: number, clusterSize: number): number {
  return Math.ceil(bitmapBytes(size, granularityBits) / clusterSize);
}

/** QEMU's check_dir_entry. */
function entryOk(e: BitmapEntry, typ: number, extra: number, clusterSize: number, size: number): boolean {
  if (
    e.tableSize === 0 ||
    e.tableOffset === 0 ||
    !Number.isSafeInteger(e.tableOffset) ||
    e.tableOffset % clusterSize !== 0 ||
    e.tableSize > BME_MAX_TABLE_SIZE ||
    e.granularityBits > BME_MAX_GRANULARITY_BITS ||
    e.granularityBits < BME_MIN_GRANULARITY_BITS ||
    (e.flags & RESERVED_FLAGS) !== 0 ||
    Buffer.byteLength(e.name) > BME_MAX_NAME_SIZE ||
    typ !== TYPE_DIRTY_TRACKING ||
    extra !== 0
  ) {
    return false;
  }
  const phys = e.tableSize * clusterSize;
  if (phys > BME_MAX_PHYS_SIZE) return false;
  // An in-use bitmap may have a table too small after a resize (QEMU's comment).
  return (e.flags & FLAG_IN_USE) !== 0 || size <= phys * 8 * 2 ** e.granularityBits;
}

/**
 * Read and check the bitmap directory (QEMU's bitmap_list_load), with its messages. The
 * directory is at most MAX_BITMAP_DIRECTORY_SIZE (64 MiB) bytes; reads past the end of the
 * file see zeros, as QEMU's do.
 */
export async function loadBitmapDirectory(
  file: HostFile,
  ext: BitmapsExt,
  clusterSize: number,
  size: number,
  path: string,
): Promise<BitmapEntry[]> {
  if (ext.dirSize === 0) throw invalid('Requested bitmap directory size is zero', path);
  if (ext.dirSize > MAX_BITMAP_DIRECTORY_SIZE) {
    throw invalid('Requested bitmap directory size is too big', path);
  }
  const dir = new Uint8Array(ext.dirSize);
  await file.read(dir, ext.dirOffset);
  const v = new DataView(dir.buffer);
  const out: BitmapEntry[] = [];
  const broken = () => invalid('Broken bitmap directory', path);
  let off = 0;
  while (off < dir.length) {
    if (off + 24 > dir.length) throw broken();
    if (out.length + 1 > ext.count) {
      throw invalid('More bitmaps found than specified in header extension', path);
    }
    const nameSize = v.getUint16(off + 18);
    const extra = v.getUint32(off + 20);
    const next = off + Math.ceil((24 + nameSize + extra) / 8) * 8;
    if (next > dir.length) throw broken();
    if (extra !== 0) throw invalid('Bitmap extra data is not supported', path);
    const nameBytes = dir.subarray(off + 24 + extra, off + 24 + extra + nameSize);
    const e: BitmapEntry = {
      tableOffset: getU64(v, off),
      tableSize: v.getUint32(off + 8),
      flags: v.getUint32(off + 12),
      granularityBits: dir[off + 17]!,
      name: Buffer.from(nameBytes).toString('utf8'),
    };
    if (!entryOk(e, dir[off + 16]!, extra, clusterSize, size)) {
      throw invalid(`Bitmap '${e.name}' doesn't satisfy the constraints`, path);
    }
    out.push(e);
    off = next;
  }
  if (out.length !== ext.count) throw invalid('Less bitmaps found than specified in header extension', path);
  return out;
}

export function encodeBitmapDirectory(list: readonly BitmapEntry[]): Uint8Array {
  let size = 0;
  for (const e of list) size += Math.ceil((24 + Buffer.byteLength(e.name)) / 8) * 8;
  const dir = new Uint8Array(size);
  const v = new DataView(dir.buffer);
  let off = 0;
  for (const e of list) {
    const name = Buffer.from(e.name);
    setU64(v, off, e.tableOffset);
    v.setUint32(off + 8, e.tableSize);
    v.setUint32(off + 12, e.flags);
    dir[off + 16] = TYPE_DIRTY_TRACKING;
    dir[off + 17] = e.granularityBits;
    v.setUint16(off + 18, name.length);
    dir.set(name, off + 24);
    off += Math.ceil((24 + name.length) / 8) * 8;
  }
  return dir;
}

/** A table entry's parts; `bad` when it breaks QEMU's check_table_entry. */
export function decodeTableEntry(
  hi: number,
  lo: number,
  clusterSize: number,
): { offset: number; allOnes: boolean; bad: boolean } {
  // Reserved: bits 1..8 and 56..63.
  const reserved = (hi & 0xff000000) !== 0 || (lo & 0x1fe) !== 0;
  const offset = entryOffset(hi, lo);
  const allOnes = isZero(lo);
  const bad = reserved || (offset !== 0 && (allOnes || offset % clusterSize !== 0));
  return { offset, allOnes, bad };
}

/** Read a bitmap table; throws EINVAL-like INVALID_IMAGE when an entry is invalid. */
export async function readBitmapTable(
  file: HostFile,
  e: BitmapEntry,
  clusterSize: number,
): Promise<Array<{ offset: number; allOnes: boolean; bad: boolean }>> {
  const raw = new Uint8Array(e.tableSize * 8);
  await file.read(raw, e.tableOffset);
  const v = new DataView(raw.buffer);
  const out = [];
  for (let i = 0; i < e.tableSize; i++) {
    out.push(decodeTableEntry(v.getUint32(i * 8), v.getUint32(i * 8 + 4), clusterSize));
  }
  return out;
}

/**
 * Load a bitmap's bits (QEMU's load_bitmap). An in-use bitmap has no usable data: QEMU keeps
 * it empty and inconsistent. The allocation is bitmapBytes(size, g) ≤ 512 MiB (the
 * directory's constraints tie it to the table size).
 */
export async function loadBitmapData(
  file: HostFile,
  e: BitmapEntry,
  clusterSize: number,
  size: number,
  path: string,
): Promise<Uint8Array> {
  const bytes = bitmapBytes(size, e.granularityBits);
  const bits = new Uint8Array(bytes);
  if ((e.flags & FLAG_IN_USE) !== 0) return bits;
  const table = await readBitmapTable(file, e, clusterSize);
  if (table.some((t) => t.bad)) {
    throw invalid(
      `Could not read bitmap_table table from image for bitmap '${e.name}': Invalid argument`,
      path,
    );
  }
  if (table.length !== Math.ceil(bytes / clusterSize)) {
    throw invalid(`Could not read bitmap '${e.name}' from image: Invalid argument`, path);
  }
  for (let i = 0; i < table.length; i++) {
    const t = table[i]!;
    const start = i * clusterSize;
    const len = Math.min(clusterSize, bytes - start);
    if (t.offset !== 0) {
      const part = new Uint8Array(clusterSize);
      await file.read(part, t.offset);
      bits.set(part.subarray(0, len), start);
    } else if (t.allOnes) {
      bits.fill(0xff, start, start + len);
    }
  }
  clearTail(bits, size, e.granularityBits);
  return bits;
}

/** Bits past the end of the image are never set (QEMU's bitmap has exactly that many bits). */
export function clearTail(bits: Uint8Array, size: number, granularityBits: number): void {
  const n = Math.ceil(size / 2 ** granularityBits);
  if (n % 8 !== 0 && bits.length > 0) bits[bits.length - 1]! &= (1 << (n % 8)) - 1;
}

/** Set the bits covering guest bytes [offset, offset + length). */
export function setRange(
  bits: Uint8Array,
  granularityBits: number,
  size: number,
  offset: number,
  length: number,
): void {
  if (length <= 0) return;
  const g = 2 ** granularityBits;
  const first = Math.floor(offset / g);
  const last = Math.min(Math.ceil(Math.min(offset + length, size) / g), bits.length * 8) - 1;
  let i = first;
  while (i <= last && i % 8 !== 0) {
    bits[i >> 3]! |= 1 << (i & 7);
    i++;
  }
  const fullEnd = Math.floor((last + 1) / 8);
  if (i / 8 < fullEnd) {
    bits.fill(0xff, i / 8, fullEnd);
    i = fullEnd * 8;
  }
  for (; i <= last; i++) bits[Math.floor(i / 8)]! |= 1 << (i & 7);
}

/** Does a bitmap have any bit set? */
export function anySet(bits: Uint8Array): boolean {
  for (let i = 0; i < bits.length; i++) if (bits[i] !== 0) return true;
  return false;
}

/** What storing needs from the image. */
export interface BitmapStore {
  readonly file: HostFile;
  readonly clusterSize: number;
  /** Allocate `bytes` rounded up to whole clusters, with refcount 1. */
  alloc(bytes: number): Promise<number>;
  free(offset: number, length: number): Promise<void>;
  /** Write the header with this extension (or none) and the autoclear bit set (or clear). */
  writeExtension(ext: BitmapsExt | undefined): Promise<void>;
  /** Refcounts and tables to disk before the header names the new directory. */
  flushMetadata(): Promise<void>;
}

/**
 * QEMU's store_bitmap: a data cluster for each cluster's worth of bits with one set, then the
 * table; returns the table's place. A bitmap without a set bit still has a table (of zeros).
 */
export async function storeBitmapData(
  s: BitmapStore,
  bits: Uint8Array,
): Promise<{ tableOffset: number; tableSize: number }> {
  const cs = s.clusterSize;
  const n = Math.max(1, Math.ceil(bits.length / cs));
  const table = new Uint8Array(n * 8);
  const tv = new DataView(table.buffer);
  for (let i = 0; i < n; i++) {
    const part = bits.subarray(i * cs, (i + 1) * cs);
    if (!anySet(part)) continue;
    const off = await s.alloc(cs);
    const buf = new Uint8Array(cs);
    buf.set(part);
    await s.file.write(buf, off);
    setU64(tv, i * 8, off);
  }
  const tableOffset = await s.alloc(table.length);
  await s.file.write(table, tableOffset);
  return { tableOffset, tableSize: n };
}

/** Free a bitmap's data clusters and its table (QEMU's free_bitmap_clusters). */
export async function freeBitmapClusters(s: BitmapStore, e: BitmapEntry): Promise<void> {
  if (e.tableSize === 0 || e.tableOffset === 0) return;
  const table = await readBitmapTable(s.file, e, s.clusterSize);
  for (const t of table) if (!t.bad && t.offset !== 0) await s.free(t.offset, s.clusterSize);
  await s.free(e.tableOffset, e.tableSize * 8);
}

/**
 * Write a new directory and point the header at it (QEMU's update_ext_header_and_dir); the
 * old directory is freed once the header no longer names it. An empty list drops the
 * extension and the autoclear bit.
 */
export async function storeDirectory(
  s: BitmapStore,
  list: readonly BitmapEntry[],
  old: BitmapsExt | undefined,
): Promise<BitmapsExt | undefined> {
  let next: BitmapsExt | undefined;
  if (list.length > 0) {
    if (list.length > MAX_BITMAPS) throw new VdiskError('INVALID_ARGUMENT', 'Too many persistent bitmaps');
    const dir = encodeBitmapDirectory(list);
    if (dir.length > MAX_BITMAP_DIRECTORY_SIZE) {
      throw new VdiskError('INVALID_ARGUMENT', 'Bitmap directory is too large');
    }
    const dirOffset = await s.alloc(dir.length);
    await s.file.write(dir, dirOffset);
    next = { count: list.length, dirSize: dir.length, dirOffset };
  }
  await s.flushMetadata();
  await s.writeExtension(next);
  if (old !== undefined && old.dirSize > 0) await s.free(old.dirOffset, old.dirSize);
  return next;
}

/** Rewrite the directory where it is, same size (flags only): QEMU's in-place update. */
export async function writeDirectoryInPlace(
  s: BitmapStore,
  list: readonly BitmapEntry[],
  ext: BitmapsExt,
): Promise<void> {
  const dir = encodeBitmapDirectory(list);
  if (dir.length !== ext.dirSize) throw new VdiskError('INTERNAL', 'Bitmap directory size changed in place');
  await s.file.write(dir, ext.dirOffset);
}

/** The flags qemu-img info lists for an entry. */
export function infoFlags(flags: number): string[] {
  const f: string[] = [];
  if ((flags & FLAG_IN_USE) !== 0) f.push('in-use');
  if ((flags & FLAG_AUTO) !== 0) f.push('auto');
  return f;
}
