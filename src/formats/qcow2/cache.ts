/**
 * A bounded LRU cache of cluster-sized metadata tables (L2 tables, refcount blocks), kept in
 * their on-disk (big-endian) form so that a write-back is one pwrite. Dirty tables are
 * written back on eviction and on flush; `beforeWriteback` lets the owner enforce ordering
 * (e.g. refcount blocks reach the disk before an L2 table that references new clusters).
 */
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';

interface Entry {
  buf: Uint8Array;
  dirty: boolean;
}

export class TableCache {
  private readonly map = new Map<number, Entry>();
  private readonly loading = new Map<number, Promise<Uint8Array>>();
  /** Host end of the file as known to the image (tables must lie before it). */
  fileEnd = Number.POSITIVE_INFINITY;

  constructor(
    private readonly file: HostFile,
    private readonly tableSize: number,
    private readonly maxEntries: number,
    private readonly what: string,
    private readonly beforeWriteback: () => Promise<void> = async () => {},
  ) {}

  get size(): number {
    return this.map.size;
  }

  /** The table at a host offset if it is cached (no LRU update: a cheap synchronous peek). */
  peek(offset: number): Uint8Array | undefined {
    return this.map.get(offset)?.buf;
  }

  /** The table at a host offset, read from the file on a miss. */
  async get(offset: number): Promise<Uint8Array> {
    const hit = this.map.get(offset);
    if (hit !== undefined) {
      this.map.delete(offset);
      this.map.set(offset, hit);
      return hit.buf;
    }
    const pending = this.loading.get(offset);
    if (pending !== undefined) return pending;
    const p = this.load(offset);
    this.loading.set(offset, p);
    try {
      return await p;
    } finally {
      this.loading.delete(offset);
    }
  }

  /** Start loading a table without waiting for it (read-ahead); errors surface on get(). */
  prefetch(offset: number): void {
    if (this.map.has(offset) || this.loading.has(offset)) return;
    const p = this.load(offset);
    this.loading.set(offset, p);
    p.catch(() => {}).finally(() => {
      if (this.loading.get(offset) === p) this.loading.delete(offset);
    });
  }

  private async load(offset: number): Promise<Uint8Array> {
    if (offset + this.tableSize > this.fileEnd) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `${this.what} at offset ${offset} lies past the end of the image file`,
        { path: this.file.path, offset },
      );
    }
    const buf = new Uint8Array(this.tableSize);
    await this.file.read(buf, offset);
    // Another caller may have installed a fresh table meanwhile: keep theirs.
    const again = this.map.get(offset);
    if (again !== undefined) return again.buf;
    await this.insert(offset, { buf, dirty: false });
    return buf;
  }

  /** Install a new table (all zeros, or given content) without reading it. */
  async create(offset: number, content?: Uint8Array): Promise<Uint8Array> {
    const buf = content ?? new Uint8Array(this.tableSize);
    this.map.delete(offset);
    await this.insert(offset, { buf, dirty: true });
    return buf;
  }

  private async insert(offset: number, e: Entry): Promise<void> {
    this.map.set(offset, e);
    while (this.map.size > this.maxEntries) {
      const [oldest, victim] = this.map.entries().next().value as [number, Entry];
      if (oldest === offset) break;
      this.map.delete(oldest);
      if (victim.dirty) {
        await this.beforeWriteback();
        await this.file.write(victim.buf, oldest);
      }
    }
  }

  /** Mark a table as changed (re-inserting it if it was evicted meanwhile). */
  markDirty(offset: number, buf: Uint8Array): void {
    const e = this.map.get(offset);
    if (e !== undefined && e.buf === buf) {
      e.dirty = true;
      return;
    }
    this.map.set(offset, { buf, dirty: true });
  }

  hasDirty(): boolean {
    for (const e of this.map.values()) if (e.dirty) return true;
    return false;
  }

  /** Write every dirty table, in offset order (large sequential runs stay sequential). */
  async flush(): Promise<void> {
    const dirty = [...this.map.entries()].filter(([, e]) => e.dirty).sort((a, b) => a[0] - b[0]);
    if (dirty.length === 0) return;
    await this.beforeWriteback();
    for (const [off, e] of dirty) {
      e.dirty = false;
      try {
        await this.file.write(e.buf, off);
      } catch (err) {
        e.dirty = true;
        throw err;
      }
    }
  }

  /** Write one table now if it is dirty. */
  async writeOne(offset: number): Promise<void> {
    const e = this.map.get(offset);
    if (e === undefined || !e.dirty) return;
    await this.beforeWriteback();
    e.dirty = false;
    await this.file.write(e.buf, offset);
  }

  /** Forget a table (its cluster was freed). */
  drop(offset: number): void {
    this.map.delete(offset);
  }

  clear(): void {
    this.map.clear();
  }
}
