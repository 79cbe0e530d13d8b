/** Every built-in format, registered with its cheap probe and a lazy loader. */
import { registerFormat } from '../core/formats.js';
import { probeVdi } from './vdi/probe.js';
import { probeVmdk } from './vmdk/probe.js';

let done = false;

export function registerBuiltinFormats(): void {
  if (done) return;
  done = true;
  registerFormat({ name: 'raw', load: async () => (await import('./raw/driver.js')).rawDriver });
  registerFormat({
    name: 'vdi',
    probe: probeVdi,
    load: async () => (await import('./vdi/driver.js')).vdiDriver,
  });
  registerFormat({
    name: 'vmdk',
    probe: probeVmdk,
    load: async () => (await import('./vmdk/driver.js')).vmdkDriver,
  });
}
