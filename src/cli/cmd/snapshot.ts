import { snapshotJson } from '../../commands/info.js';
import { type SnapshotAction, snapshotCommand } from '../../commands/snapshot.js';
import { getopt, usageError } from '../getopt.js';
import type { CliCommand } from '../main.js';
import { renderSnapshotTable } from '../snapshots.js';

const command: CliCommand = {
  // qemu-img 7.2's snapshot has no -f (the image format is always probed).
  syntax:
    'snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename',
  help: [
    'List, create, apply or delete the internal snapshots of FILENAME (qcow2).',
    "  '-l' lists all snapshots in the given image",
    "  '-a' applies a snapshot (revert disk to saved state)",
    "  '-c' creates a snapshot",
    "  '-d' deletes a snapshot",
    "  '-U' opens the image without locking it (only with '-l')",
    "  '-q' quiet",
    "  'snapshot' is the name (or, for '-a' and '-d', the ID) of a snapshot",
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, imageOpts, secrets } = getopt(argv, {
      short: ':la:c:d:hqU',
      command: 'snapshot',
      long: {
        help: { value: false, short: 'h' },
        object: { value: true },
        'image-opts': { value: false },
        'force-share': { value: false, short: 'U' },
      },
    });
    let action: SnapshotAction = { op: 'none' };
    let forceShare = false;
    for (const [k, v] of opts) {
      let next: SnapshotAction | undefined;
      if (k === 'l') next = { op: 'list' };
      else if (k === 'a') next = { op: 'apply', name: v };
      else if (k === 'c') next = { op: 'create', name: v };
      else if (k === 'd') next = { op: 'delete', name: v };
      else if (k === 'q') continue;
      else if (k === 'U' || k === 'force-share') forceShare = true;
      if (next !== undefined) {
        if (action.op !== 'none') throw usageError("Cannot mix '-l', '-a', '-c', '-d'");
        action = next;
      }
    }
    if (args.length !== 1) throw usageError('Expecting one image file name');
    // --image-opts: getopt noted it and openImage reads the name as options (chain/image-opts.ts).
    const filename = args[0]!;
    const format: string | undefined = undefined;
    const res = await snapshotCommand({
      imageOpts,
      secrets,
      filename,
      format,
      action,
      forceShare,
      onWarning: (m) => io.err(`${m}\n`),
    });
    // -l prints the table only when there are snapshots (qemu-img's dump_snapshots), even
    // with -q (measured: qemu-img 7.2 prints it).
    if (action.op === 'list' && res.snapshots.length > 0) {
      io.out(`Snapshot list:\n${renderSnapshotTable(res.snapshots.map(snapshotJson))}`);
    }
    return 0;
  },
};

export default command;
