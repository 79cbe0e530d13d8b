/**
 * One NBD export: an open image (with its backing chain) and how it is offered — read-only or
 * not, its name and description, the metadata contexts, what TRIM and zero writes may do.
 * Every operation is the engine's (core/image.ts); this file adds only what NBD asks on top:
 * the transmission flags, the extents of the two metadata contexts as qemu-nbd computes them,
 * FUA, detect-zeroes and the "fast zero" decision.
 */
import { layerAt } from '../chain/allocation.js';
import { type Extent, isAllZero } from '../core/device.js';
import type { Image } from '../core/image.js';
import { DIRTY_BITMAP_PREFIX, dirtyExtents, type ExportBitmap } from './bitmaps.js';
import {
  FLAG_CAN_MULTI_CONN,
  FLAG_HAS_FLAGS,
  FLAG_READ_ONLY,
  FLAG_SEND_CACHE,
  FLAG_SEND_DF,
  FLAG_SEND_FAST_ZERO,
  FLAG_SEND_FLUSH,
  FLAG_SEND_FUA,
  FLAG_SEND_TRIM,
  FLAG_SEND_WRITE_ZEROES,
  STATE_HOLE,
  STATE_ZERO,
} from './protocol.js';

export type DiscardMode = 'ignore' | 'unmap';
export type DetectZeroes = 'off' | 'on' | 'unmap';

export interface ExportOptions {
  /** The export's name ('' is the default export). */
  name: string;
  description?: string | undefined;
  image: Image;
  /** Refuse writes (the image may still be open writable; the export decides). */
  readOnly: boolean;
  /** Offer the qemu:allocation-depth metadata context (qemu-nbd -A). */
  allocationDepth?: boolean;
  /** What TRIM (and zero writes without NO_HOLE) may do: 'ignore' (default) or 'unmap'. */
  discard?: DiscardMode;
  /** Turn writes of zeros into zero writes ('unmap': which may deallocate). */
  detectZeroes?: DetectZeroes;
  /** Advertise NBD_FLAG_CAN_MULTI_CONN (qemu-nbd: when -e allows more than one client). */
  multiConn?: boolean;
  /** cache=writethrough/directsync: every write is flushed before its reply. */
  writethrough?: boolean;
  /**
   * Dirty bitmaps offered as qemu:dirty-bitmap:NAME (qemu-nbd -B; bitmaps.ts finds them), in
   * the order the contexts are listed and numbered.
   */
  bitmaps?: readonly ExportBitmap[];
}

/** One extent of a metadata context: its length and its flags (base:allocation) or depth. */
export interface StatusExtent {
  length: number;
  flags: number;
}

/** A piece of a read: data to read, or a range known to read as zeros. */
export interface ReadPiece {
  offset: number;
  length: number;
  zero: boolean;
  /** Where a data piece lies as it is in a host file, when asked for and known. */
  direct?: { fd: number; offset: number } | undefined;
}

/** Can data with host location `d` extend the data piece `last`? */
function follows(last: ReadPiece, d: ReadPiece['direct']): boolean {
  if (last.direct === undefined || d === undefined) return last.direct === d;
  return last.direct.fd === d.fd && last.direct.offset + last.length === d.offset;
}

export const BASE_ALLOCATION = 'base:allocation';
export const ALLOCATION_DEPTH = 'qemu:allocation-depth';

/** A write-zeroes request with FAST_ZERO that would not be fast (NBD_ENOTSUP). */
export class NotFast extends Error {}

/** Extents remembered for reads (NbdExport.status), and how far one status query looks. */
const RECENT_EXTENTS = 8;
const STATUS_WINDOW = 32 << 20;

export class NbdExport {
  /** Recently seen block status extents, newest first; emptied by every change. */
  private recent: Extent[] = [];
  private generation = 0;
  private changing = 0;
  readonly name: string;
  readonly description: string;
  readonly image: Image;
  readonly readOnly: boolean;
  readonly allocationDepth: boolean;
  readonly discard: DiscardMode;
  readonly detectZeroes: DetectZeroes;
  readonly multiConn: boolean;
  readonly writethrough: boolean;
  readonly bitmaps: readonly ExportBitmap[];

  constructor(o: ExportOptions) {
    this.name = o.name;
    this.description = o.description ?? '';
    this.image = o.image;
    this.readOnly = o.readOnly || o.image.readOnly;
    this.allocationDepth = o.allocationDepth === true;
    this.discard = o.discard ?? 'ignore';
    this.detectZeroes = o.detectZeroes ?? 'off';
    this.multiConn = o.multiConn === true;
    this.writethrough = o.writethrough === true;
    this.bitmaps = o.bitmaps ?? [];
  }

  get size(): number {
    return this.image.size;
  }

