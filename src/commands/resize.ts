/** `resize`: change an image's virtual size. */
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import { VdiskError } from '../core/errors.js';

export interface ResizeCommandOptions extends OpenContext {
  filename: string;
  format?: string | undefined;
  /** An absolute size, or a change when `relative` is +1 or -1. */
  size: number;
  relative?: 1 | -1 | 0;
  shrink?: boolean;
  preallocation?: string | undefined;
  /** Warnings printed while opening (a probed raw image opened for writing). */
  onWarning?: (message: string) => void;
}

export async function resizeCommand(o: ResizeCommandOptions): Promise<{ oldSize: number; newSize: number }> {
  const image = await openImage(o.filename, {
    ...openContext(o),
    format: o.format,
    writable: true,
    backing: 'follow', // as qemu-img 7.2 opens it: a missing backing file fails the resize
    allowDataFile: true,
    ...(o.onWarning ? { onWarning: o.onWarning } : {}),
  });
  try {
    const oldSize = image.size;
    const newSize = o.relative === 1 ? oldSize + o.size : o.relative === -1 ? oldSize - o.size : o.size;
    if (newSize <= 0) throw new VdiskError('INVALID_ARGUMENT', 'New image size must be positive');
    if (newSize < oldSize) {
      if (!o.shrink) {
        // qemu-img prints the error, then a warning line (and no warning when --shrink is given).
        throw new VdiskError(
          'INVALID_ARGUMENT',
          'Use the --shrink option to perform a shrink operation.\n' +
            "vdisk: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
        );
      }
    }
    // qemu's bdrv_co_truncate: preallocation needs growth (an unchanged size is refused too).
    if (newSize <= oldSize && o.preallocation !== undefined && o.preallocation !== 'off') {
      throw new VdiskError('INVALID_ARGUMENT', 'Preallocation can only be used for growing images');
    }
    await image.resize(newSize, {
      shrink: o.shrink === true,
      ...(o.preallocation !== undefined ? { preallocation: o.preallocation } : {}),
    });
    await image.flush();
    return { oldSize, newSize: image.size };
  } finally {
    await image.close();
  }
}
