/**
 * `bitmap`: add, remove, clear, enable, disable or merge a persistent dirty bitmap of an
 * image, as qemu-img 7.2's img_bitmap does: the actions run in command-line order, the first
 * failure stops the rest ("Operation <op> on bitmap <name> failed: …") and what ran before it
 * stays done.
 */
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import type { BitmapBits, DirtyBitmaps } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';
import type { Image } from '../core/image.js';

export type BitmapAction =
  | { op: 'add' | 'remove' | 'clear' | 'enable' | 'disable' }
  | { op: 'merge'; source: string };

export interface BitmapCommandOptions extends OpenContext {
  filename: string;
  format?: string | undefined;
  /** The bitmap the actions work on. */
  name: string;
  actions: BitmapAction[];
  /** -g, for --add (the CLI leaves -g 0 out, as qemu-img tests it for non-zero). */
  granularity?: number | undefined;
  /** -b / -F: where --merge finds its source bitmaps (default: the image itself). */
  sourceFile?: string | undefined;
  sourceFormat?: string | undefined;
  onWarning?: (message: string) => void;
}

const usage = (msg: string) => new VdiskError('INVALID_ARGUMENT', msg);

/** The option checks qemu-img makes before opening anything. */
export function checkBitmapOptions(o: Omit<BitmapCommandOptions, 'filename' | 'name'>): void {
  if (o.actions.length === 0) {
    throw usage('Need at least one of --add, --remove, --clear, --enable, --disable, or --merge');
  }
  if (o.granularity !== undefined && !o.actions.some((a) => a.op === 'add')) {
    throw usage('granularity only supported with --add');
  }
  if (o.sourceFormat !== undefined && o.sourceFile === undefined) throw usage('-F only supported with -b');
  if (o.sourceFile !== undefined && !o.actions.some((a) => a.op === 'merge')) {
    throw usage('Merge bitmap source file only supported with --merge');
  }
}

/** The bitmaps of an image that has none (QEMU's generic block layer answers for it). */
function none(name: string): DirtyBitmaps {
  const notFound = (n: string) => usage(`Dirty bitmap '${n}' not found`);
  return {
    supported: false,
    list: () => [],
    add: (_name, granularity) => {
      if (granularity !== undefined && (granularity < 512 || (granularity & (granularity - 1)) !== 0)) {
        throw usage('Granularity must be power of 2 and at least 512');
      }
      throw usage(`Can't store persistent bitmaps to ${name}: Operation not supported`);
    },
    remove: async (n) => {
      throw notFound(n);
    },
    clear: async (n) => {
      throw notFound(n);
    },
    enable: (n) => {
      throw notFound(n);
    },
    merge: async (n) => {
      throw notFound(n);
    },
    source: async (n) => {
      throw notFound(n);
    },
  };
}

export async function bitmapCommand(o: BitmapCommandOptions): Promise<void> {
  checkBitmapOptions(o);
  // qemu-img opens with BDRV_O_NO_BACKING: bitmaps do not need the image's content.
  const image = await openImage(o.filename, {
    ...openContext(o),
    format: o.format,
    writable: true,
    backing: 'ignore',
    noBackingOptions: true,
    allowDataFile: true,
    onWarning: o.onWarning,
  });
  let source: Image | undefined;
  try {
    if (o.sourceFile !== undefined) {
      source = await openImage(o.sourceFile, {
        ...openContext(o),
        format: o.sourceFormat,
        writable: false,
        backing: 'ignore',
        allowDataFile: true,
        onWarning: o.onWarning,
      });
    }
    const bitmaps = image.driver.dirtyBitmaps ?? none(image.displayName ?? o.filename);
    const from =
      source === undefined
        ? bitmaps
        : (source.driver.dirtyBitmaps ?? none(source.displayName ?? o.sourceFile ?? ''));
    const disabled = o.actions.some((a) => a.op === 'disable');
    const granularity = o.granularity;
    for (const a of o.actions) {
      try {
        switch (a.op) {
          case 'add':
            if (o.name === '') throw usage('Bitmap name cannot be empty');
            bitmaps.add(o.name, granularity, disabled, image.displayName ?? o.filename);
            break;
          case 'remove':
            await bitmaps.remove(o.name);
            break;
          case 'clear':
            await bitmaps.clear(o.name);
            break;
          case 'enable':
          case 'disable':
            bitmaps.enable(o.name, a.op === 'enable');
            break;
          case 'merge': {
            // QEMU checks the target (found, usable) first, then the source.
            await bitmaps.source(o.name);
            const bits: BitmapBits = await from.source(a.source);
            await bitmaps.merge(o.name, bits);
            break;
          }
        }
      } catch (err) {
        const detail = err instanceof VdiskError ? err.message : String(err);
        throw new VdiskError(
          err instanceof VdiskError ? err.code : 'INTERNAL',
          `Operation ${a.op} on bitmap ${o.name} failed: ${detail}`,
          { cause: err },
        );
      }
    }
  } finally {
    await source?.close();
    await image.close();
  }
}
