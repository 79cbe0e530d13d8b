/**
 * dmg (read-only): Apple's UDIF disk images, as QEMU 7.2's block/dmg.c reads them. Chunks of
 * zeros, raw data, "ignore" (zeros), zlib and bzip2 are read; a sector that no chunk maps
 * (or that lies in a chunk of another type, e.g. lzfse or ADC) fails with an I/O error, as in
 * QEMU. QEMU's dmg has no block status: qemu-img sees every sector as data, and so does vdisk.
 *
 * Debian's qemu-img 7.2 ships without the dmg-bz2 module and fails on bzip2 chunks; vdisk
 * reads them (what QEMU with the module reads).
 */
import { promisify } from 'node:util';
import { inflate } from 'node:zlib';
import type { Extent } from '../../core/device.js';
import type { DriverOpenOptions, FormatDriver, FormatImage } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { ReadOnlyImage, refuseWritable } from '../readonly.js';
import { bunzip2Exact } from './bzip2.js';
import { probeDmg } from './probe.js';
import { type ChunkTable, readUdif, searchChunk, UDBZ, UDIG, UDRW, UDZE, UDZO } from './udif.js';

const inflateAsync = promisify(inflate);
const CACHE_CHUNKS = 8;
const CACHE_BYTES = 32 * 1024 * 1024;

class DmgImage extends ReadOnlyImage {
  readonly format = 'dmg';
  readonly size: number;
  /**
   * Recently decompressed chunks, least recently used first (QEMU keeps one; convert's
   * several requests in flight read neighbouring chunks at once, so vdisk keeps a few,
   * bounded in bytes: a hostile image's 64 MiB chunks cannot grow it past CACHE_BYTES + one).
   */
  private readonly cache = new Map<number, { data: Promise<Uint8Array>; bytes: number }>();
  private cachedBytes = 0;

  constructor(
    file: HostFile,
    totalSectors: number,
    private readonly t: ChunkTable,
  ) {
    super(file);
    this.size = totalSectors * 512;
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    // No bdrv_co_block_status in QEMU's dmg: the generic layer reports allocated data.
    return { offset, length, allocated: true, zero: false, data: true };
  }

  private ioError(sector: number): VdiskError {
    return new VdiskError('EIO', `dmg: no readable chunk holds sector ${sector}: Input/output error`, {
      path: this.file.path,
      offset: sector * 512,
    });
  }

  /** The uncompressed bytes of a data-carrying chunk. */
  private chunkData(i: number): Promise<Uint8Array> {
    const hit = this.cache.get(i);
    if (hit !== undefined) {
      this.cache.delete(i);
      this.cache.set(i, hit);
      return hit.data;
    }
    const data = this.loadChunk(i);
    const entry = { data, bytes: 512 * this.t.sectorCounts[i]! };
    this.cache.set(i, entry);
    this.cachedBytes += entry.bytes;
    for (const [k, e] of this.cache) {
      if (this.cache.size <= 1 || (this.cache.size <= CACHE_CHUNKS && this.cachedBytes <= CACHE_BYTES)) break;
      this.cache.delete(k);
      this.cachedBytes -= e.bytes;
    }
    data.catch(() => {
      if (this.cache.get(i) === entry) {
        this.cache.delete(i);
        this.cachedBytes -= entry.bytes;
      }
    });
    return data;
  }

  private async loadChunk(i: number): Promise<Uint8Array> {
    const t = this.t;
    const type = t.types[i]!;
    const want = 512 * t.sectorCounts[i]!;
    const offset = t.offsets[i]!;
    const length = t.lengths[i]!;
    if (offset + length > Number.MAX_SAFE_INTEGER) throw this.ioError(t.sectors[i]!);
    const src = new Uint8Array(length);
    await this.file.read(src, offset);
    if (type === UDRW) {
      // QEMU reads `length` bytes into its buffer; sectors past them read as zeros here.
      const out = new Uint8Array(Math.max(want, 0));
      out.set(src.subarray(0, Math.min(src.length, out.length)));
      return out;
    }
    try {
      if (type === UDZO) {
        // One zlib stream that must inflate to exactly the chunk's sectors (QEMU: Z_STREAM_END
        // and total_out == 512 * sectorcount). maxOutputLength bounds a hostile stream.
        // On the thread pool: several chunks inflate at once.
        const out = await inflateAsync(src, { maxOutputLength: Math.max(want, 1) });
        if (out.length !== want) throw new Error('size');
        return new Uint8Array(out.buffer, out.byteOffset, out.length);
      }
      if (type === UDBZ) return await bunzip2Exact(src, want);
    } catch {
      throw new VdiskError('EIO', `dmg: chunk ${i} does not decompress: Input/output error`, {
        path: this.file.path,
        offset,
      });
    }
    throw this.ioError(t.sectors[i]!);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const t = this.t;
    let done = 0;
    while (done < buf.length) {
      const sector = (offset + done) / 512;
      const i = searchChunk(t, sector);
      if (i >= t.n) throw this.ioError(sector);
      const start = t.sectors[i]!;
      const n = Math.min(buf.length - done, (start + t.sectorCounts[i]! - sector) * 512);
      const part = buf.subarray(done, done + n);
      const type = t.types[i]!;
      if (type === UDZE || type === UDIG) part.fill(0);
      else {
        const data = await this.chunkData(i);
        const from = (sector - start) * 512;
        part.set(data.subarray(from, from + n));
      }
      done += n;
    }
  }
}

async function openDmg(file: HostFile, opts: DriverOpenOptions): Promise<FormatImage> {
  refuseWritable('dmg', opts);
  const { totalSectors, table } = await readUdif(file);
  return new DmgImage(file, totalSectors, table);
}

export const dmgDriver: FormatDriver = { name: 'dmg', probe: probeDmg, open: openDmg };
