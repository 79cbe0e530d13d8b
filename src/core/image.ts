/**
 * Image: the BlockDevice users see. It wraps one format driver and owns, once for every
 * format, what QEMU's generic block layer owns: bounds checks, read-modify-write of
 * unaligned requests, the backing rule (unallocated ranges read from the backing image,
 * zeros past its end) and chain-aware block status with depth.
 */
import { type BlockDevice, type Extent, extentAtDepth } from './device.js';
import type { AmendValues, FileRef, FormatImage, SnapshotInfo, WriteSource } from './driver.js';
import { VdiskError } from './errors.js';
import { RwLock } from './lock.js';

export class Image implements BlockDevice {
  /** The backing image, when it was opened. */
  backing: Image | null = null;
  /** How qemu-img names the image when it was opened by options (`json:{…}`), if so. */
  displayName: string | undefined;
  private readonly rmw = new RwLock();

  constructor(
    readonly driver: FormatImage,
    /** Path the image was opened with. */
    readonly path: string,
  ) {
    driver.attach({
      readBacking: (buf, offset) => this.readBacking(buf, offset),
      get hasBacking() {
        return false;
      },
    });
  }

  /** Attach the opened backing image (done by the chain opener). */
  setBacking(backing: Image | null): void {
    this.backing = backing;
    const self = this;
    this.driver.attach({
      readBacking: (buf, offset) => self.readBacking(buf, offset),
      get hasBacking() {
        return self.backing !== null;
      },
      get backingImage() {
        return self.backing?.driver;
      },
    });
  }

  get format(): string {
    return this.driver.format;
  }

  get size(): number {
    return this.driver.size;
  }

  get readOnly(): boolean {
    return this.driver.readOnly;
  }

  /** Number of images in the chain from this one down. */
  get chainLength(): number {
    let n = 0;
    for (let i: Image | null = this; i !== null; i = i.backing) n++;
    return n;
  }

  private checkRange(offset: number, length: number, op: string): void {
    if (
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > this.size
    ) {
      throw new VdiskError(
        'OUT_OF_RANGE',
        `${op} of ${length} bytes at offset ${offset} is outside the image (size ${this.size})`,
        {
          path: this.path,
          offset,
          op,
        },
      );
    }
  }

  private checkWritable(op: string): void {
    if (this.driver.readOnly)
      throw new VdiskError('READ_ONLY', `Cannot ${op}: '${this.path}' is open read-only`, {
        path: this.path,
        op,
      });
  }

  /** Content below this layer at [offset, offset+buf.length): backing data, zeros past its end. */
  async readBacking(buf: Uint8Array, offset: number): Promise<void> {
    const b = this.backing;
    if (b === null || offset >= b.size) {
      buf.fill(0);
      return;
    }
    const n = Math.min(buf.length, b.size - offset);
    await b.readAt(n === buf.length ? buf : buf.subarray(0, n), offset);
    if (n < buf.length) buf.fill(0, n);
  }

  async readAt(buf: Uint8Array, offset: number): Promise<void> {
    this.checkRange(offset, buf.length, 'read');
    if (buf.length === 0) return;
    const a = this.driver.alignment;
    if (a <= 1 || (offset % a === 0 && buf.length % a === 0)) return this.driver.read(buf, offset);
    const start = offset - (offset % a);
    const end = Math.min(roundUp(offset + buf.length, a), roundUp(this.size, a));
    const tmp = new Uint8Array(end - start);
    await this.readAligned(tmp, start);
    buf.set(tmp.subarray(offset - start, offset - start + buf.length));
  }

  /** Read an aligned range that may run past a size that is not a multiple of the alignment. */
  private async readAligned(buf: Uint8Array, offset: number): Promise<void> {
    await this.driver.read(buf, offset);
  }

