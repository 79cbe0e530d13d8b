/**
 * A sparse extent: hosted sparse (VMDK4, "KDMV"; streamOptimized when its grains are
 * compressed) or VMFS sparse (VMDK3, "COWD"). A grain directory (GD) points at grain tables
 * (GT), whose entries give the sector of each grain: 0 unallocated, 1 a zeroed grain (when
 * the zeroed-grain feature is on), else the grain's sector. Compressed grains start with a
 * marker: the grain's LBA (u64) and the compressed length (u32), then zlib data.
 *
 * Writes are ordered: the grain's data, then its GT entry (primary and redundant), then the
 * descriptor's CID. A crash leaves at worst a grain no table names.
 */
import { promisify } from 'node:util';
import { inflate as inflateCb } from 'node:zlib';
import { deflateZlib } from '../../core/deflate.js';
import type { Extent } from '../../core/device.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { Mutex, Slots } from '../../core/lock.js';
import { type Below, type CheckProblem, Jobs, type VmdkExtent } from './extent.js';
import { SECTOR, type SparseHeader, VMDK4_FLAG_MARKER, VMDK4_FLAG_ZERO_GRAIN } from './header.js';

const inflate = promisify(inflateCb);

/** The grain-table entry of a zeroed grain (with the zeroed-grain feature). */
export const GTE_ZEROED = 1;
/** Bytes of grain tables kept in memory per extent. */
const GT_CACHE_BYTES = 16 << 20;
/** QEMU's limits (vmdk_add_extent). */
const MAX_GRAIN_SECTORS = 0x200000;
const MAX_GD_ENTRIES = 32 * 1024 * 1024;
/** GT entries are 32-bit sector numbers. */
export const MAX_SECTOR = 0xffffffff;
const MARKER_BYTES = 12;
/** Grain tables read at once when they follow each other on disk. */
const READ_AHEAD_TABLES = 64;

type GrainState = { kind: 'unallocated' } | { kind: 'zero' } | { kind: 'data'; sector: number };
const UNALLOCATED: GrainState = { kind: 'unallocated' };
const ZEROED: GrainState = { kind: 'zero' };

interface CachedGt {
  table: Uint32Array;
  /** Writers holding it (never evicted while pinned, so a reload cannot miss their update). */
  pins: number;
}

export interface SparseExtentInit {
  file: HostFile;
  start: number;
  header: SparseHeader;
  /** Grain directory location in sectors (the footer's when the header says "at end"). */
  gdOffset: number;
  gd: Uint32Array;
  rgd: Uint32Array | null;
  fileSize: number;
  type: string;
  infoFilename: string;
  /** The stream keeps its directory at the end (VMware stream): writes are refused. */
  gdAtEnd: boolean;
}

/**
 * Grains one image (or one sequential writer) compresses at once: libuv's pool runs 4 at a
 * time, and each one in flight holds a zlib state and an output chunk (~350 KiB), so convert's
 * requests in flight (8 × 32 grains) must not all queue at once (peak RSS stays under the
 * 200 MiB budget). Each SparseExtent and each stream writer owns its Slots (no module state).
 */
export const MAX_PACKING = 8;

export class SparseExtent implements VmdkExtent {
  readonly flat = false;
  readonly file: HostFile;
  readonly start: number;
  readonly size: number;
  readonly grainSize: number;
  readonly compressed: boolean;
  readonly type: string;
  readonly infoFilename: string;
  private readonly header: SparseHeader;
  /** Grains compressing at once for this extent (MAX_PACKING). */
  private readonly packing = new Slots(MAX_PACKING);
  private readonly gtEntries: number;
  private readonly gd: Uint32Array;
  private readonly rgd: Uint32Array | null;
  private readonly hasMarker: boolean;
  private readonly zeroGrain: boolean;
  private readonly gdAtEnd: boolean;
  private fileSize: number;
  /** Next free sector (grain-aligned for plain grains; sector-aligned after compressed ones). */
  private nextSector: number;
  private readonly cache = new Map<number, CachedGt>();
  private readonly loading = new Map<number, Promise<Uint32Array>>();
  private readonly cacheLimit: number;
  private readonly alloc = new Mutex();

