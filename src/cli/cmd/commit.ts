import { commitCommand } from '../../commands/commit.js';
import { VdiskError } from '../../core/errors.js';
import { getopt } from '../getopt.js';
import type { CliCommand } from '../main.js';
import { Progress, progressMode } from '../progress.js';

const command: CliCommand = {
  syntax: 'commit [-q] [-f fmt] [-t cache] [-b base] [-d] [-p] filename',
  help: [
    'Write the changes recorded in FILENAME (an overlay) into its backing file, then empty FILENAME.',
    '  -f fmt     format of FILENAME (probed when absent)',
    '  -b base    commit into BASE, an image further down the backing chain (implies -d)',
    '  -d         do not empty FILENAME afterwards',
    '  -p         show progress; --progress=json prints one JSON line per update',
    '  -q         quiet',
    '  -t cache   accepted for compatibility (vdisk writes through the page cache)',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      short: 'f:ht:b:dpqr:',
      long: { progress: { value: true }, 'image-opts': { value: false }, object: { value: true } },
    });
    let format: string | undefined;
    let base: string | undefined;
    let drop = false;
    let quiet = false;
    let p = false;
    let progressArg: string | undefined;
    for (const [k, v] of opts) {
      if (k === 'f') format = v;
      else if (k === 'b') base = v;
      else if (k === 'd') drop = true;
      else if (k === 'q') quiet = true;
      else if (k === 'p') p = true;
      else if (k === 'progress') progressArg = v;
    }
    const filename = args[0];
    if (filename === undefined) throw new VdiskError('INVALID_ARGUMENT', 'Expecting one image file name');
    const progress = new Progress(io, progressMode({ p, quiet, progressArg }), 1);
    await commitCommand({
      imageOpts,
      secrets,
      filename,
      format,
      base,
      drop,
      onProgress: (pct) => progress.set(pct),
      onOpenWarning: (m) => io.err(`${m}\n`),
    });
    progress.end();
    if (!quiet) io.out('Image committed.\n');
    return 0;
  },
};

export default command;
