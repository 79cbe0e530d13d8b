/**
 * A VDI image: a header, a block map (one little-endian u32 per 1 MiB block: the index of the
 * block in the data area, or unallocated/discarded) and the data area. QEMU gives VDI no
 * backing file, so unallocated blocks read as zeros.
 *
 * Writes that allocate are ordered as QEMU orders them (block/vdi.c): the whole new block,
 * then the header's blocks_allocated, then the block-map sectors. A crash between the last two
 * leaves a block that nothing points to (check reports the count mismatch) but never a map
 * entry pointing at a block the header does not count, which the next allocation would hand
 * out a second time.
 */
import type { Extent } from '../../core/device.js';
import type { CheckResult, DriverContext, FormatImage } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { Mutex } from '../../core/lock.js';
import { bmapSize, OFF, SECTOR_SIZE, VDI_DISCARDED, VDI_TYPE_STATIC, type VdiHeader } from './header.js';

const isAllocated = (e: number) => e < VDI_DISCARDED;
const ZERO_CHUNK = 1 << 20;

export class VdiImage implements FormatImage {
  readonly format = 'vdi';
  readonly alignment = SECTOR_SIZE;
  readonly clusterSize: number;
  private readonly blockSize: number;
  private blocksAllocated: number;
  private readonly alloc = new Mutex();

  constructor(
    private readonly file: HostFile,
    private readonly header: VdiHeader,
    /** The block map, entries in host order. */
    private readonly bmap: Uint32Array,
    readonly size: number,
    private fileSize: number,
  ) {
    this.blockSize = header.blockSize;
    this.clusterSize = header.blockSize;
    this.blocksAllocated = header.blocksAllocated;
  }

  get readOnly(): boolean {
    return !this.file.writable;
  }

  attach(_ctx: DriverContext): void {}

