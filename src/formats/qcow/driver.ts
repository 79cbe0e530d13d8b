/**
 * qcow (version 1), QEMU's old copy-on-write format: a big-endian header, an L1 table of L2
 * table offsets, L2 tables of cluster offsets (bit 63 marks a deflate-compressed cluster whose
 * compressed size sits above the offset bits). No reference counts, no zero clusters, no
 * consistency check (qemu-img check answers "not supported", exit 63).
 *
 * Write ordering, so that a process killed at any instant leaves no corruption (QEMU's own
 * qcow driver points L1 at a new L2 table before writing it; vdisk does not): data before the
 * L2 entry that points at it, a new L2 table before the L1 entry that points at it.
 */
import { promisify } from 'node:util';
import { deflateRaw } from 'node:zlib';
import { inflateCluster } from '../../core/deflate.js';
import type { Extent } from '../../core/device.js';
import type {
  CreateOptions,
  CreateRequest,
  DriverContext,
  DriverOpenOptions,
  FileRef,
  FormatDriver,
  FormatImage,
} from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { HostFile } from '../../core/host-file.js';
import { Mutex } from '../../core/lock.js';
import type { SectorCipher } from '../luks/crypto.js';
import { legacyAesReadOnly, openLegacyAes } from '../luks/legacy-aes.js';
import { COMPRESSED_HI, decodeHeader, encodeHeader, HEADER_BYTES, type QcowHeader } from './header.js';

const deflate = promisify(deflateRaw);

/** An L2 (or L1) entry split into its 32-bit halves (JS numbers hold 53 bits). */
interface Entry {
  hi: number;
  lo: number;
}

type Mapping =
  | { kind: 'unallocated' }
  | { kind: 'data'; offset: number }
  | { kind: 'compressed'; offset: number; size: number };

export class QcowImage implements FormatImage {
  readonly format = 'qcow';
  readonly alignment = 512;
  readonly backing: FileRef | undefined;
  private ctx: DriverContext = { readBacking: async (b) => void b.fill(0), hasBacking: false };
  private readonly l2Cache = new Map<number, DataView>();
  private readonly lock = new Mutex();
  readonly clusterSize: number;
  private readonly l2Entries: number;
  /** crypt_method 1: the legacy AES cipher (undefined when opened for info only). */
  aes: SectorCipher | undefined;
  get encrypted(): boolean {
    return this.header.cryptMethod !== 0;
  }

  constructor(
    private readonly file: HostFile,
    readonly header: QcowHeader,
    private readonly l1: DataView,
    private fileEnd: number,
    backingName: string | undefined,
  ) {
    this.clusterSize = 2 ** header.clusterBits;
    this.l2Entries = 2 ** header.l2Bits;
    this.backing = backingName === undefined ? undefined : { filename: backingName };
  }

  get size(): number {
    // QEMU 7.2 (qcow_open) keeps total_sectors = size / 512: a header size that is not a
    // multiple of 512 (qemu-img never writes one) reads as the whole sectors it covers.
    return Math.floor(this.header.size / 512) * 512;
  }
  get readOnly(): boolean {
    return !this.file.writable;
  }

  attach(ctx: DriverContext): void {
    this.ctx = ctx;
  }

  private l2Offset(l1Index: number): number {
    const hi = this.l1.getUint32(l1Index * 8);
    const lo = this.l1.getUint32(l1Index * 8 + 4);
    const off = hi * 2 ** 32 + lo;
    if (off !== 0 && (hi >= 2 ** 21 || off % 512 !== 0 || off >= this.fileEnd)) {
      throw new VdiskError('CORRUPT_IMAGE', `qcow L1 entry ${l1Index} points at an invalid offset`, {
        path: this.file.path,
      });
    }
    return off;
  }

  private async l2Table(offset: number): Promise<DataView> {
    let t = this.l2Cache.get(offset);
    if (t === undefined) {
      const buf = new Uint8Array(this.l2Entries * 8);
      await this.file.read(buf, offset);
      t = new DataView(buf.buffer);
      if (this.l2Cache.size >= 256) this.l2Cache.delete(this.l2Cache.keys().next().value as number);
      this.l2Cache.set(offset, t);
    }
    return t;
  }

