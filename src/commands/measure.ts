/**
 * `measure`: how large a new image of a format would be, for a virtual size or for the
 * content of an existing image (qemu-img.c img_measure / bdrv_measure). The numbers come
 * from the format driver's `measure`; this command only chooses the input and checks options.
 */
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import type { MeasureResult } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';
import { getDriver } from '../core/formats.js';
import type { Image } from '../core/image.js';
import { registerBuiltinFormats } from '../formats/index.js';
import { loadSnapshot, type SnapshotRef } from './convert.js';

/** Options of qemu's file protocol, accepted by measure whatever the format. */
const PROTOCOL_OPTIONS = ['extent_size_hint', 'nocow', 'preallocation', 'size'];

export interface MeasureOptions extends OpenContext {
  /** --size: measure an empty image of this virtual size… */
  size?: number | undefined;
  /** …or the content of this image. */
  filename?: string | undefined;
  format?: string | undefined;
  snapshot?: SnapshotRef | undefined;
  forceShare?: boolean;
  /** -O (default raw). */
  outputFormat?: string | undefined;
  /** -o: creation options of the new image. */
  options?: Record<string, string>;
  /** Warnings printed while opening the images (chain/open.ts onWarning), whole lines. */
  onOpenWarning?: ((message: string) => void) | undefined;
}

export async function measureCommand(o: MeasureOptions): Promise<MeasureResult> {
  registerBuiltinFormats();
  const fail = (m: string) => new VdiskError('INVALID_ARGUMENT', m);
  if (o.filename === undefined && (o.format !== undefined || o.snapshot !== undefined)) {
    throw fail('--image-opts, -f, and -l require a filename argument.');
  }
  if (o.filename !== undefined && o.size !== undefined) {
    throw fail('--size N cannot be used together with a filename.');
  }
  if (o.filename === undefined && o.size === undefined) {
    throw fail('Either --size N or one filename must be specified.');
  }
  let source: Image | null = null;
  let snapshot: Image | null = null;
  try {
    if (o.filename !== undefined) {
      source = await openImage(o.filename, {
        ...openContext(o),
        format: o.format,
        forceShare: o.forceShare === true,
        backing: 'follow',
        allowDataFile: true,
        onWarning: o.onOpenWarning,
      });
      if (o.snapshot !== undefined) snapshot = await loadSnapshot(source, o.snapshot);
    }
    const outFmt = o.outputFormat ?? 'raw';
    const driver = await getDriver(outFmt);
    if (driver.create === undefined) {
      throw new VdiskError('UNSUPPORTED', `Format driver '${outFmt}' does not support image creation`);
    }
    const known = new Set([...(driver.createOptions ?? []).map((s) => s.name), ...PROTOCOL_OPTIONS]);
    const options = { ...(o.options ?? {}) };
    for (const k of Object.keys(options)) {
      if (!known.has(k))
        throw fail(`Invalid parameter '${k}'\nvdisk: Invalid options for file format '${outFmt}'`);
    }
    if (driver.measure === undefined) {
      throw new VdiskError('UNSUPPORTED', `Block driver '${outFmt}' does not support size measurement`);
    }
    const input = snapshot ?? source;
    if (o.size !== undefined) options['size'] = String(o.size);
    const size = o.size ?? input?.size ?? 0;
    // qemu-img measure sees the source as its block status reports it (vhdx: all data).
    const res = await driver.measure(size, options, input?.reportedView() ?? undefined, o.secrets);
    // qemu-img adds "bitmaps size" when both the source and the new image could hold
    // persistent bitmaps (qcow2 v3 on both sides); vdisk copies no bitmaps, so it is the size
    // of the source's bitmaps to copy, 0 unless the source has some.
    if (
      res.bitmaps === undefined &&
      outFmt === 'qcow2' &&
      !['0.10', 'v2'].includes(options['compat'] ?? '')
    ) {
      const d = input?.driver;
      if (d?.format === 'qcow2' && (d as { version?: number }).version === 3) {
        const fs = d.formatSpecific?.()?.data;
        if (fs?.['bitmaps'] === undefined) return { ...res, bitmaps: 0 };
      }
    }
    return res;
  } finally {
    if (snapshot !== null) await snapshot.driver.close().catch(() => {});
    if (source !== null) await source.close().catch(() => {});
  }
}
