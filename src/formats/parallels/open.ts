/** Opening a Parallels image: QEMU 7.2's parallels_open, with vdisk's bounds on what it trusts. */
import type { DriverOpenOptions } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { decodeHeader, HEADER_INUSE_MAGIC, HEADER_SIZE, SECTOR } from './header.js';
import { batBytes, ParallelsImage } from './image.js';

export async function openParallels(file: HostFile, opts: DriverOpenOptions): Promise<ParallelsImage> {
  const fileSize = await file.size();
  const raw = new Uint8Array(HEADER_SIZE);
  await file.read(raw, 0);
  const header = decodeHeader(raw);
  // QEMU reads the header and BAT in one request, rounded up to a sector; one larger than its
  // largest request (2 GiB - 512) fails.
  if (Math.ceil(batBytes(header) / SECTOR) * SECTOR > 0x7ffffe00) {
    throw new VdiskError('EIO', `Could not open '${file.path}': Input/output error`, { path: file.path });
  }
  // The BAT as far as the file holds it (QEMU reads zeros past the end of the file): memory is
  // bounded by the file's size.
  const stored = Math.max(0, Math.min(header.batEntries, Math.floor((fileSize - HEADER_SIZE) / 4)));
  const batRaw = new Uint8Array(stored * 4);
  await file.read(batRaw, HEADER_SIZE);
  const bat = new Uint32Array(stored);
  const v = new DataView(batRaw.buffer);
  for (let i = 0; i < stored; i++) bat[i] = v.getUint32(4 * i, true);

  // QEMU 7.2 keeps data_end in sectors but, when data_off is 0, sets it to the BAT's end in
  // *bytes* rounded up to a sector; new clusters then go that many sectors in. Kept as is: the
  // offsets vdisk allocates are the ones qemu would.
  let dataEnd = header.dataOff !== 0 ? header.dataOff : Math.ceil(batBytes(header) / SECTOR) * SECTOR;
  const mult = header.ext ? header.tracks : 1;
  let pastEof = -1;
  for (let i = 0; i < stored; i++) {
    const sect = bat[i]! * mult;
    if (sect === 0) continue;
    if (sect >= dataEnd) dataEnd = sect + header.tracks;
    if (pastEof < 0 && sect * SECTOR + header.tracks * SECTOR > fileSize) pastEof = i;
  }
  const unclean = header.inuse === HEADER_INUSE_MAGIC;
  if (opts.writable) {
    if (unclean && opts.forCheck !== true) {
      throw new VdiskError(
        'EACCES',
        'parallels: Image was not closed correctly; cannot be opened read/write',
        { path: file.path },
      );
    }
    if (opts.forCheck !== true) {
      // Beyond QEMU 7.2 (which writes through whatever the header says, and whose later
      // versions repair these on open): writes need a BAT inside the file, a data area after
      // it, and clusters inside the file.
      const corrupt = (why: string) =>
        new VdiskError('CORRUPT_IMAGE', `parallels: ${why}; run 'check -r all' first`, { path: file.path });
      if (stored < header.batEntries) throw corrupt('the BAT runs past the end of the file');
      if (header.dataOff !== 0 && header.dataOff * SECTOR < batBytes(header)) {
        throw corrupt('the data area overlaps the BAT');
      }
      if (pastEof >= 0) throw corrupt(`cluster ${pastEof} is outside image`);
    }
  }
  const image = new ParallelsImage(file, { header, bat, dataEnd, fileSize, unclean, raw });
  if (opts.writable) await image.markInUse();
  return image;
}
