import { type MapEntry, mapCommand } from '../../commands/map.js';
import { VdiskError } from '../../core/errors.js';
import { clampToSafe, cvtnum, INT64_MAX, warnTo } from '../cvtnum.js';
import { getopt, usageError } from '../getopt.js';
import type { CliCommand } from '../main.js';
import { OutputBuffer } from '../output.js';

const command: CliCommand = {
  syntax: 'map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename',
  help: [
    'Show which ranges of an image (and of its backing chain) hold data, read as zeros or are',
    'unallocated, and where they are stored.',
    '  -f fmt                  image format (probed when absent)',
    '  --start-offset=offset   start at this guest offset (suffixes k, M, G, …)',
    '  --max-length=len        map at most this many bytes',
    '  --output=ofmt           human (default: data ranges and where they are mapped) or json',
    '                          (every range: start, length, depth, present, zero, data, offset)',
    '  -U, --force-share       open without taking the image lock',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      command: 'map',
      short: 'f:s:l:hU',
      long: {
        help: { value: false, short: 'h' },
        format: { value: true, short: 'f' },
        output: { value: true },
        object: { value: true },
        'image-opts': { value: false },
        'force-share': { value: false, short: 'U' },
        'start-offset': { value: true, short: 's' },
        'max-length': { value: true, short: 'l' },
      },
    });
    let format: string | undefined;
    let output: string | undefined;
    let forceShare = false;
    let startOffset = 0;
    let startBig = 0n;
    let maxLength: number | undefined;
    for (const [k, v] of opts) {
      if (k === 'f') format = v;
      else if (k === 'U') forceShare = true;
      else if (k === 'output') output = v;
      else if (k === 's') {
        startBig = cvtnum('start offset', v, 0n, INT64_MAX, warnTo(io));
        startOffset = clampToSafe(startBig);
      } else if (k === 'l') maxLength = clampToSafe(cvtnum('max length', v, 0n, INT64_MAX, warnTo(io)));
    }
    if (args.length !== 1) {
      throw usageError('Expecting one image file name');
    }
    const filename = args[0]!;
    if (output !== undefined && output !== 'human' && output !== 'json') {
      throw new VdiskError('INVALID_ARGUMENT', '--output must be used with human or json as argument.');
    }
    const json = output === 'json';
    const out = new OutputBuffer(io);
    // qemu-img prints the table header (or the opening bracket) once the image is open.
    const onOpen = () =>
      out.write(json ? '[' : `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
    try {
      await mapCommand(
        {
          imageOpts,
          secrets,
          filename,
          format,
          forceShare,
          startOffset,
          maxLength,
          onOpen,
          onOpenWarning: (m) => io.err(`${m}\n`),
        },
        (e, next) => {
          // A start past 2^53 lies past any image: only the empty entry names it, exactly.
          out.write(json ? jsonEntry(e, next, e.length === 0 ? startBig : undefined) : humanEntry(e, next));
          return true;
        },
      );
    } finally {
      out.flush();
    }
    if (json) io.out(']\n');
    return 0;
  },
};

/** qemu-img's "%#-16" PRIx64: 0 prints as "0", others as 0x…, left-justified in 16 columns. */
function hex16(n: number): string {
  return (n === 0 ? '0' : `0x${n.toString(16)}`).padEnd(16);
}

/** dump_map_entry, human: only data ranges are listed; the rest fold together. */
export function humanEntry(e: MapEntry, next: MapEntry | null): string {
  if (e.data && e.offset === undefined) {
    throw new VdiskError('UNSUPPORTED', 'File contains external, encrypted or compressed clusters.');
  }
  let s = '';
  if (e.data && !e.zero)
    s = `${hex16(e.start)}${hex16(e.length)}${hex16(e.offset ?? 0)}${e.filename ?? ''}\n`;
  // This format ignores the distinction between 0, ZERO and ZERO|DATA (qemu-img's comment):
  // adjusting the next entry lets more of them coalesce.
  if (next !== null && (!next.data || next.zero)) {
    next.data = false;
    next.zero = true;
  }
  return s;
}

/** dump_map_entry, json: one object per line, in qemu-img's fixed key order and spacing. */
export function jsonEntry(e: MapEntry, next: MapEntry | null, exactStart?: bigint): string {
  let s =
    `{ "start": ${exactStart ?? e.start}, "length": ${e.length}, "depth": ${e.depth},` +
    ` "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`;
  if (e.offset !== undefined) s += `, "offset": ${e.offset}`;
  s += '}';
  if (next !== null) s += ',\n';
  return s;
}

export default command;
