/**
 * Opening a VHDX (QEMU's vhdx_open): headers, log (replayed when dirty and writable, refused
 * read-only as qemu-img does), region table, metadata, BAT; every offset and size validated
 * before use.
 */
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { type HeaderState, updateHeaders, type VhdxState } from './image.js';
import { findActiveSequence, readLog, replay } from './log.js';
import {
  BAT_GUID,
  BLOCK_SIZE_MAX,
  BLOCK_SIZE_MIN,
  batIndex,
  batOffset,
  batState,
  chunkRatio,
  decodeHeader,
  decodeMetadataTable,
  decodeRegionTable,
  dv,
  FILE_PARAMS_GUID,
  guidEq,
  HEADER_SECTION_END,
  HEADER_SIZE,
  HEADER_STRUCT_SIZE,
  HEADER1_OFFSET,
  HEADER2_OFFSET,
  LOGICAL_SECTOR_GUID,
  METADATA_GUID,
  METADATA_TABLE_SIZE,
  MiB,
  newGuid,
  PAGE83_GUID,
  PARAMS_HAS_PARENT,
  PARENT_LOCATOR_GUID,
  PAYLOAD_BLOCK_FULLY_PRESENT,
  PHYSICAL_SECTOR_GUID,
  qemuBatEntries,
  REGION_TABLE_OFFSET,
  type VhdxHeader,
  VIRTUAL_SIZE_GUID,
  ZERO_GUID,
} from './structs.js';

/** Largest BAT vdisk loads: 16 Mi entries (128 MiB), 16 TiB in 1 MiB blocks. */
const MAX_BAT_ENTRIES = 1 << 24;

function invalid(path: string, message: string, offset?: number): VdiskError {
  return new VdiskError('INVALID_IMAGE', message, { path, ...(offset !== undefined ? { offset } : {}) });
}

