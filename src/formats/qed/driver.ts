/**
 * QED (QEMU Enhanced Disk): a header, an L1 table and L2 tables of cluster offsets, clusters
 * appended at the end of the file. No reference counts: a cluster is referenced once, and the
 * NEED_CHECK bit marks an image whose allocating writes may have been interrupted.
 *
 * Write ordering (a process killed at any instant leaves at worst leaked clusters): new data
 * clusters are written before the L2 entry that points at them, a new L2 table before the L1
 * entry that points at it. As QEMU does, NEED_CHECK is set before the first allocating write
 * and cleared on flush and close; an image opened writable with NEED_CHECK is checked and
 * repaired first.
 */
import type { Extent } from '../../core/device.js';
import type {
  CheckResult,
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
import { parseSize } from '../../core/size.js';
import { checkQed } from './check.js';
import {
  CLUSTER_MAX,
  CLUSTER_MIN,
  decodeHeader,
  encodeHeader,
  F_BACKING_FILE,
  F_BACKING_FORMAT_NO_PROBE,
  F_NEED_CHECK,
  HEADER_BYTES,
  type QedHeader,
  TABLE_MAX,
} from './header.js';
import { Table, TableCache, ZERO_CLUSTER } from './table.js';

export class QedImage implements FormatImage {
  readonly format = 'qed';
  readonly alignment = 512;
  readonly backing: FileRef | undefined;
  private ctx: DriverContext = { readBacking: async (b) => void b.fill(0), hasBacking: false };
  private readonly l2Cache: TableCache;
  private readonly writeLock = new Mutex();
  private needCheckOnDisk: boolean;
  private closed = false;

  constructor(
    readonly file: HostFile,
    readonly header: QedHeader,
    readonly l1: Table,
    /** End of the file: where the next cluster is allocated. */
    private fileEnd: number,
    backingName: string | undefined,
    needCheck: boolean,
  ) {
    this.needCheckOnDisk = needCheck;
    this.l2Cache = new TableCache(file, header, Math.max(4, Math.floor((32 << 20) / this.tableBytes)));
    this.backing =
      backingName === undefined
        ? undefined
        : { filename: backingName, format: header.features & F_BACKING_FORMAT_NO_PROBE ? 'raw' : undefined };
  }

  get size(): number {
    return this.header.imageSize;
  }
  get clusterSize(): number {
    return this.header.clusterSize;
  }
  get readOnly(): boolean {
    return !this.file.writable;
  }
  get dirty(): boolean {
    return this.needCheckOnDisk;
  }
  private get tableBytes(): number {
    return this.header.tableSize * this.header.clusterSize;
  }
  private get entriesPerTable(): number {
    return this.tableBytes / 8;
  }

  attach(ctx: DriverContext): void {
    this.ctx = ctx;
  }

  /** L2 entry for a guest offset: 0 unallocated, 1 zero, else the cluster's file offset. */
  private async lookup(offset: number): Promise<{ entry: number; l2: Table | null; index: number }> {
    const c = Math.floor(offset / this.header.clusterSize);
    const l1Index = Math.floor(c / this.entriesPerTable);
    const index = c % this.entriesPerTable;
    const l2Offset = this.l1.get(l1Index);
    if (l2Offset === 0) return { entry: 0, l2: null, index };
    const l2 = await this.l2Cache.get(l2Offset, this.fileEnd);
    const entry = l2.get(index);
    if (entry > ZERO_CLUSTER && (entry % this.header.clusterSize !== 0 || entry >= this.fileEnd)) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `QED L2 entry ${index} of the table at ${l2Offset} points at an invalid offset ${entry}`,
        {
          path: this.file.path,
          offset: l2Offset + index * 8,
        },
      );
    }
    return { entry, l2, index };
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    const cs = this.header.clusterSize;
    const end = Math.min(offset + length, this.size);
    const first = await this.lookup(offset);
    const kind = (e: number) => (e === 0 ? 0 : e === ZERO_CLUSTER ? 1 : 2);
    const k = kind(first.entry);
    let pos = offset - (offset % cs) + cs;
    let expect = first.entry > ZERO_CLUSTER ? first.entry + cs : 0;
    while (pos < end) {
      const { entry } = await this.lookup(pos);
      if (kind(entry) !== k || (k === 2 && entry !== expect)) break;
      if (k === 2) expect += cs;
      pos += cs;
    }
    const len = Math.min(pos, end) - offset;
    if (k === 0) return { offset, length: len, allocated: false, zero: false, data: false };
    if (k === 1) return { offset, length: len, allocated: true, zero: true, data: false };
    return {
      offset,
      length: len,
      allocated: true,
      zero: false,
      data: true,
      hostOffset: first.entry + (offset % cs),
      file: this.file.path,
    };
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const st = await this.blockStatus(offset + done, buf.length - done);
      const part = buf.subarray(done, done + st.length);
      if (!st.allocated) await this.ctx.readBacking(part, offset + done);
      else if (st.zero) part.fill(0);
      else await this.file.read(part, st.hostOffset!);
      done += st.length;
    }
  }

  private async markNeedCheck(): Promise<void> {
    if (this.needCheckOnDisk) return;
    await this.writeHeader(this.header.features | F_NEED_CHECK);
    this.needCheckOnDisk = true;
  }

  private async writeHeader(features: number): Promise<void> {
    await this.file.write(encodeHeader({ ...this.header, features }), 0);
  }

  /** Append `n` clusters at the end of the file and return the offset of the first. */
  private allocate(n: number): number {
    const at = this.fileEnd;
    this.fileEnd += n * this.header.clusterSize;
    return at;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) done += await this.writeStep(buf.subarray(done), offset + done);
  }

  /** Write a prefix of buf at pos that lies in clusters of one kind; returns its length. */
  private async writeStep(buf: Uint8Array, pos: number): Promise<number> {
    const st = await this.blockStatus(pos, buf.length);
    if (st.data) {
      // In place: no metadata changes, no lock.
      await this.file.write(buf.subarray(0, st.length), st.hostOffset!);
      return st.length;
    }
    // Allocating writes are serialized: they move the end of file and edit tables. Look again
    // under the lock: another write may have allocated the cluster meanwhile.
    return this.writeLock.run(async () => {
      const again = await this.blockStatus(pos, buf.length);
      const part = buf.subarray(0, again.length);
      if (again.data) await this.file.write(part, again.hostOffset!);
      else await this.allocatingWrite(part, pos, again.allocated);
      return again.length;
    });
  }

  /**
   * Write `data` at guest `offset` into newly allocated clusters. The range lies in clusters
   * that are all unallocated (zero=false, fill from the backing) or all zero clusters.
   */
  private async allocatingWrite(data: Uint8Array, offset: number, zeroClusters: boolean): Promise<void> {
    const cs = this.header.clusterSize;
    const start = offset - (offset % cs);
    const end = Math.ceil((offset + data.length) / cs) * cs;
    const n = (end - start) / cs;
    const cluster = new Uint8Array(end - start);
    const head = offset - start;
    const tailStart = head + data.length;
    if (head > 0) {
      if (zeroClusters) cluster.fill(0, 0, head);
      else await this.ctx.readBacking(cluster.subarray(0, head), start);
    }
    if (tailStart < cluster.length) {
      const sub = cluster.subarray(tailStart);
      if (zeroClusters || start + tailStart >= this.size) sub.fill(0);
      else
        await this.ctx.readBacking(
          sub.subarray(0, Math.min(sub.length, this.size - (start + tailStart))),
          start + tailStart,
        );
    }
    cluster.set(data, head);
    await this.markNeedCheck();
    const host = this.allocate(n);
    await this.file.write(cluster, host);
    await this.setEntries(start, n, (i) => host + i * cs);
  }

  /** Point n consecutive clusters from guest `start` at `value(i)`, allocating L2 tables. */
  private async setEntries(start: number, n: number, value: (i: number) => number): Promise<void> {
    const cs = this.header.clusterSize;
    let i = 0;
    while (i < n) {
      const c = Math.floor(start / cs) + i;
      const l1Index = Math.floor(c / this.entriesPerTable);
      const first = c % this.entriesPerTable;
      const count = Math.min(n - i, this.entriesPerTable - first);
      const l2Offset = this.l1.get(l1Index);
      if (l2Offset === 0) {
        // A new L2 table: written whole, then the L1 entry.
        const table = Table.empty(this.tableBytes);
        for (let j = 0; j < count; j++) table.set(first + j, value(i + j));
        const at = this.allocate(this.header.tableSize);
        await this.file.write(table.bytes, at);
        this.l2Cache.put(at, table);
        this.l1.set(l1Index, at);
        await this.l1.writeEntries(this.file, this.header.l1Offset, l1Index, 1);
      } else {
        const table = await this.l2Cache.get(l2Offset, this.fileEnd);
        for (let j = 0; j < count; j++) table.set(first + j, value(i + j));
        await table.writeEntries(this.file, l2Offset, first, count);
      }
      i += count;
    }
  }

  async writeZeroes(offset: number, length: number, _unmap: boolean): Promise<void> {
    const cs = this.header.clusterSize;
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const st = await this.blockStatus(pos, end - pos);
      const n = st.length;
      const alignedStart = pos % cs === 0;
      const alignedEnd = (pos + n) % cs === 0 || pos + n === this.size;
      if (st.data) {
        // Allocated clusters are zeroed in place (QEMU does the same for QED).
        await this.writeZeroBytes(st.hostOffset!, n);
      } else if (!(st.allocated && st.zero) && alignedStart && alignedEnd) {
        // Unallocated whole clusters become zero clusters: no data, and the backing is hidden.
        await this.writeLock.run(async () => {
          await this.markNeedCheck();
          await this.setEntries(pos, Math.ceil(n / cs), () => ZERO_CLUSTER);
        });
      } else if (!(st.allocated && st.zero)) {
        await this.write(new Uint8Array(n), pos);
      }
      pos += n;
    }
  }

  private async writeZeroBytes(host: number, n: number): Promise<void> {
    if (this.file.punchHole(host, n)) return;
    const zero = new Uint8Array(Math.min(n, 1 << 20));
    for (let p = 0; p < n; p += zero.length)
      await this.file.write(zero.subarray(0, Math.min(zero.length, n - p)), host + p);
  }

  async discard(): Promise<void> {
    // QED has no discard (QEMU ignores it too).
  }

  async flush(): Promise<void> {
    if (!this.file.writable) return;
    await this.writeLock.run(async () => {
      await this.file.flush();
      if (this.needCheckOnDisk) {
        await this.writeHeader(this.header.features & ~F_NEED_CHECK);
        this.needCheckOnDisk = false;
        await this.file.flush();
      }
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (this.file.writable) await this.flush();
    } finally {
      await this.file.close();
    }
  }

  actualSize(): Promise<number> {
    return this.file.allocatedSize();
  }

  check(repair: 'none' | 'leaks' | 'all'): Promise<CheckResult> {
    return this.writeLock.run(async () => {
      const r = await checkQed(
        this.file,
        this.header,
        this.l1,
        this.fileEnd,
        repair !== 'none' && this.file.writable,
      );
      this.l2Cache.clear();
      if (repair !== 'none' && this.file.writable && r.corruptions - r.corruptionsFixed === 0) {
        await this.writeHeader(this.header.features & ~F_NEED_CHECK);
        this.needCheckOnDisk = false;
      }
      return r;
    });
  }

  /** Grow the virtual size (QED cannot shrink); the tables must be able to map it. */
  async resize(size: number, opts: { preallocation?: string; shrink: boolean }): Promise<void> {
    if (opts.preallocation !== undefined && opts.preallocation !== 'off') {
      throw new VdiskError('UNSUPPORTED', `Unsupported preallocation mode '${opts.preallocation}'`);
    }
    const h = this.header;
    if (size < h.imageSize)
      throw new VdiskError('UNSUPPORTED', 'Shrinking images is currently not supported');
    const entries = this.entriesPerTable;
    if (size % 512 !== 0 || size > entries * entries * h.clusterSize) {
      throw new VdiskError('INVALID_ARGUMENT', 'Invalid image size specified');
    }
    await this.writeLock.run(async () => {
      h.imageSize = size;
      await this.writeHeader(h.features | (this.needCheckOnDisk ? F_NEED_CHECK : 0));
    });
  }

  /** Rewrite the backing file name (rebase). */
  async setBacking(ref: FileRef | undefined): Promise<void> {
    const h = this.header;
    let features = h.features & ~(F_BACKING_FILE | F_BACKING_FORMAT_NO_PROBE);
    if (ref !== undefined) {
      const name = Buffer.from(ref.filename);
      if (HEADER_BYTES + name.length > h.headerSize * h.clusterSize) {
        throw new VdiskError(
          'INVALID_ARGUMENT',
          `Backing file name '${ref.filename}' does not fit in the QED header`,
        );
      }
      await this.file.write(name, HEADER_BYTES);
      h.backingNameOffset = HEADER_BYTES;
      h.backingNameSize = name.length;
      features |= F_BACKING_FILE | (ref.format === 'raw' ? F_BACKING_FORMAT_NO_PROBE : 0);
    } else {
      h.backingNameOffset = 0;
      h.backingNameSize = 0;
    }
    h.features = features | (this.needCheckOnDisk ? F_NEED_CHECK : 0);
    await this.writeHeader(h.features);
    h.features &= ~F_NEED_CHECK;
  }
}

