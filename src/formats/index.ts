/** Every built-in format, registered with its cheap probe and a lazy loader. */
import { registerFormat } from '../core/formats.js';
import { probeQed } from './qed/probe.js';
import { probeVpc } from './vpc/probe.js';

let done = false;

export function registerBuiltinFormats(): void {
  if (done) return;
  done = true;
  registerFormat({ name: 'raw', load: async () => (await import('./raw/driver.js')).rawDriver });
  registerFormat({
    name: 'qed',
    probe: probeQed,
    load: async () => (await import('./qed/driver.js')).qedDriver,
  });
  registerFormat({
    name: 'vpc',
    probe: probeVpc,
    load: async () => (await import('./vpc/driver.js')).vpcDriver,
  });
}
