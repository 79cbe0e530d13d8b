/** Every built-in format, registered with its cheap probe and a lazy loader. */
import { registerFormat } from '../core/formats.js';
import { probeQcow2 } from './qcow2/probe.js';

let done = false;

export function registerBuiltinFormats(): void {
  if (done) return;
  done = true;
  registerFormat({ name: 'raw', load: async () => (await import('./raw/driver.js')).rawDriver });
  registerFormat({
    name: 'qcow2',
    probe: probeQcow2,
    load: async () => (await import('./qcow2/driver.js')).qcow2Driver,
  });
}
