/**
 * Every built-in format: its cheap probe (loaded eagerly, a few lines each) and a lazy loader
 * for the driver. One line per format.
 */
import type { FormatDriver } from '../core/driver.js';
import { registerFormat } from '../core/formats.js';
import { probeBochs } from './bochs/probe.js';
import { probeCloop } from './cloop/probe.js';
import { probeDmg } from './dmg/probe.js';
import { probeLuks } from './luks/probe.js';
import { probeParallels } from './parallels/probe.js';
import { probeQcow } from './qcow/probe.js';
import { probeQcow2 } from './qcow2/probe.js';
import { probeQed } from './qed/probe.js';
import { probeVdi } from './vdi/probe.js';
import { probeVhdx } from './vhdx/probe.js';
import { probeVmdk } from './vmdk/probe.js';
import { probeVpc } from './vpc/probe.js';

type Probe = (head: Uint8Array, filename: string) => number;
type Loader = () => Promise<FormatDriver>;

const FORMATS: Array<[string, Probe | undefined, Loader]> = [
  ['bochs', probeBochs, async () => (await import('./bochs/driver.js')).bochsDriver],
  ['cloop', probeCloop, async () => (await import('./cloop/driver.js')).cloopDriver],
  ['dmg', probeDmg, async () => (await import('./dmg/driver.js')).dmgDriver],
  ['luks', probeLuks, async () => (await import('./luks/driver.js')).luksDriver],
  ['parallels', probeParallels, async () => (await import('./parallels/driver.js')).parallelsDriver],
  ['raw', undefined, async () => (await import('./raw/driver.js')).rawDriver],
  ['qcow', probeQcow, async () => (await import('./qcow/driver.js')).qcowDriver],
  ['qcow2', probeQcow2, async () => (await import('./qcow2/driver.js')).qcow2Driver],
  ['qed', probeQed, async () => (await import('./qed/driver.js')).qedDriver],
  ['vdi', probeVdi, async () => (await import('./vdi/driver.js')).vdiDriver],
  ['vhdx', probeVhdx, async () => (await import('./vhdx/driver.js')).vhdxDriver],
  ['vmdk', probeVmdk, async () => (await import('./vmdk/driver.js')).vmdkDriver],
  ['vpc', probeVpc, async () => (await import('./vpc/driver.js')).vpcDriver],
];

let done = false;

export function registerBuiltinFormats(): void {
  if (done) return;
  done = true;
  for (const [name, probe, load] of FORMATS) registerFormat({ name, load, ...(probe ? { probe } : {}) });
}