  private decode(e: Entry): Mapping {
    if (e.hi === 0 && e.lo === 0) return { kind: 'unallocated' };
    const cb = this.header.clusterBits;
    if (e.hi & COMPRESSED_HI) {
      const offBits = 63 - cb - 32;
      const offset = (e.hi & (2 ** offBits - 1)) * 2 ** 32 + e.lo;
      const size = ((e.hi & 0x7fffffff) >>> offBits) & (this.clusterSize - 1);
      if (offset + size > this.fileEnd || size === 0) {
        throw new VdiskError('CORRUPT_IMAGE', `qcow compressed cluster at ${offset} lies outside the file`, {
          path: this.file.path,
        });
      }
      return { kind: 'compressed', offset, size };
    }
    const offset = e.hi * 2 ** 32 + e.lo;
    if (e.hi >= 2 ** 21 || offset % 512 !== 0 || offset >= this.fileEnd) {
      throw new VdiskError('CORRUPT_IMAGE', `qcow L2 entry points at an invalid offset ${offset}`, {
        path: this.file.path,
      });
    }
    return { kind: 'data', offset };
  }

  private async lookup(guest: number): Promise<Mapping> {
    const c = Math.floor(guest / this.clusterSize);
    const l2 = this.l2Offset(Math.floor(c / this.l2Entries));
    if (l2 === 0) return { kind: 'unallocated' };
    const t = await this.l2Table(l2);
    const i = (c % this.l2Entries) * 8;
    return this.decode({ hi: t.getUint32(i), lo: t.getUint32(i + 4) });
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    const cs = this.clusterSize;
    const end = Math.min(offset + length, this.size);
    const first = await this.lookup(offset);
    let pos = offset - (offset % cs) + cs;
    let next = first.kind === 'data' ? first.offset + cs : 0;
    while (pos < end) {
      const m = await this.lookup(pos);
      if (m.kind !== first.kind) break;
      if (m.kind === 'data') {
        if (m.offset !== next) break;
        next += cs;
      }
      pos += cs;
    }
    const len = Math.min(pos, end) - offset;
    if (first.kind === 'unallocated')
      return { offset, length: len, allocated: false, zero: false, data: false };
    if (first.kind === 'compressed')
      return { offset, length: len, allocated: true, zero: false, data: true, compressed: true };
    return {
      offset,
      length: len,
      allocated: true,
      zero: false,
      data: true,
      hostOffset: first.offset + (offset % cs),
      file: this.file.path,
    };
  }

