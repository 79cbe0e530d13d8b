import { BenchRequestError, benchCommand } from '../../commands/bench.js';
import { VdiskError } from '../../core/errors.js';
import { checkCacheMode } from '../cache.js';
import { cvtnum, INT_MAX, INT64_MAX } from '../cvtnum.js';
import { getopt, usageError } from '../getopt.js';
import type { CliCommand } from '../main.js';

const command: CliCommand = {
  syntax:
    'bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename',
  help: [
    'Run a simple sequential I/O benchmark on FILENAME (reads, or writes with -w).',
    '  -c count                 number of requests (default 75000)',
    '  -d depth                 requests in flight at once (default 64)',
    '  -f fmt                   image format (probed when absent)',
    '  --flush-interval=N       with -w: a flush every N requests (N >= depth)',
    '  --no-drain               flush without waiting for the requests in flight',
    '  -i aio, -n               AIO mode (native, threads, io_uring); -n is -i native.',
    '                           Accepted as qemu-img accepts them; vdisk uses its own I/O.',
    '  -o offset                offset of the first request (default 0)',
    '  --pattern=byte           the byte written with -w (default 0)',
    '  -q                       accepted (qemu-img bench prints its lines anyway)',
    '  -s buffer_size           bytes per request (default 4096)',
    '  -S step_size             bytes between the starts of two requests (default: buffer size)',
    '  -t cache                 cache mode (unsafe: flushes do nothing)',
    '  -w                       write instead of read',
    '  -U, --force-share        open without taking the image lock (read tests only)',
    'Prints the run\'s parameters, then "Run completed in X seconds."',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      command: 'bench',
      short: 'hc:d:f:ni:o:qs:S:t:wU',
      long: {
        help: { value: false, short: 'h' },
        'flush-interval': { value: true },
        'image-opts': { value: false },
        pattern: { value: true },
        'no-drain': { value: false },
        'force-share': { value: false, short: 'U' },
        object: { value: true },
      },
    });
    let count = 75000;
    let depth = 64;
    let format: string | undefined;
    let offset = 0;
    let bufferSize = 4096;
    let step = 0;
    let write = false;
    let pattern = 0;
    let flushInterval = 0;
    let drain = true;
    let forceShare = false;
    let aio = 'threads';
    let direct = false;
    let noFlush = false;
    const fail = (message: string) => new VdiskError('INVALID_ARGUMENT', message);
    for (const [k, v] of opts) {
      if (k === 'c') {
        const n = strtoul(v);
        if (n === undefined || n > INT_MAX) throw fail('Invalid request count specified');
        count = Number(n);
      } else if (k === 'd') {
        const n = strtoul(v);
        if (n === undefined || n > INT_MAX) throw fail('Invalid queue depth specified');
        depth = Number(n);
      } else if (k === 'f') format = v;
      else if (k === 'n') aio = 'native';
      else if (k === 'i') {
        if (!['native', 'threads', 'io_uring'].includes(v)) throw fail(`Invalid aio option: ${v}`);
        aio = v;
      } else if (k === 'o') offset = Number(cvtnum('offset', v, 0n, INT64_MAX));
      else if (k === 'q') {
        // qemu-img bench prints its lines with printf, -q or not.
      } else if (k === 's') bufferSize = Number(cvtnum('buffer size', v, 0n, INT_MAX));
      else if (k === 'S') step = Number(cvtnum('step_size', v, 0n, INT_MAX));
      else if (k === 't') {
        if (!checkCacheMode(v)) throw fail('Invalid cache mode');
        direct = v === 'none' || v === 'off' || v === 'directsync';
        noFlush = v === 'unsafe';
      } else if (k === 'w') write = true;
      else if (k === 'U') forceShare = true;
      else if (k === 'pattern') {
        const n = strtoul(v);
        if (n === undefined || n > 0xffn) throw fail('Invalid pattern byte specified');
        pattern = Number(n);
      } else if (k === 'flush-interval') {
        const n = strtoul(v);
        if (n === undefined || n > INT_MAX) throw fail('Invalid flush interval specified');
        flushInterval = Number(n);
      } else if (k === 'no-drain') drain = false;
    }
    if (args.length !== 1) throw usageError('Expecting one image file name');
    const filename = args[0]!;
    if (!write && flushInterval !== 0) throw fail('--flush-interval is only available in write tests');
    if (flushInterval !== 0 && flushInterval < depth)
      throw fail("Flush interval can't be smaller than depth");
    // qemu-img 7.2 accepts -d 0 and then waits forever for requests it never sends.
    if (depth === 0 && count > 0) throw fail('Invalid queue depth specified');
    if (aio === 'native' && !direct) {
      throw fail(
        `Could not open '${filename}': aio=native was specified, but it requires cache.direct=on, which was not specified.`,
      );
    }
    try {
      const res = await benchCommand(
        {
          imageOpts,
          secrets,
          onOpenWarning: (m) => io.err(`${m}\n`),
          filename,
          format,
          count,
          depth,
          offset,
          bufferSize,
          step,
          write,
          pattern,
          flushInterval,
          drain,
          forceShare,
          noFlush,
        },
        (p) => {
          io.out(
            `Sending ${p.count} ${p.write ? 'write' : 'read'} requests, ${p.bufferSize} bytes each, ${p.depth} in parallel (starting at offset ${p.offset}, step size ${p.step})\n`,
          );
          if (p.flushInterval !== 0) io.out(`Sending flush every ${p.flushInterval} requests\n`);
        },
      );
      io.out(`Run completed in ${res.seconds.toFixed(3)} seconds.\n`);
      return 0;
    } catch (err) {
      if (err instanceof BenchRequestError) {
        io.err(`vdisk: ${err.message}\n`);
        return 1;
      }
      throw err;
    }
  },
};

/** qemu_strtoul(text, NULL, 0, &res): decimal, 0x hex or 0 octal, the whole string; negatives wrap. */
export function strtoul(text: string): bigint | undefined {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  if (m === null) return undefined;
  const v = BigInt(m[2]!.replace(/^0([0-7]+)$/, '0o$1'));
  if (v >= 1n << 64n) return undefined;
  return m[1] === '-' && v !== 0n ? (1n << 64n) - v : v;
}

export default command;
