/**
 * qemu-img create -f vmdk (block/vmdk.c vmdk_co_do_create / vmdk_init_extent): every
 * subformat, with the descriptor QEMU writes byte for byte (except the random CID).
 */
import { randomInt } from 'node:crypto';
import { basename } from 'node:path';
import type { CreateRequest } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { HostFile } from '../../core/host-file.js';
import { parseBoolOption } from '../../core/options.js';
import { formatDescriptor } from './descriptor.js';
import {
  encodeVmdk4,
  SECTOR,
  VMDK4_COMPRESSION_DEFLATE,
  VMDK4_FLAG_COMPRESS,
  VMDK4_FLAG_MARKER,
  VMDK4_FLAG_NL_DETECT,
  VMDK4_FLAG_RGD,
  VMDK4_FLAG_ZERO_GRAIN,
} from './header.js';

export const SUBFORMATS = [
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
] as const;
export const ADAPTER_TYPES = ['ide', 'buslogic', 'lsilogic', 'legacyESX'] as const;

/** VMDK's fixed split size for the twoGbMaxExtent subformats. */
const SPLIT_SIZE = 0x80000000;
/** QEMU refuses to open more grain directory entries than this (vmdk_add_extent). */
const MAX_GD_ENTRIES = 32 * 1024 * 1024;

