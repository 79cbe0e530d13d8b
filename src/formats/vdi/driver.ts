/** The vdi format driver (VirtualBox Virtual Disk Image, as QEMU reads and writes it). */
import type { FormatDriver, FormatImage } from '../../core/driver.js';
import type { HostFile } from '../../core/host-file.js';
import { createVdi } from './create.js';
import { decodeHeader, validateHeader } from './header.js';
import { readBmap, VdiImage } from './image.js';
import { probeVdi, VDI_HEADER_SIZE } from './probe.js';

export const vdiDriver: FormatDriver = {
  name: 'vdi',
  probe: (head) => probeVdi(head),
  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'static', type: 'bool', help: 'VDI static (pre-allocated) image', default: 'off' },
  ],
  async open(file: HostFile): Promise<FormatImage> {
    const fileSize = await file.size();
    const raw = new Uint8Array(VDI_HEADER_SIZE);
    await file.read(raw, 0);
    const header = decodeHeader(raw);
    const size = validateHeader(header, fileSize);
    const bmap = await readBmap(file, header);
    return new VdiImage(file, header, bmap, size, fileSize);
  },
  create: createVdi,
};
