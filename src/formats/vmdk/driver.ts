/** The vmdk format driver. */
import type { DriverOpenOptions, FormatDriver, FormatImage } from '../../core/driver.js';
import type { HostFile } from '../../core/host-file.js';
import { createVmdk } from './create.js';
import { openVmdk } from './open.js';
import { probeVmdk } from './probe.js';

export const vmdkDriver: FormatDriver = {
  name: 'vmdk',
  probe: (head) => probeVmdk(head),
  supportsBacking: true,
  // QEMU's vmdk has bdrv_co_pwritev_compressed: `convert -c -O vmdk` is accepted; grains are
  // deflated in streamOptimized extents and stored as they are in the others.
  compressedWrites: true,
  // In QEMU's order (the "Formatting" line prints them so).
  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    {
      name: 'adapter_type',
      type: 'string',
      help: 'Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX',
    },
    { name: 'backing_file', type: 'string', help: 'File name of a base image' },
    { name: 'backing_fmt', type: 'string', help: "Must be 'vmdk' if present" },
    { name: 'compat6', type: 'bool', help: 'VMDK version 6 image', default: 'off' },
    { name: 'hwversion', type: 'string', help: 'VMDK hardware version', default: 'undefined' },
    { name: 'toolsversion', type: 'string', help: 'VMware guest tools version' },
    {
      name: 'subformat',
      type: 'string',
      help: 'VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized} ',
    },
    {
      name: 'zeroed_grain',
      type: 'bool',
      help: 'Enable efficient zero writes using the zeroed-grain GTE feature',
    },
  ],
  open(file: HostFile, opts: DriverOpenOptions): Promise<FormatImage> {
    return openVmdk(file, opts);
  },
  create: createVmdk,
  async createSequential(src, options) {
    return (await import('./stream.js')).createVmdkSequential(src, options);
  },
};
