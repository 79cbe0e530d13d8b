/**
 * `snapshot`: list, create, apply or delete the internal snapshots of an image, as qemu-img
 * 7.2's img_snapshot does (messages and exit codes included).
 */
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import type { SnapshotInfo } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';

export type SnapshotAction =
  | { op: 'list' }
  | { op: 'create'; name: string }
  | { op: 'apply'; name: string }
  | { op: 'delete'; name: string }
  /** No action given: qemu-img opens the image read-write and does nothing. */
  | { op: 'none' };

export interface SnapshotCommandOptions extends OpenContext {
  filename: string;
  format?: string | undefined;
  action: SnapshotAction;
  /** -U */
  forceShare?: boolean;
  /** Clock for -c (tests); defaults to now. */
  now?: () => { sec: number; nsec: number };
  onWarning?: (message: string) => void;
}

export interface SnapshotCommandResult {
  /** The image's snapshots after the operation (for -l). */
  snapshots: SnapshotInfo[];
}

/** errno and strerror text qemu-img prints for a failed create ("-95 (Operation not supported)"). */
function errnoOf(err: unknown): [number, string] {
  if (err instanceof VdiskError) {
    if (err.op === 'EINVAL') return [22, 'Invalid argument'];
    if (err.op === 'EFBIG') return [27, 'File too large'];
    switch (err.code) {
      case 'UNSUPPORTED':
        return [95, 'Operation not supported'];
      case 'ENOSPC':
        return [28, 'No space left on device'];
      case 'INVALID_ARGUMENT':
        return [22, 'Invalid argument'];
      case 'TOO_LARGE':
        return [27, 'File too large'];
      case 'EACCES':
        return [13, 'Permission denied'];
      case 'READ_ONLY':
        return [30, 'Read-only file system'];
      default:
        break;
    }
  }
  return [5, 'Input/output error'];
}

function nowClock(): { sec: number; nsec: number } {
  // qemu-img takes gettimeofday(): microseconds, stored as nanoseconds.
  const ms = Date.now();
  const us = Number(process.hrtime.bigint() / 1000n) % 1000;
  return { sec: Math.floor(ms / 1000), nsec: ((ms % 1000) * 1000 + us) * 1000 };
}

export async function snapshotCommand(o: SnapshotCommandOptions): Promise<SnapshotCommandResult> {
  const list = o.action.op === 'list';
  if (o.forceShare && !list) {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `Could not open '${o.filename}': force-share=on can only be used with read-only images`,
    );
  }
  // qemu-img 7.2 opens the backing file too (no BDRV_O_NO_BACKING): a missing one fails.
  const warnings: string[] = [];
  const image = await openImage(o.filename, {
    ...openContext(o),
    format: o.format,
    writable: !list,
    forceShare: o.forceShare === true,
    backing: 'follow',
    allowDataFile: true,
    onWarning: (m) => {
      warnings.push(m);
      o.onWarning?.(m);
    },
  });
  try {
    const a = o.action;
    switch (a.op) {
      case 'none':
      case 'list':
        break;
      case 'create': {
        try {
          // A format without snapshots: UNSUPPORTED, printed "-95 (Operation not supported)".
          await image.createSnapshot(a.name, (o.now ?? nowClock)());
        } catch (err) {
          const [n, text] = errnoOf(err);
          const detail =
            err instanceof VdiskError && err.code === 'CORRUPT_IMAGE' ? err.message : `-${n} (${text})`;
          throw new VdiskError(
            err instanceof VdiskError ? err.code : 'INTERNAL',
            `Could not create snapshot '${a.name}': ${detail}`,
            { cause: err },
          );
        }
        break;
      }
      case 'apply': {
        const supported = image.supports('snapshots');
        try {
          await image.applySnapshot(a.name);
        } catch (err) {
          if (!supported) {
            // QEMU's bdrv_snapshot_goto falls back to the protocol layer and reopens the
            // image, which prints the open warnings (probed raw) a second time.
            for (const m of warnings) o.onWarning?.(m);
            throw new VdiskError(
              err instanceof VdiskError ? err.code : 'UNSUPPORTED',
              `Could not apply snapshot '${a.name}': ${(err as Error).message}`,
              { cause: err },
            );
          }
          if (err instanceof VdiskError && err.code === 'NOT_FOUND') {
            throw new VdiskError(
              'NOT_FOUND',
              `Could not apply snapshot '${a.name}': Failed to load snapshot: No such file or directory`,
              { cause: err },
            );
          }
          const detail =
            err instanceof VdiskError && err.code === 'CORRUPT_IMAGE' ? err.message : errnoOf(err)[1];
          throw new VdiskError(
            err instanceof VdiskError ? err.code : 'INTERNAL',
            `Could not apply snapshot '${a.name}': Failed to load snapshot: ${detail}`,
            { cause: err },
          );
        }
        break;
      }
      case 'delete': {
        try {
          // By name only, as qemu-img 7.2's bdrv_snapshot_find (see Image.deleteSnapshot).
          await image.deleteSnapshot(a.name);
        } catch (err) {
          const detail = err instanceof VdiskError ? err.message : String(err);
          throw new VdiskError(
            err instanceof VdiskError ? err.code : 'INTERNAL',
            `Could not delete snapshot '${a.name}': ${detail}`,
            { cause: err },
          );
        }
        break;
      }
    }
    if (!list) await image.flush();
    return { snapshots: image.snapshots() };
  } finally {
    await image.close();
  }
}