  constructor(init: SparseExtentInit) {
    const h = init.header;
    this.file = init.file;
    this.start = init.start;
    this.header = h;
    this.size = h.capacity * SECTOR;
    this.grainSize = h.granularity * SECTOR;
    this.gtEntries = h.gtEntries;
    this.gd = init.gd;
    this.rgd = init.rgd;
    this.compressed = h.kind === 'vmdk4' && h.compressAlgorithm === 1;
    this.hasMarker = h.kind === 'vmdk4' && (h.flags & VMDK4_FLAG_MARKER) !== 0;
    this.zeroGrain = h.kind === 'vmdk4' && (h.flags & VMDK4_FLAG_ZERO_GRAIN) !== 0;
    this.gdAtEnd = init.gdAtEnd;
    this.type = init.type;
    this.infoFilename = init.infoFilename;
    this.fileSize = init.fileSize;
    // QEMU: next_cluster_sector = ROUND_UP(file sectors, grain sectors).
    this.nextSector = Math.ceil(Math.ceil(init.fileSize / SECTOR) / h.granularity) * h.granularity;
    this.cacheLimit = Math.max(16, Math.floor(GT_CACHE_BYTES / (h.gtEntries * 4)));
  }

  /**
   * Check a sparse header as QEMU's vmdk_open_vmdk4 / vmdk_add_extent do (same words), and
   * what vdisk needs beyond it: the directories must lie inside the file and cover the
   * capacity. Returns the number of GD entries.
   */
  static validate(h: SparseHeader, fileSize: number, writable: boolean): number {
    const inv = (m: string) => new VdiskError('INVALID_IMAGE', m);
    if (h.kind === 'vmdk4') {
      const compressed = h.compressAlgorithm === 1;
      if (h.version > 3) throw new VdiskError('UNSUPPORTED', `Unsupported VMDK version ${h.version}`);
      if (h.version === 3 && writable && !compressed) throw inv('VMDK version 3 must be read only');
      if (h.gtEntries > 512) throw inv('L2 table size too big');
    }
    const l1EntrySectors = h.gtEntries * h.granularity;
    if (l1EntrySectors === 0) throw inv('L1 entry size is invalid');
    const gdEntries = h.kind === 'cowd' ? h.gdEntries : Math.ceil(h.capacity / l1EntrySectors);
    if (h.kind === 'vmdk4' && Math.ceil(fileSize / SECTOR) < h.grainOffset) {
      throw inv(`File truncated, expecting at least ${h.grainOffset * SECTOR} bytes`);
    }
    if (h.granularity > MAX_GRAIN_SECTORS)
      throw new VdiskError('TOO_LARGE', 'Invalid granularity, image may be corrupt');
    if (gdEntries > MAX_GD_ENTRIES) throw new VdiskError('TOO_LARGE', 'L1 size too big');
    for (const [v, what] of [
      [h.capacity, 'capacity'],
      [h.gdOffset, 'grain directory offset'],
      [h.rgdOffset, 'redundant grain directory offset'],
      [h.grainOffset, 'grain offset'],
    ] as const) {
      if (v * SECTOR > Number.MAX_SAFE_INTEGER)
        throw inv(`Invalid VMDK header: ${what} ${v} is out of range`);
    }
    // Beyond QEMU (which reads zeros past the end and fails later, or never):
    if (gdEntries * l1EntrySectors < h.capacity) {
      throw inv(`Invalid VMDK image: the grain directory (${gdEntries} entries) does not cover the capacity`);
    }
    const gdBytes = gdEntries * 4;
    for (const [off, what] of [
      [h.gdOffset, 'grain directory'],
      [h.rgdOffset, 'redundant grain directory'],
    ] as const) {
      if (off > 0 && off * SECTOR + gdBytes > fileSize) {
        throw inv(`Invalid VMDK image: the ${what} at sector ${off} lies past the end of the file`);
      }
    }
    return gdEntries;
  }

  // ---- grain tables ----

  private gtBytes(): number {
    return this.gtEntries * 4;
  }

