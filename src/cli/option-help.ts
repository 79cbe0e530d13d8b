import { getDriver } from '../core/formats.js';
import { registerBuiltinFormats } from '../formats/index.js';
import type { Io } from './io.js';

/** `-o help`: the create options of a format, worded as qemu-img lists them. */
export async function printOptionHelp(io: Io, format: string): Promise<void> {
  registerBuiltinFormats();
  const driver = await getDriver(format);
  const specs = [...(driver.createOptions ?? [])]
    .filter((o) => o.protocol !== true)
    .sort((a, b) => a.name.localeCompare(b.name));
  const typeName = { size: '<size>', number: '<num>', bool: '<bool (on/off)>', string: '<str>' } as const;
  let s = `Supported ${format} options:\n`;
  for (const o of specs) {
    s += `  ${`${o.name}=${typeName[o.type]}`.padEnd(22)} - ${o.help}\n`;
  }
  s +=
    '\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n';
  io.out(s);
}