export async function readVhdxState(file: HostFile, writable: boolean): Promise<VhdxState> {
  const path = file.path;
  const sig = new Uint8Array(8);
  await file.read(sig, 0);
  if (Buffer.from(sig).toString('latin1') !== 'vhdxfile')
    throw invalid(path, 'Not a VHDX file (bad signature)');
  let fileSize = await file.size();

  // Headers: the valid one with the higher sequence number; equal numbers only when identical.
  const raw1 = new Uint8Array(HEADER_SIZE);
  const raw2 = new Uint8Array(HEADER_SIZE);
  await file.read(raw1, HEADER1_OFFSET);
  await file.read(raw2, HEADER2_OFFSET);
  const h1 = decodeHeader(raw1);
  const h2 = decodeHeader(raw2);
  let current: 0 | 1;
  if (h1 !== null && h2 === null) current = 0;
  else if (h1 === null && h2 !== null) current = 1;
  else if (h1 !== null && h2 !== null) {
    if (h1.sequenceNumber > h2.sequenceNumber) current = 0;
    else if (h2.sequenceNumber > h1.sequenceNumber) current = 1;
    else if (Buffer.compare(raw1.subarray(0, HEADER_STRUCT_SIZE), raw2.subarray(0, HEADER_STRUCT_SIZE)) === 0)
      current = 0;
    else throw invalid(path, 'No valid VHDX header found');
  } else {
    throw invalid(path, 'No valid VHDX header found');
  }
  // A missing header is rebuilt from the other on the next update.
  const headers: [VhdxHeader, VhdxHeader] = [(h1 ?? h2)!, (h2 ?? h1)!];
  const hs: HeaderState = { headers, rawHeaders: [raw1, raw2], current };
  const header = headers[current];
  const sessionGuid = newGuid();

  // The log.
  const logOffset = header.logOffset;
  const logLength = header.logLength;
  if (logOffset < MiB || logOffset % MiB !== 0 || !Number.isSafeInteger(logOffset + logLength)) {
    throw invalid(path, `Invalid VHDX log offset ${logOffset}`);
  }
  if (header.logVersion !== 0) throw invalid(path, `Unsupported VHDX log version ${header.logVersion}`);
  let replayedOnOpen = false;
  if (!guidEq(header.logGuid, ZERO_GUID) && logLength !== 0) {
    if (logLength % MiB !== 0) throw invalid(path, `Invalid VHDX log length ${logLength}`);
    const log = await readLog(file, logOffset, logLength);
    const entries = findActiveSequence(log, header.logGuid, path);
    if (entries.length > 0) {
      if (!writable) {
        // qemu-img's words (block/vhdx-log.c), with our program name.
        throw new VdiskError(
          'INVALID_IMAGE',
          `VHDX image file '${path}' opened read-only, but contains a log that needs to be replayed\n` +
            `To replay the log, run:\nvdisk check -r all '${path}'`,
          { path },
        );
      }
      await updateHeaders(file, hs, sessionGuid, true, undefined);
      await replay(file, entries, { offset: logOffset, length: logLength });
      await updateHeaders(file, hs, sessionGuid, false, ZERO_GUID);
      replayedOnOpen = true;
      fileSize = await file.size();
    }
  }

  // Regions: the log, and each region table entry, may not overlap.
  const regions: Array<[number, number]> = [[logOffset, logOffset + logLength]];
  const overlaps = (a: number, b: number) => regions.some(([s, e]) => a < e && b > s);
  const rtBuf = new Uint8Array(64 * 1024);
  await file.read(rtBuf, REGION_TABLE_OFFSET);
  const rt = decodeRegionTable(rtBuf);
  if (!rt.ok) throw invalid(path, `Invalid VHDX region table: ${rt.reason}`);
  let bat: { fileOffset: number; length: number } | null = null;
  let meta: { fileOffset: number; length: number } | null = null;
  for (const e of rt.entries) {
    const end = e.fileOffset + e.length;
    if (!Number.isSafeInteger(end) || overlaps(e.fileOffset, end) || e.fileOffset < HEADER_SECTION_END) {
      throw invalid(path, `VHDX region ${e.fileOffset}-${end} overlaps with another region`);
    }
    regions.push([e.fileOffset, end]);
    if (guidEq(e.guid, BAT_GUID)) {
      if (bat !== null) throw invalid(path, 'VHDX region table lists the BAT twice');
      bat = e;
    } else if (guidEq(e.guid, METADATA_GUID)) {
      if (meta !== null) throw invalid(path, 'VHDX region table lists the metadata twice');
      meta = e;
    } else if (e.required) {
      throw new VdiskError('UNSUPPORTED', 'VHDX image has a required region that vdisk does not know', {
        path,
      });
    }
  }
  if (bat === null || meta === null) throw invalid(path, 'VHDX region table lacks the BAT or the metadata');

  // Metadata.
  const mtBuf = new Uint8Array(METADATA_TABLE_SIZE);
  await file.read(mtBuf, meta.fileOffset);
  const items = decodeMetadataTable(mtBuf);
  if (items === null) throw invalid(path, 'Invalid VHDX metadata table');
  const found = new Map<string, { offset: number; length: number }>();
  const known = [
    FILE_PARAMS_GUID,
    VIRTUAL_SIZE_GUID,
    PAGE83_GUID,
    LOGICAL_SECTOR_GUID,
    PHYSICAL_SECTOR_GUID,
    PARENT_LOCATOR_GUID,
  ].map((g) => Buffer.from(g).toString('hex'));
  for (const it of items) {
    const key = Buffer.from(it.itemId).toString('hex');
    if (known.includes(key)) {
      if (found.has(key)) throw invalid(path, 'VHDX metadata lists an item twice');
      found.set(key, it);
    } else if (it.flags & 4) {
      throw new VdiskError('UNSUPPORTED', 'VHDX image has required metadata that vdisk does not know', {
        path,
      });
    }
  }
  const item = async (guid: Uint8Array, size: number): Promise<DataView | null> => {
    const it = found.get(Buffer.from(guid).toString('hex'));
    if (it === undefined) return null;
    if (it.length < size || it.offset + size > meta.length) {
      throw invalid(path, 'VHDX metadata item lies outside the metadata region');
    }
    const b = new Uint8Array(size);
    await file.read(b, meta.fileOffset + it.offset);
    return dv(b);
  };
  const params = await item(FILE_PARAMS_GUID, 8);
  const vsize = await item(VIRTUAL_SIZE_GUID, 8);
  const page83 = await item(PAGE83_GUID, 16);
  const logical = await item(LOGICAL_SECTOR_GUID, 4);
  const physical = await item(PHYSICAL_SECTOR_GUID, 4);
  if (params === null || vsize === null || page83 === null || logical === null || physical === null) {
    throw new VdiskError('UNSUPPORTED', 'VHDX metadata lacks a required item', { path });
  }
  const blockSize = params.getUint32(0, true);
  const bits = params.getUint32(4, true);
  if (bits & PARAMS_HAS_PARENT) {
    if (found.has(Buffer.from(PARENT_LOCATOR_GUID).toString('hex'))) {
      throw new VdiskError(
        'UNSUPPORTED',
        'Differencing VHDX images (with a parent locator) are not supported (qemu-img 7.2 does not open them either)',
        { path },
      );
    }
    throw invalid(path, 'VHDX image says it has a parent but has no parent locator');
  }
  if (blockSize < BLOCK_SIZE_MIN || blockSize > BLOCK_SIZE_MAX || (blockSize & (blockSize - 1)) !== 0) {
    throw invalid(path, `Invalid VHDX block size ${blockSize}`);
  }
  const sectorSize = logical.getUint32(0, true);
  if (sectorSize !== 512 && sectorSize !== 4096)
    throw invalid(path, `Invalid VHDX logical sector size ${sectorSize}`);
  const virtualSize = Number(vsize.getBigUint64(0, true));
  if (!Number.isSafeInteger(virtualSize) || virtualSize > 64 * 1024 * 1024 * MiB) {
    throw new VdiskError('TOO_LARGE', `VHDX virtual size ${vsize.getBigUint64(0, true)} is too large`, {
      path,
    });
  }
  // The spec makes the size a multiple of the logical sector size; QEMU counts whole 512-byte
  // sectors. (For 4 KiB logical sectors QEMU 7.2 mixes its units and misreads the disk; vdisk
  // reads it as the spec says.)
  const size = Math.floor(virtualSize / 512) * 512;
  const ratio = chunkRatio(sectorSize, blockSize);

  // BAT.
  const qemuEntries = qemuBatEntries(virtualSize, blockSize, ratio);
  if (qemuEntries > bat.length / 8) throw invalid(path, 'VHDX BAT region is too small for the disk');
  const dataBlocks = Math.ceil(size / blockSize);
  const entries = dataBlocks === 0 ? 0 : batIndex(dataBlocks - 1, ratio) + 1;
  if (entries > MAX_BAT_ENTRIES) {
    throw new VdiskError('TOO_LARGE', `The VHDX block allocation table (${entries} entries) is too large`, {
      path,
    });
  }
  const batBuf = new Uint8Array(entries * 8);
  await file.read(batBuf, bat.fileOffset);
  const batArr = new BigUint64Array(entries);
  const bv = dv(batBuf);
  for (let i = 0; i < entries; i++) batArr[i] = bv.getBigUint64(i * 8, true);
  // Payload blocks present in the file: inside it, past the header section, clear of every
  // region and of each other (QEMU's vhdx_check_bat_entries, plus the overlap between blocks).
  const present: Array<[number, number, number]> = [];
  for (let b = 0; b < dataBlocks; b++) {
    const i = batIndex(b, ratio);
    const e = batArr[i]!;
    if (batState(e) !== PAYLOAD_BLOCK_FULLY_PRESENT) continue;
    const off = batOffset(e);
    // The last block may exist only partially (QEMU once created such files).
    const len = Math.min(blockSize, size - b * blockSize);
    if (off >= fileSize) {
      throw invalid(
        path,
        `VHDX BAT entry ${i} start offset ${off} points after end of file (${fileSize}). Image has probably been truncated.`,
      );
    }
    if (off + len > fileSize) {
      throw invalid(
        path,
        `VHDX BAT entry ${i} end offset ${off + len - 1} points after end of file (${fileSize}). Image has probably been truncated.`,
      );
    }
    if (off < HEADER_SECTION_END || overlaps(off, off + blockSize)) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `VHDX BAT entry ${i} points into the image's metadata (offset ${off})`,
        {
          path,
          offset: bat.fileOffset + i * 8,
        },
      );
    }
    present.push([off, blockSize, i]);
  }
  present.sort((a, b) => a[0] - b[0]);
  for (let k = 1; k < present.length; k++) {
    if (present[k]![0] < present[k - 1]![0] + present[k - 1]![1]) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `VHDX BAT entries ${present[k - 1]![2]} and ${present[k]![2]} overlap`,
        {
          path,
        },
      );
    }
  }
  return {
    ...hs,
    file,
    size,
    blockSize,
    chunkRatio: ratio,
    batFileOffset: bat.fileOffset,
    bat: batArr,
    logOffset,
    logLength,
    fileSize,
    replayedOnOpen,
    sessionGuid,
  };
}
