/** qemu-img create -f parallels (QEMU 7.2's parallels_co_create_opts / parallels_co_create). */
import type { CreateRequest } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { HostFile } from '../../core/host-file.js';
import { parseSize, sizeParameterError } from '../../core/size.js';
import {
  batEntryOffset,
  DEFAULT_CLUSTER_SIZE,
  encodeHeader,
  HEADS_NUMBER,
  MAX_IMAGE_FACTOR,
  SEC_IN_CYL,
  SECTOR,
} from './header.js';

export async function createParallels(req: CreateRequest): Promise<void> {
  const text = req.options['cluster_size'];
  const parsed = text === undefined ? DEFAULT_CLUSTER_SIZE : parseSize(text);
  if (parsed === null) {
    throw new VdiskError('INVALID_ARGUMENT', sizeParameterError('cluster_size'));
  }
  // The file protocol's option: accepted as qemu-img does; the image is then truncated to its
  // metadata, so every accepted mode makes the same file.
  const prealloc = req.options['preallocation'] ?? 'off';
  if (!['off', 'falloc', 'full', 'metadata'].includes(prealloc)) {
    throw new VdiskError('INVALID_ARGUMENT', `invalid parameter value: ${prealloc}`);
  }
  // QEMU silently rounds both sizes up to a sector.
  const size = Math.ceil(req.size / SECTOR) * SECTOR;
  const cs = Math.ceil(parsed / SECTOR) * SECTOR;
  if (cs >= Math.floor((2 ** 63 - 1) / MAX_IMAGE_FACTOR)) {
    throw new VdiskError('INVALID_ARGUMENT', 'Cluster size is too large');
  }
  if (size >= MAX_IMAGE_FACTOR * cs) {
    throw new VdiskError('INVALID_ARGUMENT', 'Image size is too large for this cluster size');
  }
  const file = await HostFile.open(req.path, { create: true });
  try {
    if (prealloc === 'metadata') {
      throw new VdiskError('INVALID_ARGUMENT', 'Unsupported preallocation mode: metadata');
    }
    const batEntries = Math.ceil(size / cs);
    const batSectors = (Math.ceil(batEntryOffset(batEntries) / cs) * cs) / SECTOR;
    const header = encodeHeader({
      ext: true,
      heads: HEADS_NUMBER,
      // "don't care much about geometry": truncated to 32 bits as QEMU stores it.
      cylinders: Math.floor(size / SECTOR / HEADS_NUMBER / SEC_IN_CYL) % 2 ** 32,
      tracks: cs / SECTOR,
      batEntries,
      nbSectors: size / SECTOR,
      inuse: 0,
      dataOff: batSectors,
      flags: 0,
      extOff: 0n,
    });
    const first = new Uint8Array(SECTOR);
    first.set(header, 0);
    await file.write(first, 0);
    // The rest of the BAT: zeros, allocated on the host as QEMU's write-zeroes leaves them.
    const rest = (batSectors - 1) * SECTOR;
    if (rest > 0 && !file.allocate(SECTOR, rest)) {
      const zero = new Uint8Array(Math.min(ZERO_CHUNK, rest));
      for (let p = 0; p < rest; p += zero.length) {
        await file.write(zero.subarray(0, Math.min(zero.length, rest - p)), SECTOR + p);
      }
    }
  } finally {
    await file.close();
  }
}

const ZERO_CHUNK = 4 << 20;
