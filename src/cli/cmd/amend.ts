import { amendCommand, amendOptionsOf, hasHelpOption } from '../../commands/amend.js';
import { VdiskError } from '../../core/errors.js';
import { checkCacheMode } from '../cache.js';
import { getopt, usageError } from '../getopt.js';
import type { Io } from '../io.js';
import type { CliCommand } from '../main.js';
import { Progress, progressMode } from '../progress.js';

/** qemu-img's is_valid_option_list: not empty, no leading comma, no unescaped trailing comma. */
function validOptionList(v: string): boolean {
  if (v === '' || v.startsWith(',')) return false;
  const trailing = v.length - v.replace(/,+$/, '').length;
  return trailing % 2 === 0;
}

/** print_amend_option_help: the format's amend options, sorted, as qemu_opts_print_help. */
async function printAmendHelp(io: Io, format: string): Promise<void> {
  const specs = [...(await amendOptionsOf(format))].sort((a, b) =>
    a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
  );
  const typeName = { size: '<size>', number: '<num>', bool: '<bool (on/off)>', string: '<str>' } as const;
  let s = `Amend options for '${format}':\n`;
  for (const o of specs) s += `  ${`${o.name}=${typeName[o.type]}`.padEnd(22)} - ${o.help}\n`;
  io.out(s);
}

const command: CliCommand = {
  syntax:
    'amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename',
  help: [
    'Change format-specific options of FILENAME (qcow2: compat, lazy_refcounts, refcount_bits,',
    'data_file, data_file_raw, size). `-o help` lists the options of the format.',
    '  -o options  the options to change (repeatable; "a=1,b=2")',
    '  -f fmt      format of FILENAME (probed when absent)',
    '  -p          show progress; --progress=json prints one JSON line per update',
    '  -q          quiet',
    '  -t cache    cache mode (validated; vdisk writes through the page cache)',
    '  --force     accepted (qemu-img uses it for LUKS keyslot changes)',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      short: 'ho:f:t:pq',
      command: 'amend',
      long: {
        progress: { value: true },
        'image-opts': { value: false },
        object: { value: true },
        force: { value: false },
      },
    });
    let format: string | undefined;
    let cache = 'writeback';
    let options: string | undefined;
    let quiet = false;
    let p = false;
    let progressArg: string | undefined;
    for (const [k, v] of opts) {
      if (k === 'f') format = v;
      else if (k === 't') cache = v;
      else if (k === 'q') quiet = true;
      else if (k === 'p') p = true;
      else if (k === 'progress') progressArg = v;
      else if (k === 'o') {
        if (!validOptionList(v)) throw new VdiskError('INVALID_ARGUMENT', `Invalid option list: ${v}`);
        options = options === undefined ? v : `${options},${v}`;
      }
    }
    if (options === undefined) throw usageError('Must specify options (-o)');
    const progress = new Progress(io, progressMode({ p, quiet, progressArg }), 1);
    try {
      if (format !== undefined && hasHelpOption(options)) {
        await printAmendHelp(io, format);
        return 0;
      }
      if (args.length !== 1) throw new VdiskError('INVALID_ARGUMENT', 'Expecting one image file name');
      if (!checkCacheMode(cache)) throw new VdiskError('INVALID_ARGUMENT', `Invalid cache option: ${cache}`);
      await amendCommand({
        imageOpts,
        secrets,
        filename: args[0]!,
        format,
        options,
        onProgress: (pct) => progress.set(pct),
        onWarning: (m) => io.err(`${m}\n`),
        onHelp: (fmt) => printAmendHelp(io, fmt),
      });
      return 0;
    } finally {
      progress.end();
    }
  },
};

export default command;
