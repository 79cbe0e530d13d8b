/**
 * Opening images and their backing chains.
 *
 * The library is closed by default: an image that names a backing file or a data file is
 * refused unless the caller allows following it (`backing: 'follow'`, `allowDataFile`).
 * The CLI allows an image's own chain, as qemu-img does. Backing images are always opened
 * read-only, with a depth limit and loop detection.
 */
import { dirname, isAbsolute, resolve } from 'node:path';
import type { FileRef, FormatImage } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';
import { getDriver, probeFormat } from '../core/formats.js';
import { HostFile, realPath } from '../core/host-file.js';
import { Image } from '../core/image.js';
import type { Secrets } from '../core/secrets.js';
import { registerBuiltinFormats } from '../formats/index.js';
import { openProtocol, protocolOf } from '../protocols/index.js';
import { type ImageOpts, JSON_NULL, parseImageOpts, parseJsonName } from './image-opts.js';
import { driverOptions } from './runtime-options.js';

/** QEMU refuses chains deeper than this (block.c: BDRV_MAX_BACKING_DEPTH... qemu-img uses 1000 for
 * info; we keep a tighter, still generous bound). */
export const DEFAULT_MAX_DEPTH = 64;

/**
 * What one command invocation gives every image it opens (qemu-img's --image-opts and
 * --object): the commands' typed options carry it, the CLI fills it per command and the
 * registry per request. Nothing of it is process-wide.
 */
export interface OpenContext {
  /**
   * The name is an --image-opts string (`driver=luks,key-secret=s0,file.filename=x`): the
   * command passes its --image-opts flag (see image-opts.ts). A file name otherwise.
   */
  imageOpts?: boolean | undefined;
  /**
   * The secrets that options name by id (`key-secret`, http's `password-secret`): the
   * command's --object secrets. None defined when undefined.
   */
  secrets?: Secrets | undefined;
}

/** Only the OpenContext members of `o` (commands spread it into their openImage options). */
export function openContext(o: OpenContext): OpenContext {
  return { imageOpts: o.imageOpts, secrets: o.secrets };
}

export interface OpenOptions extends OpenContext {
  /** Explicit format; probing otherwise. */
  format?: string | undefined;
  writable?: boolean;
  /**
   * Depths of the chain to open writable besides the top (commit writes into a backing file,
   * as QEMU reopens its base read-write). Backing images are read-only otherwise.
   */
  writableBackingDepths?: readonly number[];
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
  /** Open extent files named by a descriptor outside the image's own directory. */
  allowExternalExtents?: boolean;
  maxDepth?: number;
  /** Opened by `check` (QEMU's BDRV_O_CHECK): see DriverOpenOptions.forCheck. */
  forCheck?: boolean;
  /** Warnings QEMU prints while opening (e.g. a probed raw image opened for writing). */
  onWarning?: (message: string) => void;
  /** Driver options for the top image (see DriverOpenOptions.options). */
  driverOptions?: Readonly<Record<string, string>>;
  /** Open for metadata only (qemu-img info): see DriverOpenOptions.noIo. */
  noIo?: boolean;
  /**
   * The top image is opened as QEMU opens it without its backing (qemu-img info, with or
   * without --backing-chain): `backing` and `backing.*` options are refused (runtime-options.ts).
   */
  noBackingOptions?: boolean;
  /** cache=unsafe for the top image and its own files: flushes do nothing (HostOpenOptions). */
  noFlush?: boolean;
  /** Small writes to the top image's files on the calling thread (HostOpenOptions): batch commands. */
  inlineSmallWrites?: boolean;
  /** The top image's protocol options (http(s): readahead, sslverify, …; see image-opts.ts). */
  protocolOptions?: Readonly<Record<string, string>>;
}

