/**
 * The qcow2 header and its extensions (qemu docs/interop/qcow2.rst): decoding with every
 * check QEMU makes on open (plus a few of ours against hostile files), and encoding for
 * create. Extensions vdisk does not interpret are kept as raw bytes so that a rewrite keeps
 * them intact.
 */
import { VdiskError } from '../../core/errors.js';

export const QCOW2_MAGIC = 0x514649fb;
export const V2_HEADER_LENGTH = 72;
/** QEMU 7.2 writes v3 headers of 112 bytes (104 + compression type + padding). */
export const V3_HEADER_LENGTH = 112;
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** QEMU's limits (block/qcow2.h). */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
export const MAX_SNAPSHOTS = 65536;
export const MAX_BACKING_NAME = 1023;

// Incompatible feature bits.
export const INCOMPAT_DIRTY = 1;
export const INCOMPAT_CORRUPT = 2;
export const INCOMPAT_DATA_FILE = 4;
export const INCOMPAT_COMPRESSION = 8;
export const INCOMPAT_EXTL2 = 16;
export const INCOMPAT_KNOWN = 0x1f;
// Compatible feature bits.
export const COMPAT_LAZY_REFCOUNTS = 1;
// Autoclear feature bits.
export const AUTOCLEAR_BITMAPS = 1;
export const AUTOCLEAR_DATA_FILE_RAW = 2;

// Header extension types.
export const EXT_END = 0;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_BITMAPS = 0x23852875;
export const EXT_DATA_FILE = 0x44415441;

export interface HeaderExtension {
  type: number;
  data: Uint8Array;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: number;
  compatible: number;
  autoclear: number;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  /** Every extension in file order (the end marker excluded). */
  extensions: HeaderExtension[];
  backingFile?: string | undefined;
  backingFormat?: string | undefined;
  dataFile?: string | undefined;
}

/** Read a big-endian u64 as a JS number; values above 2^53 come back as Infinity (callers reject them). */
export function getU64(v: DataView, off: number): number {
  const hi = v.getUint32(off);
  const lo = v.getUint32(off + 4);
  if (hi >= 0x200000) return Number.POSITIVE_INFINITY;
  return hi * 0x100000000 + lo;
}

export function setU64(v: DataView, off: number, value: number): void {
  v.setUint32(off, Math.floor(value / 0x100000000));
  v.setUint32(off + 4, value >>> 0);
}

const invalid = (msg: string, path: string, offset?: number) =>
  new VdiskError('INVALID_IMAGE', msg, { path, ...(offset !== undefined ? { offset } : {}) });

/** Feature names QEMU 7.2 writes in its feature table (type, bit, name). */
export const FEATURE_TABLE: ReadonlyArray<[number, number, string]> = [
  [0, 0, 'dirty bit'],
  [0, 1, 'corrupt bit'],
  [0, 2, 'external data file'],
  [0, 3, 'compression type'],
  [0, 4, 'extended L2 entries'],
  [1, 0, 'lazy refcounts'],
  [2, 0, 'bitmaps'],
  [2, 1, 'raw external data'],
];

/**
 * Decode the header cluster (the first cluster of the file, or as much of it as exists).
 * `fileSize` bounds every table the header points at.
 */
/**
 * Parse and validate a qcow2 header. `forCheck` (QEMU's BDRV_O_CHECK, for qemu-img check) keeps
 * the checks QEMU's qcow2_do_open makes and drops vdisk's stricter ones (tables that run past
 * the end of the file), so that check can report and repair them.
 */