export async function createVmdk(req: CreateRequest): Promise<void> {
  // The create command names the image in front of every driver error (as qemu-img does).
  const fail = (code: 'INVALID_ARGUMENT' | 'UNSUPPORTED' | 'TOO_LARGE', msg: string) =>
    new VdiskError(code, msg);
  const o = req.options;
  if (req.backing?.format !== undefined && req.backing.format !== 'vmdk') {
    throw fail('INVALID_ARGUMENT', 'backing_file must be a vmdk image');
  }
  const size = Math.ceil(req.size / SECTOR) * SECTOR;
  const adapter = o['adapter_type'] ?? 'ide';
  if (!(ADAPTER_TYPES as readonly string[]).includes(adapter)) {
    throw fail('INVALID_ARGUMENT', `invalid parameter value: ${adapter}`);
  }
  const subformat = o['subformat'] ?? 'monolithicSparse';
  if (!(SUBFORMATS as readonly string[]).includes(subformat)) {
    throw fail('INVALID_ARGUMENT', `invalid parameter value: ${subformat}`);
  }
  const compat6 = parseBoolOption('compat6', o['compat6'] ?? 'off');
  const zeroedGrain = parseBoolOption('zeroed_grain', o['zeroed_grain'] ?? 'off');
  let hwVersion = o['hwversion'] === 'undefined' ? undefined : o['hwversion'];
  if (compat6) {
    if (hwVersion !== undefined)
      throw fail('INVALID_ARGUMENT', 'compat6 cannot be enabled with hwversion set');
    hwVersion = '6';
  }
  hwVersion ??= '4';
  const toolsVersion = o['toolsversion'] ?? '2147483647';
  const split = subformat === 'twoGbMaxExtentFlat' || subformat === 'twoGbMaxExtentSparse';
  const flat = subformat === 'monolithicFlat' || subformat === 'twoGbMaxExtentFlat';
  const compress = subformat === 'streamOptimized';
  if (flat && req.backing !== undefined) throw fail('UNSUPPORTED', "Flat image can't have backing file");
  if (flat && zeroedGrain) throw fail('UNSUPPORTED', "Flat image can't enable zeroed grain");
  for (const [what, v] of [
    ['hwversion', hwVersion],
    ['toolsversion', toolsVersion],
    ['backing_file', req.backing?.filename ?? ''],
  ] as const) {
    // The values go into the descriptor between quotes.
    if (/["\r\n\0]/.test(v)) throw fail('INVALID_ARGUMENT', `${what} must not contain quotes or line breaks`);
  }
  if (!flat && gdEntriesFor(split ? Math.min(size, SPLIT_SIZE) : size) > MAX_GD_ENTRIES) {
    throw fail('TOO_LARGE', 'Image size too large for a sparse VMDK extent');
  }

  let parentCid = 0xffffffff;
  if (req.backing !== undefined) parentCid = await parentCidOf(req.path, req.backing.filename);

  const { dir, prefix, postfix } = decompose(req.path);
  const extentLines: string[] = [];
  const line = (bytes: number, file: string) =>
    flat
      ? `RW ${Math.ceil(bytes / SECTOR)} FLAT "${basename(file)}" 0`
      : `RW ${Math.ceil(bytes / SECTOR)} SPARSE "${basename(file)}"`;
  const monolithic = !split && !flat;
  if (monolithic) {
    await createExtentFile(req.path, size, false, compress, zeroedGrain);
    extentLines.push(line(size, req.path));
  } else {
    let created = 0;
    for (let idx = 1; created < size; idx++) {
      const cur = Math.min(size - created, split ? SPLIT_SIZE : size);
      const name = split
        ? `${dir}${prefix}-${flat ? 'f' : 's'}${String(idx).padStart(3, '0')}${postfix}`
        : `${dir}${prefix}-flat${postfix}`;
      await createExtentFile(name, cur, flat, compress, zeroedGrain);
      extentLines.push(line(cur, name));
      created += cur;
    }
  }
  const heads = adapter === 'ide' ? 16 : 255;
  const text = formatDescriptor({
    cid: randomInt(0, 0xffffffff),
    parentCid,
    createType: subformat,
    parentFileNameHint: req.backing?.filename,
    extentLines,
    hwVersion,
    cylinders: Math.floor(size / (63 * heads * SECTOR)),
    heads,
    adapterType: adapter,
    toolsVersion,
  });
  const bytes = Buffer.from(text, 'latin1');
  const file = monolithic
    ? await HostFile.open(req.path, { writable: true })
    : await HostFile.open(req.path, { create: true });
  try {
    if (monolithic && bytes.length > 20 * SECTOR) throw fail('INVALID_ARGUMENT', 'VMDK descriptor too long');
    await file.write(bytes, monolithic ? 0x200 : 0);
  } finally {
    await file.close();
  }
}

/** The parent's CID (the backing file must be a vmdk image, as QEMU requires). */
async function parentCidOf(path: string, backing: string): Promise<number> {
  const { openImage } = await import('../../chain/open.js');
  const { VmdkImage } = await import('./image.js');
  // QEMU names the parent relative to the new image's directory, as the path was given.
  const slash = path.lastIndexOf('/');
  const full = backing.startsWith('/') || slash < 0 ? backing : path.slice(0, slash + 1) + backing;
  const img = await openImage(full, { backing: 'ignore', forceShare: true }).catch((err: unknown) => {
    // openImage words it "Could not open 'x': <reason>"; the reason already names the file.
    const inner = err instanceof VdiskError && err.cause instanceof VdiskError ? err.cause : err;
    const msg = inner instanceof Error ? inner.message : String(inner);
    throw new VdiskError(inner instanceof VdiskError ? inner.code : 'ENOENT', msg, {
      cause: err,
    });
  });
  try {
    if (!(img.driver instanceof VmdkImage)) {
      throw new VdiskError('INVALID_ARGUMENT', `Invalid backing file format: ${img.format}. Must be vmdk`);
    }
    return img.driver.cid;
  } finally {
    await img.close();
  }
}

/** QEMU's filename_decompose: directory (with its slash), name before the last dot, the rest. */
function decompose(path: string): { dir: string; prefix: string; postfix: string } {
  const slash = path.lastIndexOf('/');
  const dir = slash < 0 ? '' : path.slice(0, slash + 1);
  const base = path.slice(slash + 1);
  const dot = base.lastIndexOf('.');
  return dot < 0
    ? { dir, prefix: base, postfix: '' }
    : { dir, prefix: base.slice(0, dot), postfix: base.slice(dot) };
}

function gdEntriesFor(bytes: number): number {
  const grains = Math.ceil(bytes / SECTOR / 128);
  return Math.ceil(grains / 512);
}

/** One extent file: flat (sized, first block written as QEMU's file layer does) or sparse. */
async function createExtentFile(
  path: string,
  bytes: number,
  flat: boolean,
  compress: boolean,
  zeroedGrain: boolean,
): Promise<void> {
  const file = await HostFile.open(path, { create: true });
  try {
    if (flat) {
      await file.truncate(bytes);
      if (bytes > 0) await file.write(new Uint8Array(Math.min(bytes, 4096)), 0);
      return;
    }
    const capacity = bytes / SECTOR;
    const granularity = 128;
    const gtEntries = 512;
    const grains = Math.ceil(capacity / granularity);
    const gtSectors = Math.ceil((gtEntries * 4) / SECTOR);
    const gtCount = Math.ceil(grains / gtEntries);
    const gdSectors = Math.ceil((gtCount * 4) / SECTOR);
    const descOffset = 1;
    const descSize = 20;
    const rgdOffset = descOffset + descSize;
    const gdOffset = rgdOffset + gdSectors + gtSectors * gtCount;
    const grainOffset = Math.ceil((gdOffset + gdSectors + gtSectors * gtCount) / granularity) * granularity;
    const header = encodeVmdk4({
      // streamOptimized is version 3 (what ESXi requires; QEMU allows writing it), the
      // zeroed-grain feature version 2.
      version: compress ? 3 : zeroedGrain ? 2 : 1,
      flags:
        VMDK4_FLAG_RGD |
        VMDK4_FLAG_NL_DETECT |
        (compress ? VMDK4_FLAG_COMPRESS | VMDK4_FLAG_MARKER : 0) |
        (zeroedGrain ? VMDK4_FLAG_ZERO_GRAIN : 0),
      capacity,
      granularity,
      descOffset,
      descSize,
      gtEntries,
      rgdOffset,
      gdOffset,
      grainOffset,
      compressAlgorithm: compress ? VMDK4_COMPRESSION_DEFLATE : 0,
    });
    await file.write(header, 0);
    await file.truncate(grainOffset * SECTOR);
    // Both directories point at their (zeroed, sparse) tables, in bounded pieces.
    for (const [dirSector, first] of [
      [rgdOffset, rgdOffset + gdSectors],
      [gdOffset, gdOffset + gdSectors],
    ] as const) {
      const chunkEntries = 1 << 18;
      for (let i0 = 0; i0 < gdSectors * (SECTOR / 4); i0 += chunkEntries) {
        const n = Math.min(chunkEntries, gdSectors * (SECTOR / 4) - i0);
        const buf = new Uint8Array(n * 4);
        const v = new DataView(buf.buffer);
        for (let i = 0; i < n && i0 + i < gtCount; i++)
          v.setUint32(i * 4, first + (i0 + i) * gtSectors, true);
        await file.write(buf, dirSector * SECTOR + i0 * 4);
      }
    }
  } finally {
    await file.close();
  }
}
