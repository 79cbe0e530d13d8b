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

/**
 * A block that cannot be read (it lies past the end of the file, does not inflate, or inflates
 * to another size): cloop_read_block's -EIO, which qemu-img reports as "Input/output error".
 */
const unreadable = () => new VdiskError('EIO', 'Input/output error');
const MAX_BLOCK = 64 << 20;

class CloopImage extends ReadOnlyImage {
  readonly format = 'cloop';
  private cached = -1;
  private cache: Uint8Array;

  constructor(
    file: HostFile,
    private readonly blockSize: number,
    private readonly nBlocks: number,
    /** The table's entries inside the file; those past it are zeros. */
    private readonly offsets: Float64Array,
  ) {
    super(file);
    this.cache = new Uint8Array(blockSize);
  }

  private offset(i: number): number {
    return i < this.offsets.length ? this.offsets[i]! : 0;
  }

  get size(): number {
    // QEMU multiplies n_blocks by the sectors per block in 32 bits (block/cloop.c): a table of
    // 50 M blocks of 64 KiB is 1,077,776,744,448 bytes to qemu-img, not 3.3 TB. Matched.
    return ((this.nBlocks * (this.blockSize / 512)) % 2 ** 32) * 512;
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    return { offset, length, allocated: true, zero: false, data: true, compressed: true };
  }

  private async block(i: number): Promise<Uint8Array> {
    if (this.cached === i) return this.cache;
    const start = this.offset(i);
    const len = this.offset(i + 1) - start;
    // Past 2^53 (only a hostile table has such offsets) the sizes are not exact: no file
    // holds that block anyway.
    if (start + len > Number.MAX_SAFE_INTEGER || len < 0) throw unreadable();
    const raw = new Uint8Array(len);
    await this.file.read(raw, start);
    let out: Buffer;
    try {
      out = await inflate(raw, { maxOutputLength: this.blockSize });
    } catch {
      throw unreadable();
    }
    if (out.length !== this.blockSize) throw unreadable();
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
  // QEMU 7.2's checks (block/cloop.c cloop_open), in its order and words.
  if (blockSize % 512 !== 0)
    throw new VdiskError('INVALID_IMAGE', `block_size ${blockSize} must be a multiple of 512`);
  if (blockSize === 0) throw new VdiskError('INVALID_IMAGE', 'block_size cannot be zero');
  if (blockSize > MAX_BLOCK)
    throw new VdiskError('TOO_LARGE', `block_size ${blockSize} must be ${MAX_BLOCK >> 20} MB or less`);
  if (nBlocks > Math.floor((0xffffffff - 1) / 8))
    throw new VdiskError(
      'TOO_LARGE',
      `n_blocks ${nBlocks} must be ${Math.floor((0xffffffff - 1) / 8)} or less`,
    );
  if ((nBlocks + 1) * 8 > 512 << 20)
    throw new VdiskError('TOO_LARGE', 'image requires too many offsets, try increasing block size');
  const fileSize = await file.size();
  // QEMU reads the whole table, the part past the end of the file as zeros (400 MB for a
  // 300-byte file, and a table of 50 M zeros opens). Only the part inside the file is read and
  // kept here; the entries past it are zeros, and pass QEMU's checks unless an entry before
  // them is not zero ("not monotonically increasing" at the first of them). The same images
  // open and the same messages refuse the others, without the allocation. An offset past the
  // end of the file is not refused here (QEMU opens such an image; reading that block fails).
  const inFile = Math.min(nBlocks + 1, Math.ceil(Math.max(0, fileSize - 136) / 8));
  const raw = new Uint8Array(inFile * 8);
  await file.read(raw, 136);
  const tv = new DataView(raw.buffer);
  const offsets = new Float64Array(inFile);
  // Offsets of 2^53 and more (no file has them) are compared exactly, as BigInts.
  const at = (i: number): bigint => (i < inFile ? tv.getBigUint64(i * 8) : 0n);
  for (let i = 0; i <= Math.min(nBlocks, inFile); i++) {
    const hi = i < inFile ? tv.getUint32(i * 8) : 0;
    const off = hi * 2 ** 32 + (i < inFile ? tv.getUint32(i * 8 + 4) : 0);
    if (i > 0) {
      const prev = offsets[i - 1]!;
      const exact = hi >= 2 ** 21 || prev >= 2 ** 53;
      const size = exact ? at(i) - at(i - 1) : BigInt(off - prev);
      if (size < 0n)
        throw new VdiskError(
          'INVALID_IMAGE',
          `offsets not monotonically increasing at index ${i}, image file is corrupt`,
        );
      // Compressed blocks may come out a little larger than the block; QEMU bounds them (and
      // the buffer a read allocates) at twice its largest block.
      if (size > BigInt(2 * MAX_BLOCK))
        throw new VdiskError(
          'INVALID_IMAGE',
          `invalid compressed block size at index ${i}, image file is corrupt`,
        );
    }
    if (i < inFile) offsets[i] = off;
  }
  return new CloopImage(file, blockSize, nBlocks, offsets);
}

export const cloopDriver: FormatDriver = { name: 'cloop', open: openCloop };
