/**
 * What every read-only format driver (bochs, cloop, dmg) shares: no writes, nothing to flush,
 * one host file, and no get_info in QEMU (so qemu-img info shows no cluster size or dirty flag).
 */
import type { Extent } from '../core/device.js';
import type { DriverContext, DriverOpenOptions, FormatImage } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';
import type { HostFile } from '../core/host-file.js';

export abstract class ReadOnlyImage implements FormatImage {
  abstract readonly format: string;
  abstract readonly size: number;
  readonly alignment: number = 512;
  readonly readOnly = true;
  readonly hasInfo = false;

  constructor(protected readonly file: HostFile) {}

  attach(_ctx: DriverContext): void {}
  abstract blockStatus(offset: number, length: number): Promise<Extent>;
  abstract read(buf: Uint8Array, offset: number): Promise<void>;

  async write(): Promise<void> {
    throw readOnlyError(this.format);
  }
  async writeZeroes(): Promise<void> {
    throw readOnlyError(this.format);
  }
  async discard(): Promise<void> {}
  async flush(): Promise<void> {}
  close(): Promise<void> {
    return this.file.close();
  }
  actualSize(): Promise<number> {
    return this.file.allocatedSize();
  }
}

export function readOnlyError(format: string): VdiskError {
  return new VdiskError('READ_ONLY', `The ${format} format is read-only`);
}

/** Refuse a writable open of a read-only format. */
export function refuseWritable(format: string, opts: DriverOpenOptions): void {
  if (opts.writable) throw readOnlyError(format);
}