export function parseHeader(buf: Uint8Array, fileSize: number, path: string, forCheck = false): Qcow2Header {
  if (buf.length < V2_HEADER_LENGTH) throw invalid('Image is not in qcow2 format', path);
  const v = new DataView(buf.buffer, buf.byteOffset, buf.length);
  if (v.getUint32(0) !== QCOW2_MAGIC) throw invalid('Image is not in qcow2 format', path);
  const version = v.getUint32(4);
  if (version < 2 || version > 3) {
    throw new VdiskError('UNSUPPORTED', `Unsupported qcow2 version ${version}`, { path });
  }
  const clusterBits = v.getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw invalid(`Unsupported cluster size: 2^${clusterBits}`, path);
  }
  const clusterSize = 2 ** clusterBits;
  const h: Qcow2Header = {
    version: version as 2 | 3,
    backingFileOffset: getU64(v, 8),
    backingFileSize: v.getUint32(16),
    clusterBits,
    size: getU64(v, 24),
    cryptMethod: v.getUint32(32),
    l1Size: v.getUint32(36),
    l1TableOffset: getU64(v, 40),
    refcountTableOffset: getU64(v, 48),
    refcountTableClusters: v.getUint32(56),
    nbSnapshots: v.getUint32(60),
    snapshotsOffset: getU64(v, 64),
    incompatible: 0,
    compatible: 0,
    autoclear: 0,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
    extensions: [],
  };
  if (version === 3) {
    if (buf.length < 104) throw invalid('qcow2 header too short', path);
    // Feature bits above 2^32 are unknown to everyone: keep them visible as "unknown".
    const incHi = v.getUint32(72);
    h.incompatible = v.getUint32(76) + (incHi !== 0 ? 2 ** 32 : 0);
    h.compatible = v.getUint32(84);
    h.autoclear = v.getUint32(92);
    h.refcountOrder = v.getUint32(96);
    h.headerLength = v.getUint32(100);
    if (h.headerLength < 104) throw invalid('qcow2 header too short', path);
    if (h.headerLength > clusterSize) throw invalid('qcow2 header exceeds cluster size', path);
    if (h.headerLength > buf.length) throw invalid('qcow2 header exceeds the file', path);
    if (h.headerLength >= 105) h.compressionType = buf[104]!;
  }
  if (!Number.isSafeInteger(h.size)) {
    throw new VdiskError('TOO_LARGE', 'Image size is beyond what vdisk supports (8 PiB)', { path });
  }

  // Extensions run from the end of the header to the backing file name (or the cluster end).
  const extEnd = h.backingFileOffset !== 0 ? Math.min(h.backingFileOffset, clusterSize) : clusterSize;
  if (h.backingFileOffset !== 0 && h.backingFileOffset > clusterSize) {
    throw invalid('Invalid backing file offset', path);
  }
  let off = h.headerLength;
  while (off < extEnd) {
    if (extEnd - off < 8 || off + 8 > buf.length)
      throw invalid('Invalid header extension: truncated', path, off);
    const type = v.getUint32(off);
    const len = v.getUint32(off + 4);
    off += 8;
    if (type === EXT_END) break;
    if (len > extEnd - off || off + len > buf.length) {
      throw invalid(`Header extension too large (type 0x${type.toString(16)})`, path, off - 8);
    }
    const data = buf.slice(off, off + len);
    h.extensions.push({ type, data });
    off += Math.ceil(len / 8) * 8;
    if (type === EXT_BACKING_FORMAT) {
      h.backingFormat = Buffer.from(data).toString('latin1');
    } else if (type === EXT_DATA_FILE) {
      h.dataFile = Buffer.from(data).toString('latin1');
    }
  }

  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize > MAX_BACKING_NAME || h.backingFileSize > clusterSize - h.backingFileOffset) {
      throw invalid('Backing file name too long', path);
    }
    if (h.backingFileOffset + h.backingFileSize > buf.length)
      throw invalid('Invalid backing file offset', path);
    h.backingFile = Buffer.from(
      buf.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize),
    ).toString('latin1');
  }
  validate(h, forCheck ? Number.POSITIVE_INFINITY : fileSize, path, forCheck);
  return h;
}

