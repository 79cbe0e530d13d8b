/**
 * The options a format accepts when an image is opened with --image-opts or json:{…} (QEMU 7.2's
 * runtime options), checked once here for every driver as QEMU's bdrv_open checks what is left
 * after the driver took its own: an option nobody takes is refused, with QEMU's words. The
 * driver then sees only its own options.
 *
 * The lists are what `qemu-img info --image-opts driver=F,file.filename=…,OPT=…` of QEMU 7.2
 * accepts (probed for each name of the drivers' QemuOptsLists; src/chain/runtime-options.test.ts
 * runs the same probes against qemu-img). Options vdisk has nothing to do for (cache sizes,
 * overlap checks, discard passing, AIO modes) are accepted and ignored: they change how QEMU
 * runs, not what the image holds.
 */
import { VdiskError } from '../core/errors.js';

/** bdrv_runtime_opts: any block node takes them. */
const GENERIC = new Set([
  'node-name',
  'read-only',
  'auto-read-only',
  'discard',
  'cache.direct',
  'cache.no-flush',
  'detect-zeroes',
  'force-share',
]);

/** file-posix.c raw_runtime_opts: what `file.*` may set on the local-file protocol. */
const FILE_PROTOCOL = new Set([
  'filename',
  'driver',
  'aio',
  'aio-max-batch',
  'locking',
  'pr-manager',
  'drop-cache',
  'x-check-cache-dropped',
]);

const QCOW2_OVERLAP = [
  'template',
  'main-header',
  'active-l1',
  'active-l2',
  'refcount-table',
  'refcount-block',
  'snapshot-table',
  'inactive-l1',
  'inactive-l2',
  'bitmap-directory',
].map((k) => `overlap-check.${k}`);

/** Each format's own runtime options (QEMU 7.2); formats not listed take none. */
const FORMAT: Record<string, readonly string[]> = {
  raw: ['offset', 'size'],
  qcow2: [
    'lazy-refcounts',
    'pass-discard-request',
    'pass-discard-snapshot',
    'pass-discard-other',
    'overlap-check',
    ...QCOW2_OVERLAP,
    'cache-size',
    'l2-cache-size',
    'l2-cache-entry-size',
    'refcount-cache-size',
    'cache-clean-interval',
    'encrypt.format',
    'encrypt.key-secret',
    // The external data file's child (its name or its options), taken whether or not the
    // header names one.
    'data-file',
  ],
  qcow: ['encrypt.format', 'encrypt.key-secret'],
  luks: ['key-secret'],
  vpc: ['force_size_calc'],
};

/**
 * Check `options` for an image of `format` and return those its driver takes. `file.*` keys
 * are the local file's (file-posix); `data-file.*` go with `data-file`. `backing` and
 * `backing.*` are the backing's open's (chain/open.ts), except where the image is opened as
 * QEMU opens it without its backing (BDRV_O_NO_BACKING: `info`, bitmap, rebase -u, or
 * `backing` null): nothing takes them there, and qemu-img 7.2 refuses them as any unknown
 * option.
 */
export function driverOptions(
  format: string,
  options: Readonly<Record<string, string>>,
  how: { noBacking?: boolean } = {},
): Record<string, string> {
  const own = new Set(FORMAT[format] ?? []);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(options)) {
    if (k.startsWith('file.')) {
      const opt = k.slice('file.'.length);
      if (!FILE_PROTOCOL.has(opt) && !GENERIC.has(opt))
        throw new VdiskError('INVALID_ARGUMENT', `Block protocol 'file' doesn't support the option '${opt}'`);
      continue;
    }
    if ((k === 'backing' || k.startsWith('backing.')) && how.noBacking !== true) continue;
    if (GENERIC.has(k)) continue;
    if (own.has(k) || (own.has('data-file') && k.startsWith('data-file.'))) {
      out[k] = v;
      continue;
    }
    throw new VdiskError('INVALID_ARGUMENT', `Block format '${format}' does not support the option '${k}'`);
  }
  return out;
}
