/**
 * The persistent bitmaps of one open qcow2 image, as QEMU keeps them between open and close:
 * checked at open (a bad directory or table fails the open, as in QEMU), marked in use in the
 * image before the first guest write, the written ranges tracked in memory for the enabled
 * (auto) bitmaps, and stored at close with in_use cleared. Also the operations of
 * `qemu-img bitmap` (add, remove, clear, enable, disable, merge), with QEMU's messages.
 */
import type { BitmapBits, DirtyBitmaps } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import {
  type BitmapEntry,
  type BitmapStore,
  type BitmapsExt,
  BME_MAX_GRANULARITY_BITS,
  BME_MAX_NAME_SIZE,
  BME_MAX_PHYS_SIZE,
  BME_MAX_TABLE_SIZE,
  BME_MIN_GRANULARITY_BITS,
  bitmapBytes,
  clearTail,
  FLAG_AUTO,
  FLAG_IN_USE,
  freeBitmapClusters,
  infoFlags,
  loadBitmapData,
  loadBitmapDirectory,
  MAX_BITMAP_DIRECTORY_SIZE,
  MAX_BITMAPS,
  readBitmapTable,
  setRange,
  storeBitmapData,
  storeDirectory,
  tableEntries,
  writeDirectoryInPlace,
} from './bitmaps.js';

/** What qemu-img info lists for a bitmap. */
export interface BitmapInfo {
  name: string;
  granularity: number;
  flags: string[];
}

interface Slot {
  /** As stored in the image now. */
  entry: BitmapEntry;
  /** in_use when the image was opened: the data is unusable (QEMU's "inconsistent"). */
  inconsistent: boolean;
  enabled: boolean;
  granularityBits: number;
  /** Loaded (or new) bits; undefined while the stored data is still right. */
  bits?: Uint8Array;
  /** Not in the image yet (added in this session). */
  fresh: boolean;
}

const opError = (msg: string) => new VdiskError('INVALID_ARGUMENT', msg);

export class PersistentBitmaps implements DirtyBitmaps {
  private slots: Slot[];
  /** Guest ranges written since open (merged into the enabled bitmaps at close). */
  private written: { bits: Uint8Array; granularityBits: number } | undefined;
  private markedInUse = false;
  private changed = false;
  /** Enabled bitmaps handed out by live(): every guest write is set in their bits at once. */
  private readonly liveSlots = new Set<Slot>();

  private constructor(
    private readonly store: BitmapStore,
    private ext: BitmapsExt | undefined,
    list: BitmapEntry[],
    private size: number,
    private readonly path: string,
    private readonly version: number,
  ) {
    this.slots = list.map((entry) => ({
      entry,
      inconsistent: (entry.flags & FLAG_IN_USE) !== 0,
      enabled: (entry.flags & FLAG_AUTO) !== 0,
      granularityBits: entry.granularityBits,
      fresh: false,
    }));
  }

  /**
   * Read and check the directory and every consistent bitmap's table (QEMU loads them on
   * open and refuses the image when one is bad). Tables are at most 512 MiB / cluster size
   * entries each (the directory's constraints).
   */
  static async open(
    store: BitmapStore,
    ext: BitmapsExt | undefined,
    size: number,
    path: string,
    version: number,
  ): Promise<PersistentBitmaps> {
    const list =
      ext === undefined ? [] : await loadBitmapDirectory(store.file, ext, store.clusterSize, size, path);
    for (const e of list) {
      if ((e.flags & FLAG_IN_USE) !== 0) continue;
      const table = await readBitmapTable(store.file, e, store.clusterSize);
      if (table.some((t) => t.bad)) {
        throw new VdiskError(
          'INVALID_IMAGE',
          `Could not read bitmap_table table from image for bitmap '${e.name}': Invalid argument`,
          { path },
        );
      }
      if (e.tableSize !== tableEntries(size, e.granularityBits, store.clusterSize)) {
        throw new VdiskError(
          'INVALID_IMAGE',
          `Could not read bitmap '${e.name}' from image: Invalid argument`,
          {
            path,
          },
        );
      }
    }
    return new PersistentBitmaps(store, ext, list, size, path, version);
  }

