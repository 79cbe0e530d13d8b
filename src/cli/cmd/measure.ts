import { measureCommand } from '../../commands/measure.js';
import { VdiskError } from '../../core/errors.js';
import { mergeOptionStrings, parseOptionString } from '../../core/options.js';
import { cvtnum, INT64_MAX, warnTo } from '../cvtnum.js';
import { getopt, isUsageError } from '../getopt.js';
import { qemuJson } from '../json.js';
import type { CliCommand } from '../main.js';

const command: CliCommand = {
  syntax:
    'measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [-f fmt] [-l snapshot_param] filename]',
  help: [
    'Show how much space an image of OUTPUT_FMT would need: for a virtual size (--size) or to',
    'hold the content of FILENAME.',
    '  --size N          virtual size of an empty image (suffixes k, M, G, …)',
    '  -f fmt            format of FILENAME (probed when absent)',
    '  -l snapshot_param measure FILENAME at an internal snapshot',
    '  -O output_fmt     format of the image to measure (default raw)',
    '  -o options        its creation options',
    '  --output=ofmt     human (default) or json',
    '  -U, --force-share open FILENAME without taking its lock',
  ].join('\n'),
  async run(argv, io) {
    let parsed: ReturnType<typeof getopt>;
    try {
      parsed = getopt(argv, {
        command: 'measure',
        short: 'hf:O:o:l:U',
        // qemu-img's measure passes getopt no leading ':', so glibc words the error, and the
        // '?' case shows the general help and exits 0.
        glibcErrors: true,
        long: {
          help: { value: false, short: 'h' },
          'image-opts': { value: false },
          object: { value: true },
          output: { value: true },
          size: { value: true },
          'force-share': { value: false, short: 'U' },
        },
      });
    } catch (err) {
      if (!isUsageError(err)) throw err;
      io.err(`${err.message}\n`);
      const { usage } = await import('../main.js');
      await usage(io);
      return 0;
    }
    const { opts, args, imageOpts, secrets } = parsed;
    let format: string | undefined;
    let outputFormat = 'raw';
    const optionStrings: string[] = [];
    let snapshot: { idOrName: string } | { id?: string; name?: string } | undefined;
    let forceShare = false;
    let json = false;
    let size: number | undefined;
    for (const [k, v] of opts) {
      if (k === 'f') format = v;
      else if (k === 'O') outputFormat = v;
      else if (k === 'o') optionStrings.push(v);
      else if (k === 'l') snapshot = parseSnapshot(v);
      else if (k === 'U') forceShare = true;
      else if (k === 'output') {
        if (v === 'json') json = true;
        else if (v === 'human') json = false;
        else
          throw new VdiskError('INVALID_ARGUMENT', '--output must be used with human or json as argument.');
      } else if (k === 'size') {
        const n = cvtnum('image size', v, 0n, INT64_MAX, warnTo(io));
        if (n > BigInt(Number.MAX_SAFE_INTEGER)) {
          throw new VdiskError('TOO_LARGE', `Image size ${v} is beyond what vdisk supports (8 PiB)`);
        }
        size = Number(n);
      }
    }
    if (args.length > 1)
      throw new VdiskError('INVALID_ARGUMENT', 'At most one filename argument is allowed.');
    const res = await measureCommand({
      imageOpts,
      secrets,
      onOpenWarning: (m) => io.err(`${m}\n`),
      size,
      filename: args[0],
      format,
      snapshot,
      forceShare,
      outputFormat,
      options: mergeOptionStrings(optionStrings),
    });
    if (json) {
      io.out(
        `${qemuJson({ required: res.required, 'fully-allocated': res.fullyAllocated, bitmaps: res.bitmaps })}\n`,
      );
    } else {
      let s = `required size: ${res.required}\nfully allocated size: ${res.fullyAllocated}\n`;
      if (res.bitmaps !== undefined) s += `bitmaps size: ${res.bitmaps}\n`;
      io.out(s);
    }
    return 0;
  },
};

/** -l: "snapshot.id=…,snapshot.name=…" or an id or name (as convert). */
function parseSnapshot(v: string): { idOrName: string } | { id?: string; name?: string } {
  if (!v.startsWith('snapshot.')) return { idOrName: v };
  const ref: { id?: string; name?: string } = {};
  for (const [k, val] of parseOptionString(v)) {
    if (k === 'snapshot.id') ref.id = val;
    else if (k === 'snapshot.name') ref.name = val;
    else {
      throw new VdiskError(
        'INVALID_ARGUMENT',
        `Invalid parameter '${k}'\nvdisk: Failed in parsing snapshot param '${v}'`,
      );
    }
  }
  return ref;
}

export default command;
