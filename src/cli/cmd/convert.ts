import { rmSync } from 'node:fs';
import type { SnapshotRef } from '../../commands/convert.js';
import { type ConvertPipeOptions, convertPipe, STDIO_NAME } from '../../commands/convert-pipe.js';
import { VdiskError } from '../../core/errors.js';
import { mergeOptionStrings, parseOptionString } from '../../core/options.js';
import { checkCacheMode } from '../cache.js';
import { cvtnum, INT64_MAX, warnTo } from '../cvtnum.js';
import { getopt } from '../getopt.js';
import type { Io } from '../io.js';
import type { CliCommand } from '../main.js';
import { printOptionHelp } from '../option-help.js';
import { Progress, progressMode } from '../progress.js';

const command: CliCommand = {
  syntax:
    'convert [--target-is-zero] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] filename [filename2 [...]] output_filename',
  help: [
    'Copy one or more images (concatenated) into OUTPUT_FILENAME, converting the format. Only',
    'data is copied: ranges that read as zeros become holes or zero clusters.',
    '  -f fmt            format of the sources (probed when absent)',
    '  -O output_fmt     format of the target (default raw)',
    '  -o options        creation options of the target (-o help lists them)',
    '  -B backing_file   make the target an overlay of BACKING_FILE: only what the source',
    '                    image itself holds (not its backing chain) is copied',
    '  -F backing_fmt    format of BACKING_FILE (required with -B)',
    '  -c                compress the target (qcow2: zlib or zstd per its compression_type;',
    '                    vmdk: streamOptimized grains)',
    '  -n                do not create the target: it exists and is large enough',
    '  --target-is-zero  with -n: the target reads as zeros, zero ranges need no writing',
    '  -S sparse_size    shortest run of zeros (bytes, default 4k) left as a hole; 0 writes',
    '                    every byte',
    '  -l snapshot_param read the source at an internal snapshot: ID_OR_NAME, or',
    '                    snapshot.id=ID,snapshot.name=NAME',
    '  -m num            requests in flight (1-16, default 8)',
    '  -W                allow out-of-order writes (faster; the target fills unordered)',
    '  -t cache          target cache mode: unsafe (default: no flush), writeback,',
    '                    writethrough, none, directsync (these flush at the end)',
    '  -T src_cache      source cache mode (accepted)',
    '  -r rate_limit     accepted; vdisk does not throttle',
    '  -C                accepted; vdisk copies through its own buffers',
    '  -p                show progress',
    '  --progress=json   print progress as JSON lines {"progress": N} (a vdisk extension)',
    '  -q                quiet',
    '  -U, --force-share open the sources without taking their locks',
    '  --spill-limit=N   most bytes a source read from standard input may store in a',
    '                    temporary file (default: the free space of TMPDIR less 1 GiB)',
    '',
    'A source named - is read from standard input (into a sparse temporary file in TMPDIR,',
    'removed at the end); an output named - is written to standard output, in order, for',
    'formats with a sequential writer (raw, qcow2, qed, qcow, vmdk monolithicSparse and',
    'streamOptimized, vdi, vpc). With an output of -, -p draws its bar on standard error.',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      command: 'convert',
      short: 'hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:',
      long: {
        help: { value: false, short: 'h' },
        object: { value: true },
        'image-opts': { value: false },
        'force-share': { value: false, short: 'U' },
        'target-image-opts': { value: false },
        salvage: { value: false },
        'target-is-zero': { value: false },
        bitmaps: { value: false },
        'skip-broken-bitmaps': { value: false },
        progress: { value: true },
        'spill-limit': { value: true },
      },
    });
    const o: ConvertPipeOptions = { sources: [], output: '', imageOpts, secrets };
    const optionStrings: string[] = [];
    let copyRange = false;
    let explicitSparse = false;
    let salvage = false;
    let targetImageOpts = false;
    let bitmaps = false;
    let skipBroken = false;
    let srcCache = 'writeback';
    let p = false;
    let quiet = false;
    let progressArg: string | undefined;
    for (const [k, v] of opts) {
      switch (k) {
        case 'f':
          o.sourceFormat = v;
          break;
        case 'O':
          o.outputFormat = v;
          break;
        case 'B':
          o.backingFile = v;
          break;
        case 'F':
          o.backingFormat = v;
          break;
        case 'C':
          copyRange = true;
          break;
        case 'c':
          o.compressed = true;
          break;
        case 'o':
          if (!validOptionList(v)) throw new VdiskError('INVALID_ARGUMENT', `Invalid option list: ${v}`);
          optionStrings.push(v);
          break;
        case 'l':
          o.snapshot = parseSnapshotParam(v);
          break;
        case 'S': {
          const n = cvtnum('buffer size for sparse output', v, 0n, INT64_MAX, warnTo(io));
          if (n % 512n !== 0n || n / 512n > 32768n) {
            throw new VdiskError(
              'INVALID_ARGUMENT',
              'Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output).',
            );
          }
          o.minSparse = Number(n);
          explicitSparse = true;
          break;
        }
        case 'p':
          p = true;
          break;
        case 't':
          o.cache = v;
          break;
        case 'T':
          srcCache = v;
          break;
        case 'q':
          quiet = true;
          break;
        case 'n':
          o.skipCreate = true;
          break;
        case 'm': {
          const m = parseCLong(v);
          if (m === null || m < 1 || m > 16) {
            throw new VdiskError(
              'INVALID_ARGUMENT',
              'Invalid number of coroutines. Allowed number of coroutines is between 1 and 16',
            );
          }
          o.coroutines = m;
          break;
        }
        case 'W':
          o.outOfOrder = true;
          break;
        case 'U':
          o.forceShare = true;
          break;
        case 'r':
          // Accepted as qemu-img accepts it; vdisk does not throttle.
          cvtnum('rate limit', v, 0n, INT64_MAX, warnTo(io));
          break;
        case 'salvage':
          salvage = true;
          break;
        case 'target-image-opts':
          targetImageOpts = true;
          break;
        case 'target-is-zero':
          o.targetIsZero = true;
          break;
        case 'bitmaps':
          bitmaps = true;
          break;
        case 'skip-broken-bitmaps':
          skipBroken = true;
          break;
        case 'progress':
          progressArg = v;
          break;
        case 'spill-limit':
          o.spillLimit = Number(cvtnum('spill limit', v, 0n, INT64_MAX, warnTo(io)));
          break;
      }
    }
    if (progressArg !== undefined && progressArg !== 'human' && progressArg !== 'json') {
      throw new VdiskError('INVALID_ARGUMENT', '--progress must be used with human or json as argument.');
    }
    const fail = (m: string) => new VdiskError('INVALID_ARGUMENT', m);
    if (o.compressed && copyRange) throw fail('Cannot enable copy offloading when -c is used');
    if (explicitSparse && copyRange) throw fail('Cannot enable copy offloading when -S is used');
    if (copyRange && salvage) throw fail('Cannot use copy offloading in salvaging mode');
    if (copyRange) o.copyOffload = true;
    if (targetImageOpts && !o.skipCreate) throw fail('--target-image-opts requires use of -n flag');
    if (o.skipCreate && optionStrings.length > 0) throw fail('-o has no effect when skipping image creation');
    if (o.targetIsZero && !o.skipCreate) throw fail('--target-is-zero requires use of -n flag');
    if (skipBroken && !bitmaps) throw fail('Use of --skip-broken-bitmaps requires --bitmaps');
    const options = mergeOptionStrings(optionStrings);
    if ('help' in options || '?' in options) {
      // With an output file named, qemu-img lists the protocol's options too.
      await printOptionHelp(io, o.outputFormat ?? 'raw', args.length >= 2);
      return 0;
    }
    if (args.length < 2) throw fail('Must specify image file name');
    o.sources = args.slice(0, -1);
    o.output = args[args.length - 1]!;
    o.options = options;
    o.targetImageOpts = targetImageOpts;
    o.onOpenWarning = (m) => io.err(`${m}\n`);
    if (bitmaps) {
      o.bitmaps = true;
      o.skipBrokenBitmaps = skipBroken;
      o.onWarning = warnTo(io);
    }
    if (!checkCacheMode(srcCache)) throw fail(`Invalid source cache option: ${srcCache}`);
    const toStdout = o.output === STDIO_NAME;
    const fromStdin = o.sources.includes(STDIO_NAME);
    if (toStdout) {
      if (io.stdoutStream === undefined) throw fail('Standard output is not available');
      if (io.stdoutStream.isTTY === true) throw fail('Refusing to write an image to a terminal');
      o.outputStream = io.stdoutStream;
    }
    if (fromStdin) {
      if (io.stdinStream === undefined) throw fail('Standard input is not available');
      if (io.stdinStream.isTTY === true) throw fail('Refusing to read an image from a terminal');
      o.input = io.stdinStream;
      o.onNote = (line) => io.err(`vdisk: ${line}\n`);
    }
    // The image owns standard output: the bar goes to standard error.
    const barIo: Io = toStdout ? { out: (t) => io.err(t), err: (t) => io.err(t), isTTY: io.isTTY } : io;
    const progress = new Progress(barIo, progressMode({ p, quiet, progressArg }), 1);
    progress.set(0);
    const signals = new SignalCleanup();
    o.onTemp = (dir) => signals.track(dir);
    try {
      await convertPipe({
        ...o,
        // The conversion is all this process does: small writes need no thread pool.
        inlineSmallWrites: true,
        ...(salvage
          ? { salvage: true, onWarning: (m: string) => quiet || io.err(`vdisk: warning: ${m}\n`) }
          : {}),
        // Counting what will be copied costs a second walk of the source: only when shown.
        ...(progress.mode !== 'off'
          ? { onProgress: (done, total) => progress.set((100 * done) / total) }
          : {}),
      });
      progress.set(100);
    } finally {
      signals.track(null);
      progress.end();
    }
    return 0;
  },
};

