/** qemu-img create -f vdi [-o static=on] (block/vdi.c vdi_co_do_create). */
import type { CreateRequest } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { HostFile } from '../../core/host-file.js';
import { parseBoolOption } from '../../core/options.js';
import {
  bmapPieces,
  DEFAULT_BLOCK_SIZE,
  encodeNewHeader,
  SECTOR_SIZE,
  VDI_DISK_SIZE_MAX,
  VDI_UNALLOCATED,
} from './header.js';
import { VDI_HEADER_SIZE } from './probe.js';

/** The size of a new image: the request in whole sectors, QEMU's maximum checked. */
export function newVdiSize(requested: number): number {
  // QEMU silently rounds the size up to a sector.
  const size = Math.ceil(requested / SECTOR_SIZE) * SECTOR_SIZE;
  if (size > VDI_DISK_SIZE_MAX) {
    throw new VdiskError(
      'UNSUPPORTED',
      `Unsupported VDI image size (size is 0x${size.toString(16)}, max supported is 0x${VDI_DISK_SIZE_MAX.toString(16)})`,
    );
  }
  return size;
}

export async function createVdi(req: CreateRequest): Promise<void> {
  const isStatic = parseBoolOption('static', req.options['static'] ?? 'off');
  const size = newVdiSize(req.size);
  const blocks = Math.ceil(size / DEFAULT_BLOCK_SIZE);
  const header = encodeNewHeader(size, isStatic);
  const file = await HostFile.open(req.path, { create: true });
  try {
    await file.write(header, 0);
    // A static image's blocks are all allocated, in order.
    let pos = VDI_HEADER_SIZE;
    for (const piece of bmapPieces(blocks, (i) => (isStatic ? i : VDI_UNALLOCATED))) {
      await file.write(piece, pos);
      pos += piece.length;
    }
    if (isStatic) await file.truncate(pos + blocks * DEFAULT_BLOCK_SIZE);
  } finally {
    await file.close();
  }
}
