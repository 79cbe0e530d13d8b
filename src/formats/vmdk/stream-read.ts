/**
 * A streamOptimized vmdk read front to back, as it arrives on a stream (convert - … from
 * standard input). Its grain tables and directory come after the grains they describe, so the
 * random-access driver (sparse.ts) would need the whole file first; but every grain carries
 * its own address (a grain marker: LBA, compressed size, deflate data), so the grains can be
 * decoded in the order they come. The image answers block status and reads in guest order
 * only: one grain is held at a time, and a request behind it is refused (one line) rather than
 * buffered. Writers put grains in increasing LBA order (qemu-img, VMware, vdisk); a stream
 * whose grains go backwards is refused as not in order.
 *
 * Layout (VMware's Virtual Disk Format 5.0, "Stream-Optimized Compressed Sparse Extents"): a
 * 512-byte header (sector 0), the descriptor and any tables up to `overHead` sectors, then
 * sector-aligned markers: { u64 val, u32 size, u32 type }. size > 0: a grain at LBA val, its
 * compressed bytes following the 12-byte marker header. size = 0: a metadata marker (type 0
 * end of stream, 1 grain table, 2 grain directory, 3 footer) taking a whole sector, followed
 * by val sectors of metadata, which a front-to-back reader skips.
 */
import { promisify } from 'node:util';
import { inflate as inflateCb } from 'node:zlib';
import type { Extent } from '../../core/device.js';
import type { FormatImage } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';

const inflate = promisify(inflateCb);
const SECTOR = 512;
const FLAG_COMPRESSED = 1 << 16;
const FLAG_MARKERS = 1 << 17;
const MARKER_EOS = 0;
/** Largest grain accepted (QEMU's limit: 128 sectors is its default; 2048 bounds memory). */
const MAX_GRAIN_SECTORS = 2048;
/** Metadata between grains (a grain table, the directory) is at most this many sectors. */
const MAX_METADATA_SECTORS = 1 << 20;

/** Does this header (the first 512 bytes) describe a streamOptimized vmdk (compressed grains with markers)? */
export function isStreamOptimizedHead(head: Uint8Array): boolean {
  if (head.length < SECTOR) return false;
  const v = new DataView(head.buffer, head.byteOffset, head.length);
  if (v.getUint32(0, true) !== 0x564d444b) return false;
  const flags = v.getUint32(8, true);
  return (flags & FLAG_COMPRESSED) !== 0 && (flags & FLAG_MARKERS) !== 0;
}

function invalid(message: string): VdiskError {
  return new VdiskError('INVALID_IMAGE', message);
}

export async function openVmdkStream(file: HostFile): Promise<FormatImage> {
  const head = new Uint8Array(SECTOR);
  await file.read(head, 0);
  if (!isStreamOptimizedHead(head))
    throw invalid('not a streamOptimized vmdk (compressed grains with markers)');
  const v = new DataView(head.buffer);
  const capacity = Number(v.getBigUint64(12, true));
  const grain = Number(v.getBigUint64(20, true));
  const overHead = Number(v.getBigUint64(64, true));
  const algorithm = v.getUint16(77, true);
  if (algorithm !== 1) throw invalid(`unsupported compression algorithm ${algorithm}`);
  if (grain < 1 || grain > MAX_GRAIN_SECTORS || (grain & (grain - 1)) !== 0)
    throw invalid(`invalid granularity, image may be corrupt`);
  if (capacity > 2 ** 44) throw invalid('capacity too large');
  if (overHead < 1 || overHead > 2 ** 32) throw invalid(`invalid overhead ${overHead}`);
  return new VmdkStreamImage(file, capacity * SECTOR, grain * SECTOR, overHead * SECTOR);
}

interface Grain {
  start: number;
  data: Buffer;
}

class VmdkStreamImage implements FormatImage {
  readonly format = 'vmdk';
  readonly alignment = SECTOR;
  readonly readOnly = true;
  /** Next marker's offset in the stream. */
  private pos: number;
  private grain: Grain | null = null;
  /** Everything before this guest offset has gone by. */
  private low = 0;
  private ended = false;
  /** LBA (bytes) after the last grain seen: grains must come in increasing order. */
  private nextMin = 0;

