/**
 * VpcImage: a fixed or dynamic VHD open for I/O.
 *
 * Fixed: the data is the file, the footer follows it. Dynamic: a BAT of 32-bit sector
 * numbers, each pointing at a sector bitmap followed by one block of data. As QEMU does, the
 * bitmap is written all-ones when a block is allocated and ignored on read (so images read
 * byte-identical to qemu-img's view of them).
 *
 * Allocation order (a process killed at any instant leaves a consistent image): the block's
 * bitmap and the footer at the new end of file are written first, then the data, and only then
 * the BAT entry that points at the block. A crash before the BAT write leaves unreferenced
 * space, which the next allocation reuses (the free offset is computed from the BAT on open).
 * The footer copy at offset 0 never changes.
 */
import type { Extent } from '../../core/device.js';
import type { DriverContext, FormatImage } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { Mutex } from '../../core/lock.js';
import { FOOTER_SIZE, VHD_FIXED } from './footer.js';

const UNALLOCATED = 0xffffffff;
const ZERO_CHUNK = 1 << 20;

export interface VpcLayout {
  /** The footer as stored (512 bytes), rewritten at the end of file when the file grows. */
  footer: Uint8Array;
  type: number;
  size: number;
  /** Dynamic only. */
  blockSize?: number;
  bitmapSize?: number;
  batOffset?: number;
  /** BAT entries covering the virtual size (entries past it are never used for I/O). */
  bat?: Uint32Array;
  freeDataBlockOffset?: number;
  fileSize: number;
}

export class VpcImage implements FormatImage {
  readonly format = 'vpc';
  readonly alignment = 512;
  readonly size: number;
  readonly clusterSize: number | undefined;
  private readonly fixed: boolean;
  private readonly blockSize: number;
  private readonly bitmapSize: number;
  private readonly batOffset: number;
  private readonly bat: Uint32Array;
  private freeDataBlockOffset: number;
  /** Highest file offset written or present: space beyond it reads as zeros. */
  private fileEnd: number;
  private readonly footer: Uint8Array;
  private readonly allocLock = new Mutex();
  private readonly pending = new Map<number, Promise<void>>();

  constructor(
    private readonly file: HostFile,
    layout: VpcLayout,
  ) {
    this.size = layout.size;
    this.fixed = layout.type === VHD_FIXED;
    this.footer = layout.footer;
    this.blockSize = layout.blockSize ?? 0;
    this.bitmapSize = layout.bitmapSize ?? 0;
    this.batOffset = layout.batOffset ?? 0;
    this.bat = layout.bat ?? new Uint32Array(0);
    this.freeDataBlockOffset = layout.freeDataBlockOffset ?? 0;
    this.fileEnd = layout.fileSize;
    // qemu-img reports cluster_size for every VHD that is not fixed (vpc_get_info).
    this.clusterSize = this.fixed ? undefined : this.blockSize;
  }

  get readOnly(): boolean {
    return !this.file.writable;
  }

  attach(_ctx: DriverContext): void {}

  /** File offset of the data at guest offset, or -1 when the block is unallocated. */
  private hostOffset(offset: number): number {
    const idx = Math.floor(offset / this.blockSize);
    const e = this.bat[idx];
    if (e === undefined || e === UNALLOCATED) return -1;
    return e * 512 + this.bitmapSize + (offset % this.blockSize);
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    if (this.fixed) {
      const [first] = await this.file.extents(offset, Math.min(length, 1 << 30));
      if (first === undefined) return { offset, length, allocated: true, zero: true, data: false };
      return first.data
        ? {
            offset,
            length: first.length,
            allocated: true,
            zero: false,
            data: true,
            hostOffset: offset,
            file: this.file.path,
          }
        : // QEMU passes a fixed VHD's status down to the file (BDRV_BLOCK_RECURSE): a hole is
          // reported as zero data at its offset.
          {
            offset,
            length: first.length,
            allocated: true,
            zero: true,
            data: true,
            hostOffset: offset,
            file: this.file.path,
          };
    }
    const host = this.hostOffset(offset);
    const inBlock = this.blockSize - (offset % this.blockSize);
    if (host >= 0) {
      // All sectors of a block are contiguous; the bitmap sits between blocks.
      return {
        offset,
        length: Math.min(length, inBlock),
        allocated: true,
        zero: false,
        data: true,
        hostOffset: host,
        file: this.file.path,
      };
    }
    let n = Math.min(length, inBlock);
    while (n < length && this.hostOffset(offset + n) < 0) n = Math.min(length, n + this.blockSize);
    // QEMU's generic layer counts a range the driver reports as zero as allocated in this
    // layer (a VHD has no backing file in QEMU 7.2), so qemu-img map shows it present.
    return { offset, length: n, allocated: true, zero: true, data: false };
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    if (this.fixed) return this.file.read(buf, offset);
    const jobs: Promise<void>[] = [];
    for (let done = 0; done < buf.length; ) {
      const pos = offset + done;
      const n = Math.min(buf.length - done, this.blockSize - (pos % this.blockSize));
      const part = buf.subarray(done, done + n);
      const host = this.hostOffset(pos);
      if (host < 0) part.fill(0);
      else jobs.push(this.file.read(part, host));
      done += n;
    }
    await Promise.all(jobs);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (this.fixed) return this.file.write(buf, offset);
    const jobs: Promise<void>[] = [];
    for (let done = 0; done < buf.length; ) {
      const pos = offset + done;
      const n = Math.min(buf.length - done, this.blockSize - (pos % this.blockSize));
      jobs.push(this.writeInBlock(buf.subarray(done, done + n), pos));
      done += n;
    }
    await Promise.all(jobs);
  }