  private async loadGt(l1: number, sector: number): Promise<Uint32Array> {
    const hit = this.cache.get(l1);
    if (hit !== undefined) {
      // LRU: move to the end.
      this.cache.delete(l1);
      this.cache.set(l1, hit);
      return hit.table;
    }
    const pending = this.loading.get(l1);
    if (pending !== undefined) return pending;
    const p = (async () => {
      if (sector * SECTOR + this.gtBytes() > this.fileSize) {
        throw new VdiskError(
          'CORRUPT_IMAGE',
          `VMDK grain table ${l1} at sector ${sector} lies past the end of '${this.file.path}'`,
          { path: this.file.path, offset: sector * SECTOR },
        );
      }
      // Read ahead over the following tables when they lie right after this one (QEMU lays
      // them out so): one read instead of one per 32 MiB of disk.
      const stride = Math.ceil(this.gtBytes() / SECTOR);
      let n = 1;
      while (
        n < READ_AHEAD_TABLES &&
        l1 + n < this.gd.length &&
        this.gd[l1 + n] === sector + n * stride &&
        !this.cache.has(l1 + n) &&
        !this.loading.has(l1 + n) &&
        (sector + (n + 1) * stride) * SECTOR <= this.fileSize
      ) {
        n++;
      }
      const raw = new Uint8Array(n * stride * SECTOR);
      await this.file.read(raw, sector * SECTOR);
      const v = new DataView(raw.buffer);
      let mine: Uint32Array | undefined;
      for (let t = 0; t < n; t++) {
        // A table that reached the cache meanwhile (and may hold newer entries) wins.
        const existing = this.cache.get(l1 + t);
        if (existing !== undefined) {
          if (t === 0) mine = existing.table;
          continue;
        }
        const table = new Uint32Array(this.gtEntries);
        const base = t * stride * SECTOR;
        for (let i = 0; i < table.length; i++) table[i] = v.getUint32(base + i * 4, true);
        this.cache.set(l1 + t, { table, pins: 0 });
        if (t === 0) mine = table;
      }
      this.evict();
      return mine!;
    })();
    this.loading.set(l1, p);
    try {
      return await p;
    } finally {
      this.loading.delete(l1);
    }
  }

  private evict(): void {
    if (this.cache.size <= this.cacheLimit) return;
    for (const [k, v] of this.cache) {
      if (this.cache.size <= this.cacheLimit) break;
      if (v.pins === 0) this.cache.delete(k);
    }
  }

  /** State of grain `g` when it is known without I/O (table cached or absent). */
  private peek(g: number): GrainState | undefined {
    const l1 = Math.floor(g / this.gtEntries);
    if (l1 >= this.gd.length) return undefined;
    if (this.gd[l1] === 0) return UNALLOCATED;
    const cached = this.cache.get(l1);
    if (cached === undefined) return undefined;
    const e = cached.table[g % this.gtEntries]!;
    if (e === 0) return UNALLOCATED;
    if (this.zeroGrain && e === GTE_ZEROED) return ZEROED;
    return { kind: 'data', sector: e };
  }

  /** State of grain `g` (index within the extent). */
  private async lookup(g: number): Promise<GrainState> {
    const l1 = Math.floor(g / this.gtEntries);
    if (l1 >= this.gd.length) {
      throw new VdiskError('CORRUPT_IMAGE', `VMDK grain ${g} lies beyond the grain directory`, {
        path: this.file.path,
      });
    }
    const gtSector = this.gd[l1]!;
    if (gtSector === 0) return UNALLOCATED;
    const table = await this.loadGt(l1, gtSector);
    const e = table[g % this.gtEntries]!;
    if (e === 0) return UNALLOCATED;
    if (this.zeroGrain && e === GTE_ZEROED) return ZEROED;
    return { kind: 'data', sector: e };
  }

  /** Bytes of grain g inside the extent (the last grain may be short). */
  private grainLength(g: number): number {
    return Math.min(this.grainSize, this.size - g * this.grainSize);
  }

