/**
 * cloop (read-only): a 128-byte shell preamble, then block size and block count (big-endian
 * u32), an offset table of n+1 big-endian u64, and zlib-compressed blocks (QEMU's block/cloop.c).
 */
import { promisify } from 'node:util';
import { inflate as inflateCb } from 'node:zlib';
import type { Extent } from '../../core/device.js';
import type { DriverOpenOptions, FormatDriver, FormatImage } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { ReadOnlyImage, refuseWritable } from '../readonly.js';

const inflate = promisify(inflateCb);
const MAX_BLOCK = 64 << 20;

class CloopImage extends ReadOnlyImage {
  readonly format = 'cloop';
  private cached = -1;
  private cache: Uint8Array;

  constructor(
    file: HostFile,
    private readonly blockSize: number,
    private readonly offsets: number[],
  ) {
    super(file);
    this.cache = new Uint8Array(blockSize);
  }

  get size(): number {
    return (this.offsets.length - 1) * this.blockSize;
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    return { offset, length, allocated: true, zero: false, data: true, compressed: true };
  }

  private async block(i: number): Promise<Uint8Array> {
    if (this.cached === i) return this.cache;
    const start = this.offsets[i]!;
    const len = this.offsets[i + 1]! - start;
    const raw = new Uint8Array(len);
    await this.file.read(raw, start);
    let out: Buffer;
    try {
      out = await inflate(raw, { maxOutputLength: this.blockSize });
    } catch (err) {
      throw new VdiskError('CORRUPT_IMAGE', `cloop block ${i} does not decompress`, {
        path: this.file.path,
        cause: err,
      });
    }
    if (out.length !== this.blockSize) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `cloop block ${i} decompresses to ${out.length} bytes, not ${this.blockSize}`,
        {
          path: this.file.path,
        },
      );
    }
    this.cache.set(out);
    this.cached = i;
    return this.cache;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const i = Math.floor(pos / this.blockSize);
      const inBlock = pos % this.blockSize;
      const n = Math.min(buf.length - done, this.blockSize - inBlock);
      const b = await this.block(i);
      buf.set(b.subarray(inBlock, inBlock + n), done);
      done += n;
    }
  }
}

async function openCloop(file: HostFile, opts: DriverOpenOptions): Promise<FormatImage> {
  refuseWritable('cloop', opts);
  const head = new Uint8Array(136);
  await file.read(head, 0);
  const v = new DataView(head.buffer);
  const blockSize = v.getUint32(128);
  const nBlocks = v.getUint32(132);
  // QEMU's checks (block/cloop.c).
  if (blockSize % 512 !== 0 || blockSize === 0) {
    throw new VdiskError('INVALID_IMAGE', `block_size ${blockSize} must be a multiple of 512`);
  }
  if (blockSize > MAX_BLOCK)
    throw new VdiskError('TOO_LARGE', `block_size ${blockSize} must be ${MAX_BLOCK} or less`);
  if (nBlocks > 0x7fffffff / 8 - 1 || (nBlocks + 1) * 8 > 512 << 20) {
    throw new VdiskError('TOO_LARGE', `n_blocks ${nBlocks} must be ${(512 << 20) / 8 - 1} or less`);
  }
  const fileSize = await file.size();
  const raw = new Uint8Array((nBlocks + 1) * 8);
  await file.read(raw, 136);
  const tv = new DataView(raw.buffer);
  const offsets: number[] = [];
  for (let i = 0; i <= nBlocks; i++) {
    const hi = tv.getUint32(i * 8);
    const off = hi * 2 ** 32 + tv.getUint32(i * 8 + 4);
    if (hi >= 2 ** 21 || off > fileSize)
      throw new VdiskError('INVALID_IMAGE', `offsets[${i}]=${off} is beyond the end of the file`);
    if (i > 0) {
      const prev = offsets[i - 1]!;
      if (off < prev)
        throw new VdiskError('INVALID_IMAGE', `offsets not monotonically increasing at index ${i}`);
      // A compressed block may be at most a little larger than the block (zlib's worst case).
      if (off - prev > blockSize + blockSize / 1000 + 12 + 64) {
        throw new VdiskError('INVALID_IMAGE', `invalid compressed block size at index ${i - 1}`);
      }
    }
    offsets.push(off);
  }
  return new CloopImage(file, blockSize, offsets);
}

export const cloopDriver: FormatDriver = { name: 'cloop', open: openCloop };
