/** qemu-img create -f vdi [-o static=on] (block/vdi.c vdi_co_do_create). */
import type { CreateRequest } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { HostFile } from '../../core/host-file.js';
import { parseBoolOption } from '../../core/options.js';
import {
  bmapSize,
  DEFAULT_BLOCK_SIZE,
  encodeNewHeader,
  SECTOR_SIZE,
  VDI_DISK_SIZE_MAX,
  VDI_UNALLOCATED,
} from './header.js';

export async function createVdi(req: CreateRequest): Promise<void> {
  const isStatic = parseBoolOption('static', req.options['static'] ?? 'off');
  // QEMU silently rounds the size up to a sector.
  const size = Math.ceil(req.size / SECTOR_SIZE) * SECTOR_SIZE;
  if (size > VDI_DISK_SIZE_MAX) {
    throw new VdiskError(
      'UNSUPPORTED',
      `Unsupported VDI image size (size is 0x${size.toString(16)}, max supported is 0x${VDI_DISK_SIZE_MAX.toString(16)})`,
    );
  }
  const blocks = Math.ceil(size / DEFAULT_BLOCK_SIZE);
  const header = encodeNewHeader(size, isStatic);
  const file = await HostFile.open(req.path, { create: true });
  try {
    await file.write(header, 0);
    const mapBytes = bmapSize(blocks);
    // The map is written in bounded pieces (a 1 PiB image has a 4 GiB map).
    const chunk = 1 << 20;
    for (let pos = 0; pos < mapBytes; pos += chunk) {
      const n = Math.min(chunk, mapBytes - pos);
      const out = new Uint8Array(n);
      const v = new DataView(out.buffer);
      for (let j = 0; j < n; j += 4) {
        const i = (pos + j) / 4;
        if (i >= blocks) break;
        v.setUint32(j, isStatic ? i : VDI_UNALLOCATED, true);
      }
      await file.write(out, 512 + pos);
    }
    if (isStatic) await file.truncate(512 + mapBytes + blocks * DEFAULT_BLOCK_SIZE);
  } finally {
    await file.close();
  }
}
