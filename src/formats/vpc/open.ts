/** Opening a VHD: footer, dynamic header and BAT, each value validated before use. */
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import {
  DYN_HEADER_SIZE,
  decodeDynHeader,
  decodeFooter,
  FOOTER_SIZE,
  VHD_FIXED,
  VHD_MAX_SECTORS,
  virtualSectors,
  vpcChecksum,
} from './footer.js';
import type { VpcLayout } from './image.js';

/** Largest BAT vdisk loads: 64 Mi entries (256 MiB), 128 TiB of 2 MiB blocks. */
const MAX_BAT_ENTRIES = 64 << 20;
const BAT_CHUNK = 1 << 20;

function invalid(path: string, message: string, offset?: number): VdiskError {
  return new VdiskError('INVALID_IMAGE', message, { path, ...(offset !== undefined ? { offset } : {}) });
}

export async function readVpcLayout(file: HostFile): Promise<VpcLayout> {
  const path = file.path;
  const fileSize = await file.size();
  // QEMU sees file lengths in whole sectors (bdrv_getlength rounds up).
  const length = Math.ceil(fileSize / 512) * 512;
  let footer = new Uint8Array(FOOTER_SIZE);
  await file.read(footer, 0);
  let dynamic = true;
  if (decodeFooter(footer).creator !== 'conectix') {
    if (length < FOOTER_SIZE) throw invalid(path, 'File too small for a VHD header');
    // A fixed disk has its footer only at the end of the file.
    footer = new Uint8Array(FOOTER_SIZE);
    await file.read(footer, length - FOOTER_SIZE);
    if (decodeFooter(footer).creator !== 'conectix') throw invalid(path, 'invalid VPC image');
    dynamic = false;
  }
  const f = decodeFooter(footer);
  if (vpcChecksum(footer, 64) !== f.checksum) throw invalid(path, 'Incorrect header checksum');
  const totalSectors = virtualSectors(f);
  if (totalSectors > VHD_MAX_SECTORS) {
    throw new VdiskError('TOO_LARGE', 'File too large', { path });
  }
  const size = totalSectors * 512;

  if (!dynamic) {
    if (f.type !== VHD_FIXED) throw invalid(path, 'Footer at end of file but the VHD is not fixed');
    return { footer, type: f.type, size, fileSize };
  }

  // QEMU reads the dynamic header whatever the type says (a differencing VHD opens as a
  // dynamic one without its parent: QEMU 7.2 has no VHD backing files).
  if (f.dataOffset > BigInt(fileSize - DYN_HEADER_SIZE) || f.dataOffset < BigInt(FOOTER_SIZE)) {
    // QEMU reads zeros there and reports the magic.
    throw invalid(path, 'Invalid header magic');
  }
  const dataOffset = Number(f.dataOffset);
  const hbuf = new Uint8Array(DYN_HEADER_SIZE);
  await file.read(hbuf, dataOffset);
  const h = decodeDynHeader(hbuf);
  if (h.magic !== 'cxsparse') throw invalid(path, 'Invalid header magic');
  // QEMU does not verify the dynamic header's checksum; neither does vdisk (it writes it right).
  const blockSize = h.blockSize;
  if (blockSize < 512 || (blockSize & (blockSize - 1)) !== 0) {
    throw invalid(path, `Invalid block size ${blockSize}`);
  }
  const bitmapSize = Math.ceil(blockSize / (8 * 512) / 512) * 512;
  const n = h.maxTableEntries;
  if (Math.floor(size / blockSize) > 0xffffffff) throw invalid(path, 'Too many blocks');
  if (n * blockSize < size) throw invalid(path, 'Page table too small');
  if (n > 0x7fffffff / 4) throw invalid(path, `Max Table Entries too large (${n})`);
  const needed = Math.ceil(size / blockSize);
  if (needed > MAX_BAT_ENTRIES) {
    throw new VdiskError('TOO_LARGE', `The VHD block allocation table (${needed} entries) is too large`, {
      path,
    });
  }
  const batOffset = h.tableOffset;
  const batEnd = batOffset + 4 * n;
  if (!Number.isSafeInteger(batEnd) || batEnd > fileSize || batOffset < FOOTER_SIZE) {
    throw invalid(path, 'Error reading pagetable', batOffset);
  }
  // Metadata the data blocks must not overlap: the footer copy, the header and the BAT.
  const meta: Array<[number, number]> = [
    [0, FOOTER_SIZE],
    [dataOffset, dataOffset + DYN_HEADER_SIZE],
    [batOffset, batEnd],
  ];
  const bat = new Uint32Array(needed);
  const starts: number[] = [];
  let free = Math.ceil(batEnd / 512) * 512;
  const span = bitmapSize + blockSize;
  // Read the table in chunks: entries past the virtual size only move the free offset.
  const chunk = new Uint8Array(Math.min(BAT_CHUNK, 4 * n));
  for (let first = 0; first < n; first += chunk.length / 4) {
    const count = Math.min(chunk.length / 4, n - first);
    const part = chunk.subarray(0, count * 4);
    await file.read(part, batOffset + first * 4);
    const v = new DataView(part.buffer, part.byteOffset, part.byteLength);
    for (let i = 0; i < count; i++) {
      const e = v.getUint32(i * 4);
      if (first + i < needed) bat[first + i] = e;
      if (e === 0xffffffff) continue;
      const start = e * 512;
      const end = start + span;
      for (const [a, b] of meta) {
        if (start < b && end > a) {
          throw new VdiskError(
            'CORRUPT_IMAGE',
            `BAT entry ${first + i} points at offset ${start}, inside the image's metadata`,
            { path, offset: batOffset + (first + i) * 4 },
          );
        }
      }
      if (first + i < needed) starts.push(start);
      if (end > free) free = end;
    }
  }
  if (free > fileSize) {
    throw invalid(
      path,
      'block-vpc: free_data_block_offset points after the end of file. The image has been truncated.',
    );
  }
  starts.sort((a, b) => a - b);
  for (let i = 1; i < starts.length; i++) {
    if (starts[i]! < starts[i - 1]! + span) {
      throw new VdiskError('CORRUPT_IMAGE', `Two VHD blocks overlap at offset ${starts[i]}`, {
        path,
        offset: starts[i]!,
      });
    }
  }
  return {
    footer,
    type: f.type,
    size,
    blockSize,
    bitmapSize,
    batOffset,
    bat,
    freeDataBlockOffset: free,
    fileSize,
  };
}