export async function openImage(path: string, opts: OpenOptions = {}): Promise<Image> {
  registerBuiltinFormats();
  try {
    const json = path.startsWith('json:');
    if (json || opts.imageOpts === true) {
      const io: ImageOpts = json ? parseJsonName(path) : parseImageOpts(path);
      const image = await openLayer(
        io.filename,
        {
          ...opts,
          format: io.driver ?? opts.format,
          driverOptions: { ...opts.driverOptions, ...io.options },
          ...(io.protocolOptions !== undefined ? { protocolOptions: io.protocolOptions } : {}),
        },
        0,
        new Set(),
      );
      image.displayName = io.protocolDisplayName?.(image.driver.format) ?? io.displayName;
      return image;
    }
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
    real = await realPath(path);
  } catch {
    real = resolve(path);
  }
  if (seen.has(real)) {
    throw new VdiskError('CHAIN_TOO_DEEP', `Backing chain loop: '${path}' is its own backing file`, { path });
  }
  seen.add(real);

  const writable =
    depth === 0 ? opts.writable === true : (opts.writableBackingDepths?.includes(depth) ?? false);
  const noFlush = depth === 0 && opts.noFlush === true;
  const inlineSmallWrites = depth === 0 && opts.inlineSmallWrites === true;
  const hostOpts = {
    writable,
    lock: opts.forceShare ? ('none' as const) : writable ? ('write' as const) : ('read' as const),
    noFlush,
    inlineSmallWrites,
  };
  const file =
    (await openProtocol(path, hostOpts, depth === 0 ? opts.protocolOptions : undefined, opts.secrets)) ??
    (await HostFile.open(path, hostOpts));
  // `backing` and `backing.*`: this layer's backing, as QEMU's bdrv_open_inherit and
  // bdrv_open_backing_file take them (measured on qemu-img 7.2, src/chain/backing-options.test.ts).
  const layer = backingOptions(opts.driverOptions, opts.onWarning);
  let driverImage: FormatImage;
  try {
    const format = opts.format ?? (await probeFormat(file));
    if (opts.format === undefined && format === 'raw' && writable) {
      // QEMU's words (block.c); vdisk does not restrict writes to block 0, the format is fixed
      // for the life of the open image.
      opts.onWarning?.(
        `WARNING: Image format was not specified for '${path}' and probing guessed raw.\n` +
          '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n' +
          "         Specify the 'raw' format explicitly to remove the restrictions.",
      );
    }
    // Opening names an unknown format "driver", as qemu does (create says "file format").
    const driver = await getDriver(format).catch((err: unknown) => {
      throw err instanceof VdiskError && err.code === 'UNKNOWN_FORMAT'
        ? new VdiskError('UNKNOWN_FORMAT', `Unknown driver '${format}'`, { path })
        : err;
    });
    driverImage = await driver.open(file, {
      writable,
      forceShare: opts.forceShare === true,
      repairOnOpen: writable,
      ...(layer.own !== undefined
        ? {
            options: driverOptions(format, layer.own, {
              noBacking: layer.none || (depth === 0 && opts.noBackingOptions === true),
            }),
          }
        : {}),
      ...(opts.secrets !== undefined ? { secrets: opts.secrets } : {}),
      ...(depth === 0 && opts.noIo === true ? { noIo: true } : {}),
      ...(opts.forCheck === true && depth === 0 ? { forCheck: true } : {}),
      ...(opts.onWarning !== undefined ? { onWarning: opts.onWarning } : {}),
      ...(depth > 0 && writable ? { reopened: true } : {}),
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
          noFlush,
          inlineSmallWrites,
        });
      },
      openExtentFile: async (name: string, w: boolean) => {
        const target = resolveRelative(path, name);
        if (opts.allowExternalExtents !== true && !(await insideDirectory(dirname(resolve(path)), target))) {
          throw new VdiskError(
            'NOT_ALLOWED',
            `'${path}' names the extent file '${name}' outside its own directory, which was not allowed to be opened`,
            { path },
          );
        }
        return HostFile.open(target, {
          writable: w,
          lock: opts.forceShare ? 'none' : w ? 'write' : 'read',
          noFlush,
          inlineSmallWrites,
        });
      },
    });
  } catch (err) {
    await file.close().catch(() => {});
    throw err;
  }
  const image = new Image(driverImage, path);
  // qemu names an image on a protocol by its canonical name (nbd_refresh_filename).
  if (file.remote && file.path !== path) image.displayName = file.path;
  const ref = driverImage.backing;
  if (layer.none) return image;
  if (ref === undefined && layer.node === undefined && layer.sub === undefined) return image;
  if (opts.backing === 'ignore') return image;
  let backingPath: string | null = null;
  let unprefixed: VdiskError | undefined;
  try {
    if (layer.node !== undefined) {
      // qemu-img has no block nodes to name.
      throw new VdiskError('NOT_FOUND', `Cannot find device='${layer.node}' nor node-name='${layer.node}'`, {
        path,
      });
    }
    const sub = layer.sub ?? {};
    const given = sub['file.filename'];
    if (given === undefined && ref === undefined) throw missingBackingFile(sub, opts.onWarning);
    const fileDriver = sub['file.driver'];
    if (fileDriver !== undefined && fileDriver !== 'file') {
      throw new VdiskError('UNSUPPORTED', `Protocol driver '${fileDriver}' is not supported`);
    }
    backingPath = given ?? backingPathOf(file.remote ? file.path : path, ref?.filename ?? '');
    if (opts.backing !== 'follow') {
      throw new VdiskError(
        'NOT_ALLOWED',
        `'${path}' names the backing file '${given ?? ref?.filename}', which was not allowed to be opened`,
        { path },
      );
    }
    if (backingPath === null) {
      // qemu's words (bdrv_dirname): a relative backing name has no directory on an NBD export.
      // QEMU finds that before it opens the backing: no "Could not open backing file" prefix.
      unprefixed = new VdiskError('INVALID_ARGUMENT', 'Cannot generate a base directory for NBD nodes', {
        path,
      });
      throw unprefixed;
    }
    const { driver: subFormat, 'file.filename': _, ...childOptions } = sub;
    const backingFormat = subFormat ?? ref?.format ?? (depth === 0 ? opts.backingFormat : undefined);
    const backing = await openLayer(
      backingPath,
      {
        ...opts,
        format: backingFormat,
        backingFormat: undefined,
        driverOptions: layer.sub !== undefined ? childOptions : undefined,
        noBackingOptions: false,
        protocolOptions: undefined,
        noIo: false,
      },
      depth + 1,
      seen,
    );
    image.setBacking(backing);
  } catch (err) {
    await image.close().catch(() => {});
    // QEMU prefixes whatever failed in the backing's open (bdrv_open_backing_file), at each
    // level of the chain; the refusal to follow is vdisk's own and names the image.
    if (
      err instanceof VdiskError &&
      err !== unprefixed &&
      err.code !== 'NOT_ALLOWED' &&
      err.code !== 'CHAIN_TOO_DEEP'
    ) {
      throw new VdiskError(err.code, `Could not open backing file: ${err.message}`, {
        path: backingPath ?? path,
        cause: err,
      });
    }
    throw err;
  }
  return image;
}

