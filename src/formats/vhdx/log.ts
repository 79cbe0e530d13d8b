/**
 * The VHDX metadata log: finding the active sequence of a dirty log and replaying it, and
 * writing one log entry that carries updated metadata sectors (BAT sectors here).
 *
 * Entry layout (all 4 KiB sectors): a 64-byte entry header and 32-byte descriptors filling
 * the first sector(s), then one data sector per data descriptor. The entry's CRC-32C covers
 * all of it with the checksum field counted as zero. A data sector keeps bytes 8..4091 of the
 * target sector; the first 8 and last 4 bytes travel in its descriptor.
 */
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { checksumWithHole, setChecksum } from './crc32c.js';
import { dv, guidEq, MiB, REGION_TABLE_OFFSET } from './structs.js';

export const LOG_SECTOR = 4096;
const LOGE = 0x65676f6c; // "loge"
const DESC = 0x63736564; // "desc"
const ZERO = 0x6f72657a; // "zero"
const DATA = 0x61746164; // "data"
/** Largest dirty log vdisk reads into memory to replay. */
const MAX_LOG_READ = 256 * MiB;

export interface LogDescriptor {
  zero: boolean;
  fileOffset: number;
  /** Zero descriptors: bytes to zero. Data descriptors: 4096. */
  length: number;
  /** Data descriptors: the full 4 KiB sector to write. */
  data?: Uint8Array;
}

export interface LogEntry {
  sequence: bigint;
  flushedFileOffset: number;
  lastFileOffset: number;
  descriptors: LogDescriptor[];
}

/** Sectors holding the entry header and `count` descriptors (126 in the first, 128 after). */
export function descriptorSectors(count: number): number {
  return Math.ceil((count + 2) / 128);
}

/** Parse the log entry starting at sector position `pos` of the log; null if not valid. */
function parseEntry(
  log: Uint8Array,
  pos: number,
  logGuid: Uint8Array,
  path: string,
): { entry: LogEntry; length: number } | null {
  const L = log.length;
  const sector = (p: number) => log.subarray(p % L, (p % L) + LOG_SECTOR);
  const head = sector(pos);
  const hv = dv(head);
  if (hv.getUint32(0, true) !== LOGE) return null;
  const entryLength = hv.getUint32(8, true);
  const sequence = hv.getBigUint64(16, true);
  const count = hv.getUint32(24, true);
  if (entryLength > L || entryLength % LOG_SECTOR !== 0 || entryLength === 0) return null;
  if (sequence === 0n || !guidEq(head.subarray(32, 48), logGuid)) return null;
  if (count * 32 > entryLength) return null;
  const descSectors = descriptorSectors(count);
  if (descSectors * LOG_SECTOR > entryLength) return null;
  // The whole entry, contiguous (it may wrap around the end of the log).
  const entry = new Uint8Array(entryLength);
  for (let i = 0; i < entryLength / LOG_SECTOR; i++) entry.set(sector(pos + i * LOG_SECTOR), i * LOG_SECTOR);
  if (checksumWithHole(entry, 4) !== dv(entry).getUint32(4, true)) return null;
  const ev = dv(entry);
  const descriptors: LogDescriptor[] = [];
  let dataSector = descSectors;
  for (let i = 0; i < count; i++) {
    const at = 64 + 32 * i;
    const sig = ev.getUint32(at, true);
    const fileOffset = Number(ev.getBigUint64(at + 16, true));
    const descSeq = ev.getBigUint64(at + 24, true);
    // QEMU refuses to open an image whose log holds a checksummed entry with a bad descriptor.
    const bad = (why: string) =>
      new VdiskError('INVALID_IMAGE', `VHDX log entry ${sequence} has an invalid descriptor (${why})`, {
        path,
      });
    if (descSeq !== sequence) throw bad('sequence number');
    if (fileOffset % LOG_SECTOR !== 0) throw bad('file offset');
    if (sig === ZERO) {
      const len = Number(ev.getBigUint64(at + 8, true));
      if (len % LOG_SECTOR !== 0) throw bad('zero length');
      descriptors.push({ zero: true, fileOffset, length: len });
    } else if (sig === DESC) {
      if ((dataSector + 1) * LOG_SECTOR > entryLength) throw bad('missing data sector');
      const ds = entry.subarray(dataSector * LOG_SECTOR, (dataSector + 1) * LOG_SECTOR);
      const dsv = dv(ds);
      const seq = (BigInt(dsv.getUint32(4, true)) << 32n) | BigInt(dsv.getUint32(4092, true));
      if (dsv.getUint32(0, true) !== DATA || seq !== sequence) throw bad('data sector');
      const data = new Uint8Array(LOG_SECTOR);
      data.set(entry.subarray(at + 8, at + 16), 0);
      data.set(ds.subarray(8, 4092), 8);
      data.set(entry.subarray(at + 4, at + 8), 4092);
      descriptors.push({ zero: false, fileOffset, length: LOG_SECTOR, data });
      dataSector++;
    } else {
      throw bad('signature');
    }
  }
  return {
    entry: {
      sequence,
      flushedFileOffset: Number(ev.getBigUint64(48, true)),
      lastFileOffset: Number(ev.getBigUint64(56, true)),
      descriptors,
    },
    length: entryLength,
  };
}

