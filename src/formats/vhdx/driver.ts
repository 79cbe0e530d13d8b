/** The vhdx format driver: dynamic and fixed images, as qemu-img 7.2 reads and writes them. */
import type { DriverOpenOptions, FormatDriver, FormatImage } from '../../core/driver.js';
import type { HostFile } from '../../core/host-file.js';
import { createVhdx } from './create.js';
import { VhdxImage } from './image.js';
import { readVhdxState } from './open.js';
import { probeVhdx } from './probe.js';

export const vhdxDriver: FormatDriver = {
  name: 'vhdx',
  probe: probeVhdx,
  // qemu-img's "Formatting" order: log_size and block_size always (with their defaults).
  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size; max of 64TB.' },
    { name: 'log_size', type: 'size', help: 'Log size; min 1MB.', default: '1048576' },
    {
      name: 'block_size',
      type: 'size',
      help: 'Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.',
      default: '0',
    },
    {
      name: 'subformat',
      type: 'string',
      help: "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'.",
    },
    {
      name: 'block_state_zero',
      type: 'bool',
      help: "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic.",
    },
  ],
  async open(file: HostFile, opts: DriverOpenOptions): Promise<FormatImage> {
    return new VhdxImage(await readVhdxState(file, opts.writable));
  },
  create: createVhdx,
};
