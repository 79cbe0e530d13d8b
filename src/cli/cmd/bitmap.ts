import { type BitmapAction, bitmapCommand, checkBitmapOptions } from '../../commands/bitmap.js';
import { VdiskError } from '../../core/errors.js';
import { cvtnum, warnTo } from '../cvtnum.js';
import { getopt } from '../getopt.js';
import type { CliCommand } from '../main.js';

const command: CliCommand = {
  syntax:
    'bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap',
  help: [
    'Add, remove, clear, enable, disable or merge a persistent dirty bitmap of FILENAME (qcow2 v3).',
    "  'bitmap' is the name of the bitmap to manipulate, through one or more",
    "       actions from '--add', '--remove', '--clear', '--enable', '--disable',",
    "       or '--merge source' (applied in command-line order)",
    "  '-g granularity' sets the granularity for '--add' actions",
    "  '-b source' and '-F src_fmt' tell '--merge' actions to find the source",
    '       bitmaps from an alternative file',
    "  '-f fmt' is the format of FILENAME (probed when absent)",
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      short: ':b:f:F:g:h',
      command: 'bitmap',
      long: {
        help: { value: false, short: 'h' },
        object: { value: true },
        'image-opts': { value: false },
        add: { value: false },
        remove: { value: false },
        clear: { value: false },
        enable: { value: false },
        disable: { value: false },
        merge: { value: true },
        granularity: { value: true, short: 'g' },
        'source-file': { value: true, short: 'b' },
        'source-format': { value: true, short: 'F' },
      },
    });
    const actions: BitmapAction[] = [];
    let format: string | undefined;
    let granularity: number | undefined;
    let sourceFile: string | undefined;
    let sourceFormat: string | undefined;
    for (const [k, v] of opts) {
      if (k === 'f') format = v;
      else if (k === 'b' || k === 'source-file') sourceFile = v;
      else if (k === 'F' || k === 'source-format') sourceFormat = v;
      else if (k === 'g' || k === 'granularity') {
        const g = cvtnum('granularity', v, 0n, (1n << 63n) - 1n, warnTo(io));
        // qemu-img keeps an int64 and hands QMP a uint32: 0 means "not given", the rest wraps.
        granularity = g === 0n ? undefined : Number(g & 0xffffffffn);
      } else if (k === 'merge') actions.push({ op: 'merge', source: v });
      else if (k === 'add' || k === 'remove' || k === 'clear' || k === 'enable' || k === 'disable') {
        actions.push({ op: k });
      }
    }
    if (actions.length > 0 && args.length !== 2) {
      // qemu-img checks the options first (bitmapCommand repeats them), then the operands.
      checkBitmapOptions({ actions, granularity, sourceFile, sourceFormat });
      throw new VdiskError('INVALID_ARGUMENT', 'Expecting filename and bitmap name');
    }
    await bitmapCommand({
      imageOpts,
      secrets,
      filename: args[0] ?? '',
      name: args[1] ?? '',
      format,
      actions,
      granularity,
      sourceFile,
      sourceFormat,
      onWarning: (m) => io.err(`${m}\n`),
    });
    return 0;
  },
};

export default command;
