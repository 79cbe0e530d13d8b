import { type ImageInfo, infoCommand } from '../../commands/info.js';
import { VdiskError } from '../../core/errors.js';
import { sizeToStr } from '../format.js';
import { getopt } from '../getopt.js';
import { qdictOrder, qemuJson } from '../json.js';
import type { CliCommand } from '../main.js';
import { renderSnapshotTable } from '../snapshots.js';

const command: CliCommand = {
  syntax: 'info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename',
  help: [
    'Show what an image is: format, virtual and allocated size, backing file, snapshots and',
    'format-specific information.',
    '  -f fmt            image format (probed when absent)',
    '  --output=ofmt     human (default) or json',
    '  --backing-chain   also show every image of the backing chain',
    '  -U, --force-share open without taking the image lock',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      command: 'info',
      short: 'f:hU',
      long: {
        output: { value: true },
        'backing-chain': { value: false },
        'force-share': { value: false, short: 'U' },
        'image-opts': { value: false },
        object: { value: true },
        format: { value: true, short: 'f' },
        help: { value: false, short: 'h' },
      },
    });
    let format: string | undefined;
    let output = 'human';
    let backingChain = false;
    let forceShare = false;
    for (const [k, v] of opts) {
      if (k === 'f') format = v;
      else if (k === 'output') output = v;
      else if (k === 'backing-chain') backingChain = true;
      else if (k === 'U') forceShare = true;
    }
    if (output !== 'human' && output !== 'json') {
      throw new VdiskError('INVALID_ARGUMENT', `--output must be used with human or json as argument.`);
    }
    const filename = args[args.length - 1];
    if (filename === undefined) throw new VdiskError('INVALID_ARGUMENT', 'Expecting one image file name');
    const infos = await infoCommand({
      imageOpts,
      secrets,
      filename,
      format,
      backingChain,
      forceShare,
      onOpenWarning: (m) => io.err(`${m}\n`),
    });
    if (output === 'json') {
      io.out(`${qemuJson(backingChain ? infos : infos[0])}\n`);
    } else {
      io.out(infos.map(renderInfo).join('\n'));
    }
    return 0;
  },
};

/** qemu-img's human info (block/qapi.c: bdrv_image_info_dump). */
export function renderInfo(info: ImageInfo): string {
  const size = info['virtual-size'];
  const actual = info['actual-size'];
  let s =
    `image: ${info.filename}\n` +
    `file format: ${info.format}\n` +
    `virtual size: ${sizeToStr(size)} (${size} bytes)\n` +
    `disk size: ${actual === undefined ? 'unavailable' : sizeToStr(actual)}\n`;
  if (info.encrypted) s += 'encrypted: yes\n';
  if (info['cluster-size'] !== undefined) s += `cluster_size: ${info['cluster-size']}\n`;
  if (info['dirty-flag']) s += 'cleanly shut down: no\n';
  const bf = info['backing-filename'];
  if (bf !== undefined) {
    s += `backing file: ${bf}`;
    const full = info['full-backing-filename'];
    if (full === undefined) s += ' (cannot determine actual path)';
    else if (full !== bf) s += ` (actual path: ${full})`;
    s += '\n';
    if (info['backing-filename-format'] !== undefined)
      s += `backing file format: ${info['backing-filename-format']}\n`;
  }
  if (info.snapshots !== undefined) {
    s += 'Snapshot list:\n' + renderSnapshotTable(info.snapshots);
  }
  const fs = info['format-specific'];
  if (fs !== undefined) {
    s += 'Format specific information:\n' + dumpQObject(fs.data, 1);
  }
  return s;
}

/** block/qapi.c dump_qobject/dump_qdict: keys with '-' shown as ' ', nested four spaces deeper. */
export function dumpQObject(value: unknown, indent: number): string {
  const pad = ' '.repeat(indent * 4);
  let s = '';
  if (Array.isArray(value)) {
    value.forEach((v, i) => {
      const composite = typeof v === 'object' && v !== null;
      s += `${pad}[${i}]:${composite ? '\n' : ' '}${composite ? dumpQObject(v, indent + 1) : `${scalar(v)}\n`}`;
    });
    return s;
  }
  const obj = value as Record<string, unknown>;
  for (const k of qdictOrder(Object.keys(obj).filter((key) => obj[key] !== undefined))) {
    const v = obj[k];
    const composite = typeof v === 'object' && v !== null;
    s += `${pad}${k.replaceAll('-', ' ')}:${composite ? '\n' : ' '}${composite ? dumpQObject(v, indent + 1) : `${scalar(v)}\n`}`;
  }
  return s;
}

function scalar(v: unknown): string {
  return typeof v === 'string' ? v : String(v);
}

export default command;
