/** A FLAT (or VMFS) extent: the extent's bytes lie in a file from a start offset on. */
import type { Extent } from '../../core/device.js';
import type { HostFile } from '../../core/host-file.js';
import type { CheckProblem, VmdkExtent } from './extent.js';

const ZERO_CHUNK = 1 << 20;

export class FlatExtent implements VmdkExtent {
  readonly flat = true;
  readonly compressed = false;
  readonly grainSize = undefined;

  constructor(
    readonly file: HostFile,
    readonly start: number,
    readonly size: number,
    /** Byte offset of the extent's data in the file. */
    private readonly fileOffset: number,
    readonly type: string,
    readonly infoFilename: string,
  ) {}

  /**
   * QEMU answers DATA | OFFSET_VALID | RECURSE for flat extents: the generic layer then asks
   * the file, and holes come out as zero (still data), as qemu-img map shows.
   */
  async status(offset: number, length: number): Promise<Extent> {
    const host = this.fileOffset + offset;
    const [h] = await this.file.extents(host, length);
    const n = h === undefined ? length : h.length;
    return {
      offset,
      length: n,
      allocated: true,
      zero: h === undefined || !h.data,
      data: true,
      hostOffset: host,
      file: this.file.path,
    };
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.file.read(buf, this.fileOffset + offset);
  }

  write(buf: Uint8Array, offset: number): Promise<void> {
    return this.file.write(buf, this.fileOffset + offset);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    const host = this.fileOffset + offset;
    if (await this.file.isHole(host, length)) return;
    const zero = new Uint8Array(Math.min(ZERO_CHUNK, length));
    for (let p = 0; p < length; p += zero.length) {
      const n = Math.min(zero.length, length - p);
      await this.file.write(n === zero.length ? zero : zero.subarray(0, n), host + p);
    }
  }

  /** QEMU's check looks only at the start offset of a flat extent. */
  async check(): Promise<CheckProblem | null> {
    const len = await this.file.size();
    if (this.fileOffset >= len) {
      return {
        message: `ERROR: cluster offset for sector ${this.start / 512} points after EOF`,
        failure: 'Invalid argument',
      };
    }
    return null;
  }

  async flushMetadata(): Promise<void> {}
}
