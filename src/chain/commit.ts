/**
 * Commit: copy what the layers above `base` hold into `base` (QEMU's commit job).
 *
 * Crash safety: only `base` is written while copying, with data that the layers above already
 * hide, so a kill at any instant leaves every image readable and the chain's visible content
 * unchanged. The top image is emptied only after the copy completes.
 */

import { VdiskError } from '../core/errors.js';
import type { Image } from '../core/image.js';
import { allocatedAbove } from './allocation.js';

export interface CommitOptions {
  /** Leave the top image as it is (qemu-img commit -d). */
  drop?: boolean;
  /** Percent done (0..100). */
  onProgress?: (percent: number) => void;
  chunkSize?: number;
}

export async function commitChain(top: Image, base: Image, opts: CommitOptions = {}): Promise<void> {
  if (base.readOnly) throw new VdiskError('READ_ONLY', `Base image '${base.path}' is not open for writing`);
  const size = top.size;
  if (base.size < size) {
    if (!base.supports('resize')) {
      throw new VdiskError(
        'UNSUPPORTED',
        `Cannot grow base image '${base.path}' (format ${base.format}) to ${size} bytes`,
      );
    }
    await base.resize(size, { shrink: false });
  }
  const chunk = opts.chunkSize ?? 2 << 20;
  const buf = Buffer.allocUnsafe(chunk);
  let pos = 0;
  opts.onProgress?.(0);
  while (pos < size) {
    const a = await allocatedAbove(top, base, pos, Math.min(size - pos, chunk));
    if (a.allocated) {
      const st = await top.blockStatus(pos, a.length);
      const n = Math.min(a.length, st.length);
      if (st.zero) {
        await base.writeZeroes(pos, n, { unmap: true });
      } else {
        const part = buf.subarray(0, n);
        await top.readAt(part, pos);
        await base.writeAt(part, pos);
      }
      pos += n;
    } else {
      pos += a.length;
    }
    opts.onProgress?.((pos / size) * 100);
  }
  await base.flush();
  // qemu-img commit ignores a format that cannot be emptied (bdrv_make_empty's -ENOTSUP).
  if (!opts.drop && top.backing === base && top.supports('makeEmpty')) {
    await top.makeEmpty();
    await top.flush();
  }
}
