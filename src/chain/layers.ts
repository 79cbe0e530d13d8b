/**
 * Opening a chain whose files the caller has resolved itself: the registry keeps images in a
 * blob store and knows each overlay's master by its `backing_image_id`, not by the name stored
 * inside the overlay. Layers are given top first; each is opened read-only with the format
 * the caller names (never probed), attached to the next one as its backing image, and the
 * names stored in the images (backing file, data file, extents) are never followed: a data
 * file or an extent file is refused outright.
 */
import type { FileRef } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';
import { getDriver } from '../core/formats.js';
import type { HostFile } from '../core/host-file.js';
import { Image } from '../core/image.js';
import { registerBuiltinFormats } from '../formats/index.js';
import { DEFAULT_MAX_DEPTH } from './open.js';

export interface Layer {
  /** The opened file (a store blob); the chain owns it from here and closes it. */
  file: HostFile;
  /** The engine's format name. */
  format: string;
  /** How messages name the layer (the registry: the image id). */
  name: string;
}

/**
 * Open `layers` (top first) as one chain, read-only. On failure every file given is closed.
 * `maxDepth` bounds the number of backing layers below the top.
 */
export async function openLayers(layers: Layer[], opts: { maxDepth?: number } = {}): Promise<Image> {
  registerBuiltinFormats();
  const maxDepth = opts.maxDepth ?? DEFAULT_MAX_DEPTH;
  if (layers.length === 0) throw new VdiskError('INVALID_ARGUMENT', 'no image to open');
  if (layers.length - 1 > maxDepth)
    throw new VdiskError(
      'CHAIN_TOO_DEEP',
      `Backing chain of '${layers[0]!.name}' is deeper than ${maxDepth} images`,
    );
  const opened: Image[] = [];
  let i = 0;
  try {
    for (; i < layers.length; i++) {
      const layer = layers[i]!;
      const driver = await getDriver(layer.format);
      const refuse = (what: string) => async (ref: FileRef | string) => {
        const name = typeof ref === 'string' ? ref : ref.filename;
        throw new VdiskError(
          'NOT_ALLOWED',
          `'${layer.name}' names the ${what} '${name}', which is not allowed here`,
        );
      };
      const driverImage = await driver
        .open(layer.file, {
          writable: false,
          forceShare: true,
          openDataFile: refuse('data file'),
          openExtentFile: refuse('extent file'),
        })
        .catch((err: unknown) => {
          throw err instanceof VdiskError
            ? new VdiskError(err.code, `Could not open '${layer.name}': ${err.message}`, { cause: err })
            : err;
        });
      opened.push(new Image(driverImage, layer.name));
    }
  } catch (err) {
    // Opened layers close their own files; the one that failed and those after it are closed here.
    for (const img of opened) await img.driver.close().catch(() => {});
    for (const l of layers.slice(i)) await l.file.close().catch(() => {});
    throw err;
  }
  for (let i = 0; i + 1 < opened.length; i++) opened[i]!.setBacking(opened[i + 1]!);
  return opened[0]!;
}