  /** Host offset of an allocated block, checked against the image's own bounds. */
  private hostOffset(block: number, entry: number): number {
    if (entry >= this.header.blocksInImage) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `VDI block map entry ${block} points to block ${entry}, beyond the ${this.header.blocksInImage} blocks of the image`,
        { path: this.file.path },
      );
    }
    const off = this.header.offsetData + entry * this.blockSize;
    if (off + this.blockSize > this.fileSize) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `VDI block ${block} (data at offset ${off}) lies past the end of the file`,
        { path: this.file.path, offset: off },
      );
    }
    return off;
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    const e = this.mapRange(offset, length);
    // Static images: QEMU answers BDRV_BLOCK_RECURSE, so the generic layer asks the host file
    // and ranges that are holes there are reported as zero (and still data).
    if (e.data && this.isStatic) {
      const [h] = await this.file.extents(e.hostOffset!, e.length);
      if (h !== undefined) return { ...e, length: h.length, zero: !h.data };
    }
    return e;
  }

  /** Status of the range from the block map alone: one run of like blocks. */
  private mapRange(offset: number, length: number): Extent {
    const bs = this.blockSize;
    let block = Math.floor(offset / bs);
    const end = Math.min(offset + length, this.size);
    const first = this.bmap[block]!;
    // QEMU reports unallocated blocks as zero and, since zero implies allocated in its generic
    // layer, as present (qemu-img map shows "present": true, "zero": true).
    if (!isAllocated(first)) {
      let pos = (block + 1) * bs;
      block++;
      while (pos < end && !isAllocated(this.bmap[block]!)) {
        pos += bs;
        block++;
      }
      return { offset, length: Math.min(pos, end) - offset, allocated: true, zero: true, data: false };
    }
    const host = this.hostOffset(block, first) + (offset % bs);
    // Extend over following blocks that are allocated and contiguous on the host.
    let pos = (block + 1) * bs;
    let next = host - (offset % bs) + bs;
    block++;
    while (pos < end) {
      const e = this.bmap[block]!;
      if (!isAllocated(e) || this.hostOffset(block, e) !== next) break;
      pos += bs;
      next += bs;
      block++;
    }
    return {
      offset,
      length: Math.min(pos, end) - offset,
      allocated: true,
      zero: false,
      data: true,
      hostOffset: host,
      file: this.file.path,
    };
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const jobs: Promise<void>[] = [];
    let pos = 0;
    while (pos < buf.length) {
      const e = this.mapRange(offset + pos, buf.length - pos);
      const part = buf.subarray(pos, pos + e.length);
      if (e.data) jobs.push(this.file.read(part, e.hostOffset!));
      else part.fill(0);
      pos += e.length;
    }
    await Promise.all(jobs);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    const bs = this.blockSize;
    const firstBlock = Math.floor(offset / bs);
    const lastBlock = Math.floor((offset + buf.length - 1) / bs);
    let needsAlloc = false;
    for (let b = firstBlock; b <= lastBlock; b++) if (!isAllocated(this.bmap[b]!)) needsAlloc = true;
    if (!needsAlloc) return this.writeInPlace(buf, offset);
    await this.alloc.run(() => this.writeAllocating(buf, offset));
  }

  /** Every block of the range is allocated: write it where it lies, contiguous runs at once. */
  private async writeInPlace(buf: Uint8Array, offset: number): Promise<void> {
    const jobs: Promise<void>[] = [];
    let pos = 0;
    while (pos < buf.length) {
      const e = this.mapRange(offset + pos, buf.length - pos);
      if (!e.data) throw new Error('internal: writeInPlace on an unallocated block');
      jobs.push(this.file.write(buf.subarray(pos, pos + e.length), e.hostOffset!));
      pos += e.length;
    }
    await Promise.all(jobs);
  }

  private async writeAllocating(buf: Uint8Array, offset: number): Promise<void> {
    const bs = this.blockSize;
    const firstBlock = Math.floor(offset / bs);
    const lastBlock = Math.floor((offset + buf.length - 1) / bs);
    const fresh: Array<[block: number, entry: number]> = [];
    for (let b = firstBlock; b <= lastBlock; b++) {
      const start = Math.max(offset, b * bs);
      const end = Math.min(offset + buf.length, (b + 1) * bs);
      const part = buf.subarray(start - offset, end - offset);
      const entry = this.bmap[b]!;
      if (isAllocated(entry)) {
        await this.file.write(part, this.hostOffset(b, entry) + (start % bs));
        continue;
      }
      if (this.blocksAllocated >= this.header.blocksInImage) {
        throw new VdiskError(
          'CORRUPT_IMAGE',
          `VDI image has no free block left (${this.blocksAllocated} of ${this.header.blocksInImage} allocated)`,
          { path: this.file.path },
        );
      }
      const idx = this.blocksAllocated++;
      const host = this.header.offsetData + idx * bs;
      // A new block is written whole: the data, zeros around it.
      if (part.length === bs) {
        await this.file.write(part, host);
      } else {
        const block = new Uint8Array(bs);
        block.set(part, start % bs);
        await this.file.write(block, host);
      }
      this.fileSize = Math.max(this.fileSize, host + bs);
      fresh.push([b, idx]);
    }
    if (fresh.length === 0) return;
    // Data first, then the header's count, then the map (see the file comment).
    const count = new Uint8Array(4);
    new DataView(count.buffer).setUint32(0, this.blocksAllocated, true);
    await this.file.write(count, OFF.blocksAllocated);
    for (const [b, idx] of fresh) this.bmap[b] = idx;
    await this.writeBmapRange(fresh[0]![0], fresh[fresh.length - 1]![0]);
  }

  /** Write the block-map sectors that hold entries first..last. */
  private async writeBmapRange(first: number, last: number): Promise<void> {
    const perSector = SECTOR_SIZE / 4;
    const s0 = Math.floor(first / perSector);
    const s1 = Math.floor(last / perSector);
    const out = new Uint8Array((s1 - s0 + 1) * SECTOR_SIZE);
    const v = new DataView(out.buffer);
    for (let i = s0 * perSector, j = 0; j < out.length && i < this.bmap.length; i++, j += 4) {
      v.setUint32(j, this.bmap[i]!, true);
    }
    // Entries past the last block (padding of the final sector) are written as stored: zero.
    await this.file.write(out, this.header.offsetBmap + s0 * SECTOR_SIZE);
  }

  async writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    // Unallocated blocks already read as zeros; allocated ones are zeroed where they lie (a
    // punched hole when unmapping is allowed). QEMU's vdi has no write-zeroes either and
    // writes zeros through the generic layer.
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const e = this.mapRange(pos, end - pos);
      if (e.data) {
        if (!(unmap && this.file.punchHole(e.hostOffset!, e.length))) {
          const zero = new Uint8Array(Math.min(ZERO_CHUNK, e.length));
          for (let p = 0; p < e.length; p += zero.length) {
            const n = Math.min(zero.length, e.length - p);
            await this.file.write(n === zero.length ? zero : zero.subarray(0, n), e.hostOffset! + p);
          }
        }
      }
      pos += e.length;
    }
  }

  async discard(_offset: number, _length: number): Promise<void> {
    // QEMU's vdi driver has no discard; the request is advisory.
  }

  flush(): Promise<void> {
    return this.file.flush();
  }

  async close(): Promise<void> {
    // Let allocating writes in flight finish before the handle goes.
    await this.alloc.run(async () => {});
    await this.file.close();
  }

  actualSize(): Promise<number> {
    return this.file.allocatedSize();
  }

  get isStatic(): boolean {
    return this.header.imageType === VDI_TYPE_STATIC;
  }

  /**
   * qemu-img check for vdi (block/vdi.c vdi_co_check): every map entry must point inside the
   * image and no two at the same block; the header's count must match. No repair: QEMU
   * answers -ENOTSUP to `check -r`.
   */
  async check(repair: 'none' | 'leaks' | 'all'): Promise<CheckResult> {
    if (repair !== 'none') throw new VdiskError('UNSUPPORTED', 'This image format does not support checks');
    const res: CheckResult = {
      corruptions: 0,
      leaks: 0,
      checkErrors: 0,
      corruptionsFixed: 0,
      leaksFixed: 0,
      messages: [],
    };
    const n = this.header.blocksInImage;
    // Which map entry first claimed each data block (bounded: the map itself is in memory).
    const owner = new Uint32Array(n).fill(0xffffffff);
    let allocated = 0;
    for (let block = 0; block < n; block++) {
      const e = this.bmap[block]!;
      if (!isAllocated(e)) continue;
      if (e < n) {
        allocated++;
        if (owner[e] === 0xffffffff) owner[e] = e;
        else {
          // QEMU prints the data block index twice here ("also used by" names the block again).
          res.messages.push(`ERROR: block index ${owner[e]} also used by ${e}`);
          res.corruptions++;
        }
      } else {
        res.messages.push(`ERROR: block index ${block} too large, is ${e}`);
        res.corruptions++;
      }
    }
    if (allocated !== this.blocksAllocated) {
      res.messages.push(
        `ERROR: allocated blocks mismatch, is ${allocated}, should be ${this.blocksAllocated}`,
      );
      res.corruptions++;
    }
    return res;
  }
}

/** Read and decode the block map (size validated by the header check). */
export async function readBmap(file: HostFile, h: VdiHeader): Promise<Uint32Array> {
  const raw = new Uint8Array(bmapSize(h.blocksInImage));
  await file.read(raw, h.offsetBmap);
  const out = new Uint32Array(h.blocksInImage);
  const v = new DataView(raw.buffer);
  for (let i = 0; i < out.length; i++) out[i] = v.getUint32(i * 4, true);
  return out;
}