  private async writeInBlock(data: Uint8Array, offset: number): Promise<void> {
    const idx = Math.floor(offset / this.blockSize);
    for (;;) {
      const host = this.hostOffset(offset);
      if (host >= 0) return this.file.write(data, host);
      const busy = this.pending.get(idx);
      if (busy === undefined) break;
      await busy;
    }
    let done!: () => void;
    this.pending.set(
      idx,
      new Promise<void>((r) => {
        done = r;
      }),
    );
    try {
      await this.allocate(idx, data, offset);
    } finally {
      this.pending.delete(idx);
      done();
    }
  }

  /** Allocate block idx at the end of the data area and write `data` (at guest `offset`) into it. */
  private async allocate(idx: number, data: Uint8Array, offset: number): Promise<void> {
    const blockStart = await this.allocLock.run(async () => {
      const start = this.freeDataBlockOffset;
      const next = start + this.bitmapSize + this.blockSize;
      if (start / 512 >= UNALLOCATED) {
        throw new VdiskError('TOO_LARGE', 'The VHD file has reached its largest size (2 TiB)', {
          path: this.file.path,
        });
      }
      // Bitmap: every sector marked present, as QEMU writes it.
      await this.file.write(new Uint8Array(this.bitmapSize).fill(0xff), start);
      // Space that held something (a leftover of an interrupted allocation) must read as zeros.
      const dataStart = start + this.bitmapSize;
      if (this.fileEnd > dataStart) await this.zeroFill(dataStart, Math.min(this.fileEnd, next) - dataStart);
      this.freeDataBlockOffset = next;
      await this.file.write(this.footer, next);
      this.fileEnd = Math.max(this.fileEnd, next + FOOTER_SIZE);
      return start;
    });
    await this.file.write(data, blockStart + this.bitmapSize + (offset % this.blockSize));
    const entry = new Uint8Array(4);
    new DataView(entry.buffer).setUint32(0, blockStart / 512);
    await this.file.write(entry, this.batOffset + 4 * idx);
    this.bat[idx] = blockStart / 512;
  }

  private async zeroFill(offset: number, length: number): Promise<void> {
    const zero = new Uint8Array(Math.min(ZERO_CHUNK, length));
    for (let pos = offset; pos < offset + length; pos += zero.length) {
      const n = Math.min(zero.length, offset + length - pos);
      await this.file.write(zero.subarray(0, n), pos);
    }
  }

  async writeZeroes(offset: number, length: number, _unmap: boolean): Promise<void> {
    if (this.fixed) {
      if (await this.file.isHole(offset, length)) return;
      return this.zeroFill(offset, length);
    }
    // Unallocated blocks already read as zeros (a VHD has no backing file in QEMU 7.2).
    for (let done = 0; done < length; ) {
      const pos = offset + done;
      const n = Math.min(length - done, this.blockSize - (pos % this.blockSize));
      const host = this.hostOffset(pos);
      if (host >= 0) await this.zeroFill(host, n);
      done += n;
    }
  }

  async discard(_offset: number, _length: number): Promise<void> {
    // QEMU's vpc driver has no discard; nothing is deallocated.
  }

  async flush(): Promise<void> {
    await this.file.flush();
  }

  async close(): Promise<void> {
    await Promise.all([...this.pending.values()]);
    await this.file.close();
  }

  actualSize(): Promise<number> {
    return this.file.allocatedSize();
  }
}
