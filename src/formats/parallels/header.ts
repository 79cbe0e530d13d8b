/**
 * The Parallels header (docs/interop/parallels.txt), 64 bytes, little endian, followed by the
 * BAT: one 32-bit entry per cluster. With the "WithoutFreeSpace" magic an entry is a sector
 * number; with "WithouFreSpacExt" it counts clusters. 0 is an unallocated cluster.
 */
import { VdiskError } from '../../core/errors.js';
import { HEADER_VERSION, MAGIC_EXT, MAGIC_OLD } from './probe.js';

export const HEADER_SIZE = 64;
export const SECTOR = 512;
/** Written to `inuse` while an image is open for writing. */
export const HEADER_INUSE_MAGIC = 0x746f6e59;
export const DEFAULT_CLUSTER_SIZE = 1 << 20;
/** QEMU's MAX_PARALLELS_IMAGE_FACTOR: at most 2^32 clusters. */
export const MAX_IMAGE_FACTOR = 2 ** 32;
export const HEADS_NUMBER = 16;
export const SEC_IN_CYL = 32;
/** QEMU's limits on open: INT32_MAX / 513 sectors per cluster, INT_MAX / 4 BAT entries. */
export const TRACKS_MAX = Math.floor(0x7fffffff / 513);
export const BAT_MAX = Math.floor(0x7fffffff / 4);

export const OFF = {
  magic: 0,
  version: 16,
  heads: 20,
  cylinders: 24,
  tracks: 28,
  batEntries: 32,
  nbSectors: 36,
  inuse: 44,
  dataOff: 48,
  flags: 52,
  extOff: 56,
} as const;

export interface ParallelsHeader {
  /** "WithouFreSpacExt": BAT entries count clusters rather than sectors. */
  ext: boolean;
  heads: number;
  cylinders: number;
  /** Sectors per cluster. */
  tracks: number;
  batEntries: number;
  /** Virtual size in sectors (only the low 32 bits count with the old magic, as in QEMU). */
  nbSectors: number;
  inuse: number;
  /** First data sector (0: right after the BAT, old magic only). */
  dataOff: number;
  flags: number;
  /** Sector of the format extension cluster, 0 when none. */
  extOff: bigint;
}

/** Decode and validate a header as QEMU 7.2's parallels_open does, in its order and words. */
export function decodeHeader(buf: Uint8Array): ParallelsHeader {
  const v = new DataView(buf.buffer, buf.byteOffset, HEADER_SIZE);
  const magic = Buffer.from(buf.buffer, buf.byteOffset, 16).toString('latin1');
  const notParallels = () => new VdiskError('INVALID_IMAGE', 'Image not in Parallels format');
  if (v.getUint32(OFF.version, true) !== HEADER_VERSION) throw notParallels();
  if (magic !== MAGIC_OLD && magic !== MAGIC_EXT) throw notParallels();
  const ext = magic === MAGIC_EXT;
  let nb = v.getBigUint64(OFF.nbSectors, true);
  if (!ext) nb &= 0xffffffffn;
  const tracks = v.getUint32(OFF.tracks, true);
  if (tracks === 0) throw new VdiskError('INVALID_IMAGE', 'Invalid image: Zero sectors per track');
  if (tracks > TRACKS_MAX) throw new VdiskError('TOO_LARGE', 'Invalid image: Too big cluster');
  const batEntries = v.getUint32(OFF.batEntries, true);
  if (batEntries > BAT_MAX) throw new VdiskError('TOO_LARGE', 'Catalog too large');
  // Beyond QEMU: vdisk counts bytes in JS numbers (exact to 2^53).
  if (nb * 512n > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VdiskError('TOO_LARGE', `Image size of ${nb} sectors is too large`);
  }
  return {
    ext,
    heads: v.getUint32(OFF.heads, true),
    cylinders: v.getUint32(OFF.cylinders, true),
    tracks,
    batEntries,
    nbSectors: Number(nb),
    inuse: v.getUint32(OFF.inuse, true),
    dataOff: v.getUint32(OFF.dataOff, true),
    flags: v.getUint32(OFF.flags, true),
    extOff: v.getBigUint64(OFF.extOff, true),
  };
}

export function encodeHeader(h: ParallelsHeader): Uint8Array {
  const buf = new Uint8Array(HEADER_SIZE);
  const v = new DataView(buf.buffer);
  buf.set(Buffer.from(h.ext ? MAGIC_EXT : MAGIC_OLD, 'latin1'), 0);
  v.setUint32(OFF.version, HEADER_VERSION, true);
  v.setUint32(OFF.heads, h.heads, true);
  v.setUint32(OFF.cylinders, h.cylinders, true);
  v.setUint32(OFF.tracks, h.tracks, true);
  v.setUint32(OFF.batEntries, h.batEntries, true);
  v.setBigUint64(OFF.nbSectors, BigInt(h.nbSectors), true);
  v.setUint32(OFF.inuse, h.inuse, true);
  v.setUint32(OFF.dataOff, h.dataOff, true);
  v.setUint32(OFF.flags, h.flags, true);
  v.setBigUint64(OFF.extOff, h.extOff, true);
  return buf;
}

/** File offset of BAT entry `i`. */
export const batEntryOffset = (i: number): number => HEADER_SIZE + 4 * i;
