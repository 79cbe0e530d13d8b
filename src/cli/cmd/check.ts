import { checkCommand, type ImageCheckJson } from '../../commands/check.js';
import { CHECK_ERROR_REPORT } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { getopt } from '../getopt.js';
import { qemuJson } from '../json.js';
import type { CliCommand } from '../main.js';

const command: CliCommand = {
  syntax: 'check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename',
  help: [
    'Check an image for consistency; with -r, repair leaked clusters (leaks) or all errors (all).',
    '  -f fmt            image format (probed when absent)',
    '  --output=ofmt     human (default) or json',
    '  -r leaks|all      repair leaked clusters, or every inconsistency that can be repaired',
    '  -T src_cache      accepted for compatibility (vdisk does not use a host cache mode)',
    '  -U, --force-share open without taking the image lock',
    '  -q                quiet: print nothing but errors',
    'Exit status: 0 clean, 1 check failed, 2 corruptions, 3 leaks only, 63 format has no checks.',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      short: 'hf:r:T:qU',
      long: {
        help: { value: false, short: 'h' },
        format: { value: true, short: 'f' },
        repair: { value: true, short: 'r' },
        output: { value: true },
        object: { value: true },
        'image-opts': { value: false },
        'force-share': { value: false, short: 'U' },
      },
    });
    let format: string | undefined;
    let output = 'human';
    let repair: 'none' | 'leaks' | 'all' = 'none';
    let quiet = false;
    let forceShare = false;
    for (const [k, v] of opts) {
      if (k === 'f') format = v;
      else if (k === 'output') output = v;
      else if (k === 'q') quiet = true;
      else if (k === 'U') forceShare = true;
      else if (k === 'r') {
        if (v === 'leaks') repair = 'leaks';
        else if (v === 'all') repair = 'all';
        else {
          throw new VdiskError(
            'INVALID_ARGUMENT',
            "Unknown option value for -r (expecting 'leaks' or 'all'): " + v,
          );
        }
      }
    }
    if (output !== 'human' && output !== 'json') {
      throw new VdiskError('INVALID_ARGUMENT', '--output must be used with human or json as argument.');
    }
    const filename = args[args.length - 1];
    if (filename === undefined) throw new VdiskError('INVALID_ARGUMENT', 'Expecting one image file name');
    if (repair !== 'none' && forceShare) {
      throw new VdiskError('INVALID_ARGUMENT', '--force-share/-U is not allowed with -r');
    }
    let res: Awaited<ReturnType<typeof checkCommand>>;
    try {
      res = await checkCommand({
        imageOpts,
        secrets,
        filename,
        format,
        repair,
        forceShare,
        onOpenWarning: (m) => io.err(`${m}\n`),
        onMessage: (m) => io.err(m.startsWith(CHECK_ERROR_REPORT) ? `vdisk: ${m.slice(1)}\n` : `${m}\n`),
      });
    } catch (err) {
      if (
        err instanceof VdiskError &&
        err.code === 'UNSUPPORTED' &&
        /does not support checks/.test(err.message)
      ) {
        if (output === 'human' && !quiet) io.err(`vdisk: ${err.message}\n`);
        return 63;
      }
      throw err;
    }
    const c = res.check;
    if (res.failed !== undefined) {
      // qemu-img prints no report when the check itself failed.
      io.err(`vdisk: Check failed${res.failed ? `: ${res.failed}` : ''}\n`);
      return 1;
    }
    if (output === 'json') {
      io.out(`${qemuJson(c)}\n`);
    } else if (!quiet) {
      let s = '';
      if (res.repaired !== undefined) {
        s +=
          'The following inconsistencies were found and repaired:\n\n' +
          `    ${res.repaired.leaksFixed} leaked clusters\n` +
          `    ${res.repaired.corruptionsFixed} corruptions\n\n` +
          'Double checking the fixed image now...\n';
      }
      s += renderHuman(c);
      io.out(s);
    }
    if (c['check-errors'] > 0) {
      // qemu-img: the report, then "Check failed" (internal errors during the check).
      io.err('vdisk: Check failed\n');
      return 1;
    }
    if ((c.corruptions ?? 0) > 0) return 2;
    if ((c.leaks ?? 0) > 0) return 3;
    return 0;
  },
};

/** qemu-img's dump_human_image_check. */
export function renderHuman(c: ImageCheckJson): string {
  let s = '';
  const corruptions = c.corruptions ?? 0;
  const leaks = c.leaks ?? 0;
  const errors = c['check-errors'];
  if (corruptions === 0 && leaks === 0 && errors === 0) {
    s += 'No errors were found on the image.\n';
  } else {
    if (corruptions > 0) {
      s += `\n${corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    }
    if (leaks > 0) {
      s += `\n${leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    }
    if (errors > 0) s += `\n${errors} internal errors have occurred during the check.\n`;
  }
  const total = c['total-clusters'] ?? 0;
  const alloc = c['allocated-clusters'] ?? 0;
  if (total !== 0 && alloc !== 0) {
    const pct = (n: number, d: number) => fixed2((n * 100) / d);
    s += `${alloc}/${total} = ${pct(alloc, total)}% allocated, ${pct(c['fragmented-clusters'] ?? 0, alloc)}% fragmented, ${pct(c['compressed-clusters'] ?? 0, alloc)}% compressed clusters\n`;
  }
  if (c['image-end-offset'] !== undefined) s += `Image end offset: ${c['image-end-offset']}\n`;
  return s;
}

/** printf("%0.2f"): like toFixed(2), but ties go to even as glibc rounds them. */
export function fixed2(x: number): string {
  const t = x * 100;
  if (Number.isInteger(t * 2) && !Number.isInteger(t)) {
    const k = Math.floor(t);
    return ((k % 2 === 0 ? k : k + 1) / 100).toFixed(2);
  }
  return x.toFixed(2);
}

export default command;