  async writeAt(buf: Uint8Array, offset: number): Promise<void> {
    this.checkWritable('write');
    this.checkRange(offset, buf.length, 'write');
    if (buf.length === 0) return;
    const a = this.driver.alignment;
    if (a <= 1 || (offset % a === 0 && buf.length % a === 0)) {
      const release = await this.rmw.shared();
      try {
        return await this.driver.write(buf, offset);
      } finally {
        release();
      }
    }
    // Read-modify-write the aligned blocks around the request, exclusive of other writers.
    const release = await this.rmw.exclusive();
    try {
      const start = offset - (offset % a);
      const end = roundUp(offset + buf.length, a);
      const tmp = new Uint8Array(end - start);
      await this.driver.read(tmp, start);
      tmp.set(buf, offset - start);
      await this.driver.write(tmp, start);
    } finally {
      release();
    }
  }

  /**
   * writeAt in two steps (see FormatImage.prepareWrite): resolves once the write has its place
   * in the file; the returned function finishes it. Drivers without prepareWrite, and
   * unaligned requests, are written in full before this resolves. `from`: see WriteSource.
   */
  async prepareWrite(buf: Uint8Array, offset: number, from?: WriteSource): Promise<() => Promise<void>> {
    const a = this.driver.alignment;
    const prepare = this.driver.prepareWrite;
    if (from !== undefined && this.driver.takesWriteSource !== true) {
      await from.fill();
      from = undefined;
    }
    if (prepare === undefined || buf.length === 0 || (a > 1 && (offset % a !== 0 || buf.length % a !== 0))) {
      await from?.fill();
      await this.writeAt(buf, offset);
      return async () => {};
    }
    this.checkWritable('write');
    this.checkRange(offset, buf.length, 'write');
    const release = await this.rmw.shared();
    let finish: () => Promise<void>;
    try {
      finish = await prepare.call(this.driver, buf, offset, from);
    } catch (err) {
      release();
      throw err;
    }
    return async () => {
      try {
        await finish();
      } finally {
        release();
      }
    };
  }

  async writeZeroes(offset: number, length: number, opts: { unmap?: boolean } = {}): Promise<void> {
    this.checkWritable('write zeroes');
    this.checkRange(offset, length, 'write zeroes');
    if (length === 0) return;
    const a = this.driver.alignment;
    const head = a > 1 ? Math.min(length, (a - (offset % a)) % a) : 0;
    const bodyEnd = a > 1 ? offset + length - ((offset + length) % a) : offset + length;
    if (head > 0) await this.writeAt(new Uint8Array(head), offset);
    const bodyStart = offset + head;
    if (bodyEnd > bodyStart) {
      const release = await this.rmw.shared();
      try {
        await this.driver.writeZeroes(bodyStart, bodyEnd - bodyStart, opts.unmap === true);
      } finally {
        release();
      }
    }
    const tailStart = Math.max(bodyEnd, bodyStart);
    if (tailStart < offset + length)
      await this.writeAt(new Uint8Array(offset + length - tailStart), tailStart);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable('discard');
    this.checkRange(offset, length, 'discard');
    const a = this.driver.alignment;
    // Discard is advisory: only the aligned middle is passed on.
    const start = roundUp(offset, a);
    const end = offset + length - ((offset + length) % a);
    if (end > start) await this.driver.discard(start, end - start);
  }

  /**
   * Chain-aware status of the range at offset: the first layer (top down) that allocates it
   * decides, with `depth` set; a range no layer allocates is reported with the depth of the
   * last layer and zero=true (as qemu-img map does).
   */
  async blockStatus(offset: number, length: number): Promise<Extent> {
    this.checkRange(offset, length, 'block status');
    return this.statusAt(offset, length, 0);
  }

  /**
   * Block status as qemu-img reports it (map, measure): the same as blockStatus, except for
   * formats whose QEMU driver has none (FormatImage.noBlockStatus), where every range is
   * allocated data without a host offset.
   */
  async reportedStatus(offset: number, length: number): Promise<Extent> {
    if (this.driver.noBlockStatus !== true) return this.blockStatus(offset, length);
    this.checkRange(offset, length, 'block status');
    return { offset, length, allocated: true, zero: false, data: true, depth: 0 };
  }