  private async readCompressed(m: { offset: number; size: number }): Promise<Uint8Array> {
    const raw = new Uint8Array(m.size);
    await this.file.read(raw, m.offset);
    const out = await inflateCluster(raw, this.clusterSize);
    if (out === null) {
      throw new VdiskError('CORRUPT_IMAGE', `qcow compressed cluster at ${m.offset} does not inflate`, {
        path: this.file.path,
      });
    }
    return out;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.clusterSize;
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const st = await this.blockStatus(pos, buf.length - done);
      const part = buf.subarray(done, done + st.length);
      if (!st.allocated) await this.ctx.readBacking(part, pos);
      else if (!st.compressed) {
        await this.file.read(part, st.hostOffset!);
        // Legacy AES: the guest sector is the IV (compressed clusters are not encrypted).
        this.aes?.run(false, part, part, pos / 512);
      } else {
        // One compressed cluster at a time.
        const n = Math.min(part.length, cs - (pos % cs));
        const m = (await this.lookup(pos)) as { offset: number; size: number };
        const cluster = await this.readCompressed(m);
        part.set(cluster.subarray(pos % cs, (pos % cs) + n));
        done += n;
        continue;
      }
      done += st.length;
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const st = await this.blockStatus(pos, buf.length - done);
      if (st.allocated && !st.compressed) {
        await this.file.write(buf.subarray(done, done + st.length), st.hostOffset!);
        done += st.length;
        continue;
      }
      // New clusters: one cluster at a time under the allocation lock.
      const cs = this.clusterSize;
      const n = Math.min(buf.length - done, cs - (pos % cs));
      await this.lock.run(() => this.allocateCluster(buf.subarray(done, done + n), pos));
      done += n;
    }
  }

  /** Write `data` (within one cluster) into a newly allocated cluster at the end of the file. */
  private async allocateCluster(data: Uint8Array, pos: number): Promise<void> {
    const cs = this.clusterSize;
    const start = pos - (pos % cs);
    const m = await this.lookup(pos);
    if (m.kind === 'data') return this.file.write(data, m.offset + (pos % cs));
    let cluster: Uint8Array;
    if (m.kind === 'compressed') cluster = await this.readCompressed(m);
    else {
      cluster = new Uint8Array(cs);
      if (data.length < cs)
        await this.ctx.readBacking(cluster.subarray(0, Math.min(cs, this.size - start)), start);
    }
    cluster.set(data, pos % cs);
    const host = this.allocate(cs, true);
    await this.file.write(cluster, host);
    await this.setEntry(start, { hi: Math.floor(host / 2 ** 32), lo: host % 2 ** 32 });
  }

  /** Reserve `n` bytes at the end of the file (cluster-aligned unless a compressed cluster). */
  private allocate(n: number, align: boolean): number {
    const at = align ? Math.ceil(this.fileEnd / this.clusterSize) * this.clusterSize : this.fileEnd;
    this.fileEnd = at + n;
    return at;
  }

  private async setEntry(guest: number, e: Entry): Promise<void> {
    const c = Math.floor(guest / this.clusterSize);
    const l1Index = Math.floor(c / this.l2Entries);
    let l2 = this.l2Offset(l1Index);
    const i = (c % this.l2Entries) * 8;
    if (l2 === 0) {
      const table = new Uint8Array(this.l2Entries * 8);
      const view = new DataView(table.buffer);
      view.setUint32(i, e.hi);
      view.setUint32(i + 4, e.lo);
      l2 = this.allocate(table.length, true);
      await this.file.write(table, l2);
      this.l2Cache.set(l2, view);
      this.l1.setUint32(l1Index * 8, Math.floor(l2 / 2 ** 32));
      this.l1.setUint32(l1Index * 8 + 4, l2 % 2 ** 32);
      await this.file.write(
        new Uint8Array(this.l1.buffer, l1Index * 8, 8),
        this.header.l1Offset + l1Index * 8,
      );
      return;
    }
    const t = await this.l2Table(l2);
    t.setUint32(i, e.hi);
    t.setUint32(i + 4, e.lo);
    await this.file.write(new Uint8Array(t.buffer, i, 8), l2 + i);
  }

  async writeCompressed(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.clusterSize;
    const full = new Uint8Array(cs);
    full.set(buf);
    // QEMU: deflate with a 12-bit window; a cluster that does not shrink is stored plainly.
    const out = await deflate(full, { windowBits: 12, memLevel: 9 });
    if (out.length >= cs) return this.write(buf.length === cs ? buf : full.subarray(0, buf.length), offset);
    await this.lock.run(async () => {
      const m = await this.lookup(offset);
      if (m.kind !== 'unallocated') {
        throw new VdiskError('UNSUPPORTED', 'Compressed writes are supported only on unallocated clusters');
      }
      const host = this.allocate(out.length, false);
      await this.file.write(out, host);
      const offBits = 63 - this.header.clusterBits - 32;
      const hi = (COMPRESSED_HI | (out.length << offBits) | Math.floor(host / 2 ** 32)) >>> 0;
      await this.setEntry(offset, { hi, lo: host % 2 ** 32 });
    });
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    // No zero clusters in qcow: unallocated ranges without a backing already read as zeros.
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const st = await this.blockStatus(pos, end - pos);
      if (!st.allocated && !this.ctx.hasBacking) {
        pos += st.length;
        continue;
      }
      const zero = new Uint8Array(Math.min(st.length, 1 << 20));
      for (let p = pos; p < pos + st.length; p += zero.length) {
        await this.write(zero.subarray(0, Math.min(zero.length, pos + st.length - p)), p);
      }
      pos += st.length;
    }
  }

  async discard(): Promise<void> {}

  flush(): Promise<void> {
    return this.file.flush();
  }

  close(): Promise<void> {
    return this.file.close();
  }

  actualSize(): Promise<number> {
    return this.file.allocatedSize();
  }
}

