/**
 * qemu-img create -f vmdk (block/vmdk.c vmdk_co_do_create / vmdk_init_extent): every
 * subformat, with the descriptor QEMU writes byte for byte (except the random CID).
 */
import { randomInt } from 'node:crypto';
import { basename } from 'node:path';
import type { CreateOptions, CreateRequest } from '../../core/driver.js';
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

/** The -o options of a new vmdk, as create and the sequential writer take them. */
export interface VmdkOptions {
  adapter: string;
  subformat: string;
  hwVersion: string;
  toolsVersion: string;
  /** undefined when not given (create: off; the sequential writer decides by its content). */
  zeroedGrain: boolean | undefined;
}

/**
 * Check the options as QEMU's vmdk_co_do_create does, in its order and words (the backing
 * file's name, if any, goes into the descriptor too).
 */
export function parseVmdkOptions(o: CreateOptions, backing: string | undefined): VmdkOptions {
  const fail = (code: 'INVALID_ARGUMENT' | 'UNSUPPORTED', msg: string) => new VdiskError(code, msg);
  const adapter = o['adapter_type'] ?? 'ide';
  if (!(ADAPTER_TYPES as readonly string[]).includes(adapter)) {
    throw fail('INVALID_ARGUMENT', `invalid parameter value: ${adapter}`);
  }
  const subformat = o['subformat'] ?? 'monolithicSparse';
  if (!(SUBFORMATS as readonly string[]).includes(subformat)) {
    throw fail('INVALID_ARGUMENT', `invalid parameter value: ${subformat}`);
  }
  const compat6 = parseBoolOption('compat6', o['compat6'] ?? 'off');
  const zeroedGrain =
    o['zeroed_grain'] === undefined ? undefined : parseBoolOption('zeroed_grain', o['zeroed_grain']);
  let hwVersion = o['hwversion'] === 'undefined' ? undefined : o['hwversion'];
  if (compat6) {
    if (hwVersion !== undefined)
      throw fail('INVALID_ARGUMENT', 'compat6 cannot be enabled with hwversion set');
    hwVersion = '6';
  }
  hwVersion ??= '4';
  const toolsVersion = o['toolsversion'] ?? '2147483647';
  const flat = subformat === 'monolithicFlat' || subformat === 'twoGbMaxExtentFlat';
  if (flat && backing !== undefined) throw fail('UNSUPPORTED', "Flat image can't have backing file");
  if (flat && zeroedGrain === true) throw fail('UNSUPPORTED', "Flat image can't enable zeroed grain");
  for (const [what, v] of [
    ['hwversion', hwVersion],
    ['toolsversion', toolsVersion],
    ['backing_file', backing ?? ''],
  ] as const) {
    // The values go into the descriptor between quotes.
    if (/["\r\n\0]/.test(v)) throw fail('INVALID_ARGUMENT', `${what} must not contain quotes or line breaks`);
  }
  return { adapter, subformat, hwVersion, toolsVersion, zeroedGrain };
}

export async function createVmdk(req: CreateRequest): Promise<void> {
  // The create command names the image in front of every driver error (as qemu-img does).
  const fail = (code: 'INVALID_ARGUMENT' | 'UNSUPPORTED' | 'TOO_LARGE', msg: string) =>
    new VdiskError(code, msg);
  if (req.backing?.format !== undefined && req.backing.format !== 'vmdk') {
    throw fail('INVALID_ARGUMENT', 'backing_file must be a vmdk image');
  }
  const size = Math.ceil(req.size / SECTOR) * SECTOR;
  const opts = parseVmdkOptions(req.options, req.backing?.filename);
  const { subformat } = opts;
  const zeroedGrain = opts.zeroedGrain ?? false;
  const split = subformat === 'twoGbMaxExtentFlat' || subformat === 'twoGbMaxExtentSparse';
  const flat = subformat === 'monolithicFlat' || subformat === 'twoGbMaxExtentFlat';
  const compress = subformat === 'streamOptimized';
  if (!flat) checkSparseSize(split ? Math.min(size, SPLIT_SIZE) : size);

  let parentCid = 0xffffffff;
  if (req.backing !== undefined) parentCid = await parentCidOf(req, req.backing.filename);

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
  const text = newDescriptor(opts, { size, parentCid, backing: req.backing?.filename, extentLines });
  const bytes = monolithic ? embeddedDescriptor(text) : Buffer.from(text, 'latin1');
  const file = monolithic
    ? await HostFile.open(req.path, { writable: true })
    : await HostFile.open(req.path, { create: true });
  try {
    await file.write(bytes, monolithic ? 0x200 : 0);
  } finally {
    await file.close();
  }
}

/** The descriptor of a new image (a fresh random CID), as QEMU's vmdk_co_do_create writes it. */
export function newDescriptor(
  opts: VmdkOptions,
  d: { size: number; parentCid: number; backing: string | undefined; extentLines: string[] },
): string {
  const heads = opts.adapter === 'ide' ? 16 : 255;
  return formatDescriptor({
    cid: randomInt(0, 0xffffffff),
    parentCid: d.parentCid,
    createType: opts.subformat,
    parentFileNameHint: d.backing,
    extentLines: d.extentLines,
    hwVersion: opts.hwVersion,
    cylinders: Math.floor(d.size / (63 * heads * SECTOR)),
    heads,
    adapterType: opts.adapter,
    toolsVersion: opts.toolsVersion,
  });
}

/** Sectors of the descriptor embedded in a monolithic sparse file (QEMU's DESC_SIZE). */
export const EMBEDDED_DESC_SECTORS = 20;

/** A descriptor's bytes for the room embedded in a monolithic sparse file (QEMU's limit). */
export function embeddedDescriptor(text: string): Buffer {
  const bytes = Buffer.from(text, 'latin1');
  if (bytes.length > EMBEDDED_DESC_SECTORS * SECTOR)
    throw new VdiskError('INVALID_ARGUMENT', 'VMDK descriptor too long');
  return bytes;
}

/**
 * The parent's CID (the backing file must be a vmdk image, as QEMU requires), opened with the
 * request's opener (drivers do not open images themselves: the command passes how).
 */
export async function parentCidOf(req: CreateRequest, backing: string): Promise<number> {
  const { path, openImage } = req;
  if (openImage === undefined) {
    throw new VdiskError('UNSUPPORTED', 'Creating a vmdk on a backing file needs a way to open it');
  }
  const { VmdkImage } = await import('./image.js');
  // QEMU names the parent relative to the new image's directory, as the path was given.
  const slash = path.lastIndexOf('/');
  const full = backing.startsWith('/') || slash < 0 ? backing : path.slice(0, slash + 1) + backing;
  const img = await openImage(full).catch((err: unknown) => {
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

/** A sparse extent of this many bytes must have a grain directory QEMU opens. */
export function checkSparseSize(bytes: number): void {
  const gdEntries = Math.ceil(Math.ceil(bytes / SECTOR / 128) / 512);
  if (gdEntries > MAX_GD_ENTRIES)
    throw new VdiskError('TOO_LARGE', 'Image size too large for a sparse VMDK extent');
}

/**
 * Where vmdk_init_extent puts a new sparse extent's metadata (sectors): the header, the
 * descriptor's room, the redundant grain directory and its tables, the directory and its
 * tables, then the first grain on a grain boundary. Grains are 64 KiB, tables 512 entries.
 */
export interface SparseLayout {
  /** Capacity in sectors. */
  capacity: number;
  /** Grain size in sectors. */
  granularity: number;
  gtEntries: number;
  /** Grains the capacity covers (the last may be short). */
  grains: number;
  gtSectors: number;
  gtCount: number;
  gdSectors: number;
  descOffset: number;
  descSize: number;
  rgdOffset: number;
  gdOffset: number;
  grainOffset: number;
}

export function sparseLayout(bytes: number): SparseLayout {
  const capacity = bytes / SECTOR;
  const granularity = 128;
  const gtEntries = 512;
  const grains = Math.ceil(capacity / granularity);
  const gtSectors = Math.ceil((gtEntries * 4) / SECTOR);
  const gtCount = Math.ceil(grains / gtEntries);
  const gdSectors = Math.ceil((gtCount * 4) / SECTOR);
  const descOffset = 1;
  const descSize = EMBEDDED_DESC_SECTORS;
  const rgdOffset = descOffset + descSize;
  const gdOffset = rgdOffset + gdSectors + gtSectors * gtCount;
  const grainOffset = Math.ceil((gdOffset + gdSectors + gtSectors * gtCount) / granularity) * granularity;
  return {
    capacity,
    granularity,
    gtEntries,
    grains,
    gtSectors,
    gtCount,
    gdSectors,
    descOffset,
    descSize,
    rgdOffset,
    gdOffset,
    grainOffset,
  };
}

/**
 * The header of a new sparse extent. streamOptimized is version 3 (what ESXi requires; QEMU
 * allows writing it), the zeroed-grain feature version 2.
 */
export function newSparseHeader(
  l: SparseLayout,
  o: {
    compress: boolean;
    zeroedGrain: boolean;
    redundant: boolean;
    gdOffset: number | bigint;
    grainOffset: number;
  },
): Uint8Array {
  return encodeVmdk4({
    version: o.compress ? 3 : o.zeroedGrain ? 2 : 1,
    flags:
      (o.redundant ? VMDK4_FLAG_RGD : 0) |
      VMDK4_FLAG_NL_DETECT |
      (o.compress ? VMDK4_FLAG_COMPRESS | VMDK4_FLAG_MARKER : 0) |
      (o.zeroedGrain ? VMDK4_FLAG_ZERO_GRAIN : 0),
    capacity: l.capacity,
    granularity: l.granularity,
    descOffset: l.descOffset,
    descSize: l.descSize,
    gtEntries: l.gtEntries,
    rgdOffset: o.redundant ? l.rgdOffset : 0,
    gdOffset: o.gdOffset,
    grainOffset: o.grainOffset,
    compressAlgorithm: o.compress ? VMDK4_COMPRESSION_DEFLATE : 0,
  });
}

/**
 * Entries [i0, i0 + n) of a new grain directory whose tables follow each other from sector
 * `firstGt` (entries past the last table are 0: they pad the directory's last sector).
 */
export function directoryPiece(l: SparseLayout, firstGt: number, i0: number, n: number): Uint8Array {
  const buf = new Uint8Array(n * 4);
  const v = new DataView(buf.buffer);
  for (let i = 0; i < n && i0 + i < l.gtCount; i++)
    v.setUint32(i * 4, firstGt + (i0 + i) * l.gtSectors, true);
  return buf;
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
    const l = sparseLayout(bytes);
    const header = newSparseHeader(l, {
      compress,
      zeroedGrain,
      redundant: true,
      gdOffset: l.gdOffset,
      grainOffset: l.grainOffset,
    });
    await file.write(header, 0);
    await file.truncate(l.grainOffset * SECTOR);
    // Both directories point at their (zeroed, sparse) tables, in bounded pieces.
    for (const dirSector of [l.rgdOffset, l.gdOffset]) {
      const chunkEntries = 1 << 18;
      const entries = l.gdSectors * (SECTOR / 4);
      for (let i0 = 0; i0 < entries; i0 += chunkEntries) {
        const piece = directoryPiece(l, dirSector + l.gdSectors, i0, Math.min(chunkEntries, entries - i0));
        await file.write(piece, dirSector * SECTOR + i0 * 4);
      }
    }
  } finally {
    await file.close();
  }
}
