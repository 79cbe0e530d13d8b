import { resizeCommand } from '../../commands/resize.js';
import { VdiskError } from '../../core/errors.js';
import { parseSize } from '../../core/size.js';
import { getopt } from '../getopt.js';
import type { CliCommand } from '../main.js';

const command: CliCommand = {
  syntax: 'resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size',
  help: [
    'Change the virtual size of FILENAME to SIZE, or by +SIZE / -SIZE (suffixes k, M, G, T, P, E).',
    '  -f fmt                 format of FILENAME (probed when absent)',
    '  --shrink               allow making the image smaller (data past the new end is lost)',
    '  --preallocation=mode   off, metadata, falloc or full, for the added space (format-dependent)',
    '  -q                     quiet',
  ].join('\n'),
  async run(argv, io) {
    // A size such as "-1G" must not be taken for an option: qemu-img stops parsing at it.
    const last = argv.at(-1);
    const sizeArg = last !== undefined && /^[+-]/.test(last) && argv.length >= 2 ? last : undefined;
    const { opts, args, imageOpts, secrets } = getopt(sizeArg !== undefined ? argv.slice(0, -1) : argv, {
      short: 'f:hq',
      long: {
        shrink: { value: false },
        preallocation: { value: true },
        'image-opts': { value: false },
        object: { value: true },
      },
    });
    if (sizeArg !== undefined) args.push(sizeArg);
    let format: string | undefined;
    let quiet = false;
    let shrink = false;
    let preallocation: string | undefined;
    for (const [k, v] of opts) {
      if (k === 'f') format = v;
      else if (k === 'q') quiet = true;
      else if (k === 'shrink') shrink = true;
      else if (k === 'preallocation') {
        // qemu-img parses the mode itself (QAPI PreallocMode) before opening anything.
        if (!['off', 'metadata', 'falloc', 'full'].includes(v ?? '')) {
          throw new VdiskError('INVALID_ARGUMENT', `Invalid preallocation mode '${v}'`);
        }
        preallocation = v;
      }
    }
    if (args.length !== 2) throw new VdiskError('INVALID_ARGUMENT', 'Expecting image file name and size');
    const [filename, text] = args as [string, string];
    const relative = text.startsWith('+') ? 1 : text.startsWith('-') ? -1 : 0;
    const size = parseSize(relative === 0 ? text : text.slice(1));
    if (size === null) throw new VdiskError('INVALID_ARGUMENT', 'Invalid size specified.');
    await resizeCommand({
      imageOpts,
      secrets,
      filename,
      format,
      size,
      relative,
      shrink,
      preallocation,
      onWarning: (m) => io.err(`${m}\n`),
    });
    if (!quiet) io.out('Image resized.\n');
    return 0;
  },
};

export default command;