async function openQcow(file: HostFile, opts: DriverOpenOptions): Promise<FormatImage> {
  const fileSize = await file.size();
  const head = new Uint8Array(HEADER_BYTES);
  await file.read(head, 0);
  const h = decodeHeader(head, fileSize);
  let backing: string | undefined;
  if (h.backingOffset !== 0) {
    const name = new Uint8Array(h.backingSize);
    await file.read(name, h.backingOffset);
    backing = Buffer.from(name).toString('utf8');
  }
  const l1 = new Uint8Array(h.l1Size * 8);
  await file.read(l1, h.l1Offset);
  const img = new QcowImage(file, h, new DataView(l1.buffer), fileSize, backing);
  if (h.cryptMethod === 1) {
    if (opts.writable) throw legacyAesReadOnly(file.path);
    img.aes = openLegacyAes(opts.options?.['encrypt.key-secret'], {
      noIo: opts.noIo === true,
      prefix: 'encrypt.',
      secrets: opts.secrets,
    });
  }
  return img;
}

/**
 * The header of a new image and the backing file name that follows it, as qcow_co_create lays
 * them out: 4 KiB clusters and 512-entry L2 tables alone; 512-byte clusters and 4096-entry L2
 * tables over a backing file; the L1 table after the name, 8-byte aligned.
 */
export function newQcowHeader(
  options: CreateOptions,
  reqSize: number,
  backing: FileRef | undefined,
): { header: QcowHeader; name: Buffer | null } {
  for (const k of ['encryption', 'encrypt.format', 'encrypt.key-secret']) {
    if (options[k] !== undefined && options[k] !== 'off') {
      throw new VdiskError('UNSUPPORTED', 'qcow (v1) AES encryption is not supported yet');
    }
  }
  // As qcow_co_create (qemu could not open it: qcow_open wants at least 2 bytes).
  if (reqSize === 0)
    throw new VdiskError('INVALID_ARGUMENT', 'Image size is too small, cannot be zero length');
  const name = backing !== undefined ? Buffer.from(backing.filename) : null;
  const h: QcowHeader = {
    backingOffset: name !== null ? HEADER_BYTES : 0,
    backingSize: name?.length ?? 0,
    mtime: 0,
    size: Math.ceil(reqSize / 512) * 512,
    clusterBits: name !== null ? 9 : 12,
    l2Bits: name !== null ? 12 : 9,
    cryptMethod: 0,
    l1Offset: 0,
    l1Size: 0,
  };
  h.l1Offset = Math.ceil((HEADER_BYTES + h.backingSize) / 8) * 8;
  h.l1Size = Math.ceil(h.size / 2 ** (h.clusterBits + h.l2Bits));
  return { header: h, name };
}

/** The L1 table as qcow_co_create writes it: zeros, in whole sectors. */
export const l1TableBytes = (h: QcowHeader): number => Math.ceil((h.l1Size * 8) / 512) * 512;

async function createQcow(req: CreateRequest): Promise<void> {
  const { header: h, name } = newQcowHeader(req.options, req.size, req.backing);
  const file = await HostFile.open(req.path, { create: true });
  try {
    await file.write(encodeHeader(h), 0);
    if (name !== null) await file.write(name, HEADER_BYTES);
    await file.write(new Uint8Array(l1TableBytes(h)), h.l1Offset);
  } finally {
    await file.close();
  }
}

export const qcowDriver: FormatDriver = {
  name: 'qcow',
  supportsBacking: true,
  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'backing_file', type: 'string', help: 'File name of a base image' },
    { name: 'backing_fmt', type: 'string', help: 'Format of the backing image' },
    {
      name: 'encryption',
      type: 'bool',
      help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
    },
    { name: 'encrypt.format', type: 'string', help: "Encrypt the image, format choices: 'aes'" },
    {
      name: 'encrypt.key-secret',
      type: 'string',
      help: 'ID of the secret that provides the AES encryption key',
    },
  ],
  open: openQcow,
  create: createQcow,
  async createSequential(src, options) {
    return (await import('./stream.js')).createQcowSequential(src, options);
  },
};