/** One layer's options split as QEMU splits them before it opens the layer's backing. */
interface LayerOptions {
  /** The options of the layer itself (with `backing.*` when it takes no backing: refused). */
  own: Readonly<Record<string, string>> | undefined;
  /** `backing` null (json:) or empty: the layer is opened without its backing. */
  none: boolean;
  /** `backing=NAME`: a block node, which qemu-img cannot have. */
  node: string | undefined;
  /** `backing.*` without the prefix: the backing's own options. */
  sub: Record<string, string> | undefined;
}

function backingOptions(
  options: Readonly<Record<string, string>> | undefined,
  onWarning: ((message: string) => void) | undefined,
): LayerOptions {
  if (options === undefined) return { own: undefined, none: false, node: undefined, sub: undefined };
  const { backing, ...rest } = options;
  if (backing === JSON_NULL || backing === '') {
    if (backing === '') warnEmptyBacking(onWarning);
    // The backing.* left over are then nobody's: driverOptions refuses them (noBacking).
    return { own: rest, none: true, node: undefined, sub: undefined };
  }
  const nested = Object.entries(rest).filter(([k]) => k.startsWith('backing.'));
  const sub = nested.length > 0 ? Object.fromEntries(nested.map(([k, v]) => [k.slice(8), v])) : undefined;
  return { own: options, none: false, node: backing, sub };
}

function warnEmptyBacking(onWarning: ((message: string) => void) | undefined): void {
  onWarning?.('vdisk: warning: Use of "backing": "" is deprecated; use "backing": null instead');
}

/** Backing options on an image that names no backing file, without one of their own: QEMU's
 * words for what is missing (bdrv_fill_options, raw-posix's open). */
function missingBackingFile(
  sub: Readonly<Record<string, string>>,
  onWarning: ((message: string) => void) | undefined,
): VdiskError {
  if (sub.backing === '') warnEmptyBacking(onWarning);
  if (sub.driver !== undefined) {
    return new VdiskError('INVALID_ARGUMENT', 'A block device must be specified for "file"');
  }
  if (sub['file.driver'] === 'file') {
    return new VdiskError('INVALID_ARGUMENT', "The 'file' block driver requires a file name");
  }
  return new VdiskError('INVALID_ARGUMENT', 'Must specify either driver or file');
}

/** Does `target` (after resolving symlinks) lie inside directory `dir`? */
async function insideDirectory(dir: string, target: string): Promise<boolean> {
  let realDir: string;
  let realTarget: string;
  try {
    realDir = await realPath(dir);
    realTarget = await realPath(target);
  } catch {
    // A missing file: judge the name itself (the open then fails with ENOENT).
    realDir = resolve(dir);
    realTarget = resolve(target);
  }
  return realTarget.startsWith(realDir.endsWith('/') ? realDir : `${realDir}/`);
}

/**
 * Where a backing file named `name` in the image `imagePath` is: resolveRelative, except that
 * a protocol name (nbd://…) is taken as it is, and a relative name under an image on an NBD
 * export has no answer (null): qemu cannot make a directory of an NBD URI.
 */
export function backingPathOf(imagePath: string, name: string): string | null {
  if (protocolOf(name) !== null) return name;
  if (protocolOf(imagePath) === 'nbd' && !isAbsolute(name)) return null;
  return resolveRelative(imagePath, name);
}

/**
 * A name stored in an image, resolved as QEMU's path_combine() does: an absolute name as is, a
 * relative one taken from the directory of the image's path *as given* (so a relative image path
 * yields a relative result, which is what qemu-img prints).
 */
export function resolveRelative(imagePath: string, name: string): string {
  if (isAbsolute(name)) return name;
  const slash = imagePath.lastIndexOf('/');
  return slash < 0 ? name : imagePath.slice(0, slash + 1) + name;
}