async function openQed(file: HostFile, opts: DriverOpenOptions): Promise<FormatImage> {
  const fileSize = await file.size();
  const head = new Uint8Array(HEADER_BYTES);
  await file.read(head, 0);
  const header = decodeHeader(head, fileSize);
  let backingName: string | undefined;
  if (header.features & F_BACKING_FILE) {
    const name = new Uint8Array(header.backingNameSize);
    await file.read(name, header.backingNameOffset);
    backingName = Buffer.from(name).toString('utf8');
  }
  const l1 = await Table.read(file, header.l1Offset, header.tableSize * header.clusterSize);
  const cs = header.clusterSize;
  const fileEnd = Math.ceil(fileSize / cs) * cs;
  const needCheck = (header.features & F_NEED_CHECK) !== 0;
  const plain = { ...header, features: header.features & ~F_NEED_CHECK };
  const image = new QedImage(file, plain, l1, fileEnd, backingName, needCheck);
  if (header.features & F_NEED_CHECK && opts.writable) {
    // As QEMU: a writable open of an image that needs a check repairs it first.
    const r = await image.check('all');
    if (r.corruptions - r.corruptionsFixed > 0) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `Image corrupted: ${r.corruptions} errors found by the QED check`,
        {
          path: file.path,
        },
      );
    }
  }
  return image;
}