  get supported(): boolean {
    return this.version >= 3;
  }

  get count(): number {
    return this.slots.length;
  }

  /** The directory as it is in the image (qemu-img info). */
  info(): BitmapInfo[] {
    return this.slots
      .filter((s) => !s.fresh)
      .map((s) => ({
        name: s.entry.name,
        granularity: 2 ** s.entry.granularityBits,
        flags: infoFlags(s.entry.flags),
      }));
  }

  /** Names and state, the session's view (convert --bitmaps, tests). */
  list(): Array<{ name: string; granularity: number; enabled: boolean; inconsistent: boolean }> {
    return this.slots.map((s) => ({
      name: s.entry.name,
      granularity: 2 ** s.granularityBits,
      enabled: s.enabled,
      inconsistent: s.inconsistent,
    }));
  }

  /** Before the first guest write: every consistent bitmap is marked in use in the image. */
  async beginWrite(): Promise<void> {
    if (this.markedInUse || this.ext === undefined) return;
    this.markedInUse = true;
    const stored = this.slots.filter((s) => !s.fresh).map((s) => s.entry);
    const marked = stored.map((e) => ({ ...e, flags: e.flags | FLAG_IN_USE }));
    if (marked.every((e, i) => e.flags === stored[i]!.flags)) return;
    await writeDirectoryInPlace(this.store, marked, this.ext);
    for (const s of this.slots) if (!s.fresh) s.entry = { ...s.entry, flags: s.entry.flags | FLAG_IN_USE };
    this.changed = true;
  }

  /**
   * A guest write (or zeroing, discard) of [offset, offset + length): noted in one bitmap at
   * the finest granularity of the enabled bitmaps (no larger than any of them), folded into
   * each at close.
   */
  noteWrite(offset: number, length: number): void {
    if (length <= 0) return;
    for (const s of this.liveSlots)
      if (s.bits !== undefined) setRange(s.bits, s.granularityBits, this.size, offset, length);
    if (this.written === undefined) {
      let g = Number.POSITIVE_INFINITY;
      for (const s of this.slots) if (s.enabled && !s.inconsistent) g = Math.min(g, s.granularityBits);
      if (!Number.isFinite(g)) return;
      this.written = { bits: new Uint8Array(bitmapBytes(this.size, g)), granularityBits: g };
    }
    setRange(this.written.bits, this.written.granularityBits, this.size, offset, length);
  }

  private find(name: string): Slot | undefined {
    return this.slots.find((s) => s.entry.name === name);
  }

  private async bitsOf(s: Slot): Promise<Uint8Array> {
    if (s.bits === undefined) {
      s.bits = s.inconsistent
        ? new Uint8Array(bitmapBytes(this.size, s.granularityBits))
        : await loadBitmapData(
            this.store.file,
            { ...s.entry, flags: 0 },
            this.store.clusterSize,
            this.size,
            this.path,
          );
    }
    return s.bits;
  }

  private usable(name: string): Slot {
    const s = this.find(name);
    if (s === undefined) throw opError(`Dirty bitmap '${name}' not found`);
    if (s.inconsistent) {
      throw opError(
        `Bitmap '${name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk`,
      );
    }
    return s;
  }

  /** qemu-img bitmap --add (QMP block-dirty-bitmap-add, persistent). */
  add(name: string, granularity: number | undefined, disabled: boolean, nodeName: string): void {
    if (name === '') throw opError('Bitmap name cannot be empty');
    // QEMU's bdrv_get_default_bitmap_granularity: the cluster size, within [4 KiB, 64 KiB].
    const g = granularity ?? Math.min(65536, Math.max(4096, this.store.clusterSize));
    if (g < 512 || (g & (g - 1)) !== 0 || g > 2 ** 31) {
      throw opError('Granularity must be power of 2 and at least 512');
    }
    const bits = Math.log2(g);
    const why = this.cannotStore(name, bits);
    if (why !== undefined) throw opError(`Can't make bitmap '${name}' persistent in '${nodeName}': ${why}`);
    if (this.find(name) !== undefined) throw opError(`Bitmap already exists: ${name}`);
    this.slots.push({
      entry: { name, flags: 0, granularityBits: bits, tableOffset: 0, tableSize: 0 },
      inconsistent: false,
      enabled: !disabled,
      granularityBits: bits,
      bits: new Uint8Array(bitmapBytes(this.size, bits)),
      fresh: true,
    });
    this.changed = true;
  }

