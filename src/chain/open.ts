/**
 * Opening images and their backing chains.
 *
 * The library is closed by default: an image that names a backing file or a data file is
 * refused unless the caller allows following it (`backing: 'follow'`, `allowDataFile`).
 * The CLI allows an image's own chain, as qemu-img does. Backing images are always opened
 * read-only, with a depth limit and loop detection.
 */
import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { FileRef, FormatImage } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';
import { getDriver, probeFormat } from '../core/formats.js';
import { HostFile } from '../core/host-file.js';
import { Image } from '../core/image.js';
import { registerBuiltinFormats } from '../formats/index.js';

/** QEMU refuses chains deeper than this (block.c: BDRV_MAX_BACKING_DEPTH... qemu-img uses 1000 for
 * info; we keep a tighter, still generous bound). */
export const DEFAULT_MAX_DEPTH = 64;

export interface OpenOptions {
  /** Explicit format; probing otherwise. */
  format?: string | undefined;
  writable?: boolean;
  /** -U: no image locks. */
  forceShare?: boolean;
  /**
   * What to do with a backing file the image names: 'refuse' (library default) fails,
   * 'ignore' opens the image alone (unallocated ranges read as zeros), 'follow' opens the chain.
   */
  backing?: 'refuse' | 'ignore' | 'follow';
  /** Format of the backing file when the image does not record one (-F). */
  backingFormat?: string | undefined;
  /** Open an external data file named by the image. */
  allowDataFile?: boolean;
  maxDepth?: number;
}

export async function openImage(path: string, opts: OpenOptions = {}): Promise<Image> {
  registerBuiltinFormats();
  try {
    return await openLayer(path, opts, 0, new Set());
  } catch (err) {
    // qemu-img prefixes every open failure with the name of the image it was asked to open.
    if (err instanceof VdiskError) {
      throw new VdiskError(err.code, `Could not open '${path}': ${err.message}`, { path, cause: err });
    }
    throw err;
  }
}

async function openLayer(path: string, opts: OpenOptions, depth: number, seen: Set<string>): Promise<Image> {
  const maxDepth = opts.maxDepth ?? DEFAULT_MAX_DEPTH;
  if (depth > maxDepth) {
    throw new VdiskError('CHAIN_TOO_DEEP', `Backing chain of '${path}' is deeper than ${maxDepth} images`, {
      path,
    });
  }
  let real: string;
  try {
    real = await realpath(path);
  } catch {
    real = resolve(path);
  }
  if (seen.has(real)) {
    throw new VdiskError('CHAIN_TOO_DEEP', `Backing chain loop: '${path}' is its own backing file`, { path });
  }
  seen.add(real);

  const writable = depth === 0 && opts.writable === true;
  const file = await HostFile.open(path, {
    writable,
    lock: opts.forceShare ? 'none' : writable ? 'write' : 'read',
  });
  let driverImage: FormatImage;
  try {
    const format = opts.format ?? (await probeFormat(file));
    const driver = await getDriver(format);
    driverImage = await driver.open(file, {
      writable,
      forceShare: opts.forceShare === true,
      repairOnOpen: writable,
      openDataFile: async (ref: FileRef, w: boolean) => {
        if (opts.allowDataFile !== true) {
          throw new VdiskError(
            'NOT_ALLOWED',
            `'${path}' names the data file '${ref.filename}', which was not allowed to be opened`,
            { path },
          );
        }
        // qemu 7.2 opens a relative data file name as given, i.e. relative to the working
        // directory (bdrv_open_child on the stored name), unlike backing file names.
        return HostFile.open(ref.filename, {
          writable: w,
          lock: opts.forceShare ? 'none' : w ? 'write' : 'read',
        });
      },
    });
  } catch (err) {
    await file.close().catch(() => {});
    throw err;
  }
  const image = new Image(driverImage, path);
  const ref = driverImage.backing;
  if (ref === undefined || opts.backing === 'ignore') return image;
  if (opts.backing !== 'follow') {
    await image.close().catch(() => {});
    throw new VdiskError(
      'NOT_ALLOWED',
      `'${path}' names the backing file '${ref.filename}', which was not allowed to be opened`,
      { path },
    );
  }
  try {
    const backingPath = resolveRelative(path, ref.filename);
    const backingFormat = ref.format ?? (depth === 0 ? opts.backingFormat : undefined);
    const backing = await openLayer(
      backingPath,
      { ...opts, format: backingFormat, writable: false, backingFormat: undefined },
      depth + 1,
      seen,
    ).catch((err: unknown) => {
      if (err instanceof VdiskError && (err.code === 'ENOENT' || err.code === 'EACCES')) {
        throw new VdiskError(err.code, `Could not open backing file: ${err.message}`, {
          path: backingPath,
          cause: err,
        });
      }
      throw err;
    });
    image.setBacking(backing);
  } catch (err) {
    await image.close().catch(() => {});
    throw err;
  }
  return image;
}

/** A name stored in an image, resolved as QEMU does: relative to the image's directory. */
export function resolveRelative(imagePath: string, name: string): string {
  if (isAbsolute(name)) return name;
  return resolve(dirname(imagePath), name);
}
