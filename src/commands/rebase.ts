/** `rebase`: change an image's backing file, safely (content kept) or unsafely (-u). */
import { type OpenContext, openContext, openImage, resolveRelative } from '../chain/open.js';
import { rebaseSafe } from '../chain/rebase.js';
import { VdiskError } from '../core/errors.js';
import type { Image } from '../core/image.js';

export interface RebaseCommandOptions extends OpenContext {
  filename: string;
  format?: string | undefined;
  /** New backing file name as it will be stored ("" detaches). */
  backingFile: string;
  backingFormat?: string | undefined;
  unsafe?: boolean;
  compress?: boolean;
  forceShare?: boolean;
  /** Percent done (0..100). */
  onProgress?: (percent: number) => void;
  /** Warnings printed while opening the images (chain/open.ts onWarning), whole lines. */
  onOpenWarning?: ((message: string) => void) | undefined;
}

export async function rebaseCommand(o: RebaseCommandOptions): Promise<void> {
  const detach = o.backingFile === '';
  if (!detach && o.backingFormat === undefined) {
    // qemu-img 7.2 refuses to store a backing file without its format. It says so only after a
    // safe rebase has copied data; we say it before touching anything.
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `Could not change the backing file to '${o.backingFile}': backing format must be specified`,
    );
  }
  const ref = detach ? undefined : { filename: o.backingFile, format: o.backingFormat };
  const image = await openImage(o.filename, {
    ...openContext(o),
    format: o.format,
    writable: true,
    backing: o.unsafe ? 'ignore' : 'follow',
    // -u opens the image without its backing (BDRV_O_NO_BACKING): backing options are refused.
    noBackingOptions: o.unsafe === true,
    allowDataFile: true,
    onWarning: o.onOpenWarning,
  });
  try {
    if (o.unsafe || !image.supports('backingFile')) {
      // Unsupported: Image.changeBackingFile's error, before a safe rebase reads anything.
      await image.changeBackingFile(ref);
      return;
    }
    let newBacking: Image | null = null;
    if (!detach) {
      const path = resolveRelative(o.filename, o.backingFile);
      newBacking = await openImage(path, {
        format: o.backingFormat,
        backing: 'follow',
        forceShare: o.forceShare === true,
        allowDataFile: true,
        imageOpts: false,
        secrets: o.secrets,
      }).catch((err: unknown) => {
        // openImage prefixes "Could not open '<path>': "; qemu-img words this one differently.
        const inner = err instanceof VdiskError && err.cause instanceof Error ? err.cause : (err as Error);
        throw new VdiskError(
          err instanceof VdiskError ? err.code : 'EIO',
          `Could not open new backing file '${path}': ${inner.message}`,
          { cause: err },
        );
      });
    }
    try {
      await rebaseSafe(image, newBacking, ref, {
        compress: o.compress === true,
        ...(o.onProgress ? { onProgress: o.onProgress } : {}),
      });
    } finally {
      await newBacking?.close();
    }
  } finally {
    await image.close();
  }
}
