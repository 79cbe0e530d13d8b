/** Creating a VHDX as qemu-img 7.2 does (vhdx_co_create_opts / vhdx_co_create). */
import { randomInt } from 'node:crypto';
import type { CreateRequest } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { HostFile } from '../../core/host-file.js';
import { parseBoolOption } from '../../core/options.js';
import { parseSize, sizeParameterError } from '../../core/size.js';
import {
  BAT_GUID,
  BLOCK_SIZE_MAX,
  batIndex,
  chunkRatio,
  DEFAULT_LOG_SIZE,
  dv,
  encodeHeader,
  encodeMetadata,
  encodeRegionTable,
  HEADER_SECTION_END,
  HEADER1_OFFSET,
  HEADER2_OFFSET,
  MAX_IMAGE_SIZE,
  METADATA_GUID,
  MiB,
  newGuid,
  PAYLOAD_BLOCK_FULLY_PRESENT,
  PAYLOAD_BLOCK_NOT_PRESENT,
  PAYLOAD_BLOCK_ZERO,
  qemuBatEntries,
  REGION_TABLE_OFFSET,
  REGION_TABLE2_OFFSET,
  TiB,
  ZERO_GUID,
} from './structs.js';

const GiB = 1024 * MiB;

export interface VhdxCreateParams {
  size: number;
  logSize: number;
  blockSize: number;
  fixed: boolean;
  zeroBlocks: boolean;
}

function sizeOption(options: Record<string, string>, name: string): number | undefined {
  const text = options[name];
  if (text === undefined) return undefined;
  const v = parseSize(text);
  if (v === null) {
    throw new VdiskError('INVALID_ARGUMENT', sizeParameterError(name));
  }
  return v;
}

/** Options as QEMU validates and silently rounds them. */
export function vhdxParams(req: CreateRequest): VhdxCreateParams {
  const o = req.options;
  const sub = o['subformat'] ?? 'dynamic';
  if (sub !== 'dynamic' && sub !== 'fixed') {
    throw new VdiskError('INVALID_ARGUMENT', `Parameter 'subformat' does not accept value '${sub}'`);
  }
  const zeroText = o['block_state_zero'];
  const zeroBlocks = zeroText === undefined ? true : parseBoolOption('block_state_zero', zeroText);
  let logSize = sizeOption(o, 'log_size');
  let blockSize = sizeOption(o, 'block_size');
  const size = Math.ceil(req.size / 512) * 512;
  if (logSize !== undefined) logSize = Math.ceil(logSize / MiB) * MiB;
  if (blockSize !== undefined) {
    blockSize = Math.ceil(blockSize / MiB) * MiB;
    if (blockSize === 0) blockSize = undefined;
    else if (blockSize > BLOCK_SIZE_MAX) blockSize = BLOCK_SIZE_MAX;
  }
  if (size > MAX_IMAGE_SIZE) throw new VdiskError('INVALID_ARGUMENT', 'Image size too large; max of 64TB');
  if (logSize !== undefined && logSize > 0xffffffff) {
    throw new VdiskError('INVALID_ARGUMENT', 'Log size must be smaller than 4 GB');
  }
  logSize ??= DEFAULT_LOG_SIZE;
  if (logSize < MiB || logSize % MiB !== 0)
    throw new VdiskError('INVALID_ARGUMENT', 'Log size must be a multiple of 1 MB');
  // QEMU's choice, to keep the BAT small enough to hold in memory.
  blockSize ??= size > 32 * TiB ? 64 * MiB : size > 100 * GiB ? 32 * MiB : size > GiB ? 16 * MiB : 8 * MiB;
  if ((blockSize & (blockSize - 1)) !== 0)
    throw new VdiskError('INVALID_ARGUMENT', 'Block size must be a power of two');
  return { size, logSize, blockSize, fixed: sub === 'fixed', zeroBlocks };
}

export async function createVhdx(req: CreateRequest): Promise<void> {
  const p = vhdxParams(req);
  const sectorSize = 512;
  const ratio = chunkRatio(sectorSize, p.blockSize);
  const batEntries = qemuBatEntries(p.size, p.blockSize, ratio);
  const batFileOffset = Math.ceil((HEADER_SECTION_END + p.logSize) / MiB) * MiB;
  const batLength = Math.ceil((batEntries * 8) / MiB) * MiB;
  const metadataOffset = Math.ceil((batFileOffset + batLength) / MiB) * MiB;
  // Data starts past the BAT with room for the metadata and growth (QEMU's 5 MiB).
  const dataStart = batFileOffset + batLength + 5 * MiB;

  const file = await HostFile.open(req.path, { create: true });
  try {
    // File identifier: signature and creator (UTF-16LE, diagnostic only).
    const id = new Uint8Array(8 + 2 * 'vdisk'.length);
    id.set(Buffer.from('vhdxfile', 'latin1'), 0);
    id.set(Buffer.from('vdisk', 'utf16le'), 8);
    await file.write(id, 0);

    const seq = BigInt(randomInt(0, 2 ** 32 - 1));
    const header = {
      sequenceNumber: seq,
      fileWriteGuid: newGuid(),
      dataWriteGuid: newGuid(),
      logGuid: ZERO_GUID,
      logVersion: 0,
      version: 1,
      logLength: p.logSize,
      logOffset: HEADER_SECTION_END,
    };
    // QEMU writes only the 80-byte header; the rest of each 4 KiB block stays zero.
    await file.write(encodeHeader(header).subarray(0, 80), HEADER1_OFFSET);
    await file.write(encodeHeader({ ...header, sequenceNumber: seq + 1n }).subarray(0, 80), HEADER2_OFFSET);

    await file.truncate(p.fixed ? dataStart + p.size : dataStart);
    if (p.fixed || p.zeroBlocks) {
      const bat = new Uint8Array(batLength);
      const v = dv(bat);
      const state = p.zeroBlocks
        ? PAYLOAD_BLOCK_ZERO
        : p.fixed
          ? PAYLOAD_BLOCK_FULLY_PRESENT
          : PAYLOAD_BLOCK_NOT_PRESENT;
      const blocks = Math.ceil(p.size / p.blockSize);
      for (let b = 0; b < blocks; b++) {
        const fileOffset = Math.ceil((dataStart + b * p.blockSize) / MiB) * MiB;
        const entry =
          state === PAYLOAD_BLOCK_FULLY_PRESENT ? BigInt(fileOffset) | BigInt(state) : BigInt(state);
        v.setBigUint64(batIndex(b, ratio) * 8, entry, true);
      }
      await file.write(bat, batFileOffset);
    }
    const rt = encodeRegionTable([
      { guid: BAT_GUID, fileOffset: batFileOffset, length: batLength, required: false },
      { guid: METADATA_GUID, fileOffset: metadataOffset, length: MiB, required: false },
    ]);
    await file.write(rt, REGION_TABLE_OFFSET);
    await file.write(rt, REGION_TABLE2_OFFSET);

    const md = encodeMetadata(p.size, p.blockSize, sectorSize, p.fixed, newGuid());
    await file.write(md.table, metadataOffset);
    await file.write(md.items, metadataOffset + 64 * 1024);
    // qemu-img flushes the new image when it closes it (and `disk size` then agrees).
    await file.flush();
  } finally {
    await file.close();
  }
}
