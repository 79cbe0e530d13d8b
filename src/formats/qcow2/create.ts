/**
 * qcow2 image creation, following QEMU's qcow2_co_create step by step so that the file is
 * laid out as qemu lays it out (header, refcount table, refcount block, L1 table, then
 * preallocated metadata and data): `disk size`, `info` and `check` then agree with qemu's.
 */
import type { CreateOptionSpec, CreateOptions, CreateRequest, FileRef } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { HostFile } from '../../core/host-file.js';
import { parseBoolOption } from '../../core/options.js';
import { parseSize, sizeParameterError } from '../../core/size.js';
import { createFile } from '../../protocols/index.js';
import { QCOW2_IMAGE_OPTIONS } from './amend-options.js';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  EXT_BACKING_FORMAT,
  EXT_DATA_FILE,
  encodeHeader,
  featureTableExtension,
  type HeaderExtension,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  l1EntriesFor,
  MAX_L1_BYTES,
  type Qcow2Header,
  setU64,
} from './header.js';
import { COPIED_HI, putEntry } from './l2-entry.js';
import { Refcounts } from './refcount.js';

/** In the order qemu-img prints them in its "Formatting" line. */
export const QCOW2_CREATE_OPTIONS: readonly CreateOptionSpec[] = [
  {
    name: 'encryption',
    type: 'bool',
    help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
  },
  { name: 'encrypt.format', type: 'string', help: "Encrypt the image, format choices: 'aes', 'luks'" },
  {
    name: 'encrypt.key-secret',
    type: 'string',
    help: 'ID of secret providing qcow AES key or LUKS passphrase',
  },
  { name: 'encrypt.cipher-alg', type: 'string', help: 'Name of encryption cipher algorithm' },
  { name: 'encrypt.cipher-mode', type: 'string', help: 'Name of encryption cipher mode' },
  { name: 'encrypt.ivgen-alg', type: 'string', help: 'Name of IV generator algorithm' },
  { name: 'encrypt.ivgen-hash-alg', type: 'string', help: 'Name of IV generator hash algorithm' },
  { name: 'encrypt.hash-alg', type: 'string', help: 'Name of encryption hash algorithm' },
  { name: 'encrypt.iter-time', type: 'number', help: 'Time to spend in PBKDF in milliseconds' },
  { name: 'cluster_size', type: 'size', help: 'qcow2 cluster size', default: '65536' },
  { name: 'extended_l2', type: 'bool', help: 'Extended L2 tables', default: 'off' },
  {
    name: 'preallocation',
    type: 'string',
    help: 'Preallocation mode (allowed values: off, metadata, falloc, full)',
  },
  {
    name: 'compression_type',
    type: 'string',
    help: 'Compression method used for image cluster compression',
    default: 'zlib',
  },
  ...QCOW2_IMAGE_OPTIONS,
  { name: 'lazy_refcounts', type: 'bool', help: 'Postpone refcount updates', default: 'off' },
  { name: 'refcount_bits', type: 'number', help: 'Width of a reference count entry in bits', default: '16' },
  {
    name: 'extent_size_hint',
    type: 'size',
    help: 'Extent size hint for the image file, 0 to disable',
    protocol: true,
  },
  { name: 'nocow', type: 'bool', help: 'Turn off copy-on-write (valid only on btrfs)', protocol: true },
];

export interface Qcow2CreateSettings {
  version: 2 | 3;
  clusterBits: number;
  refcountOrder: number;
  extendedL2: boolean;
  compressionType: number;
  lazyRefcounts: boolean;
  preallocation: 'off' | 'metadata' | 'falloc' | 'full';
  dataFile?: string | undefined;
  dataFileRaw: boolean;
}

const bad = (msg: string) => new VdiskError('INVALID_ARGUMENT', msg);