  /** QEMU's qcow2_co_can_store_new_dirty_bitmap and check_constraints_on_bitmap. */
  private cannotStore(name: string, bits: number): string | undefined {
    if (this.version < 3) return 'Cannot store dirty bitmaps in qcow2 v2 files';
    if (bits > BME_MAX_GRANULARITY_BITS) {
      return `Granularity exceeds maximum (${2 ** BME_MAX_GRANULARITY_BITS} bytes)`;
    }
    if (bits < BME_MIN_GRANULARITY_BITS)
      return `Granularity is under minimum (${2 ** BME_MIN_GRANULARITY_BITS} bytes)`;
    const bytes = bitmapBytes(this.size, bits);
    if (bytes > BME_MAX_PHYS_SIZE || bytes > BME_MAX_TABLE_SIZE * this.store.clusterSize) {
      return 'Too much space will be occupied by the bitmap. Use larger granularity';
    }
    if (Buffer.byteLength(name) > BME_MAX_NAME_SIZE) {
      return `Name length exceeds maximum (${BME_MAX_NAME_SIZE} characters)`;
    }
    // QEMU counts the bitmaps in the image, not those added since open.
    if ((this.ext?.count ?? 0) >= MAX_BITMAPS)
      return 'Maximum number of persistent bitmaps is already reached';
    if (
      (this.ext?.dirSize ?? 0) + Math.ceil((24 + Buffer.byteLength(name)) / 8) * 8 >
      MAX_BITMAP_DIRECTORY_SIZE
    ) {
      return 'Not enough space in the bitmap directory';
    }
    return undefined;
  }

  /** --remove: gone from the image at once (QEMU's qcow2_co_remove_persistent_dirty_bitmap). */
  async remove(name: string): Promise<void> {
    const s = this.find(name);
    if (s === undefined) throw opError(`Dirty bitmap '${name}' not found`);
    this.slots = this.slots.filter((x) => x !== s);
    if (s.fresh) return;
    const stored = this.slots.filter((x) => !x.fresh).map((x) => x.entry);
    this.ext = await storeDirectory(this.store, stored, this.ext);
    await freeBitmapClusters(this.store, s.entry);
  }

  async clear(name: string): Promise<void> {
    const s = this.usable(name);
    s.bits = new Uint8Array(bitmapBytes(this.size, s.granularityBits));
    this.changed = true;
  }

  enable(name: string, on: boolean): void {
    const s = this.usable(name);
    s.enabled = on;
    this.changed = true;
  }

  /** --merge: dest |= source (granularities may differ, as in QEMU's hbitmap_merge). */
  async merge(name: string, source: BitmapBits): Promise<void> {
    const s = this.usable(name);
    const dst = await this.bitsOf(s);
    if (source.granularityBits === s.granularityBits) {
      const n = Math.min(dst.length, source.bits.length);
      for (let i = 0; i < n; i++) dst[i]! |= source.bits[i]!;
    } else {
      // One setRange per run of set bits: O(bytes + runs), whatever the granularities.
      const g = 2 ** source.granularityBits;
      forEachRun(source.bits, Math.ceil(this.size / g), (first, end) =>
        setRange(dst, s.granularityBits, this.size, first * g, (end - first) * g),
      );
    }
    this.changed = true;
  }

  /** A bitmap's bits for a merge source (usable bitmaps only). */
  async source(name: string): Promise<BitmapBits> {
    const s = this.usable(name);
    return { bits: await this.bitsOf(s), granularityBits: s.granularityBits };
  }

