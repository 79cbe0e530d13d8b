/**
 * bochs (read-only): Bochs' "growing" redolog. A catalog maps each extent to a block of
 * bitmap + data sectors; a sector is present when its bit is set (QEMU's block/bochs.c).
 */
import type { Extent } from '../../core/device.js';
import type { DriverOpenOptions, FormatDriver, FormatImage } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { ReadOnlyImage, refuseWritable } from '../readonly.js';
import { probeBochs } from './probe.js';

const HEADER_V1 = 0x00010000;
const UNALLOCATED = 0xffffffff;

class BochsImage extends ReadOnlyImage {
  readonly format = 'bochs';

  constructor(
    file: HostFile,
    readonly size: number,
    private readonly catalog: Uint32Array,
    private readonly dataOffset: number,
    private readonly extentSize: number,
    private readonly bitmapBlocks: number,
    private readonly extentBlocks: number,
  ) {
    super(file);
  }

  /** File offset of a guest sector, or -1 when it is not stored. */
  private async sectorOffset(sector: number): Promise<number> {
    const offset = sector * 512;
    const index = Math.floor(offset / this.extentSize);
    const inExtent = Math.floor((offset % this.extentSize) / 512);
    const entry = this.catalog[index];
    if (entry === undefined || entry === UNALLOCATED) return -1;
    const bitmap = this.dataOffset + 512 * entry * (this.extentBlocks + this.bitmapBlocks);
    const b = new Uint8Array(1);
    await this.file.read(b, bitmap + Math.floor(inExtent / 8));
    if (!((b[0]! >> (inExtent % 8)) & 1)) return -1;
    return bitmap + 512 * (this.bitmapBlocks + inExtent);
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    const first = await this.sectorOffset(offset / 512);
    let n = 512;
    // Extend over following sectors of the same kind (bounded, one bitmap byte per sector).
    while (n < length && n < 1 << 20) {
      const o = await this.sectorOffset((offset + n) / 512);
      if (o < 0 !== first < 0 || (first >= 0 && o !== first + n)) break;
      n += 512;
    }
    const len = Math.min(n, length);
    return first < 0
      ? { offset, length: len, allocated: false, zero: false, data: false }
      : {
          offset,
          length: len,
          allocated: true,
          zero: false,
          data: true,
          hostOffset: first,
          file: this.file.path,
        };
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    for (let done = 0; done < buf.length; done += 512) {
      const o = await this.sectorOffset((offset + done) / 512);
      const part = buf.subarray(done, done + 512);
      if (o < 0) part.fill(0);
      else await this.file.read(part, o);
    }
  }
}

async function openBochs(file: HostFile, opts: DriverOpenOptions): Promise<FormatImage> {
  refuseWritable('bochs', opts);
  const head = new Uint8Array(512);
  await file.read(head, 0);
  if (probeBochs(head) === 0) throw new VdiskError('INVALID_IMAGE', 'Image not in Bochs format');
  const v = new DataView(head.buffer);
  const version = v.getUint32(64, true);
  const headerSize = v.getUint32(68, true);
  const catalogSize = v.getUint32(72, true);
  const bitmapSize = v.getUint32(76, true);
  const extentSize = v.getUint32(80, true);
  const diskLo = version === HEADER_V1 ? v.getUint32(84, true) : v.getUint32(88, true);
  const diskHi = version === HEADER_V1 ? v.getUint32(88, true) : v.getUint32(92, true);
  if (diskHi >= 2 ** 21) throw new VdiskError('INVALID_IMAGE', 'Bochs disk size too large');
  const size = diskHi * 2 ** 32 + diskLo;
  // QEMU's limits: catalog entries bounded, extent a power-of-two multiple of 512.
  if (catalogSize > 0x800000) throw new VdiskError('TOO_LARGE', 'Catalog size is too large');
  if (extentSize < 512 || extentSize > 0x800000 || extentSize % 512 !== 0) {
    throw new VdiskError('INVALID_IMAGE', `Extent size ${extentSize} is invalid`);
  }
  if (bitmapSize === 0 || bitmapSize > 0x800000)
    throw new VdiskError('INVALID_IMAGE', 'Bitmap size is invalid');
  if (Math.ceil(size / extentSize) > catalogSize) {
    throw new VdiskError('INVALID_IMAGE', 'Catalog size is too small for this disk size');
  }
  if (headerSize < 512 || headerSize > 1 << 20)
    throw new VdiskError('INVALID_IMAGE', 'Header size is invalid');
  const raw = new Uint8Array(catalogSize * 4);
  await file.read(raw, headerSize);
  const catalog = new Uint32Array(catalogSize);
  const cv = new DataView(raw.buffer);
  for (let i = 0; i < catalogSize; i++) catalog[i] = cv.getUint32(i * 4, true);
  return new BochsImage(
    file,
    Math.floor(size / 512) * 512,
    catalog,
    headerSize + catalogSize * 4,
    extentSize,
    1 + Math.floor((bitmapSize - 1) / 512),
    1 + Math.floor((extentSize - 1) / 512),
  );
}

export const bochsDriver: FormatDriver = { name: 'bochs', open: openBochs };