  /** The metadata contexts a client may select on this export. */
  get contexts(): string[] {
    return [
      BASE_ALLOCATION,
      ...(this.allocationDepth ? [ALLOCATION_DEPTH] : []),
      ...this.bitmaps.map((b) => DIRTY_BITMAP_PREFIX + b.name),
    ];
  }

  /** Transmission flags, as qemu-nbd sets them (DF only once structured replies are on). */
  transmissionFlags(structured: boolean): number {
    let f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_CACHE;
    if (this.readOnly) f |= FLAG_READ_ONLY;
    else f |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
    if (this.multiConn) f |= FLAG_CAN_MULTI_CONN;
    if (structured) f |= FLAG_SEND_DF;
    return f;
  }

  /**
   * The minimum block size offered to clients that will honour one. The engine serves any
   * alignment (read-modify-write below the driver's); as qemu-nbd, 1 for images QEMU accesses
   * byte by byte, the sector of encrypted ones.
   */
  get requestAlignment(): number {
    return this.image.driver.encrypted === true ? Math.max(512, this.image.driver.alignment) : 1;
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.image.readAt(buf, offset);
  }

  /**
   * How a read of [offset, offset+length) splits into data and zeros (the chain's block
   * status, as qemu-nbd's sparse reads): adjacent pieces of one kind are merged. With
   * `direct`, data pieces that some layer stores as they are (FormatImage.directFile) say
   * where: the file's descriptor and offset.
   */
  async readPieces(offset: number, length: number, direct = false): Promise<ReadPiece[]> {
    const out: ReadPiece[] = [];
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const e = await this.status(pos, end - pos);
      const n = Math.min(Math.max(e.length, 1), end - pos);
      let d: ReadPiece['direct'];
      if (direct && !e.zero && e.hostOffset !== undefined) {
        const fd = layerAt(this.image, e.depth ?? 0)?.driver.directFile?.(e)?.localFd ?? null;
        if (fd !== null) d = { fd, offset: e.hostOffset + (pos - e.offset) };
      }
      const last = out[out.length - 1];
      if (last !== undefined && last.zero === e.zero && (e.zero || follows(last, d))) last.length += n;
      else out.push({ offset: pos, length: n, zero: e.zero, direct: d });
      pos += n;
    }
    return out;
  }

  /**
   * The chain's block status at `offset` (Image.blockStatus), from a few recently seen extents
   * when one covers it: consecutive reads of one large extent ask the image once. Every change
   * made through the export forgets them (`changing`), and a status looked up while a change
   * was under way is not kept.
   */
  private async status(offset: number, length: number): Promise<Extent> {
    for (const c of this.recent) {
      if (offset >= c.offset && offset < c.offset + c.length) {
        const skip = offset - c.offset;
        return {
          ...c,
          offset,
          length: Math.min(c.length - skip, length),
          ...(c.hostOffset !== undefined ? { hostOffset: c.hostOffset + skip } : {}),
        };
      }
    }
    const generation = this.generation;
    // Ask about more than this read (up to 32 MiB): the next reads fall in the same extent.
    const e = await this.image.blockStatus(
      offset,
      Math.max(length, Math.min(STATUS_WINDOW, this.size - offset)),
    );
    if (generation === this.generation && this.changing === 0) {
      this.recent.unshift(e);
      if (this.recent.length > RECENT_EXTENTS) this.recent.pop();
    }
    return e.length > length ? { ...e, length } : e;
  }

  /** Run a change of the image: the remembered extents are forgotten before and after it. */
  private async change<T>(fn: () => Promise<T>): Promise<T> {
    this.generation++;
    this.changing++;
    this.recent = [];
    try {
      return await fn();
    } finally {
      this.changing--;
      this.generation++;
      this.recent = [];
    }
  }

  async write(buf: Uint8Array, offset: number, fua: boolean): Promise<void> {
    await this.change(async () => {
      if (this.detectZeroes !== 'off' && isAllZero(buf)) {
        await this.image.writeZeroes(offset, buf.length, {
          unmap: this.detectZeroes === 'unmap' && this.discard === 'unmap',
        });
      } else {
        await this.image.writeAt(buf, offset);
      }
    });
    if (fua || this.writethrough) await this.image.flush();
  }

  /**
   * NBD_CMD_WRITE_ZEROES. Without NO_HOLE the range may be deallocated (when --discard=unmap);
   * with FAST_ZERO it fails with NotFast, before changing anything, unless it costs no data
   * writes.
   */
  async writeZeroes(
    offset: number,
    length: number,
    o: { noHole: boolean; fast: boolean; fua: boolean },
  ): Promise<void> {
    const unmap = !o.noHole && this.discard === 'unmap';
    if (o.fast && !(await this.zeroIsFast(offset, length, unmap))) throw new NotFast();
    await this.change(() => this.image.writeZeroes(offset, length, { unmap }));
    if (o.fua || this.writethrough) await this.image.flush();
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    if (this.discard === 'unmap') await this.change(() => this.image.discard(offset, length));
    if (fua || this.writethrough) await this.image.flush();
  }

  flush(): Promise<void> {
    return this.image.flush();
  }

  /**
   * Will zeroing this range write no data? When the range already reads as zeros, or when the
   * format zeroes by metadata: raw by punching holes (with unmap), qcow2 v3 on whole clusters
   * (the partial clusters at either end must already read as zeros). Anything else would write
   * zeros, which FAST_ZERO asks the server to refuse (qemu: BDRV_REQ_NO_FALLBACK).
   */
  private async zeroIsFast(offset: number, length: number, unmap: boolean): Promise<boolean> {
    const format = this.image.format;
    if (format === 'raw' && unmap) return true;
    if (format === 'qcow2' && this.image.driver.formatSpecific?.()?.data['compat'] === '1.1') {
      const unit = this.image.driver.clusterSize ?? 65536;
      const end = offset + length;
      const headEnd = Math.min(end, Math.ceil(offset / unit) * unit);
      const tailStart = end === this.size ? end : Math.max(headEnd, end - (end % unit));
      return (
        (await this.readsAsZero(offset, headEnd - offset)) &&
        (await this.readsAsZero(tailStart, end - tailStart))
      );
    }
    return this.readsAsZero(offset, length);
  }

  /** Does the range read as zeros (block status alone, at most 64 queries)? */
  private async readsAsZero(offset: number, length: number): Promise<boolean> {
    const end = offset + length;
    let pos = offset;
    for (let i = 0; pos < end; i++) {
      if (i >= 64) return false;
      const e = await this.image.blockStatus(pos, end - pos);
      if (!e.zero) return false;
      pos += Math.max(e.length, 1);
    }
    return true;
  }

  /**
   * base:allocation extents from `offset`, as qemu-nbd's blockstatus_to_extents: the chain's
   * status as qemu-img map sees it (a range that reads from a backing file takes that file's
   * status), HOLE where no data is stored, ZERO where it reads as zeros. Merged where flags
   * repeat; at most `max` extents, never past offset+length.
   */
  async baseAllocation(offset: number, length: number, max: number): Promise<StatusExtent[]> {
    return this.walk(offset, length, max, async (pos, n) => {
      const e = await this.image.reportedStatus(pos, n);
      return { length: e.length, flags: (e.data ? 0 : STATE_HOLE) | (e.zero ? STATE_ZERO : 0) };
    });
  }

  /**
   * qemu:allocation-depth extents, as qemu-nbd's blockalloc_to_extents (bdrv_is_allocated_above):
   * 1 for a range the top image allocates, 2 for its backing file, …, 0 where no image does.
   * Past the end of a shorter backing file, the range counts as allocated there (QEMU
   * synthesizes zeros at that layer).
   */
  async allocationDepthExtents(offset: number, length: number, max: number): Promise<StatusExtent[]> {
    return this.walk(offset, length, max, async (pos, n) => {
      let limit = n;
      let depth = 1;
      for (let layer: Image | null = this.image; layer !== null; layer = layer.backing, depth++) {
        if (pos >= layer.size) return { length: limit, flags: depth };
        if (layer.driver.noBlockStatus === true) return { length: limit, flags: depth };
        const st = await layer.driver.blockStatus(pos, Math.min(limit, layer.size - pos));
        if (st.allocated) return { length: Math.min(st.length, limit), flags: depth };
        limit = Math.min(limit, st.length);
      }
      return { length: limit, flags: 0 };
    });
  }

  /** qemu:dirty-bitmap:NAME extents of the export's bitmap `i` (bitmaps.ts dirtyExtents). */
  dirtyBitmapExtents(i: number, offset: number, length: number, max: number): StatusExtent[] {
    const b = this.bitmaps[i];
    return b === undefined ? [] : dirtyExtents(b.bits, this.size, offset, length, max);
  }

  private async walk(
    offset: number,
    length: number,
    max: number,
    step: (pos: number, n: number) => Promise<StatusExtent>,
  ): Promise<StatusExtent[]> {
    const out: StatusExtent[] = [];
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const e = await step(pos, end - pos);
      const n = Math.min(Math.max(e.length, 1), end - pos);
      const last = out[out.length - 1];
      if (last !== undefined && last.flags === e.flags) last.length += n;
      else {
        if (out.length >= max) break;
        out.push({ length: n, flags: e.flags });
      }
      pos += n;
    }
    return out;
  }

  close(): Promise<void> {
    return this.image.close();
  }
}