  /**
   * A usable bitmap's bits as they are now, for a reader that keeps them (vdisk nbd -B): the
   * ranges written so far are set in an enabled bitmap's bits, and noteWrite sets the later
   * ones at once, as QEMU's live bitmap sees each write. (Close merges the same ranges again.)
   */
  async live(name: string): Promise<BitmapBits> {
    const s = this.usable(name);
    const bits = await this.bitsOf(s);
    if (s.enabled && !this.liveSlots.has(s)) {
      const w = this.written;
      if (w !== undefined) {
        const g = 2 ** w.granularityBits;
        forEachRun(w.bits, Math.ceil(this.size / g), (first, end) =>
          setRange(bits, s.granularityBits, this.size, first * g, (end - first) * g),
        );
      }
      this.liveSlots.add(s);
    }
    return { bits, granularityBits: s.granularityBits };
  }

  /** Before a resize: QEMU's qcow2_truncate_bitmaps_check refuses in-use bitmaps. */
  checkResize(): void {
    for (const s of this.slots) if (s.inconsistent) this.usable(s.entry.name);
  }

  /**
   * After a resize: every bitmap takes the new size (new space clean, bits past a smaller
   * end dropped), stored at close as QEMU's bdrv_dirty_bitmap_truncate leaves them.
   */
  async resize(size: number): Promise<void> {
    if (size === this.size) return;
    for (const s of this.slots) await this.bitsOf(s);
    const resized = (bits: Uint8Array, g: number) => {
      const out = new Uint8Array(bitmapBytes(size, g));
      out.set(bits.subarray(0, out.length));
      clearTail(out, size, g);
      return out;
    };
    for (const s of this.slots) s.bits = resized(s.bits!, s.granularityBits);
    if (this.written !== undefined) {
      this.written = {
        bits: resized(this.written.bits, this.written.granularityBits),
        granularityBits: this.written.granularityBits,
      };
    }
    this.size = size;
    this.changed = true;
  }

  /**
   * Close: store every consistent bitmap whose data or flags changed, with in_use cleared,
   * the ranges written meanwhile set in the enabled ones (QEMU's
   * qcow2_store_persistent_dirty_bitmaps). Inconsistent bitmaps stay as they are.
   */
  async close(): Promise<void> {
    if (!this.changed && !this.markedInUse) return;
    if (this.slots.length === 0 && this.ext === undefined) {
      // No bitmaps before or after (a resize of an image without any): nothing to store, and
      // the header stays as it was (QEMU's resize writes the size field alone).
      this.changed = false;
      this.markedInUse = false;
      return;
    }
    const drop: BitmapEntry[] = [];
    for (const s of this.slots) {
      if (s.inconsistent) continue;
      if (s.enabled && this.written !== undefined) await this.merge(s.entry.name, this.written);
      const flags = s.enabled ? FLAG_AUTO : 0;
      if (s.bits === undefined) {
        s.entry = { ...s.entry, flags };
        continue;
      }
      if (!s.fresh) drop.push(s.entry);
      const { tableOffset, tableSize } = await storeBitmapData(this.store, s.bits);
      s.entry = { name: s.entry.name, flags, granularityBits: s.granularityBits, tableOffset, tableSize };
      s.fresh = false;
    }
    this.ext = await storeDirectory(
      this.store,
      this.slots.map((s) => s.entry),
      this.ext,
    );
    for (const e of drop) await freeBitmapClusters(this.store, e);
    this.written = undefined;
    this.changed = false;
    this.markedInUse = false;
  }
}

/** Call fn(first, end) for each run of set bits [first, end) among the first n bits. */
function forEachRun(bits: Uint8Array, n: number, fn: (first: number, end: number) => void): void {
  let start = -1;
  const bytes = Math.ceil(n / 8);
  for (let byte = 0; byte < bytes; byte++) {
    const b = bits[byte]!;
    if ((b === 0 && start < 0) || (b === 0xff && start >= 0 && byte * 8 + 8 <= n)) continue;
    for (let j = 0; j < 8; j++) {
      const i = byte * 8 + j;
      if (i >= n) break;
      const set = ((b >> j) & 1) === 1;
      if (set && start < 0) start = i;
      else if (!set && start >= 0) {
        fn(start, i);
        start = -1;
      }
    }
  }
  if (start >= 0) fn(start, n);
}
