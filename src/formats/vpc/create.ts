/** Creating a VHD as qemu-img 7.2 does (vpc_co_create_opts / vpc_co_create), byte for byte. */
import { randomUUID } from 'node:crypto';
import type { CreateRequest } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { HostFile } from '../../core/host-file.js';
import { parseBoolOption } from '../../core/options.js';
import {
  DEFAULT_BLOCK_SIZE,
  DYN_HEADER_SIZE,
  encodeDynHeader,
  encodeFooter,
  FOOTER_SIZE,
  roundedImageSize,
  VHD_DYNAMIC,
  VHD_FIXED,
  VHD_TIMESTAMP_BASE,
} from './footer.js';

/** Test hook: fixed timestamp and UUID so that whole files can be compared. */
export interface VpcCreateIdentity {
  timestamp: number;
  uuid: Uint8Array;
}

export function parseVpcOptions(options: Record<string, string>): { fixed: boolean; forceSize: boolean } {
  const sub = options['subformat'] ?? 'dynamic';
  if (sub !== 'dynamic' && sub !== 'fixed') {
    throw new VdiskError('INVALID_ARGUMENT', `Parameter 'subformat' does not accept value '${sub}'`);
  }
  const force = options['force_size'];
  return { fixed: sub === 'fixed', forceSize: force !== undefined && parseBoolOption('force_size', force) };
}

/** What a new VHD of this requested size and these options is (create and the sequential writer). */
export interface NewVpc {
  fixed: boolean;
  /** Virtual size: the request in whole sectors, rounded up to the geometry without force_size. */
  size: number;
  /** The footer (at the end; dynamic images also have a copy at 0). */
  footer: Uint8Array;
  /** Dynamic: BAT entries (one per 2 MiB block of the virtual size) and the BAT's bytes on disk. */
  batEntries: number;
  batBytes: number;
}

/** The dynamic disk header follows the footer copy; the BAT follows the header (QEMU's layout). */
export const NEW_BAT_OFFSET = FOOTER_SIZE + DYN_HEADER_SIZE;

export function newVpc(
  requestedSize: number,
  options: Record<string, string>,
  identity?: VpcCreateIdentity,
): NewVpc {
  const { fixed, forceSize } = parseVpcOptions(options);
  // Sizes are silently rounded up to whole sectors, then (without force_size) up to the
  // next CHS geometry.
  let size = Math.ceil(requestedSize / 512) * 512;
  const rounded = roundedImageSize(size, forceSize);
  if (rounded === null) {
    // QEMU's generic layer rewords the driver's EFBIG this way (block.c: bdrv_img_create).
    throw new VdiskError('TOO_LARGE', "The image size is too large for file format 'vpc'");
  }
  if (!forceSize) size = rounded.totalSectors * 512;
  const uuid = identity?.uuid ?? Buffer.from(randomUUID().replaceAll('-', ''), 'hex');
  const footer = encodeFooter({
    creator: 'conectix',
    features: 2,
    version: 0x00010000,
    dataOffset: fixed ? 0xffffffffffffffffn : BigInt(FOOTER_SIZE),
    timestamp: identity?.timestamp ?? Math.floor(Date.now() / 1000) - VHD_TIMESTAMP_BASE,
    creatorApp: forceSize ? 'qem2' : 'qemu',
    // Version of Virtual PC 2007, as QEMU writes.
    major: 5,
    minor: 3,
    creatorOs: 'Wi2k',
    origSize: size,
    currentSize: size,
    cyls: rounded.cyls,
    heads: rounded.heads,
    secsPerCyl: rounded.secsPerCyl,
    type: fixed ? VHD_FIXED : VHD_DYNAMIC,
    uuid,
    inSavedState: 0,
  });
  const batEntries = Math.ceil(rounded.totalSectors / (DEFAULT_BLOCK_SIZE / 512));
  return { fixed, size, footer, batEntries, batBytes: Math.ceil((batEntries * 4) / 512) * 512 };
}

export async function createVpc(req: CreateRequest, identity?: VpcCreateIdentity): Promise<void> {
  const { fixed, size, footer, batEntries, batBytes } = newVpc(req.size, req.options, identity);
  const file = await HostFile.open(req.path, { create: true });
  try {
    if (fixed) {
      await file.truncate(size + FOOTER_SIZE);
      // QEMU's file layer writes the first block of every new file (allocate_first_block).
      if (size > 0) await file.write(new Uint8Array(Math.min(size, 4096)), 0);
      await file.write(footer, size);
    } else {
      await file.write(footer, 0);
      await file.write(encodeDynHeader(NEW_BAT_OFFSET, batEntries, DEFAULT_BLOCK_SIZE), FOOTER_SIZE);
      await file.write(new Uint8Array(batBytes).fill(0xff), NEW_BAT_OFFSET);
      await file.write(footer, NEW_BAT_OFFSET + batBytes);
    }
    // qemu-img flushes the new image when it closes it (and `disk size` then agrees).
    await file.flush();
  } finally {
    await file.close();
  }
}