  /** This image with reportedStatus as its block status (what qemu-img measure walks). */
  reportedView(): BlockDevice {
    if (this.driver.noBlockStatus !== true) return this;
    return {
      size: this.size,
      readOnly: this.readOnly,
      readAt: (buf, offset) => this.readAt(buf, offset),
      writeAt: (buf, offset) => this.writeAt(buf, offset),
      blockStatus: (offset, length) => this.reportedStatus(offset, length),
      writeZeroes: (offset, length, opts) => this.writeZeroes(offset, length, opts),
      discard: (offset, length) => this.discard(offset, length),
      flush: () => this.flush(),
      close: () => this.close(),
    };
  }

  private async statusAt(offset: number, length: number, depth: number): Promise<Extent> {
    const e = await this.layerStatus(offset, length);
    // As qemu-img map (get_block_status): stop at the first layer that allocates the range or
    // knows it reads as zeros (no backing, or past the backing's end); depth is that layer's.
    if (e.allocated) return extentAtDepth(e, depth);
    // Not allocated here: layerStatus made a fresh object (not the driver's), depth goes on it.
    if (e.zero || this.backing === null) {
      e.depth = depth;
      return e;
    }
    const b = this.backing;
    return b.statusAt(offset, Math.min(e.length, b.size - offset), depth + 1);
  }

  /**
   * Status of this layer alone (QEMU's bdrv_block_status, not _above), with the generic
   * block layer's rule: a range this layer does not allocate reads as zeros when there is no
   * backing image, or when it starts at or past the backing image's end (allocated stays
   * false). convert -B copies by this status.
   */
  async layerStatus(offset: number, length: number): Promise<Extent> {
    this.checkRange(offset, length, 'block status');
    const e = await this.driver.blockStatus(offset, length);
    if (e.allocated) return e;
    const b = this.backing;
    if (b === null || offset >= b.size) return { ...e, zero: true, data: false };
    // Falls through to the backing image: what it reads is decided below.
    return { ...e, zero: false, data: false };
  }

  async flush(): Promise<void> {
    await this.driver.flush();
  }

  // Metadata operations (qemu-img resize, amend, rebase, commit, snapshot). Each checks that the
  // image is writable and that the driver has the operation (QEMU's -ENOTSUP, in the words
  // qemu-img prints), and runs with no guest request in flight.

  /** Does the driver have this metadata operation? */
  supports(op: MetadataOp): boolean {
    const d = this.driver;
    switch (op) {
      case 'resize':
        return d.resize !== undefined;
      case 'amend':
        return d.amend !== undefined;
      case 'backingFile':
        return d.setBacking !== undefined;
      case 'makeEmpty':
        return d.makeEmpty !== undefined;
      case 'snapshots':
        return (
          d.createSnapshot !== undefined && d.applySnapshot !== undefined && d.deleteSnapshot !== undefined
        );
    }
  }

  /** Run a metadata operation exclusive of guest requests, on a writable image. */
  private async metadataOp<T>(op: string, run: () => Promise<T>): Promise<T> {
    this.checkWritable(op);
    const release = await this.rmw.exclusive();
    try {
      return await run();
    } finally {
      release();
    }
  }

  /** Change the virtual size (qemu-img resize; shrinking drops what lies past the new end). */
  async resize(size: number, opts: { preallocation?: string; shrink: boolean }): Promise<void> {
    const d = this.driver;
    // qemu-img 7.2's words (bdrv_co_truncate).
    if (d.resize === undefined)
      throw new VdiskError('UNSUPPORTED', 'Image format driver does not support resize');
    // QEMU's bdrv_co_truncate: growing an image whose backing file is longer than it was asks
    // the driver to make the new area read as zeros (BDRV_REQ_ZERO_WRITE), not as the backing
    // file's data there; a driver that cannot fails before anything changes.
    const old = this.size;
    const zeroNew = size > old && this.backing !== null && this.backing.size > old;
    if (zeroNew) {
      const why =
        d.zeroGrowthError === undefined
          ? 'Block driver does not support requested flags'
          : d.zeroGrowthError();
      if (why !== undefined) throw new VdiskError('UNSUPPORTED', why);
    }
    await this.metadataOp('resize', async () => {
      await d.resize!(size, opts);
      if (zeroNew) await d.writeZeroes(old, size - old, false);
    });
  }

