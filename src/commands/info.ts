/** `info`: what qemu-img info reports about an image (and, with backingChain, its chain). */
import { backingPathOf, type OpenContext, openContext, openImage } from '../chain/open.js';
import type { SnapshotInfo } from '../core/driver.js';
import type { Image } from '../core/image.js';

/** QAPI's ImageInfo, keyed as qemu-img's JSON. */
export interface ImageInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'actual-size'?: number;
  'cluster-size'?: number;
  encrypted?: boolean;
  'dirty-flag'?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: SnapshotJson[];
  'format-specific'?: { type: string; data: Record<string, unknown> };
}

export interface SnapshotJson {
  id: string;
  name: string;
  'vm-state-size': number;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  'vm-clock-nsec': number;
  icount?: number;
}

export interface InfoOptions extends OpenContext {
  /** Warnings printed while opening the images (chain/open.ts onWarning), whole lines. */
  onOpenWarning?: (message: string) => void;
  filename: string;
  format?: string | undefined;
  backingChain?: boolean;
  forceShare?: boolean;
}

export async function infoCommand(o: InfoOptions): Promise<ImageInfo[]> {
  const image = await openImage(o.filename, {
    ...openContext(o),
    format: o.format,
    forceShare: o.forceShare === true,
    backing: o.backingChain ? 'follow' : 'ignore',
    noBackingOptions: true,
    allowDataFile: true,
    noIo: true,
    onWarning: o.onOpenWarning,
  });
  try {
    const out: ImageInfo[] = [];
    // Backing images were opened at their stored name combined with the directory of the image
    // above (path_combine), which is how qemu-img names them.
    for (let i: Image | null = image; i !== null; i = o.backingChain ? i.backing : null) {
      out.push(
        await imageInfo(i, i === image ? (image.displayName ?? o.filename) : (i.displayName ?? i.path)),
      );
    }
    return out;
  } finally {
    await image.close();
  }
}

export async function imageInfo(image: Image, filename: string): Promise<ImageInfo> {
  const d = image.driver;
  const info: ImageInfo = {
    filename,
    format: d.format,
    'virtual-size': d.size,
  };
  const actual = await d.actualSize().catch(() => undefined);
  if (actual !== undefined) info['actual-size'] = actual;
  if (d.encrypted === true) info.encrypted = true;
  if (d.hasInfo !== false) {
    if (d.clusterSize !== undefined) info['cluster-size'] = d.clusterSize;
    info['dirty-flag'] = d.dirty === true;
  }
  if (d.backing !== undefined) {
    info['backing-filename'] = d.backing.filename;
    // None for a relative name under an NBD export (qemu: "cannot determine actual path").
    const full = backingPathOf(filename, d.backing.filename);
    if (full !== null) info['full-backing-filename'] = full;
    if (d.backing.format !== undefined) info['backing-filename-format'] = d.backing.format;
  }
  const snaps = d.snapshots?.() ?? [];
  if (snaps.length > 0) info.snapshots = snaps.map(snapshotJson);
  const fs = d.formatSpecific?.();
  if (fs !== undefined) info['format-specific'] = fs;
  return info;
}

export function snapshotJson(s: SnapshotInfo): SnapshotJson {
  return {
    id: s.id,
    name: s.name,
    'vm-state-size': s.vmStateSize,
    'date-sec': s.dateSec,
    'date-nsec': s.dateNsec,
    'vm-clock-sec': Math.floor(s.vmClockNsec / 1e9),
    'vm-clock-nsec': s.vmClockNsec % 1e9,
    ...(s.icount !== undefined ? { icount: s.icount } : {}),
  };
}