function featureName(h: Qcow2Header, type: number, bit: number): string {
  const table = h.extensions.find((e) => e.type === EXT_FEATURE_TABLE);
  if (table !== undefined) {
    for (let i = 0; i + 48 <= table.data.length; i += 48) {
      if (table.data[i] === type && table.data[i + 1] === bit) {
        const raw = Buffer.from(table.data.subarray(i + 2, i + 48));
        const end = raw.indexOf(0);
        return raw.subarray(0, end < 0 ? raw.length : end).toString('latin1');
      }
    }
  }
  return `Unknown incompatible feature: ${(2 ** bit).toString(16)}`;
}

function checkTable(
  offset: number,
  bytes: number,
  clusterSize: number,
  fileSize: number,
  what: string,
  path: string,
  qemuName: string,
): void {
  // qemu's qcow2_validate_table: "<table> offset invalid".
  if (!Number.isSafeInteger(offset) || offset % clusterSize !== 0) {
    throw invalid(`${qemuName} offset invalid`, path, Number.isFinite(offset) ? offset : undefined);
  }
  if (bytes > 0 && offset + bytes > fileSize) {
    throw invalid(`${what} at offset ${offset} runs past the end of the file`, path, offset);
  }
}

function validate(h: Qcow2Header, fileSize: number, path: string, forCheck: boolean): void {
  const clusterSize = 2 ** h.clusterBits;
  const unknown = h.incompatible & ~INCOMPAT_KNOWN;
  if (unknown !== 0 || h.incompatible >= 2 ** 32) {
    const names: string[] = [];
    for (let bit = 0; bit < 32; bit++) {
      if (((unknown >>> bit) & 1) === 1) names.push(featureName(h, 0, bit));
    }
    if (h.incompatible >= 2 ** 32) names.push('Unknown incompatible feature in the high 32 bits');
    throw new VdiskError('UNSUPPORTED', `Unsupported qcow2 feature(s): ${names.join(', ')}`, { path });
  }
  if (h.refcountOrder > 6) {
    throw invalid('Reference count entry width too large; may not exceed 64 bits', path);
  }
  // LUKS (2) opens in crypto.ts, legacy AES (1) in ../luks/legacy-aes.ts (read only).
  if (h.cryptMethod > 2) throw invalid(`Unsupported encryption method: ${h.cryptMethod}`, path);
  if ((h.incompatible & INCOMPAT_COMPRESSION) !== 0) {
    if (h.compressionType === 0) {
      throw invalid('compression_type field is zero while the compression type bit is set', path);
    }
  } else if (h.compressionType !== 0) {
    throw invalid(`Invalid compression type: the compression type bit is not set`, path);
  }
  if (h.compressionType > 1) {
    throw new VdiskError('UNSUPPORTED', `Unknown compression type ${h.compressionType}`, { path });
  }
  if ((h.incompatible & INCOMPAT_EXTL2) !== 0 && h.clusterBits < 14) {
    throw invalid('Extended L2 entries need a cluster size of at least 16384 bytes', path);
  }
  if ((h.incompatible & INCOMPAT_DATA_FILE) === 0 && (h.autoclear & AUTOCLEAR_DATA_FILE_RAW) !== 0) {
    throw invalid('data-file-raw requires a data file', path);
  }
  if ((h.incompatible & INCOMPAT_DATA_FILE) !== 0 && h.dataFile === undefined) {
    throw invalid("Missing data file: the image names none ('data-file' is required)", path);
  }
  if (h.refcountTableClusters === 0) throw invalid('Image does not contain a reference count table', path);
  if (h.refcountTableClusters * clusterSize > MAX_REFTABLE_BYTES) {
    throw new VdiskError('TOO_LARGE', 'Reference count table too large', { path });
  }
  checkTable(
    h.refcountTableOffset,
    h.refcountTableClusters * clusterSize,
    clusterSize,
    fileSize,
    'reference count table',
    path,
    'Reference count table',
  );
  if (h.l1Size * 8 > MAX_L1_BYTES) throw new VdiskError('TOO_LARGE', 'Active L1 table too large', { path });
  const needed = l1EntriesFor(h.size, h.clusterBits, (h.incompatible & INCOMPAT_EXTL2) !== 0);
  if (h.l1Size < needed) throw invalid('L1 table is too small', path);
  if (h.l1Size > 0)
    checkTable(h.l1TableOffset, h.l1Size * 8, clusterSize, fileSize, 'L1 table', path, 'Active L1 table');
  // Opened for check, QEMU reads no snapshot table: qcow2_check_read_snapshot_table reports
  // what is wrong with it (check-snapshots.ts).
  if (forCheck) return;
  if (h.nbSnapshots > MAX_SNAPSHOTS) throw invalid('Too many snapshots', path);
  if (h.nbSnapshots > 0)
    checkTable(h.snapshotsOffset, 1, clusterSize, fileSize, 'snapshot table', path, 'Snapshot table');
}