  /** Change format-specific options (qemu-img amend); onProgress(done, total) in any unit. */
  async amend(values: AmendValues, onProgress?: (done: number, total: number) => void): Promise<void> {
    const d = this.driver;
    if (d.amend === undefined)
      throw new VdiskError('UNSUPPORTED', `Format driver '${this.format}' does not support option amendment`);
    await this.metadataOp('amend', () => d.amend!(values, onProgress));
  }

  /**
   * Rewrite the backing file reference the image stores (QEMU's bdrv_change_backing_file:
   * rebase, commit); undefined detaches. The attached backing Image is not changed.
   */
  async changeBackingFile(ref: FileRef | undefined): Promise<void> {
    const d = this.driver;
    if (d.setBacking === undefined)
      throw new VdiskError('UNSUPPORTED', `Format '${this.format}' does not support backing files`);
    await this.metadataOp('change the backing file', () => d.setBacking!(ref));
  }

  /** Make every cluster unallocated (QEMU's bdrv_make_empty, after commit). */
  async makeEmpty(): Promise<void> {
    const d = this.driver;
    // QEMU's words (bdrv_make_empty); qemu-img commit ignores this -ENOTSUP.
    if (d.makeEmpty === undefined)
      throw new VdiskError('UNSUPPORTED', `${this.format} does not support emptying nodes`);
    await this.metadataOp('empty', () => d.makeEmpty!());
  }

  /** The image's internal snapshots (none for formats without them). */
  snapshots(): SnapshotInfo[] {
    return this.driver.snapshots?.() ?? [];
  }

  /**
   * Take an internal snapshot (qemu-img snapshot -c). A format without snapshots fails with
   * UNSUPPORTED, which qemu-img prints as "-95 (Operation not supported)".
   */
  async createSnapshot(name: string, date: { sec: number; nsec: number }): Promise<SnapshotInfo> {
    const d = this.driver;
    if (!this.supports('snapshots')) throw new VdiskError('UNSUPPORTED', 'Operation not supported');
    return this.metadataOp('create a snapshot', () => d.createSnapshot!(name, date));
  }

  /**
   * Revert to an internal snapshot found by id, then by name (qemu-img snapshot -a): NOT_FOUND
   * when there is none; UNSUPPORTED with QEMU's bdrv_snapshot_goto words for a format without
   * snapshots.
   */
  async applySnapshot(idOrName: string): Promise<void> {
    const d = this.driver;
    if (!this.supports('snapshots'))
      throw new VdiskError('UNSUPPORTED', 'Block driver does not support snapshots');
    await this.metadataOp('apply a snapshot', () => d.applySnapshot!(idOrName));
  }

  /**
   * Delete the internal snapshot with this name (qemu-img 7.2's snapshot -d finds by name only:
   * `-d 1` does not find id 1): NOT_FOUND "snapshot not found" when there is none.
   */
  async deleteSnapshot(name: string): Promise<void> {
    const d = this.driver;
    const sn = this.snapshots().find((s) => s.name === name);
    if (sn === undefined || !this.supports('snapshots'))
      throw new VdiskError('NOT_FOUND', 'snapshot not found');
    await this.metadataOp('delete a snapshot', () => d.deleteSnapshot!({ id: sn.id, name: sn.name }));
  }

  /** Close this image and its backing chain. */
  async close(): Promise<void> {
    let err: unknown = null;
    try {
      await this.driver.close();
    } catch (e) {
      err = e;
    }
    if (this.backing !== null) await this.backing.close();
    if (err !== null) throw err;
  }
}

/** A metadata operation a driver may have (Image.supports). */
export type MetadataOp = 'resize' | 'amend' | 'backingFile' | 'makeEmpty' | 'snapshots';

export function roundUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
