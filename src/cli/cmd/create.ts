import { createCommand } from '../../commands/create.js';
import { VdiskError } from '../../core/errors.js';
import { mergeOptionStrings } from '../../core/options.js';
import { parseImageSize } from '../../core/size.js';
import { getopt } from '../getopt.js';
import type { CliCommand } from '../main.js';
import { printOptionHelp } from '../option-help.js';

const command: CliCommand = {
  syntax: 'create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]',
  help: [
    'Create a new disk image FILENAME of SIZE bytes (suffixes k, M, G, T, P, E) in format FMT (default raw).',
    '  -f fmt           image format (raw, qcow2, …)',
    '  -o options       format options, comma separated name=value (-o help lists them)',
    '  -b backing_file  make a copy-on-write overlay on BACKING_FILE (size defaults to its size)',
    '  -F backing_fmt   format of the backing file (required with -b)',
    '  -u               do not open the backing file (unsafe: its size must then be given)',
    '  -q               quiet: print nothing but errors',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, secrets } = getopt(argv, {
      command: 'create',
      short: 'F:b:f:ho:qu',
      long: { object: { value: true } },
    });
    let format = 'raw';
    const optionStrings: string[] = [];
    let backingFile: string | undefined;
    let backingFormat: string | undefined;
    let quiet = false;
    let unsafe = false;
    for (const [k, v] of opts) {
      if (k === 'f') format = v;
      else if (k === 'o') optionStrings.push(v);
      else if (k === 'b') backingFile = v;
      else if (k === 'F') backingFormat = v;
      else if (k === 'q') quiet = true;
      else if (k === 'u') unsafe = true;
    }
    const options = mergeOptionStrings(optionStrings);
    if ('help' in options || '?' in options) {
      await printOptionHelp(io, format, args[0] !== undefined);
      return 0;
    }
    const filename = args[0];
    if (filename === undefined) throw new VdiskError('INVALID_ARGUMENT', 'Expecting image file name');
    if (args.length > 2) throw new VdiskError('INVALID_ARGUMENT', `Unexpected argument: ${args[2]}`);
    const size = args[1] !== undefined ? parseImageSize(args[1]) : undefined;
    await createCommand({
      secrets,
      filename,
      format,
      size,
      options,
      backingFile,
      backingFormat,
      unsafe,
      onFormatting: (line) => {
        if (!quiet) io.out(`${line}\n`);
      },
    });
    return 0;
  },
};

export default command;
