import type { CreateOptionSpec } from '../core/driver.js';
import { getDriver } from '../core/formats.js';
import { registerBuiltinFormats } from '../formats/index.js';
import type { Io } from './io.js';

/** The options of qemu's file protocol driver, listed when a target file is named. */
const FILE_PROTOCOL_OPTIONS: readonly CreateOptionSpec[] = [
  { name: 'extent_size_hint', type: 'size', help: 'Extent size hint for the image file, 0 to disable' },
  { name: 'nocow', type: 'bool', help: 'Turn off copy-on-write (valid only on btrfs)' },
  { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, falloc, full)' },
  { name: 'size', type: 'size', help: 'Virtual disk size' },
];

/**
 * `-o help`: the create options of a format, worded as qemu-img lists them. Without a file
 * name only the format's own options, with a note on the protocol level; with one (create and
 * convert naming their target) the protocol's options too, under "Supported options:".
 */
export async function printOptionHelp(io: Io, format: string, withFilename = false): Promise<void> {
  registerBuiltinFormats();
  const driver = await getDriver(format);
  const own = (driver.createOptions ?? []).filter((o) => o.protocol !== true);
  let specs = own;
  if (withFilename) {
    const names = new Set(own.map((o) => o.name));
    specs = [...own, ...FILE_PROTOCOL_OPTIONS.filter((o) => !names.has(o.name))];
  }
  specs = [...specs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const typeName = { size: '<size>', number: '<num>', bool: '<bool (on/off)>', string: '<str>' } as const;
  let s = withFilename ? 'Supported options:\n' : `Supported ${format} options:\n`;
  for (const o of specs) {
    s += `  ${`${o.name}=${typeName[o.type]}`.padEnd(22)} - ${o.help}\n`;
  }
  if (!withFilename) {
    s +=
      '\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n';
  }
  io.out(s);
}
