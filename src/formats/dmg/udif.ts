/**
 * UDIF (dmg) metadata as QEMU 7.2's block/dmg.c reads it: the 512-byte "koly" trailer, then
 * the mish blocks of the resource fork (binary) or of the XML property list, each a list of
 * 40-byte chunk entries mapping sectors of the disk to (compressed) bytes of the data fork.
 */
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { blkxBlobs } from './plist.js';

export const UDZE = 0; // zeros
export const UDRW = 1; // raw
export const UDIG = 2; // ignore (reads as zeros)
export const UDZO = 0x80000005; // zlib
export const UDBZ = 0x80000006; // bzip2
export const ULFO = 0x80000007; // lzfse

/** QEMU's limits: a chunk is at most 64 MiB compressed and 64 MiB uncompressed. */
export const DMG_LENGTHS_MAX = 64 * 1024 * 1024;
export const DMG_SECTORCOUNTS_MAX = DMG_LENGTHS_MAX / 512;
/** QEMU's cap on the XML property list. */
export const XML_MAX = 16 * 1024 * 1024;
/** vdisk's cap on the chunk table (QEMU has none; 4 Mi chunks map terabytes). */
export const CHUNKS_MAX = 4 * 1024 * 1024;

export interface ChunkTable {
  n: number;
  types: Uint32Array;
  /** First sector of each chunk on the disk. */
  sectors: Float64Array;
  sectorCounts: Float64Array;
  /** Byte offset of the chunk's data in the file. */
  offsets: Float64Array;
  lengths: Float64Array;
}

const einval = (path: string) =>
  new VdiskError('INVALID_IMAGE', `Could not open '${path}': Invalid argument`, { path });

/** Find "koly" in the last 515 bytes of the file's sector-rounded length (dmg_find_koly_offset). */
async function findKoly(file: HostFile, fileSize: number): Promise<number> {
  const length = Math.ceil(fileSize / 512) * 512;
  if (length < 512) throw new VdiskError('INVALID_IMAGE', 'dmg file must be at least 512 bytes long');
  const offset = length > 511 + 512 ? length - 511 - 512 : 0;
  const buf = new Uint8Array(Math.min(length, 515));
  await file.read(buf, offset);
  for (let i = 0; i < buf.length - 3; i++) {
    if (buf[i] === 0x6b && buf[i + 1] === 0x6f && buf[i + 2] === 0x6c && buf[i + 3] === 0x79)
      return offset + i;
  }
  throw new VdiskError('INVALID_IMAGE', 'Could not locate UDIF trailer in dmg file');
}

class TableBuilder {
  n = 0;
  types: number[] = [];
  sectors: number[] = [];
  counts: number[] = [];
  offsets: number[] = [];
  lengths: number[] = [];

  constructor(
    private readonly path: string,
    private readonly dataForkOffset: number,
  ) {}

  /** dmg_read_mish_block: blobs that are not mish blocks (or too short) are skipped. */
  addMish(buf: Uint8Array): void {
    const count = buf.length;
    if (count < 244) return;
    const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    if (v.getUint32(0) !== 0x6d697368) return;
    const outOffset = v.getBigUint64(8);
    const inOffset = BigInt(this.dataForkOffset) + v.getBigUint64(0x18);
    const chunks = Math.floor((count - 204) / 40);
    for (let k = 0; k < chunks; k++) {
      const at = 204 + 40 * k;
      const type = v.getUint32(at);
      // Comments, the last entry, ADC and lzfse chunks (QEMU 7.2 as Debian builds it has no
      // lzfse module) are left out: reading their sectors fails, as in QEMU.
      if (type !== UDZE && type !== UDRW && type !== UDIG && type !== UDZO && type !== UDBZ) continue;
      const i = this.n;
      const sectorCount = v.getBigUint64(at + 0x10);
      if (type !== UDZE && type !== UDIG && sectorCount > BigInt(DMG_SECTORCOUNTS_MAX)) {
        throw new VdiskError(
          'INVALID_IMAGE',
          `sector count ${sectorCount} for chunk ${i} is larger than max (${DMG_SECTORCOUNTS_MAX})`,
          { path: this.path },
        );
      }
      const length = v.getBigUint64(at + 0x20);
      if (length > BigInt(DMG_LENGTHS_MAX)) {
        throw new VdiskError(
          'INVALID_IMAGE',
          `length ${length} for chunk ${i} is larger than max (${DMG_LENGTHS_MAX})`,
          { path: this.path },
        );
      }
      if (this.n >= CHUNKS_MAX) {
        throw new VdiskError('TOO_LARGE', `dmg: more than ${CHUNKS_MAX} chunks`, { path: this.path });
      }
      const wrap = (x: bigint) => {
        const w = x & 0xffffffffffffffffn;
        return w > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(w);
      };
      this.types.push(type);
      this.sectors.push(wrap(v.getBigUint64(at + 8) + outOffset));
      this.counts.push(
        Number(sectorCount > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : sectorCount),
      );
      this.offsets.push(wrap(v.getBigUint64(at + 0x18) + inOffset));
      this.lengths.push(Number(length));
      this.n++;
    }
  }

