/** QED L1/L2 tables: arrays of little-endian u64 cluster offsets, and a bounded LRU cache of L2s. */
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import type { QedHeader } from './header.js';

/** L2 entry value of a zero cluster. */
export const ZERO_CLUSTER = 1;

export class Table {
  private readonly view: DataView;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  }

  static empty(bytes: number): Table {
    return new Table(new Uint8Array(bytes));
  }

  static async read(file: HostFile, offset: number, bytes: number): Promise<Table> {
    const buf = new Uint8Array(bytes);
    await file.read(buf, offset);
    return new Table(buf);
  }

  get length(): number {
    return this.bytes.length / 8;
  }

  get(i: number): number {
    const lo = this.view.getUint32(i * 8, true);
    const hi = this.view.getUint32(i * 8 + 4, true);
    // Offsets past 2^53 cannot be valid in any file vdisk opens: report them as such.
    return hi >= 2 ** 21 ? Number.MAX_SAFE_INTEGER : hi * 2 ** 32 + lo;
  }

  set(i: number, v: number): void {
    this.view.setUint32(i * 8, v % 2 ** 32, true);
    this.view.setUint32(i * 8 + 4, Math.floor(v / 2 ** 32), true);
  }

  /** Write entries [first, first+count) to the table at `tableOffset`, whole 512-byte sectors. */
  async writeEntries(file: HostFile, tableOffset: number, first: number, count: number): Promise<void> {
    const start = Math.floor((first * 8) / 512) * 512;
    const end = Math.min(this.bytes.length, Math.ceil(((first + count) * 8) / 512) * 512);
    await file.write(this.bytes.subarray(start, end), tableOffset + start);
  }
}

export class TableCache {
  private readonly tables = new Map<number, Table>();

  constructor(
    private readonly file: HostFile,
    private readonly header: QedHeader,
    private readonly capacity: number,
  ) {}

  async get(offset: number, fileEnd: number): Promise<Table> {
    const hit = this.tables.get(offset);
    if (hit !== undefined) {
      // Refresh its place in the LRU order.
      this.tables.delete(offset);
      this.tables.set(offset, hit);
      return hit;
    }
    const cs = this.header.clusterSize;
    if (offset % cs !== 0 || offset < this.header.headerSize * cs || offset >= fileEnd) {
      throw new VdiskError('CORRUPT_IMAGE', `QED L2 table offset ${offset} is invalid`, {
        path: this.file.path,
        offset,
      });
    }
    const t = await Table.read(this.file, offset, this.header.tableSize * cs);
    this.put(offset, t);
    return t;
  }

  put(offset: number, t: Table): void {
    this.tables.delete(offset);
    this.tables.set(offset, t);
    while (this.tables.size > this.capacity) {
      const oldest = this.tables.keys().next().value as number;
      this.tables.delete(oldest);
    }
  }

  clear(): void {
    this.tables.clear();
  }
}
