/**
 * `map`: the allocation map of an image and its backing chain, as qemu-img map walks it
 * (qemu-img.c img_map / get_block_status / entry_mergeable in 7.2).
 *
 * One block-status query per extent (never per cluster), merged while flags, depth, file and
 * host offsets follow on; entries are handed to a sink as they are decided, so memory stays
 * bounded whatever the image size.
 */
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import type { Extent } from '../core/device.js';
import { VdiskError } from '../core/errors.js';
import type { Image } from '../core/image.js';

/** One line of qemu-img map's output (QAPI MapEntry). */
export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  /** The range is allocated in some layer (qemu's BDRV_BLOCK_ALLOCATED). */
  present: boolean;
  zero: boolean;
  data: boolean;
  /** Host offset, when the data sits uncompressed and contiguous in `filename`. */
  offset?: number | undefined;
  filename?: string | undefined;
}

export interface MapOptions extends OpenContext {
  /** Warnings printed while opening the images (chain/open.ts onWarning), whole lines. */
  onOpenWarning?: (message: string) => void;
  filename: string;
  format?: string | undefined;
  /** --start-offset (default 0). */
  startOffset?: number;
  /** --max-length (default: to the end of the image). */
  maxLength?: number | undefined;
  forceShare?: boolean;
  /** Called once the image is open, before the first entry. */
  onOpen?: () => void;
}

/**
 * Receives each merged entry with the one that follows it (null for the last). As in
 * qemu-img, the sink may adjust `next` before it becomes current (the human table folds
 * zero and unallocated ranges together that way). Returning false stops the walk.
 */
export type MapSink = (entry: MapEntry, next: MapEntry | null) => boolean | undefined;

export function toMapEntry(e: Extent): MapEntry {
  const hasOffset = e.hostOffset !== undefined;
  return {
    start: e.offset,
    length: e.length,
    depth: e.depth ?? 0,
    present: e.allocated,
    zero: e.zero,
    data: e.data,
    offset: e.hostOffset,
    filename: hasOffset ? e.file : undefined,
  };
}

/** qemu-img.c entry_mergeable(). */
export function entryMergeable(curr: MapEntry, next: MapEntry): boolean {
  if (curr.length === 0) return false;
  if (
    curr.zero !== next.zero ||
    curr.data !== next.data ||
    curr.depth !== next.depth ||
    curr.present !== next.present ||
    (curr.filename === undefined) !== (next.filename === undefined) ||
    (curr.offset === undefined) !== (next.offset === undefined)
  )
    return false;
  if (curr.filename !== undefined && curr.filename !== next.filename) return false;
  if (curr.offset !== undefined && curr.offset + curr.length !== next.offset) return false;
  return true;
}

/** Walk [start, min(start+maxLength, size)) of an open image, as img_map's loop does. */
export async function mapImage(
  image: Image,
  sink: MapSink,
  startOffset = 0,
  maxLength?: number,
): Promise<void> {
  let length = image.size;
  if (maxLength !== undefined) length = Math.min(startOffset + maxLength, length);
  let curr: MapEntry = {
    start: startOffset,
    length: 0,
    depth: 0,
    present: false,
    zero: false,
    data: false,
  };
  while (curr.start + curr.length < length) {
    const offset = curr.start + curr.length;
    let next: MapEntry;
    try {
      next = toMapEntry(await image.reportedStatus(offset, length - offset));
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      throw new VdiskError(
        err instanceof VdiskError ? err.code : 'EIO',
        `Could not read file metadata: ${msg}`,
        { path: image.path, offset, cause: err },
      );
    }
    if (entryMergeable(curr, next)) {
      curr.length += next.length;
      continue;
    }
    if (curr.length > 0 && sink(curr, next) === false) return;
    curr = next;
  }
  sink(curr, null);
}

export async function mapCommand(o: MapOptions, sink: MapSink): Promise<void> {
  const image = await openImage(o.filename, {
    ...openContext(o),
    format: o.format,
    forceShare: o.forceShare === true,
    backing: 'follow',
    allowDataFile: true,
    onWarning: o.onOpenWarning,
  });
  try {
    o.onOpen?.();
    await mapImage(image, sink, o.startOffset ?? 0, o.maxLength);
  } finally {
    await image.close();
  }
}
