/**
 * raw: the image is the file, or the part of it that the `offset` and `size` options (QEMU's
 * raw format options, given with --image-opts or json:{…}) select. Sparse-aware: block status comes from the host's holes
 * (lseek SEEK_DATA/SEEK_HOLE: one system call per extent, no data read), zeroes and
 * discards punch holes (fallocate PUNCH_HOLE) where the host allows, zeroes without unmap
 * use FALLOC_FL_ZERO_RANGE.
 */
import type { Extent } from '../../core/device.js';
import type {
  CreateRequest,
  DriverContext,
  DriverOpenOptions,
  FormatDriver,
  FormatImage,
  WriteSource,
} from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { parseSize, sizeParameterError } from '../../core/size.js';
import { createFile } from '../../protocols/index.js';

const CHUNK = 1 << 20;

export class RawImage implements FormatImage {
  readonly format = 'raw';
  readonly alignment = 1;

  /**
   * @param base where the image starts in the file (the `offset` option)
   * @param fixedSize the `size` option was given: the image cannot be resized
   */
  constructor(
    private readonly file: HostFile,
    public size: number,
    private readonly base = 0,
    private readonly fixedSize = false,
  ) {}

  get readOnly(): boolean {
    return !this.file.writable;
  }

  /** raw's get_info asks its file: a local file has one, qemu's nbd and curl drivers none (info
   * over an export or a URL then prints no dirty flag). */
  get hasInfo(): boolean {
    return !this.file.remote;
  }

  /** An NBD export is not known to read as zeros (qemu: nbd has no has_zero_init). */
  get zeroInit(): boolean {
    return !this.file.remote;
  }

  attach(_ctx: DriverContext): void {}

  async blockStatus(offset: number, length: number): Promise<Extent> {
    const [first] = await this.file.extents(this.base + offset, length, 1);
    // Where the extent lies in the file (map's offset column); the image's own offsets otherwise.
    const hostOffset = this.base + offset;
    if (first === undefined) {
      // Past the end of the file (the file is shorter than the size): reads as zeros.
      return {
        offset,
        length,
        allocated: true,
        zero: true,
        data: false,
        hostOffset,
        file: this.file.path,
      };
    }
    // A source may report allocated zeros (NBD: data without NBD_STATE_HOLE, with ZERO).
    if (first.data && first.zero === true)
      return {
        offset,
        length: first.length,
        allocated: true,
        zero: true,
        data: true,
        hostOffset,
        file: this.file.path,
      };
    // A hole that does not read as zeros (NBD: HOLE without ZERO).
    if (!first.data && first.zero === false)
      return {
        offset,
        length: first.length,
        allocated: true,
        zero: false,
        data: false,
        hostOffset,
        file: this.file.path,
      };
    return first.data
      ? {
          offset,
          length: first.length,
          allocated: true,
          zero: false,
          data: true,
          hostOffset,
          file: this.file.path,
        }
      : // A hole: qemu's file driver reports it with its offset in the file (map shows it).
        {
          offset,
          length: first.length,
          allocated: true,
          zero: true,
          data: false,
          hostOffset,
          file: this.file.path,
        };
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.file.read(buf, this.base + offset);
  }

  /** The file is the data (FormatImage.directFile). */
  directFile(e: Extent): HostFile | undefined {
    return e.data && e.hostOffset === e.offset ? this.file : undefined;
  }

  write(buf: Uint8Array, offset: number): Promise<void> {
    return this.file.write(buf, this.base + offset);
  }

  readonly takesWriteSource = true;

  /**
   * No allocation to order: the write itself may overlap with the ones around it. With `from`,
   * the host copies the bytes where it can (a reflink, copy_file_range under convert -C).
   */
  async prepareWrite(buf: Uint8Array, offset: number, from?: WriteSource): Promise<() => Promise<void>> {
    const at = this.base + offset;
    if (from === undefined) return () => this.file.write(buf, at);
    return async () => {
      if (await this.file.copyFrom(from.file, from.offset, at, buf.length, from.how)) return;
      await from.fill();
      await this.file.write(buf, at);
    };
  }