/**
 * While a temporary directory exists (standard input spilled), a signal that would end the
 * process removes it first, then ends the process by the same signal.
 */
class SignalCleanup {
  private dir: string | null = null;
  private readonly handler = (sig: NodeJS.Signals) => {
    if (this.dir !== null) rmSync(this.dir, { recursive: true, force: true });
    this.track(null);
    process.kill(process.pid, sig);
  };

  track(dir: string | null): void {
    const was = this.dir !== null;
    this.dir = dir;
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      if (dir !== null && !was) process.on(sig, this.handler);
      if (dir === null && was) process.off(sig, this.handler);
    }
  }
}

/** qemu-img's is_valid_option_list(): no leading ',', no odd run of trailing ','. */
function validOptionList(v: string): boolean {
  if (v === '' || v.startsWith(',')) return false;
  const trailing = v.length - v.replace(/,+$/, '').length;
  return trailing % 2 === 0;
}

/** qemu_strtol(text, NULL, 0): decimal, 0x-hex or 0-octal, the whole string. */
function parseCLong(text: string): number | null {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  if (m === null) return null;
  const body = m[2]!;
  const v =
    body.startsWith('0x') || body.startsWith('0X')
      ? parseInt(body, 16)
      : body.startsWith('0')
        ? parseInt(body, 8) || 0
        : Number(body);
  return m[1] === '-' ? -v : v;
}

/** -l: "snapshot.id=…,snapshot.name=…" (internal_snapshot_opts) or an id or name. */
export function parseSnapshotParam(v: string): SnapshotRef {
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
