import { ddCommand } from '../../commands/dd.js';
import { VdiskError } from '../../core/errors.js';
import { cvtnum, INT_MAX, INT64_MAX } from '../cvtnum.js';
import { getopt } from '../getopt.js';
import type { CliCommand } from '../main.js';

const command: CliCommand = {
  syntax: 'dd [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output',
  help: [
    'Copy INPUT (or part of it) into a new image OUTPUT.',
    '  bs=BYTES        block size for count and skip (default 512)',
    '  count=N         copy only the first N input blocks (skipped blocks included, as qemu-img)',
    '  skip=N          skip N blocks at the start of the input',
    '  if=FILE         the input image',
    '  of=FILE         the output image (created)',
    '  -f fmt          format of the input (probed when absent)',
    '  -O output_fmt   format of the output (default raw)',
    '  -U              open the input without taking its lock',
    'Ranges the input reports as zeros are left as holes in the output.',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      command: 'dd',
      short: 'hf:O:U',
      long: {
        help: { value: false, short: 'h' },
        object: { value: true },
        'image-opts': { value: false },
        'force-share': { value: false, short: 'U' },
      },
    });
    let inputFormat: string | undefined;
    let outputFormat = 'raw';
    let forceShare = false;
    for (const [k, v] of opts) {
      if (k === 'f') inputFormat = v;
      else if (k === 'O') outputFormat = v;
      else if (k === 'U') forceShare = true;
    }
    let input: string | undefined;
    let output: string | undefined;
    let blockSize = 512;
    let count: bigint | undefined;
    let skip: bigint | undefined;
    for (const a of args) {
      const eq = a.indexOf('=');
      const key = eq < 0 ? a : a.slice(0, eq);
      const value = a.slice(eq + 1);
      if (eq < 0) throw new VdiskError('INVALID_ARGUMENT', `unrecognized operand ${a}`);
      if (key === 'bs') blockSize = Number(cvtnum('bs', value, 1n, INT_MAX));
      else if (key === 'count') count = cvtnum('count', value, 0n, INT64_MAX);
      else if (key === 'if') input = value;
      else if (key === 'of') output = value;
      else if (key === 'skip') skip = cvtnum('skip', value, 0n, INT64_MAX);
      else throw new VdiskError('INVALID_ARGUMENT', `unrecognized operand ${key}`);
    }
    if (input === undefined || output === undefined) {
      throw new VdiskError('INVALID_ARGUMENT', 'Must specify both input and output files');
    }
    const res = await ddCommand({
      imageOpts,
      secrets,
      onOpenWarning: (m) => io.err(`${m}\n`),
      input,
      output,
      inputFormat,
      outputFormat,
      blockSize,
      count,
      skip,
      forceShare,
    });
    if (res.skippedPastEnd) io.err(`vdisk: ${input}: cannot skip to specified offset\n`);
    return 0;
  },
};

export default command;