  private dataOffset(g: number, sector: number): number {
    const off = sector * SECTOR;
    const need = this.compressed ? MARKER_BYTES : this.grainLength(g);
    if (off + need > this.fileSize) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `VMDK grain ${g} at sector ${sector} lies past the end of '${this.file.path}'`,
        { path: this.file.path, offset: off },
      );
    }
    return off;
  }

  // ---- status and reads ----

  async status(offset: number, length: number): Promise<Extent> {
    const gs = this.grainSize;
    const per = this.gtEntries;
    let g = Math.floor(offset / gs);
    const end = offset + length;
    const first = await this.lookup(g);
    const firstHost = first.kind === 'data' ? this.dataOffset(g, first.sector) : 0;
    let nextHost = firstHost + gs;
    let pos = (g + 1) * gs;
    g++;
    // Extend over grains of the same state (and, for plain data, contiguous on the host):
    // synchronously over cached tables, a whole table at once where the directory has none.
    while (pos < end) {
      const l1 = Math.floor(g / per);
      if (first.kind === 'unallocated' && g % per === 0 && l1 < this.gd.length && this.gd[l1] === 0) {
        g += per;
        pos += per * gs;
        continue;
      }
      const s = this.peek(g) ?? (await this.lookup(g));
      if (s.kind !== first.kind) break;
      if (s.kind === 'data' && !this.compressed) {
        if (this.dataOffset(g, s.sector) !== nextHost) break;
        nextHost += gs;
      }
      pos += gs;
      g++;
    }
    const len = Math.min(pos, end) - offset;
    switch (first.kind) {
      case 'unallocated':
        return { offset, length: len, allocated: false, zero: true, data: false };
      case 'zero':
        return { offset, length: len, allocated: true, zero: true, data: false };
      case 'data':
        if (this.compressed) {
          return { offset, length: len, allocated: true, zero: false, data: true, compressed: true };
        }
        return {
          offset,
          length: len,
          allocated: true,
          zero: false,
          data: true,
          hostOffset: firstHost + (offset % gs),
          file: this.file.path,
        };
    }
  }

  async read(buf: Uint8Array, offset: number, below: Below): Promise<void> {
    const jobs = new Jobs();
    let pos = 0;
    while (pos < buf.length) {
      const e = await this.status(offset + pos, buf.length - pos);
      const part = buf.subarray(pos, pos + e.length);
      if (!e.allocated) {
        if (below.hasBacking) jobs.add(below.read(part, this.start + offset + pos));
        else part.fill(0);
      } else if (e.zero) part.fill(0);
      else if (e.compressed) jobs.add(this.readCompressed(part, offset + pos));
      else jobs.add(this.file.read(part, e.hostOffset!));
      pos += e.length;
    }
    await jobs.done();
  }

  /** Read [offset, +buf.length) out of compressed grains. */
  private async readCompressed(buf: Uint8Array, offset: number): Promise<void> {
    const gs = this.grainSize;
    const jobs: Promise<void>[] = [];
    for (let pos = 0; pos < buf.length; ) {
      const g = Math.floor((offset + pos) / gs);
      const inGrain = (offset + pos) % gs;
      const n = Math.min(buf.length - pos, gs - inGrain);
      const dst = buf.subarray(pos, pos + n);
      jobs.push(
        this.grainContent(g).then((grain) => {
          if (grain === null || inGrain + n > grain.length) {
            throw new VdiskError('CORRUPT_IMAGE', `VMDK compressed grain ${g} is shorter than the grain`, {
              path: this.file.path,
            });
          }
          dst.set(grain.subarray(inGrain, inGrain + n));
        }),
      );
      pos += n;
    }
    await Promise.all(jobs);
  }

  /** The decompressed content of an allocated compressed grain (null when not allocated). */
  private async grainContent(g: number): Promise<Uint8Array | null> {
    const s = await this.lookup(g);
    if (s.kind !== 'data') return null;
    const off = this.dataOffset(g, s.sector);
    let data: Uint8Array;
    if (this.hasMarker) {
      const head = new Uint8Array(MARKER_BYTES);
      await this.file.read(head, off);
      const size = new DataView(head.buffer).getUint32(8, true);
      // QEMU reads two grains and refuses a length beyond them.
      if (size === 0 || size > 2 * this.grainSize || off + MARKER_BYTES + size > this.fileSize) {
        throw new VdiskError('CORRUPT_IMAGE', `VMDK compressed grain ${g} has an invalid length ${size}`, {
          path: this.file.path,
          offset: off,
        });
      }
      data = new Uint8Array(size);
      await this.file.read(data, off + MARKER_BYTES);
    } else {
      data = new Uint8Array(Math.min(2 * this.grainSize, this.fileSize - off));
      await this.file.read(data, off);
    }
    try {
      return await inflate(data, { maxOutputLength: this.grainSize });
    } catch (err) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `VMDK compressed grain ${g} does not decompress: ${(err as Error).message}`,
        { path: this.file.path, offset: off, cause: err },
      );
    }
  }

  // ---- writes ----

  private refuseStreamWrite(): void {
    if (this.gdAtEnd) {
      throw new VdiskError(
        'UNSUPPORTED',
        `Cannot write to '${this.file.path}': a stream whose grain directory is at the end is read-only in vdisk`,
        { path: this.file.path },
      );
    }
  }

  async write(buf: Uint8Array, offset: number, below: Below): Promise<void> {
    this.refuseStreamWrite();
    if (this.compressed) return this.writeGrainsCompressed(buf, offset, below);
    // Fast path: every grain is already allocated (plain data): write in place, in parallel.
    let inPlace = true;
    const gs = this.grainSize;
    for (let g = Math.floor(offset / gs); g * gs < offset + buf.length; g++) {
      if ((await this.lookup(g)).kind !== 'data') {
        inPlace = false;
        break;
      }
    }
    if (inPlace) return this.writeInPlace(buf, offset);
    await this.alloc.run(() => this.writeAllocating(buf, offset, below));
  }

  private async writeInPlace(buf: Uint8Array, offset: number): Promise<void> {
    const jobs = new Jobs();
    for (let pos = 0; pos < buf.length; ) {
      const e = await this.status(offset + pos, buf.length - pos);
      jobs.add(this.file.write(buf.subarray(pos, pos + e.length), e.hostOffset!));
      pos += e.length;
    }
    await jobs.done();
  }

  /**
   * Write with allocation (under the allocation lock): new grains are filled around the data
   * from the backing image (copy-on-write) or with zeros, written whole, and only then
   * entered in the grain tables.
   */
  private async writeAllocating(buf: Uint8Array, offset: number, below: Below): Promise<void> {
    const gs = this.grainSize;
    const end = offset + buf.length;
    const updates: Array<[g: number, value: number]> = [];
    // Consecutive new grains are gathered and written with one request.
    let run: { sector: number; parts: Uint8Array[] } | null = null;
    const flushRun = async () => {
      if (run === null) return;
      const total = run.parts.reduce((a, p) => a + p.length, 0);
      const data = run.parts.length === 1 ? run.parts[0]! : Buffer.concat(run.parts, total);
      await this.file.write(data, run.sector * SECTOR);
      this.fileSize = Math.max(this.fileSize, run.sector * SECTOR + total);
      run = null;
    };
    for (let pos = offset; pos < end; ) {
      const g = Math.floor(pos / gs);
      const inGrain = pos % gs;
      const glen = this.grainLength(g);
      const n = Math.min(end - pos, glen - inGrain);
      const part = buf.subarray(pos - offset, pos - offset + n);
      const s = await this.lookup(g);
      if (s.kind === 'data') {
        await flushRun();
        await this.file.write(part, this.dataOffset(g, s.sector) + inGrain);
        pos += n;
        continue;
      }
      let grain: Uint8Array;
      if (n === glen) grain = part;
      else {
        grain = new Uint8Array(glen);
        if (s.kind === 'unallocated' && below.hasBacking) await below.read(grain, this.start + g * gs);
        grain.set(part, inGrain);
      }
      const sector = this.allocateSectors(Math.ceil(glen / SECTOR), true);
      if (
        run !== null &&
        run.sector + Math.ceil(run.parts.reduce((a, p) => a + p.length, 0) / SECTOR) !== sector
      ) {
        await flushRun();
      }
      if (run === null) run = { sector, parts: [] };
      // A short last grain is padded to a whole grain on disk, as QEMU writes it.
      run.parts.push(padTo(grain, gs));
      updates.push([g, sector]);
      pos += n;
    }
    await flushRun();
    await this.setEntries(updates);
  }

  /** Reserve sectors at the end of the file. */
  private allocateSectors(sectors: number, grainAligned: boolean): number {
    const g = this.header.granularity;
    if (grainAligned) this.nextSector = Math.ceil(this.nextSector / g) * g;
    const sector = this.nextSector;
    if (sector + sectors > MAX_SECTOR) {
      throw new VdiskError(
        'TOO_LARGE',
        `VMDK extent '${this.file.path}' is full (grain sectors are 32-bit)`,
        {
          path: this.file.path,
        },
      );
    }
    this.nextSector += sectors;
    return sector;
  }

  /** Enter new GT values (in memory, then on disk: primary and redundant tables). */
  private async setEntries(updates: Array<[g: number, value: number]>): Promise<void> {
    if (updates.length === 0) return;
    const byGt = new Map<number, Array<[number, number]>>();
    for (const [g, v] of updates) {
      const l1 = Math.floor(g / this.gtEntries);
      const list = byGt.get(l1) ?? [];
      byGt.set(l1, list);
      list.push([g % this.gtEntries, v]);
    }
    for (const [l1, list] of byGt) {
      if (this.gd[l1] === 0) await this.allocateGt(l1);
      const table = await this.loadGt(l1, this.gd[l1]!);
      const cached = this.cache.get(l1);
      if (cached !== undefined) cached.pins++;
      try {
        let lo = Number.POSITIVE_INFINITY;
        let hi = -1;
        for (const [i, v] of list) {
          table[i] = v;
          lo = Math.min(lo, i);
          hi = Math.max(hi, i);
        }
        const out = new Uint8Array((hi - lo + 1) * 4);
        const view = new DataView(out.buffer);
        for (let i = lo; i <= hi; i++) view.setUint32((i - lo) * 4, table[i]!, true);
        await this.file.write(out, this.gd[l1]! * SECTOR + lo * 4);
        if (this.rgd !== null && this.rgd[l1] !== 0)
          await this.file.write(out, this.rgd[l1]! * SECTOR + lo * 4);
      } finally {
        if (cached !== undefined) cached.pins--;
      }
    }
  }

  /**
   * A grain table the directory does not have yet (images from other tools; QEMU's own
   * images have all their tables): zeroed tables are written first, then the directories.
   */
  private async allocateGt(l1: number): Promise<void> {
    const sectors = Math.ceil(this.gtBytes() / SECTOR);
    const zero = new Uint8Array(sectors * SECTOR);
    const primary = this.allocateSectors(sectors, false);
    await this.file.write(zero, primary * SECTOR);
    let redundant = 0;
    if (this.rgd !== null) {
      redundant = this.allocateSectors(sectors, false);
      await this.file.write(zero, redundant * SECTOR);
    }
    this.fileSize = Math.max(this.fileSize, this.nextSector * SECTOR);
    const entry = new Uint8Array(4);
    new DataView(entry.buffer).setUint32(0, primary, true);
    await this.file.write(entry, this.header.gdOffset * SECTOR + l1 * 4);
    if (this.rgd !== null) {
      new DataView(entry.buffer).setUint32(0, redundant, true);
      await this.file.write(entry, this.header.rgdOffset * SECTOR + l1 * 4);
      this.rgd[l1] = redundant;
    }
    this.gd[l1] = primary;
  }

  async writeZeroes(offset: number, length: number, below: Below): Promise<void> {
    this.refuseStreamWrite();
    const gs = this.grainSize;
    await this.alloc.run(async () => {
      const updates: Array<[number, number]> = [];
      for (let pos = offset; pos < offset + length; ) {
        const g = Math.floor(pos / gs);
        const inGrain = pos % gs;
        const glen = this.grainLength(g);
        const n = Math.min(offset + length - pos, glen - inGrain);
        const s = await this.lookup(g);
        if (this.zeroGrain && n === glen) {
          // The zeroed-grain feature: one GT entry, no data (QEMU's zeroed write).
          if (s.kind !== 'zero') updates.push([g, GTE_ZEROED]);
        } else if (s.kind === 'zero' || (s.kind === 'unallocated' && !below.hasBacking)) {
          // Already reads as zeros.
        } else if (this.compressed) {
          await this.rewriteCompressedGrain(g, inGrain, new Uint8Array(n), below);
        } else {
          await this.writeAllocating(new Uint8Array(n), pos, below);
        }
        pos += n;
      }
      await this.setEntries(updates);
    });
  }

  // ---- compressed grains ----

  /**
   * A whole grain, compressed off the main thread (zlib on libuv's pool), then appended with
   * its marker and entered in the grain table.
   */
  async writeCompressed(buf: Uint8Array, offset: number): Promise<void> {
    const commit = await this.prepareCompressed(buf, offset);
    await commit();
  }

  async prepareCompressed(buf: Uint8Array, offset: number): Promise<() => Promise<void>> {
    this.refuseStreamWrite();
    const g = offset / this.grainSize;
    if (!Number.isInteger(g) || buf.length !== this.grainLength(g)) {
      throw new VdiskError('INVALID_ARGUMENT', 'Compressed writes must cover exactly one grain', {
        path: this.file.path,
        offset,
      });
    }
    const packed = await this.pack(buf, g);
    return () => this.alloc.run(() => this.appendGrain(g, packed));
  }

  /**
   * A run of whole grains (the last may be the extent's short last grain), each compressed on
   * the pool now; the returned function appends them back to back with one vectored write
   * and enters them with one grain-table update, as consecutive writeCompressed calls would.
   */
  async prepareCompressedRange(buf: Uint8Array, offset: number): Promise<() => Promise<void>> {
    this.refuseStreamWrite();
    const gs = this.grainSize;
    const g0 = offset / gs;
    const count = Math.ceil(buf.length / gs);
    let expected = 0;
    for (let i = 0; i < count && Number.isInteger(g0); i++) expected += this.grainLength(g0 + i);
    if (!Number.isInteger(g0) || count === 0 || buf.length !== expected) {
      throw new VdiskError('INVALID_ARGUMENT', 'Compressed writes must cover whole grains', {
        path: this.file.path,
        offset,
      });
    }
    const packed = await Promise.all(
      Array.from({ length: count }, (_, i) =>
        this.pack(buf.subarray(i * gs, Math.min(buf.length, (i + 1) * gs)), g0 + i),
      ),
    );
    return () =>
      this.alloc.run(async () => {
        let sectors = 0;
        for (const p of packed) sectors += p.length / SECTOR;
        const first = this.allocateSectors(sectors, false);
        await this.file.writev(packed, first * SECTOR);
        this.fileSize = Math.max(this.fileSize, (first + sectors) * SECTOR);
        const updates: Array<[number, number]> = [];
        let sector = first;
        for (let i = 0; i < count; i++) {
          updates.push([g0 + i, sector]);
          sector += packed[i]!.length / SECTOR;
        }
        await this.setEntries(updates);
      });
  }

  private pack(grain: Uint8Array, g: number): Promise<Uint8Array> {
    // The grain's LBA in the whole disk, as QEMU writes it.
    return packGrain(grain, (this.start + g * this.grainSize) / SECTOR, this.packing);
  }

  private async appendGrain(g: number, packed: Uint8Array): Promise<void> {
    // Compressed grains follow each other sector by sector (QEMU: next = end of the last one).
    const sector = this.allocateSectors(packed.length / SECTOR, false);
    await this.file.write(packed, sector * SECTOR);
    this.fileSize = Math.max(this.fileSize, sector * SECTOR + packed.length);
    await this.setEntries([[g, sector]]);
  }

  /** Read-modify-write of one compressed grain (QEMU refuses this; vdisk appends a new copy). */
  private async rewriteCompressedGrain(
    g: number,
    inGrain: number,
    data: Uint8Array,
    below: Below,
  ): Promise<void> {
    const glen = this.grainLength(g);
    let grain: Uint8Array;
    if (inGrain === 0 && data.length === glen) grain = data;
    else {
      const s = await this.lookup(g);
      grain = new Uint8Array(glen);
      if (s.kind === 'data') {
        const old = await this.grainContent(g);
        grain.set(old!.subarray(0, glen));
      } else if (s.kind === 'unallocated' && below.hasBacking) {
        await below.read(grain, this.start + g * this.grainSize);
      }
      grain.set(data, inGrain);
    }
    await this.appendGrain(g, await this.pack(grain, g));
  }

  private async writeGrainsCompressed(buf: Uint8Array, offset: number, below: Below): Promise<void> {
    const gs = this.grainSize;
    // Compress whole grains in parallel; partial ones go through read-modify-write.
    const jobs: Promise<void>[] = [];
    for (let pos = offset; pos < offset + buf.length; ) {
      const g = Math.floor(pos / gs);
      const inGrain = pos % gs;
      const glen = this.grainLength(g);
      const n = Math.min(offset + buf.length - pos, glen - inGrain);
      const part = buf.subarray(pos - offset, pos - offset + n);
      if (inGrain === 0 && n === glen) jobs.push(this.writeCompressed(part, pos));
      else jobs.push(this.alloc.run(() => this.rewriteCompressedGrain(g, inGrain, part, below)));
      pos += n;
    }
    await Promise.all(jobs);
  }

  // ---- check ----

  /**
   * QEMU's vmdk_co_check walk: every grain's table entry is looked up, and an allocated one
   * must start inside the file. The first problem ends the walk (QEMU then fails the check
   * with -EINVAL, or -1 = EPERM when a table cannot be read).
   */
  async check(): Promise<CheckProblem | null> {
    const lookupFailed = (sector: number) => ({
      message: `ERROR: could not get cluster_offset for sector ${sector}`,
      failure: 'Operation not permitted',
    });
    const len = await this.file.size();
    const grains = Math.ceil(this.size / this.grainSize);
    const gsSectors = this.header.granularity;
    for (let l1 = 0; l1 * this.gtEntries < grains; l1++) {
      const firstGrain = l1 * this.gtEntries;
      const sectorOf = (g: number) => this.start / SECTOR + g * gsSectors;
      if (l1 >= this.gd.length) return lookupFailed(sectorOf(firstGrain));
      if (this.gd[l1] === 0) continue;
      let table: Uint32Array;
      try {
        table = await this.loadGt(l1, this.gd[l1]!);
      } catch {
        return lookupFailed(sectorOf(firstGrain));
      }
      for (let i = 0; i < this.gtEntries && firstGrain + i < grains; i++) {
        const e = table[i]!;
        if (e === 0 || (this.zeroGrain && e === GTE_ZEROED)) continue;
        if (e * SECTOR >= len) {
          return {
            message: `ERROR: cluster offset for sector ${sectorOf(firstGrain + i)} points after EOF`,
            failure: 'Invalid argument',
          };
        }
      }
    }
    return null;
  }

  async flushMetadata(): Promise<void> {
    // Tables are written as they change; wait for allocations in flight.
    await this.alloc.run(async () => {});
  }
}

/**
 * A grain as a compressed extent stores it: its marker (the grain's LBA in the whole disk, u64,
 * and the zlib data's length, u32), the zlib data, zeros up to a whole sector. Compressed on
 * libuv's pool (one output chunk as large as the grain: one trip per grain), at most as many
 * at once as `slots` allows (MAX_PACKING for its owner).
 */
export async function packGrain(grain: Uint8Array, lba: number, slots: Slots): Promise<Uint8Array> {
  const release = await slots.take();
  let z: Uint8Array;
  try {
    z = await deflateZlib(grain);
  } finally {
    release();
  }
  const out = new Uint8Array(Math.ceil((MARKER_BYTES + z.length) / SECTOR) * SECTOR);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, BigInt(lba), true);
  v.setUint32(8, z.length, true);
  out.set(z, MARKER_BYTES);
  return out;
}

function padTo(buf: Uint8Array, size: number): Uint8Array {
  if (buf.length >= size) return buf;
  const out = new Uint8Array(size);
  out.set(buf);
  return out;
}
