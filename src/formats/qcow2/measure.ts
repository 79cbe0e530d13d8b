/** qemu-img measure for qcow2 (QEMU's qcow2_measure and qcow2_calc_prealloc_size). */
import type { BlockDevice } from '../../core/device.js';
import type { CreateOptions, MeasureResult } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { Secrets } from '../../core/secrets.js';
import { parseCreateOptions } from './create.js';
import { refcountMetadataSize } from './refcount.js';

/** Size of a fully preallocated image: header, L2 and L1 tables, refcounts, data. */
export function preallocSize(
  size: number,
  clusterSize: number,
  refcountOrder: number,
  extendedL2: boolean,
): number {
  const aligned = Math.ceil(size / clusterSize) * clusterSize;
  const l2e = extendedL2 ? 16 : 8;
  let meta = clusterSize;
  let nl2e = aligned / clusterSize;
  nl2e = Math.ceil(nl2e / (clusterSize / l2e)) * (clusterSize / l2e);
  meta += nl2e * l2e;
  let nl1e = (nl2e * l2e) / clusterSize;
  nl1e = Math.ceil(nl1e / (clusterSize / 8)) * (clusterSize / 8);
  meta += nl1e * 8;
  meta += refcountMetadataSize((meta + aligned) / clusterSize, clusterSize, refcountOrder, false).bytes;
  return meta + aligned;
}

export async function measureQcow2(
  size: number,
  options: CreateOptions,
  source?: BlockDevice,
  secrets?: Secrets,
): Promise<MeasureResult> {
  const s = parseCreateOptions(options, options['backing_file'] !== undefined, false);
  const cs = 2 ** s.clusterBits;
  let virtualSize: number;
  let required = 0;
  if (source !== undefined) {
    const ssize = source.size;
    virtualSize = Math.ceil(ssize / cs) * cs;
    if (options['backing_file'] !== undefined) {
      required = virtualSize;
    } else {
      let pnum = 0;
      for (let offset = 0; offset < ssize; offset += pnum) {
        const e = await source.blockStatus(offset, ssize - offset);
        pnum = e.length;
        if (e.zero) continue;
        if (e.data && e.allocated) {
          pnum = Math.ceil((offset + pnum) / cs) * cs - offset;
          required += (offset % cs) + pnum;
        }
      }
    }
  } else {
    // Without an input image the new image holds no data (measured against qemu-img 7.2).
    virtualSize = Math.ceil(size / cs) * cs;
  }
  const l2Tables = Math.ceil(virtualSize / cs / (cs / (s.extendedL2 ? 16 : 8)));
  if (l2Tables * 8 > 32 * 1024 * 1024) {
    throw new VdiskError('INVALID_ARGUMENT', 'The image size is too large (try using a larger cluster size)');
  }
  // Preallocated data counts in full.
  if (s.preallocation === 'full' || s.preallocation === 'falloc') required = virtualSize;
  const full = preallocSize(virtualSize, cs, s.refcountOrder, s.extendedL2);
  // qcow2_measure: the LUKS header clusters of an encrypted image count in both.
  let luks = 0;
  if (options['encrypt.format'] === 'luks') {
    const { luksCreateOptions } = await import('./crypto.js');
    const { luksPayloadOffset } = await import('../luks/block.js');
    luks = Math.ceil(luksPayloadOffset({ ...luksCreateOptions(options), secrets }, 'encrypt.') / cs) * cs;
  }
  return { required: full - virtualSize + required + luks, fullyAllocated: full + luks };
}