  async writeZeroes(imageOffset: number, length: number, unmap: boolean): Promise<void> {
    const offset = this.base + imageOffset;
    if (this.file.remote) {
      // NBD: WRITE_ZEROES (with NO_HOLE unless unmap), as qemu's nbd driver.
      if (await this.file.zeroOut(offset, length, unmap)) return;
    } else {
      if (unmap && this.file.punchHole(offset, length)) return;
      // Already a hole: nothing to write.
      if (await this.file.isHole(offset, length)) return;
      // As QEMU's file driver: zero the range in place (FALLOC_FL_ZERO_RANGE) before writing zeros.
      if (this.file.zeroRange(offset, length)) return;
    }
    const zero = new Uint8Array(Math.min(CHUNK, length));
    for (let pos = offset; pos < offset + length; pos += zero.length) {
      const n = Math.min(zero.length, offset + length - pos);
      await this.file.write(n === zero.length ? zero : zero.subarray(0, n), pos);
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.file.discard(this.base + offset, length);
  }

  flush(): Promise<void> {
    return this.file.flush();
  }

  close(): Promise<void> {
    return this.file.close();
  }

  actualSize(): Promise<number> {
    return this.file.allocatedSize();
  }

  /** Grow or shrink the file (resize), preallocating what grows as asked. */
  async resize(size: number, opts: { preallocation?: string; shrink: boolean }): Promise<void> {
    const mode = opts.preallocation ?? 'off';
    // raw-format.c raw_co_truncate.
    if (this.fixedSize) throw new VdiskError('UNSUPPORTED', 'Cannot resize fixed-size raw disks');
    if (!(PREALLOC_MODES as readonly string[]).includes(mode)) {
      // file-posix's wording (qed and others say "mode '…'").
      throw new VdiskError('INVALID_ARGUMENT', `Unsupported preallocation mode: ${mode}`);
    }
    const old = await this.file.size();
    const end = this.base + size;
    await this.file.truncate(end);
    if (end > old && mode === 'falloc' && !this.file.allocate(old, end - old)) {
      throw new VdiskError(
        'UNSUPPORTED',
        `Could not preallocate '${this.file.path}': the file system does not support fallocate`,
      );
    }
    if (end > old && mode === 'full') {
      const zero = new Uint8Array(Math.min(4 << 20, end - old));
      for (let pos = old; pos < end; pos += zero.length)
        await this.file.write(zero.subarray(0, Math.min(zero.length, end - pos)), pos);
    }
    this.size = Math.ceil(size / 512) * 512;
  }
}

export const PREALLOC_MODES = ['off', 'falloc', 'full'] as const;

/**
 * raw-format.c raw_read_options and raw_apply_options: the offset and size, checked (other
 * options were refused or set aside by chain/runtime-options.ts).
 */
function rawOptions(
  options: Readonly<Record<string, string>>,
  fileSize: number,
): { offset: number; size?: number } {
  const num = (name: string): number | undefined => {
    const text = options[name];
    if (text === undefined) return undefined;
    const v = parseSize(text);
    if (v === null || v >= 2 ** 64) throw new VdiskError('INVALID_ARGUMENT', sizeParameterError(name));
    return v;
  };
  const offset = num('offset') ?? 0;
  const size = num('size');
  if (offset > fileSize)
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `Offset (${offset}) cannot be greater than size of the containing file (${fileSize})`,
    );
  if (size === undefined) return { offset };
  // Checked before the sum, as QEMU does.
  if (size % 512 !== 0) throw new VdiskError('INVALID_ARGUMENT', 'Specified size is not multiple of 512');
  if (offset + size > fileSize)
    throw new VdiskError(
      'INVALID_ARGUMENT',
      // QEMU's text, its double space included.
      `The sum of offset (${offset}) and size (${size}) has to be smaller or equal to the  actual size of the containing file (${fileSize})`,
    );
  return { offset, size };
}

export async function createRaw(req: CreateRequest): Promise<void> {
  const prealloc = req.options['preallocation'] ?? 'off';
  if (!(PREALLOC_MODES as readonly string[]).includes(prealloc)) {
    // qemu's file driver words it so (qemu-img: x.img: invalid parameter value: xyz).
    throw new VdiskError('INVALID_ARGUMENT', `invalid parameter value: ${prealloc}`);
  }
  // qemu-img create rounds the size up to whole sectors (`create -f raw x 1000` makes 1024
  // bytes), as every other driver does.
  const size = Math.ceil(req.size / 512) * 512;
  const file = await createFile(req.path);
  try {
    if (file.remote) {
      // qemu's bdrv_co_create_opts_simple on a protocol without create (nbd): no
      // preallocation, a size the export can hold, and the first sector zeroed.
      if (prealloc !== 'off')
        throw new VdiskError('UNSUPPORTED', `Unsupported preallocation mode '${prealloc}'`);
      await file.truncate(size);
      if (size > 0) await file.write(new Uint8Array(Math.min(size, 512)), 0);
      await file.flush();
      return;
    }
    await file.truncate(size);
    // QEMU's file driver allocates the first block of a new image (file-posix.c,
    // allocate_first_block) so that later alignment probing works; we do the same so that
    // `disk size` matches.
    if (prealloc === 'off' && size > 0) await file.write(new Uint8Array(Math.min(size, 4096)), 0);
    if (prealloc === 'falloc' && !file.allocate(0, size)) {
      throw new VdiskError(
        'UNSUPPORTED',
        `Could not preallocate '${req.path}': the file system does not support fallocate`,
      );
    }
    if (prealloc === 'full') {
      const zero = new Uint8Array(Math.min(4 << 20, Math.max(size, 1)));
      for (let pos = 0; pos < size; pos += zero.length) {
        const n = Math.min(zero.length, size - pos);
        await file.write(zero.subarray(0, n), pos);
      }
      await file.flush();
    }
  } finally {
    await file.close();
  }
}

export const rawDriver: FormatDriver = {
  name: 'raw',
  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    {
      name: 'preallocation',
      type: 'string',
      help: 'Preallocation mode (allowed values: off, falloc, full)',
      protocol: true,
    },
  ],
  async open(file: HostFile, opts?: DriverOpenOptions): Promise<FormatImage> {
    // QEMU counts sizes in 512-byte sectors, rounding a file's length up (block.c,
    // bdrv_refresh_total_sectors); the tail past end of file reads as zeros.
    const fileSize = Math.ceil((await file.size()) / 512) * 512;
    const { offset, size } = rawOptions(opts?.options ?? {}, fileSize);
    if (size !== undefined) return new RawImage(file, size, offset, true);
    return new RawImage(file, Math.ceil((fileSize - offset) / 512) * 512, offset);
  },
  create: createRaw,
  async createSequential(src, options) {
    return (await import('./stream.js')).createRawSequential(src, options);
  },
  // block/raw-format.c raw_measure: the virtual size (of the source, or the given size rounded
  // up to sectors); unallocated sectors count towards a raw file's size.
  async measure(size, _options, source) {
    const required = source !== undefined ? source.size : Math.ceil(size / 512) * 512;
    return { required, fullyAllocated: required };
  },
};