/**
 * The active sequence of the log (QEMU's vhdx_log_search): walk the circular log; a valid
 * entry starts a sequence that continues while the next entry is valid with the next sequence
 * number; the sequence whose first entry has the highest sequence number wins.
 */
export function findActiveSequence(log: Uint8Array, logGuid: Uint8Array, path: string): LogEntry[] {
  let best: LogEntry[] = [];
  let pos = 0;
  const L = log.length;
  while (pos < L) {
    const first = parseEntry(log, pos, logGuid, path);
    if (first === null) {
      pos += LOG_SECTOR;
      continue;
    }
    const seq: LogEntry[] = [first.entry];
    let next = pos + first.length;
    while (next - pos < L) {
      const e = parseEntry(log, next, logGuid, path);
      if (e === null || e.entry.sequence !== seq[seq.length - 1]!.sequence + 1n) break;
      seq.push(e.entry);
      next += e.length;
    }
    if (best.length === 0 || seq[0]!.sequence > best[0]!.sequence) best = seq;
    pos = next;
  }
  return best;
}

/** Read the log region (only done for a dirty log). */
export async function readLog(file: HostFile, offset: number, length: number): Promise<Uint8Array> {
  if (length > MAX_LOG_READ) {
    throw new VdiskError('TOO_LARGE', `The VHDX log (${length} bytes) is too large to replay`, {
      path: file.path,
    });
  }
  const buf = new Uint8Array(length);
  await file.read(buf, offset);
  return buf;
}

/**
 * Apply a sequence to the file: every descriptor's sector (or zeros), then grow the file to the
 * entry's last file offset. Descriptors are validated against the file first: none may touch
 * the header section or the log itself, nor reach past the file the log describes.
 */
export async function replay(
  file: HostFile,
  entries: LogEntry[],
  logRegion: { offset: number; length: number },
): Promise<void> {
  const path = file.path;
  for (const e of entries) {
    const size = await file.size();
    // A flushed offset past the end means the file was truncated after the log was written.
    if (e.flushedFileOffset > size) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        'VHDX log entry describes a file longer than the image (truncated?)',
        {
          path,
        },
      );
    }
    const limit = Math.max(size, Math.min(e.lastFileOffset, size + 64 * 1024 * MiB));
    for (const d of e.descriptors) {
      const end = d.fileOffset + d.length;
      const inLog = d.fileOffset < logRegion.offset + logRegion.length && end > logRegion.offset;
      if (d.fileOffset < REGION_TABLE_OFFSET || end > limit || inLog || !Number.isSafeInteger(end)) {
        throw new VdiskError('CORRUPT_IMAGE', `VHDX log entry ${e.sequence} writes outside the metadata`, {
          path,
          offset: d.fileOffset,
        });
      }
    }
    for (const d of e.descriptors) {
      if (!d.zero) {
        await file.write(d.data!, d.fileOffset);
        continue;
      }
      const zero = new Uint8Array(Math.min(d.length, MiB));
      for (let p = 0; p < d.length; p += zero.length) {
        await file.write(zero.subarray(0, Math.min(zero.length, d.length - p)), d.fileOffset + p);
      }
    }
    if ((await file.size()) < e.lastFileOffset) {
      await file.truncate(Math.ceil(Math.min(e.lastFileOffset, limit) / MiB) * MiB);
    }
  }
  await file.flush();
}

/** Most 4 KiB sectors one entry can carry in a log of `logLength` bytes (one sector kept open). */
export function maxSectorsPerEntry(logLength: number): number {
  const total = logLength / LOG_SECTOR - 1;
  let n = total;
  while (n > 0 && n + descriptorSectors(n) > total) n--;
  return n;
}

/** Build one log entry carrying `sectors` (file offset → 4 KiB contents). */
export function buildEntry(
  sectors: Array<[number, Uint8Array]>,
  sequence: bigint,
  logGuid: Uint8Array,
  fileSize: number,
): Uint8Array {
  const n = sectors.length;
  const ds = descriptorSectors(n);
  const buf = new Uint8Array((ds + n) * LOG_SECTOR);
  const v = dv(buf);
  v.setUint32(0, LOGE, true);
  v.setUint32(8, buf.length, true);
  v.setUint32(12, 0, true); // tail: this entry starts its own sequence
  v.setBigUint64(16, sequence, true);
  v.setUint32(24, n, true);
  buf.set(logGuid, 32);
  v.setBigUint64(48, BigInt(fileSize), true);
  v.setBigUint64(56, BigInt(fileSize), true);
  sectors.forEach(([fileOffset, data], i) => {
    const at = 64 + 32 * i;
    v.setUint32(at, DESC, true);
    buf.set(data.subarray(4092, 4096), at + 4);
    buf.set(data.subarray(0, 8), at + 8);
    v.setBigUint64(at + 16, BigInt(fileOffset), true);
    v.setBigUint64(at + 24, sequence, true);
    const s = (ds + i) * LOG_SECTOR;
    v.setUint32(s, DATA, true);
    v.setUint32(s + 4, Number(sequence >> 32n), true);
    buf.set(data.subarray(8, 4092), s + 8);
    v.setUint32(s + 4092, Number(sequence & 0xffffffffn), true);
  });
  setChecksum(buf, 4);
  return buf;
}