/** Validate -o options as qemu does (same checks, same words, same order). */
export function parseCreateOptions(
  options: Record<string, string>,
  hasBacking: boolean,
  hasBackingFormat = hasBacking,
): Qcow2CreateSettings {
  if (options['encryption'] !== undefined && parseBoolOption('encryption', options['encryption'])) {
    throw new VdiskError('UNSUPPORTED', 'AES-encrypted images are not supported yet');
  }
  const encryptFormat = options['encrypt.format'];
  if (encryptFormat !== undefined && encryptFormat !== 'luks') {
    if (encryptFormat === 'aes') {
      throw new VdiskError('UNSUPPORTED', 'AES-encrypted images are not supported yet');
    }
    throw bad(`Parameter 'encrypt.format' does not accept value '${encryptFormat}'`);
  }
  const dataFileRaw =
    options['data_file_raw'] !== undefined && parseBoolOption('data_file_raw', options['data_file_raw']);
  const extendedL2 =
    options['extended_l2'] !== undefined && parseBoolOption('extended_l2', options['extended_l2']);
  const lazy =
    options['lazy_refcounts'] !== undefined && parseBoolOption('lazy_refcounts', options['lazy_refcounts']);
  const compat = options['compat'];
  let version: 2 | 3 = 3;
  if (compat !== undefined) {
    if (compat === '0.10' || compat === 'v2') version = 2;
    else if (compat === '1.1' || compat === 'v3') version = 3;
    else throw bad(`Parameter 'version' does not accept value '${compat}'`);
  }
  const prealloc = options['preallocation'] ?? 'off';
  if (!['off', 'metadata', 'falloc', 'full'].includes(prealloc)) {
    throw bad(`Parameter 'preallocation' does not accept value '${prealloc}'`);
  }
  const ct = options['compression_type'] ?? 'zlib';
  if (ct !== 'zlib' && ct !== 'zstd') throw bad(`Parameter 'compression-type' does not accept value '${ct}'`);
  const csText = options['cluster_size'];
  const clusterSize = csText === undefined ? 65536 : parseSize(csText);
  if (clusterSize === null) throw bad(sizeParameterError('cluster_size'));
  const clusterBits = Math.log2(clusterSize);
  if (!Number.isInteger(clusterBits) || clusterBits < 9 || clusterBits > 21) {
    throw bad('Cluster size must be a power of two between 512 and 2048k');
  }
  if (extendedL2 && clusterSize < 16384) {
    throw bad('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  }
  const rbText = options['refcount_bits'];
  let refcountBits = 16;
  if (rbText !== undefined) {
    if (!/^\d+$/.test(rbText.trim())) throw bad(`Parameter 'refcount_bits' expects a number`);
    refcountBits = Number(rbText);
    if (refcountBits > 64 || refcountBits < 1 || (refcountBits & (refcountBits - 1)) !== 0) {
      throw bad('Refcount width must be a power of two and may not exceed 64 bits');
    }
  }
  const v3 = '(use version=v3 or greater)';
  if (version < 3 && refcountBits !== 16) {
    throw bad(`Different refcount widths than 16 bits require compatibility level 1.1 or above ${v3}`);
  }
  if (version < 3 && lazy) {
    throw bad(`Lazy refcounts only supported with compatibility level 1.1 and above ${v3}`);
  }
  if (hasBacking && prealloc !== 'off' && !extendedL2) {
    throw bad('Backing file and preallocation can only be used at the same time if extended_l2 is on');
  }
  if (hasBackingFormat && !hasBacking) throw bad('Backing format cannot be used without backing file');
  const dataFile = options['data_file'];
  if (dataFile !== undefined && version < 3) {
    throw bad(`External data files are only supported with compatibility level 1.1 and above ${v3}`);
  }
  if (dataFileRaw && dataFile === undefined) throw bad('data-file-raw requires data-file');
  if (ct === 'zstd' && version < 3) {
    throw bad(`Non-zlib compression type is only supported with compatibility level 1.1 and above ${v3}`);
  }
  if (extendedL2 && version < 3) {
    throw bad(`Extended L2 entries are only supported with compatibility level 1.1 and above ${v3}`);
  }
  return {
    version,
    clusterBits,
    refcountOrder: Math.log2(refcountBits),
    extendedL2,
    compressionType: ct === 'zstd' ? 1 : 0,
    lazyRefcounts: lazy,
    // A raw data file must stay valid as a raw image: every cluster is mapped (as qemu does).
    preallocation: (dataFileRaw && prealloc === 'off'
      ? 'metadata'
      : prealloc) as Qcow2CreateSettings['preallocation'],
    dataFile,
    dataFileRaw,
  };
}

/**
 * FormatDriver.streamTargetSize. What one cluster of L1 table reaches (an empty image that
 * large has the clusters a small one has: 4 TiB with 64 KiB clusters); with small clusters
 * the L1 table grows to reach 1 TiB, up to 4 MiB of it (4 KiB clusters: 1 TiB, 512 bytes:
 * 16 GiB); at most 2^50. The resize to the stream's length keeps the L1 table's size (as
 * QEMU's shrink does), so its clusters are those of a convert from a file whenever one
 * cluster holds both.
 */
export function qcow2StreamTargetSize(options: CreateOptions): number | undefined {
  let s: Qcow2CreateSettings;
  try {
    s = parseCreateOptions(options, false, false);
  } catch {
    return undefined;
  }
  if (s.preallocation !== 'off' || s.dataFile !== undefined) return undefined;
  const cs = 2 ** s.clusterBits;
  const reach = (l1Bytes: number) => (l1Bytes / 8) * (cs / (s.extendedL2 ? 16 : 8)) * cs;
  return Math.min(2 ** 50, Math.max(reach(cs), Math.min(2 ** 40, reach(4 << 20))));
}

export async function createQcow2(
  req: CreateRequest & { openDataFile?: (name: string) => Promise<HostFile> },
): Promise<void> {
  const s = parseCreateOptions(req.options, req.backing !== undefined, req.backing?.format !== undefined);
  const size = Math.ceil(req.size / 512) * 512;
  const cs = 2 ** s.clusterBits;
  const l1Size = l1EntriesFor(size, s.clusterBits, s.extendedL2);
  if (l1Size * 8 > MAX_L1_BYTES) {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      'Could not resize image: Image size is too big for this cluster size',
    );
  }
  // A new local file, or an existing NBD export (qemu writes the image over its start).
  const file = await createFile(req.path);
  let dataFile: HostFile | null = null;
  try {
    if (s.dataFile !== undefined) {
      // Relative to the working directory, as qemu creates (and later opens) it.
      dataFile = await HostFile.open(s.dataFile, { create: true });
      await dataFile.truncate(size);
      // QEMU's file driver writes the first block of a new file (allocate_first_block).
      if (size > 0) await dataFile.write(new Uint8Array(Math.min(size, 4096)), 0);
    }
    await writeImage(file, dataFile, s, size, cs, l1Size, req);
  } finally {
    await dataFile?.close();
    await file.close();
  }
}

async function writeImage(
  file: HostFile,
  dataFile: HostFile | null,
  s: Qcow2CreateSettings,
  size: number,
  cs: number,
  l1Size: number,
  req: CreateRequest,
): Promise<void> {
  const header = newHeader(s, size, req.backing);
  header.refcountTableOffset = cs;
  header.refcountTableClusters = 1;
  const extensions = header.extensions;
  // Cluster 0: header; cluster 1: refcount table; cluster 2: its first refcount block.
  const first = new Uint8Array(3 * cs);
  first.set(encodeHeader({ ...header, l1Size: 0, l1TableOffset: 0 }), 0);
  setU64(new DataView(first.buffer), cs, 2 * cs);
  await file.write(first, 0);
  const table = new Float64Array(cs / 8);
  table[0] = 2 * cs;
  const rc = Refcounts.fresh(
    {
      file,
      clusterBits: s.clusterBits,
      refcountOrder: s.refcountOrder,
      writeHeaderReftable: async (offset, clusters) => {
        header.refcountTableOffset = offset;
        header.refcountTableClusters = clusters;
        const b = new Uint8Array(12);
        const v = new DataView(b.buffer);
        setU64(v, 0, offset);
        v.setUint32(8, clusters);
        await file.write(b, 48);
      },
    },
    table,
    cs,
    1,
  );
  await rc.allocClusters(3);

  // The L1 table (qcow2_grow_l1_table writes exactly l1_size entries).
  let l1Offset = 0;
  if (l1Size > 0) {
    l1Offset = await rc.allocClusters(Math.ceil((l1Size * 8) / cs));
    await rc.flush();
    await file.write(new Uint8Array(l1Size * 8), l1Offset);
  }
  header.l1Size = l1Size;
  header.l1TableOffset = l1Offset;
  const l1 = new Float64Array(l1Size);

  const nbData = Math.ceil(size / cs);
  const l2Entries = cs / (s.extendedL2 ? 16 : 8);
  const entryBytes = s.extendedL2 ? 16 : 8;
  const writeL2 = async (
    l1i: number,
    firstHost: number,
    guestStart: number,
    count: number,
  ): Promise<void> => {
    const l2 = await rc.allocClusters(1);
    const buf = new Uint8Array(cs);
    const v = new DataView(buf.buffer);
    const firstIdx = (guestStart / cs) % l2Entries;
    for (let i = 0; i < count; i++) {
      const host = dataFile !== null ? guestStart + i * cs : firstHost + i * cs;
      const e = (firstIdx + i) * entryBytes;
      putEntry(v, e, host, COPIED_HI);
    }
    await rc.flush();
    await file.write(buf, l2);
    l1[l1i] = l2;
  };

  // (With extended L2, preallocated clusters keep their subclusters unallocated, as qemu
  // does: they read as zeros, or from the backing file.)
  if (s.preallocation === 'metadata' && nbData > 0) {
    // Per L2 table: the table, then its data clusters (qcow2's handle_alloc order).
    let endOfData = 0;
    for (let c = 0; c < nbData; ) {
      const l1i = Math.floor(c / l2Entries);
      const count = Math.min(nbData - c, (l1i + 1) * l2Entries - c);
      const l2 = await rc.allocClusters(1);
      const host = dataFile !== null ? c * cs : await rc.allocClusters(count);
      await rc.flush();
      const buf = new Uint8Array(cs);
      const v = new DataView(buf.buffer);
      for (let i = 0; i < count; i++) {
        const e = ((c + i) % l2Entries) * entryBytes;
        putEntry(v, e, host + i * cs, COPIED_HI);
      }
      await file.write(buf, l2);
      l1[l1i] = l2;
      endOfData = host + Math.min(count * cs, size - c * cs);
      c += count;
    }
    const target = dataFile ?? file;
    if (endOfData > (await target.size())) await target.truncate(endOfData);
  } else if ((s.preallocation === 'falloc' || s.preallocation === 'full') && nbData > 0) {
    if (dataFile !== null) {
      await preallocateFile(dataFile, 0, size, s.preallocation);
      for (let c = 0; c < nbData; ) {
        const l1i = Math.floor(c / l2Entries);
        const count = Math.min(nbData - c, (l1i + 1) * l2Entries - c);
        await writeL2(l1i, c * cs, c * cs, count);
        c += count;
      }
    } else {
      const nbL2 = Math.ceil(nbData / l2Entries) + 1;
      const oldSize = Math.ceil((await file.size()) / cs) * cs;
      const start = await rc.refcountArea(oldSize, nbData + nbL2, true, 0, 0);
      await rc.allocClustersAt(start, nbData);
      await rc.flush();
      await preallocateFile(file, start, nbData * cs, s.preallocation);
      for (let c = 0; c < nbData; ) {
        const l1i = Math.floor(c / l2Entries);
        const count = Math.min(nbData - c, (l1i + 1) * l2Entries - c);
        await writeL2(l1i, start + c * cs, c * cs, count);
        c += count;
      }
    }
  }
  await rc.flush();
  if (l1Size > 0 && l1.some((x) => x !== 0)) {
    const raw = new Uint8Array(l1Size * 8);
    const v = new DataView(raw.buffer);
    for (let i = 0; i < l1Size; i++) {
      if (l1[i] === 0) continue;
      putEntry(v, i * 8, l1[i]!, COPIED_HI);
    }
    await file.write(raw, l1Offset);
  }
  // Encryption last, as qcow2_co_create sets it up after sizing the image: the LUKS header in
  // new clusters, its extension after the backing format and data file ones.
  if (req.options['encrypt.format'] === 'luks') {
    const { createQcow2Luks, CRYPT_LUKS } = await import('./crypto.js');
    const ext = await createQcow2Luks(
      file,
      req.options,
      cs,
      async (n) => {
        const off = await rc.allocClusters(n);
        await rc.flush();
        return off;
      },
      req.secrets,
    );
    header.cryptMethod = CRYPT_LUKS;
    const at = extensions.findIndex((e) => e.type !== EXT_BACKING_FORMAT && e.type !== EXT_DATA_FILE);
    extensions.splice(at < 0 ? extensions.length : at, 0, ext);
  }
  // The final header, with every extension and the backing file name.
  const bytes = encodeHeader(header);
  await file.write(bytes, 0);
}

/**
 * The header of a new image as qcow2_co_create writes it: its extensions in qemu's order, the
 * backing file name; the tables (L1, refcount table) are the caller's to fill in.
 */
export function newHeader(s: Qcow2CreateSettings, size: number, backing: FileRef | undefined): Qcow2Header {
  const extensions: HeaderExtension[] = [];
  if (backing?.format !== undefined) {
    extensions.push({ type: EXT_BACKING_FORMAT, data: Buffer.from(backing.format, 'latin1') });
  }
  if (s.dataFile !== undefined)
    extensions.push({ type: EXT_DATA_FILE, data: Buffer.from(s.dataFile, 'latin1') });
  // QEMU 7.2 writes the feature name table only for clusters above 4 KiB (measured: none
  // with 512 B .. 4 KiB clusters, present from 8 KiB).
  if (s.version === 3 && s.clusterBits > 12) extensions.push(featureTableExtension());
  return {
    version: s.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: s.clusterBits,
    size,
    cryptMethod: 0,
    l1Size: 0,
    l1TableOffset: 0,
    refcountTableOffset: 0,
    refcountTableClusters: 0,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatible:
      (s.dataFile !== undefined ? INCOMPAT_DATA_FILE : 0) |
      (s.compressionType !== 0 ? INCOMPAT_COMPRESSION : 0) |
      (s.extendedL2 ? INCOMPAT_EXTL2 : 0),
    compatible: s.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0,
    autoclear: s.dataFileRaw ? AUTOCLEAR_DATA_FILE_RAW : 0,
    refcountOrder: s.refcountOrder,
    headerLength: 0,
    compressionType: s.compressionType,
    extensions,
    backingFile: backing?.filename,
  };
}

async function preallocateFile(
  f: HostFile,
  offset: number,
  length: number,
  mode: 'falloc' | 'full',
): Promise<void> {
  if (mode === 'falloc' && f.allocate(offset, length)) return;
  const zero = new Uint8Array(Math.min(4 << 20, length));
  for (let p = offset; p < offset + length; p += zero.length) {
    const n = Math.min(zero.length, offset + length - p);
    await f.write(n === zero.length ? zero : zero.subarray(0, n), p);
  }
}