  build(): ChunkTable {
    return {
      n: this.n,
      types: Uint32Array.from(this.types),
      sectors: Float64Array.from(this.sectors),
      sectorCounts: Float64Array.from(this.counts),
      offsets: Float64Array.from(this.offsets),
      lengths: Float64Array.from(this.lengths),
    };
  }
}

export interface UdifInfo {
  totalSectors: number;
  table: ChunkTable;
}

export async function readUdif(file: HostFile): Promise<UdifInfo> {
  const path = file.path;
  const fileSize = await file.size();
  const koly = await findKoly(file, fileSize);
  const raw = new Uint8Array(512);
  await file.read(raw, koly);
  const v = new DataView(raw.buffer);
  const dataForkOffset = v.getBigUint64(0x18);
  if (dataForkOffset > BigInt(koly)) throw einval(path);
  const rsrcOffset = v.getBigUint64(0x28);
  const rsrcLength = v.getBigUint64(0x30);
  if (rsrcOffset >= BigInt(koly) || rsrcLength > BigInt(koly) - rsrcOffset) throw einval(path);
  const xmlOffset = v.getBigUint64(0xd8);
  const xmlLength = v.getBigUint64(0xe0);
  if (xmlOffset >= BigInt(koly) || xmlLength > BigInt(koly) - xmlOffset) throw einval(path);
  const total = v.getBigInt64(0x1ec);
  if (total < 0n) throw einval(path);
  if (total > BigInt(Math.floor(Number.MAX_SAFE_INTEGER / 512))) {
    throw new VdiskError('TOO_LARGE', `dmg: image size of ${total} sectors is too large`, { path });
  }
  const builder = new TableBuilder(path, Number(dataForkOffset));
  if (rsrcLength !== 0n) {
    await readResourceFork(file, builder, Number(rsrcOffset), Number(rsrcLength));
  } else if (xmlLength !== 0n) {
    // QEMU's cap (a real list is about 1 MiB); read whole, then parsed strictly.
    if (xmlLength > BigInt(XML_MAX)) throw einval(path);
    const xml = new Uint8Array(Number(xmlLength));
    await file.read(xml, Number(xmlOffset));
    let blobs: Uint8Array[];
    try {
      blobs = blkxBlobs(Buffer.from(xml).toString('latin1'));
    } catch (err) {
      if (err instanceof VdiskError) throw new VdiskError(err.code, err.message, { path, cause: err });
      throw err;
    }
    for (const b of blobs) builder.addMish(b);
  } else {
    throw einval(path);
  }
  return { totalSectors: Number(total), table: builder.build() };
}

/** dmg_read_resource_fork: resource data as a run of (u32 length, mish block) records. */
async function readResourceFork(
  file: HostFile,
  b: TableBuilder,
  begin: number,
  length: number,
): Promise<void> {
  const head = new Uint8Array(12);
  await file.read(head, begin);
  const hv = new DataView(head.buffer);
  const dataOffset = hv.getUint32(0);
  if (dataOffset > length) throw einval(file.path);
  const count = hv.getUint32(8);
  if (count === 0 || dataOffset + count > length) throw einval(file.path);
  let offset = begin + dataOffset;
  const end = offset + count;
  const lenBuf = new Uint8Array(4);
  while (offset < end) {
    await file.read(lenBuf, offset);
    const n = new DataView(lenBuf.buffer).getUint32(0);
    if (n === 0 || n > end - offset) throw einval(file.path);
    offset += 4;
    // One resource at a time; it lies within the resource fork, which lies within the file.
    const blob = new Uint8Array(n);
    await file.read(blob, offset);
    b.addMish(blob);
    offset += n;
  }
}

/** search_chunk: QEMU's binary search over the chunks (which it assumes sorted by sector). */
export function searchChunk(t: ChunkTable, sector: number): number {
  let lo = 0;
  let hi = t.n;
  while (lo <= hi) {
    const mid = Math.floor((lo + hi) / 2);
    // QEMU reads one entry past the table here; that entry is never a match.
    if (mid >= t.n) return t.n;
    if (t.sectors[mid]! > sector) {
      if (mid === 0) return t.n;
      hi = mid - 1;
    } else if (t.sectors[mid]! + t.sectorCounts[mid]! > sector) {
      return mid;
    } else {
      lo = mid + 1;
    }
  }
  return t.n;
}