/**
 * The header of a new image from create's options (cluster_size, table_size), checked as qemu
 * checks them, with the backing file name that follows it (stored at HEADER_BYTES).
 */
export function newQedHeader(
  options: CreateOptions,
  reqSize: number,
  backing: FileRef | undefined,
): { header: QedHeader; name: Buffer | null } {
  const cs = options['cluster_size'] !== undefined ? parseSize(options['cluster_size']) : 65536;
  const ts = options['table_size'] !== undefined ? parseSize(options['table_size']) : 4;
  const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
  if (cs === null || !pow2(cs) || cs < CLUSTER_MIN || cs > CLUSTER_MAX) {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `QED cluster size must be within range [${CLUSTER_MIN}, ${CLUSTER_MAX}] and power of 2`,
    );
  }
  if (ts === null || !pow2(ts) || ts > TABLE_MAX) {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `QED table size must be within range [1, ${TABLE_MAX}] and power of 2`,
    );
  }
  const size = Math.ceil(reqSize / 512) * 512;
  const entries = (ts * cs) / 8;
  if (size > entries * entries * cs) {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `QED image size must be a non-zero multiple of cluster size and less than ${entries * entries * cs} bytes`,
    );
  }
  const header: QedHeader = {
    clusterSize: cs,
    tableSize: ts,
    headerSize: 1,
    features: 0,
    compatFeatures: 0,
    autoclearFeatures: 0,
    l1Offset: cs,
    imageSize: size,
    backingNameOffset: 0,
    backingNameSize: 0,
  };
  if (backing === undefined) return { header, name: null };
  const name = Buffer.from(backing.filename);
  if (HEADER_BYTES + name.length > cs)
    throw new VdiskError('INVALID_ARGUMENT', 'Backing file name too long for QED');
  // As qemu: a raw backing file is not probed (the no-probe feature); other formats are not stored.
  header.features |= F_BACKING_FILE | (backing.format === 'raw' ? F_BACKING_FORMAT_NO_PROBE : 0);
  header.backingNameOffset = HEADER_BYTES;
  header.backingNameSize = name.length;
  return { header, name };
}

export async function createQed(req: CreateRequest): Promise<void> {
  const { header, name } = newQedHeader(req.options, req.size, req.backing);
  const cs = header.clusterSize;
  const ts = header.tableSize;
  const file = await HostFile.open(req.path, { create: true });
  try {
    if (name !== null) await file.write(name, HEADER_BYTES);
    await file.write(encodeHeader(header), 0);
    await file.truncate(cs + ts * cs);
    // Allocate the header and the L1 table on the host, as QEMU's write of the empty table does.
    await file.write(new Uint8Array(ts * cs), cs);
  } finally {
    await file.close();
  }
}

export const qedDriver: FormatDriver = {
  name: 'qed',
  supportsBacking: true,
  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'backing_file', type: 'string', help: 'File name of a base image' },
    { name: 'backing_fmt', type: 'string', help: 'Image format of the base image' },
    { name: 'cluster_size', type: 'size', help: 'Cluster size (in bytes)', default: '65536' },
    { name: 'table_size', type: 'size', help: 'L1/L2 table size (in clusters)' },
  ],
  open: openQed,
  create: createQed,
  async createSequential(src, options) {
    return (await import('./stream.js')).createQedSequential(src, options);
  },
};
