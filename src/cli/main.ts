/**
 * vdisk's command line: `vdisk <command> [options]`, qemu-img's syntax. Commands load lazily
 * so that `vdisk --version` starts in a few tens of milliseconds.
 */
import { reportError } from './errors.js';
import { type Io, processIo } from './io.js';

export interface CliCommand {
  /** One-line syntax, as qemu-img --help lists it. */
  readonly syntax: string;
  readonly help: string;
  run(argv: string[], io: Io): Promise<number>;
}

export const VERSION = '0.1.0';

const commands: Record<string, () => Promise<CliCommand>> = {
  amend: async () => (await import('./cmd/amend.js')).default,
  bench: async () => (await import('./cmd/bench.js')).default,
  bitmap: async () => (await import('./cmd/bitmap.js')).default,
  compare: async () => (await import('./cmd/compare.js')).default,
  check: async () => (await import('./cmd/check.js')).default,
  convert: async () => (await import('./cmd/convert.js')).default,
  create: async () => (await import('./cmd/create.js')).default,
  dd: async () => (await import('./cmd/dd.js')).default,
  image: async () => (await import('./cmd/image.js')).default,
  info: async () => (await import('./cmd/info.js')).default,
  commit: async () => (await import('./cmd/commit.js')).default,
  rebase: async () => (await import('./cmd/rebase.js')).default,
  resize: async () => (await import('./cmd/resize.js')).default,
  tree: async () => (await import('./cmd/tree.js')).default,
  map: async () => (await import('./cmd/map.js')).default,
  measure: async () => (await import('./cmd/measure.js')).default,
  nbd: async () => (await import('./cmd/nbd.js')).default,
  serve: async () => (await import('./cmd/serve.js')).default,
  snapshot: async () => (await import('./cmd/snapshot.js')).default,
};

export function registerCommand(name: string, load: () => Promise<CliCommand>): void {
  commands[name] = load;
}

export async function usage(io: Io): Promise<void> {
  const lines = [
    'usage: vdisk [standard options] command [command options]',
    'VM disk image utility (qemu-img compatible)',
    '',
    "    '-h', '--help'       display this help and exit",
    "    '-V', '--version'    output version information and exit",
    '',
    'Command syntax:',
  ];
  for (const name of Object.keys(commands).sort()) {
    const cmd = await commands[name]!();
    lines.push(`  ${cmd.syntax}`);
  }
  const { formatNames } = await import('../core/formats.js');
  const { registerBuiltinFormats } = await import('../formats/index.js');
  registerBuiltinFormats();
  lines.push('', `Supported formats: ${formatNames().join(' ')}`, '');
  io.out(lines.join('\n'));
}

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  const first = argv[0];
  if (first === undefined) {
    io.err("vdisk: Not enough arguments\nTry 'vdisk --help' for more information\n");
    return 1;
  }
  if (first === '-V' || first === '--version') {
    io.out(`vdisk version ${VERSION}\n`);
    return 0;
  }
  if (first === '-h' || first === '--help' || first === 'help') {
    await usage(io);
    return 0;
  }
  const load = commands[first];
  if (load === undefined) {
    io.err(`vdisk: Command not found: ${first}\nTry 'vdisk --help' for more information\n`);
    return 1;
  }
  try {
    // --object and --image-opts belong to this command only: getopt returns them with the
    // command's options, which carry them to every image the command opens.
    const cmd = await load();
    const rest = argv.slice(1);
    if (rest.includes('-h') || rest.includes('--help')) {
      io.out(`usage: vdisk ${cmd.syntax}\n\n${cmd.help}\n`);
      return 0;
    }
    return await cmd.run(rest, io);
  } catch (err) {
    return reportError(io, err);
  }
}