  constructor(
    private readonly file: HostFile,
    readonly size: number,
    readonly clusterSize: number,
    overHead: number,
  ) {
    this.pos = overHead;
  }

  attach(): void {}

  /** Decode the next grain (skipping metadata), or reach the end of the stream's image. */
  private async advance(): Promise<void> {
    if (this.grain !== null) this.low = this.grain.start + this.grain.data.length;
    this.grain = null;
    while (!this.ended) {
      const first = Buffer.alloc(SECTOR);
      await this.file.read(first, this.pos);
      const lba = Number(first.readBigUInt64LE(0)) * SECTOR;
      const size = first.readUInt32LE(8);
      if (size === 0) {
        const type = first.readUInt32LE(12);
        const sectors = lba / SECTOR;
        if (type === MARKER_EOS) {
          this.ended = true;
          return;
        }
        if (sectors > MAX_METADATA_SECTORS) throw invalid(`metadata marker of ${sectors} sectors`);
        this.pos += SECTOR + sectors * SECTOR;
        continue;
      }
      if (size > 2 * this.clusterSize + 1024) throw invalid(`grain marker of ${size} bytes`);
      if (lba % this.clusterSize !== 0 || lba >= this.size)
        throw invalid(`grain at invalid sector ${lba / SECTOR}`);
      if (lba < this.nextMin)
        throw new VdiskError(
          'UNSUPPORTED',
          `standard input: vmdk grains are not in order (sector ${lba / SECTOR} after ${this.nextMin / SECTOR}); convert from a file instead`,
        );
      const compressed = Buffer.alloc(size);
      first.copy(compressed, 0, 12, Math.min(SECTOR, 12 + size));
      if (12 + size > SECTOR) await this.file.read(compressed.subarray(SECTOR - 12), this.pos + SECTOR);
      this.pos += Math.ceil((12 + size) / SECTOR) * SECTOR;
      let data: Buffer;
      try {
        data = await inflate(compressed, { maxOutputLength: this.clusterSize });
      } catch {
        throw invalid(`grain at sector ${lba / SECTOR} does not decompress`);
      }
      const length = Math.min(this.clusterSize, this.size - lba);
      if (data.length < length) data = Buffer.concat([data, Buffer.alloc(length - data.length)]);
      this.grain = { start: lba, data: data.subarray(0, length) };
      this.nextMin = lba + this.clusterSize;
      return;
    }
  }

  /** Make the held grain the first one that ends after `offset` (or none: the end). */
  private async reach(offset: number): Promise<void> {
    if (offset < this.low)
      throw new VdiskError(
        'UNSUPPORTED',
        `standard input: guest offset ${offset} was needed again after it went by; convert from a file instead`,
      );
    while (!this.ended && (this.grain === null || this.grain.start + this.grain.data.length <= offset))
      await this.advance();
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    await this.reach(offset);
    const g = this.grain;
    if (g === null || g.start >= offset + length)
      return { offset, length, allocated: false, zero: false, data: false };
    if (g.start > offset)
      return { offset, length: g.start - offset, allocated: false, zero: false, data: false };
    const end = Math.min(g.start + g.data.length, offset + length);
    return { offset, length: end - offset, allocated: true, zero: false, data: true, compressed: true };
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    buf.fill(0);
    const end = offset + buf.length;
    let at = offset;
    while (at < end) {
      await this.reach(at);
      const g = this.grain;
      if (g === null || g.start >= end) return;
      const a = Math.max(at, g.start);
      const b = Math.min(end, g.start + g.data.length);
      buf.set(g.data.subarray(a - g.start, b - g.start), a - offset);
      at = b;
    }
  }

  /** Read on to the end-of-stream marker (the stream was cut short if it ends before). */
  async finish(): Promise<void> {
    while (!this.ended) await this.advance();
  }

  private readOnlyError(): VdiskError {
    return new VdiskError('READ_ONLY', 'Image read from standard input is read-only');
  }

  async write(): Promise<void> {
    throw this.readOnlyError();
  }

  async writeZeroes(): Promise<void> {
    throw this.readOnlyError();
  }

  async discard(): Promise<void> {
    throw this.readOnlyError();
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    await this.file.close();
  }

  async actualSize(): Promise<number> {
    return 0;
  }
}
