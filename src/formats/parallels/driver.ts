/** The parallels format driver: Parallels/ploop images, read and write, as qemu-img 7.2. */
import type { FormatDriver } from '../../core/driver.js';
import { createParallels } from './create.js';
import { openParallels } from './open.js';
import { probeParallels } from './probe.js';

export const parallelsDriver: FormatDriver = {
  name: 'parallels',
  probe: probeParallels,
  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'cluster_size', type: 'size', help: 'Parallels image cluster size', default: '1048576' },
    {
      name: 'preallocation',
      type: 'string',
      help: 'Preallocation mode (allowed values: off, falloc, full)',
      protocol: true,
    },
  ],
  open: openParallels,
  create: createParallels,
};
