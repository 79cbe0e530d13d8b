/** `check`: consistency check (and repair) of an image, as qemu-img check. */
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import { VdiskError } from '../core/errors.js';

/** QAPI's ImageCheck, keyed as qemu-img's JSON (zero counters are left out, as qemu does). */
export interface ImageCheckJson {
  filename: string;
  format: string;
  'check-errors': number;
  'image-end-offset'?: number;
  corruptions?: number;
  leaks?: number;
  'corruptions-fixed'?: number;
  'leaks-fixed'?: number;
  'total-clusters'?: number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
}

export interface CheckCommandOptions extends OpenContext {
  /** Warnings printed while opening the images (chain/open.ts onWarning), whole lines. */
  onOpenWarning?: (message: string) => void;
  filename: string;
  format?: string | undefined;
  repair: 'none' | 'leaks' | 'all';
  forceShare?: boolean;
  /** Lines the format prints while checking (qemu prints them on stderr). */
  onMessage?: (line: string) => void;
}

export interface CheckCommandResult {
  /** The check failed (bdrv_check's error): qemu-img prints no report then. */
  failed?: string;
  /** The first pass, when it repaired something (the report then comes from a second pass). */
  repaired?: { leaksFixed: number; corruptionsFixed: number };
  check: ImageCheckJson;
}

const nz = (n: number | undefined) => (n !== undefined && n !== 0 ? n : undefined);

export async function checkCommand(o: CheckCommandOptions): Promise<CheckCommandResult> {
  const image = await openImage(o.filename, {
    ...openContext(o),
    format: o.format,
    writable: o.repair !== 'none',
    forCheck: true, // QEMU's BDRV_O_CHECK: formats that refuse a damaged image still open for repair
    forceShare: o.forceShare === true,
    // qemu-img 7.2 opens the backing too: a missing one fails the check as it fails any open.
    backing: 'follow',
    allowDataFile: true,
    onWarning: o.onOpenWarning,
  });
  try {
    const d = image.driver;
    if (d.check === undefined) {
      throw new VdiskError('UNSUPPORTED', 'This image format does not support checks', { path: o.filename });
    }
    let failed: string | undefined;
    const run = async (repair: 'none' | 'leaks' | 'all'): Promise<ImageCheckJson> => {
      const r = await d.check!(repair);
      for (const m of r.messages) o.onMessage?.(m);
      // A check that failed (QEMU: bdrv_check returned an error) has no report; internal
      // errors alone (check-errors) still have one, and then fail the command.
      if (r.failure !== undefined) failed ??= r.failure;
      return {
        filename: o.filename,
        format: d.format,
        'check-errors': r.checkErrors,
        'image-end-offset': nz(r.imageEndOffset),
        corruptions: nz(r.corruptions),
        leaks: nz(r.leaks),
        'corruptions-fixed': nz(r.corruptionsFixed),
        'leaks-fixed': nz(r.leaksFixed),
        'total-clusters': nz(r.totalClusters),
        'allocated-clusters': nz(r.allocatedClusters),
        'fragmented-clusters': nz(r.fragmentedClusters),
        'compressed-clusters': nz(r.compressedClusters),
      };
    };
    const first = await run(o.repair);
    if (failed !== undefined) return { failed, check: first };
    const leaksFixed = first['leaks-fixed'] ?? 0;
    const corruptionsFixed = first['corruptions-fixed'] ?? 0;
    if (o.repair !== 'none' && (leaksFixed > 0 || corruptionsFixed > 0)) {
      const again = await run('none');
      again['leaks-fixed'] = nz(leaksFixed);
      again['corruptions-fixed'] = nz(corruptionsFixed);
      return {
        repaired: { leaksFixed, corruptionsFixed },
        check: again,
        ...(failed !== undefined ? { failed } : {}),
      };
    }
    return { check: first };
  } finally {
    await image.close();
  }
}
