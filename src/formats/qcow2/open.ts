/**
 * Opening a qcow2 image: the header (parseHeader validates it and its extensions), the
 * active L1 table (validated, or read as it is for check), the external data file, then the
 * metadata state: encryption, the snapshot table, the bitmaps extension, the overlap checks,
 * and on a writable open the refcounts, the repair of a dirty lazy-refcounts image and the
 * autoclear bits vdisk does not maintain.
 */
import type { DriverOpenOptions } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { PersistentBitmaps } from './bitmap-state.js';
import { parseBitmapsExt } from './bitmaps.js';
import { readL1ForCheck } from './check-open.js';
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  EXT_BITMAPS,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  parseHeader,
  setU64,
} from './header.js';
import { loadCheck, loadCrypto, Qcow2Image } from './image.js';
import { readL1 } from './metadata.js';
import { readSnapshots } from './snapshot.js';

/** QEMU's words (qcow2_read_extensions) for bitmaps a program without bitmap support invalidated. */
export function staleBitmapsWarning(version: number): string {
  const why =
    version < 3
      ? 'This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent'
      : 'a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent';
  return `vdisk: warning: ${why}\nSome clusters may be leaked, run 'vdisk check -r' on the image file to fix.`;
}

export async function openQcow2(file: HostFile, opts: DriverOpenOptions): Promise<Qcow2Image> {
  const fileSize = await file.size();
  const first = new Uint8Array(Math.min(fileSize, 2 << 20, 4096));
  await file.read(first, 0);
  let headBuf = first;
  if (first.length >= 24) {
    const cb = new DataView(first.buffer).getUint32(20);
    if (cb >= 9 && cb <= 21 && 2 ** cb > first.length) {
      headBuf = new Uint8Array(Math.min(fileSize, 2 ** cb));
      await file.read(headBuf, 0);
    }
  }
  const forCheck = opts.forCheck === true;
  const header = parseHeader(headBuf, fileSize, file.path, forCheck);
  // A corrupt image opens read/write only to be repaired (QEMU: unless BDRV_O_CHECK).
  if (opts.writable && !forCheck && (header.incompatible & INCOMPAT_CORRUPT) !== 0) {
    throw new VdiskError('CORRUPT_IMAGE', 'qcow2: Image is corrupt; cannot be opened read/write', {
      path: file.path,
    });
  }
  const l1 = forCheck
    ? await readL1ForCheck(file, header.l1TableOffset, header.l1Size)
    : await readL1(file, header.l1TableOffset, header.l1Size, header.clusterBits, fileSize);
  let dataHost: HostFile | null = file;
  const external = header.dataFile !== undefined && (header.incompatible & INCOMPAT_DATA_FILE) !== 0;
  if (external) {
    if (opts.openDataFile === undefined) {
      throw new VdiskError(
        'NOT_ALLOWED',
        `'${file.path}' names the data file '${header.dataFile}', which was not allowed to be opened`,
        { path: file.path },
      );
    }
    // A read-only open tolerates a missing data file until data is read from it (qemu-img
    // info works without it); consent (NOT_ALLOWED) and writable opens fail now.
    try {
      dataHost = await opts.openDataFile({ filename: header.dataFile! }, opts.writable);
    } catch (err) {
      if (opts.writable || !(err instanceof VdiskError) || err.code !== 'ENOENT') throw err;
      dataHost = null;
    }
  }
  const img = new Qcow2Image(file, dataHost, header, !opts.writable, l1, fileSize);
  img.meta.forCheck = forCheck;
  if (external && dataHost === null) {
    const open = opts.openDataFile!;
    img.dataOpener = () => open({ filename: header.dataFile! }, false);
  }
  try {
    await loadMetadata(img, opts);
  } catch (err) {
    if (dataHost !== null && dataHost !== file) await dataHost.close().catch(() => {});
    throw err;
  }
  return img;
}

async function loadMetadata(img: Qcow2Image, opts: DriverOpenOptions): Promise<void> {
  const h = img.header;
  if (h.cryptMethod !== 0) img.crypto = await loadCrypto();
  img.meta.luks = await img.crypto?.openQcow2Luks(img.file, h, opts);
  if (h.cryptMethod === 1) {
    const { legacyAesReadOnly, openLegacyAes } = await import('../luks/legacy-aes.js');
    if (opts.writable) throw legacyAesReadOnly(img.file.path);
    img.crypto!.cryptoHeaderRef(h, img.file.path);
    img.aes = openLegacyAes(opts.options?.['encrypt.key-secret'], {
      noIo: opts.noIo === true,
      prefix: 'encrypt.',
      secrets: opts.secrets,
    });
  }
  // Opened for check, the snapshot table is read by check itself (check-snapshots.ts), as
  // QEMU's qcow2_do_open skips it under BDRV_O_CHECK.
  const { snapshots, tableBytes } = img.meta.forCheck
    ? { snapshots: [], tableBytes: 0 }
    : await readSnapshots(img.file, h.snapshotsOffset, h.nbSnapshots, img.meta.fileEnd);
  img.meta.snapshotList = snapshots;
  img.meta.snapshotTableBytes = tableBytes;
  const bmData = h.extensions.find((e) => e.type === EXT_BITMAPS)?.data;
  const bmExt = parseBitmapsExt(
    bmData,
    (h.autoclear & AUTOCLEAR_BITMAPS) !== 0,
    img.clusterSize,
    img.file.path,
  );
  // The extension without its autoclear bit: a program without bitmap support has written
  // the image (a v2 image has no autoclear bits at all). QEMU's qcow2_read_extensions warns
  // in these words, ignores the bitmaps and, opened for writing, drops the extension.
  const staleBitmaps = bmData !== undefined && bmExt === undefined;
  if (staleBitmaps) opts.onWarning?.(staleBitmapsWarning(h.version));
  img.meta.persistentBitmaps = await PersistentBitmaps.open(
    img.meta.bitmapStore(),
    bmExt,
    img.meta.size,
    img.file.path,
    h.version,
  );
  img.meta.indexMetadata();
  if (img.readOnly) return;
  // Opened for check (-r): check itself reports overlapping tables.
  if (!img.meta.forCheck) img.meta.checkOverlaps();
  await img.meta.loadRefcounts();
  if (img.meta.dirty && opts.repairOnOpen !== false) {
    // QEMU rebuilds the refcounts of a dirty lazy-refcounts image on a writable open.
    const { checkImage } = await loadCheck();
    await checkImage(img.meta, 'all');
    await img.meta.setIncompatible(img.header.incompatible & ~INCOMPAT_DIRTY);
  }
  // Autoclear bits we do not maintain must be cleared when we may modify the image
  // (qcow2.rst). We keep data_file_raw, which we honour, and bitmaps: rather than orphan
  // the bitmaps (qemu would then count their clusters as leaked), the first write marks
  // each of them in use, i.e. inconsistent, which is what they then are.
  const keep = img.header.autoclear & (AUTOCLEAR_DATA_FILE_RAW | AUTOCLEAR_BITMAPS);
  if (img.header.autoclear !== keep && img.meta.version === 3) {
    img.header.autoclear = keep;
    const b = new Uint8Array(8);
    setU64(new DataView(b.buffer), 0, keep);
    await img.file.write(b, 88);
  }
  // Bitmaps invalidated by a program without bitmap support: the extension goes, as QEMU
  // drops it on a writable open (their clusters stay leaked until check -r), but not on a
  // backing file it reopens read-write (commit's base).
  if (staleBitmaps && opts.reopened !== true && img.meta.standardHeader) {
    await img.meta.writeBitmapsExtension(undefined);
  }
}
