import { CompareError, compareCommand } from '../../commands/compare.js';
import { VdiskError } from '../../core/errors.js';
import { checkCacheMode } from '../cache.js';
import { reportError } from '../errors.js';
import { getopt, usageError } from '../getopt.js';
import type { CliCommand } from '../main.js';
import { Progress, progressMode } from '../progress.js';

const command: CliCommand = {
  syntax: 'compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2',
  help: [
    'Compare the guest-visible contents of two images (of any formats and sizes).',
    'Exit status: 0 identical, 1 different, 2 an image could not be opened, 3 block status',
    'failed, 4 a read failed.',
    '  -f fmt              format of the first image (probed when absent)',
    '  -F fmt              format of the second image (probed when absent)',
    '  -T src_cache        cache mode for reading (accepted; vdisk reads through the page cache)',
    '  -p                  show progress',
    '  --progress=json     print progress as JSON lines {"progress": N} (a vdisk extension)',
    '  -q                  quiet: print nothing, only set the exit status',
    '  -s                  strict: images of different sizes or allocation differ',
    '  -U, --force-share   open without taking the image locks',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      command: 'compare',
      short: 'hf:F:T:pqsU',
      long: {
        help: { value: false, short: 'h' },
        object: { value: true },
        'image-opts': { value: false },
        'force-share': { value: false, short: 'U' },
        progress: { value: true },
      },
    });
    let format1: string | undefined;
    let format2: string | undefined;
    let cache = 'writeback';
    let p = false;
    let quiet = false;
    let strict = false;
    let forceShare = false;
    let progressArg: string | undefined;
    for (const [k, v] of opts) {
      if (k === 'f') format1 = v;
      else if (k === 'F') format2 = v;
      else if (k === 'T') cache = v;
      else if (k === 'p') p = true;
      else if (k === 'q') quiet = true;
      else if (k === 's') strict = true;
      else if (k === 'U') forceShare = true;
      else if (k === 'progress') progressArg = v;
    }
    if (progressArg !== undefined && progressArg !== 'human' && progressArg !== 'json') {
      throw new VdiskError('INVALID_ARGUMENT', '--progress must be used with human or json as argument.');
    }
    if (args.length !== 2) throw usageError('Expecting two image file names');
    const [filename1, filename2] = args as [string, string];
    const progress = new Progress(io, progressMode({ p, quiet, progressArg }), 2);
    const say = (text: string) => {
      if (!quiet) io.out(text);
    };
    let last = 0;
    try {
      if (!checkCacheMode(cache)) {
        return reportError(
          io,
          new VdiskError('INVALID_ARGUMENT', `Invalid source cache option: ${cache}`),
          2,
        );
      }
      const res = await compareCommand({
        imageOpts,
        secrets,
        filename1,
        filename2,
        format1,
        format2,
        strict,
        forceShare,
        onOpenWarning: (m) => io.err(`${m}\n`),
        onSizeMismatch: () => say('Warning: Image size mismatch!\n'),
        onProgress: (done, total) => {
          // qemu-img adds each chunk's share to a float; so do we.
          progress.step(done - last, total);
          last = done;
        },
      });
      const out = res.outcome;
      if (!out.identical && out.reason === 'size') {
        say('Strict mode: Image size mismatch!\n');
        return 1;
      }
      if (!out.identical && out.reason === 'status') {
        say(`Strict mode: Offset ${out.offset} block status mismatch!\n`);
        return 1;
      }
      if (!out.identical) {
        say(`Content mismatch at offset ${out.offset}!\n`);
        return 1;
      }
      say('Images are identical.\n');
      return 0;
    } catch (err) {
      if (err instanceof CompareError) return reportError(io, err, err.exitCode);
      // Anything else is an internal failure: qemu-img's "error" statuses are all above 1.
      return reportError(io, err, 2);
    } finally {
      progress.end();
    }
  },
};

export default command;
