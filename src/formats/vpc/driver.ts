/** The vpc (VHD) format driver: fixed and dynamic images, as qemu-img 7.2 reads and writes them. */
import type { FormatDriver, FormatImage } from '../../core/driver.js';
import type { HostFile } from '../../core/host-file.js';
import { createVpc } from './create.js';
import { VpcImage } from './image.js';
import { readVpcLayout } from './open.js';
import { probeVpc } from './probe.js';

export const vpcDriver: FormatDriver = {
  name: 'vpc',
  probe: probeVpc,
  // qemu-img prints these in this order and only when given (no defaults).
  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    {
      name: 'subformat',
      type: 'string',
      help: 'Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} ',
    },
    {
      name: 'force_size',
      type: 'bool',
      help: 'Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation',
    },
  ],
  async open(file: HostFile): Promise<FormatImage> {
    return new VpcImage(file, await readVpcLayout(file));
  },
  create: createVpc,
  async createSequential(src, options) {
    return (await import('./stream.js')).createVpcSequential(src, options);
  },
};