/** Number of L1 entries a virtual size needs. */
export function l1EntriesFor(size: number, clusterBits: number, extendedL2: boolean): number {
  const l2Entries = 2 ** clusterBits / (extendedL2 ? 16 : 8);
  const span = l2Entries * 2 ** clusterBits;
  return Math.ceil(size / span);
}

/** The feature name table extension as QEMU 7.2 writes it. */
export function featureTableExtension(): HeaderExtension {
  const data = new Uint8Array(FEATURE_TABLE.length * 48);
  FEATURE_TABLE.forEach(([type, bit, name], i) => {
    data[i * 48] = type;
    data[i * 48 + 1] = bit;
    data.set(Buffer.from(name, 'latin1'), i * 48 + 2);
  });
  return { type: EXT_FEATURE_TABLE, data };
}

/**
 * Encode a header with its extensions and backing file name, laid out as QEMU's
 * qcow2_update_header does. Returns the bytes (at most one cluster).
 */
export function encodeHeader(h: Qcow2Header): Uint8Array {
  const clusterSize = 2 ** h.clusterBits;
  const headerLength = h.version === 3 ? V3_HEADER_LENGTH : V2_HEADER_LENGTH;
  const parts: Uint8Array[] = [];
  const head = new Uint8Array(headerLength);
  const v = new DataView(head.buffer);
  v.setUint32(0, QCOW2_MAGIC);
  v.setUint32(4, h.version);
  v.setUint32(20, h.clusterBits);
  setU64(v, 24, h.size);
  v.setUint32(32, h.cryptMethod);
  v.setUint32(36, h.l1Size);
  setU64(v, 40, h.l1TableOffset);
  setU64(v, 48, h.refcountTableOffset);
  v.setUint32(56, h.refcountTableClusters);
  v.setUint32(60, h.nbSnapshots);
  setU64(v, 64, h.snapshotsOffset);
  if (h.version === 3) {
    setU64(v, 72, h.incompatible);
    setU64(v, 80, h.compatible);
    setU64(v, 88, h.autoclear);
    v.setUint32(96, h.refcountOrder);
    v.setUint32(100, headerLength);
    head[104] = h.compressionType;
  }
  parts.push(head);
  for (const e of h.extensions) {
    const pad = Math.ceil(e.data.length / 8) * 8;
    const ext = new Uint8Array(8 + pad);
    const ev = new DataView(ext.buffer);
    ev.setUint32(0, e.type);
    ev.setUint32(4, e.data.length);
    ext.set(e.data, 8);
    parts.push(ext);
  }
  parts.push(new Uint8Array(8)); // end of extensions
  let len = parts.reduce((n, p) => n + p.length, 0);
  if (h.backingFile !== undefined) {
    const name = Buffer.from(h.backingFile, 'latin1');
    v.setUint32(16, name.length);
    setU64(v, 8, len);
    parts.push(name);
    len += name.length;
  }
  if (len > clusterSize) {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      'Header extensions and backing file name do not fit in one cluster',
    );
  }
  const out = new Uint8Array(len);
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}
