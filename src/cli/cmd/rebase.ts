import { rebaseCommand } from '../../commands/rebase.js';
import { VdiskError } from '../../core/errors.js';
import { getopt } from '../getopt.js';
import type { CliCommand } from '../main.js';
import { Progress, progressMode } from '../progress.js';

const command: CliCommand = {
  syntax:
    'rebase [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] [-c] [-U] -b backing_file [-F backing_fmt] filename',
  help: [
    'Change FILENAME\'s backing file to BACKING_FILE ("" detaches it).',
    'Safe mode (default): data that differs between the old and the new backing is copied into',
    'FILENAME first, so what FILENAME reads does not change.',
    '  -b backing_file  the new backing file (relative names are relative to FILENAME)',
    '  -F backing_fmt   its format (required unless detaching)',
    '  -u               unsafe: only rewrite the reference (the files must already match)',
    '  -c               compress the clusters copied into FILENAME',
    '  -f fmt           format of FILENAME',
    '  -p               show progress; --progress=json prints one JSON line per update',
    '  -q               quiet',
    '  -U               open the new backing without taking its lock',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      short: 'hf:F:b:upt:T:qUc',
      long: {
        progress: { value: true },
        'force-share': { value: false, short: 'U' },
        'image-opts': { value: false },
        object: { value: true },
      },
    });
    let format: string | undefined;
    let backingFile: string | undefined;
    let backingFormat: string | undefined;
    let unsafe = false;
    let compress = false;
    let quiet = false;
    let forceShare = false;
    let p = false;
    let progressArg: string | undefined;
    for (const [k, v] of opts) {
      if (k === 'f') format = v;
      else if (k === 'b') backingFile = v;
      else if (k === 'F') backingFormat = v;
      else if (k === 'u') unsafe = true;
      else if (k === 'c') compress = true;
      else if (k === 'q') quiet = true;
      else if (k === 'U') forceShare = true;
      else if (k === 'p') p = true;
      else if (k === 'progress') progressArg = v;
    }
    const filename = args[0];
    if (filename === undefined) throw new VdiskError('INVALID_ARGUMENT', 'Expecting one image file name');
    if (backingFile === undefined)
      throw new VdiskError('INVALID_ARGUMENT', 'Must specify backing file (-b) or use unsafe mode (-u)');
    const progress = new Progress(io, progressMode({ p, quiet, progressArg }), 1);
    await rebaseCommand({
      imageOpts,
      secrets,
      onOpenWarning: (m) => io.err(`${m}\n`),
      filename,
      format,
      backingFile,
      backingFormat,
      unsafe,
      compress,
      forceShare,
      onProgress: (pct) => progress.set(pct),
    });
    progress.end();
    return 0;
  },
};

export default command;
