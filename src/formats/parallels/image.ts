/**
 * ParallelsImage: a Parallels (ploop) image open for I/O, as QEMU 7.2's block/parallels.c
 * reads and writes it.
 *
 * Clusters are appended at `dataEnd` (a sector number, as QEMU keeps it). Allocation order (a
 * process killed at any instant leaves a consistent image): the data and the zeros around it
 * are written first, the file is grown to the end of the new clusters, and only then the BAT
 * entries that point at them. A kill before the BAT write leaves space past the last cluster,
 * which `check` reports as leaked (and `check -r leaks` or the next writable close cuts off).
 *
 * As QEMU does, the header's `inuse` field is set while the image is open for writing and
 * cleared on close, after the file is truncated to the end of the data. An image left in use
 * is refused for writing (QEMU 7.2: "Image was not closed correctly; cannot be opened
 * read/write") until `check -r all`.
 */
import type { Extent } from '../../core/device.js';
import type { CheckResult, DriverContext, FormatImage } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { Mutex } from '../../core/lock.js';
import {
  batEntryOffset,
  HEADER_INUSE_MAGIC,
  HEADER_SIZE,
  OFF,
  type ParallelsHeader,
  SECTOR,
} from './header.js';

const ZERO_CHUNK = 1 << 20;
const MAX_ENTRY = 0xffffffff;

export interface ParallelsState {
  header: ParallelsHeader;
  /** The BAT entries stored in the file (entries past the end of the file read as 0). */
  bat: Uint32Array;
  /** Sector where the next cluster goes (QEMU's s->data_end). */
  dataEnd: number;
  fileSize: number;
  /** The header said the image was in use (not closed correctly). */
  unclean: boolean;
  /** The header's 64 bytes as stored: rewritten with only `inuse` changed, as QEMU does. */
  raw: Uint8Array;
}

export class ParallelsImage implements FormatImage {
  readonly format = 'parallels';
  readonly alignment = SECTOR;
  /** QEMU 7.2's parallels driver has no get_info: qemu-img info prints no cluster size. */
  readonly hasInfo = false;
  readonly size: number;
  readonly clusterSize: number;
  private readonly header: ParallelsHeader;
  private readonly rawHeader: Uint8Array;
  private readonly bat: Uint32Array;
  /** Sectors per BAT unit: 1 with the old magic, a cluster with the "Ext" magic. */
  private readonly mult: number;
  private dataEnd: number;
  private fileSize: number;
  private unclean: boolean;
  private readonly alloc = new Mutex();
  private ctx: DriverContext = { readBacking: async (b) => void b.fill(0), hasBacking: false };
  private closed = false;

  constructor(
    private readonly file: HostFile,
    st: ParallelsState,
  ) {
    this.header = st.header;
    this.rawHeader = st.raw;
    this.bat = st.bat;
    this.mult = st.header.ext ? st.header.tracks : 1;
    this.clusterSize = st.header.tracks * SECTOR;
    this.size = st.header.nbSectors * SECTOR;
    this.dataEnd = st.dataEnd;
    this.fileSize = st.fileSize;
    this.unclean = st.unclean;
  }

  get readOnly(): boolean {
    return !this.file.writable;
  }

  /** The header says the image was not closed correctly. */
  get dirty(): boolean {
    return this.unclean;
  }

  attach(ctx: DriverContext): void {
    this.ctx = ctx;
  }

  private entry(i: number): number {
    return i < this.bat.length ? this.bat[i]! : 0;
  }

  /** File offset of cluster i's data, or -1 when it is not allocated. */
  private clusterHost(i: number): number {
    const e = this.entry(i);
    return e === 0 ? -1 : e * this.mult * SECTOR;
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    const cs = this.clusterSize;
    const end = Math.min(offset + length, this.size);
    const c = Math.floor(offset / cs);
    const first = this.clusterHost(c);
    let pos = (c + 1) * cs;
    let expect = first < 0 ? -1 : first + cs;
    // One extent: following clusters that are unallocated too, or allocated contiguously.
    while (pos < end) {
      // Past the BAT nothing is allocated: a hostile header can make that petabytes of clusters.
      if (first < 0 && pos / cs >= this.bat.length) {
        pos = end;
        break;
      }
      const h = this.clusterHost(pos / cs);
      if (first < 0 ? h >= 0 : h !== expect) break;
      if (first >= 0) expect += cs;
      pos += cs;
    }
    const len = Math.min(pos, end) - offset;
    if (first < 0) return { offset, length: len, allocated: false, zero: false, data: false };
    return {
      offset,
      length: len,
      allocated: true,
      zero: false,
      data: true,
      hostOffset: first + (offset % cs),
      file: this.file.path,
    };
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const jobs: Promise<void>[] = [];
    for (let done = 0; done < buf.length; ) {
      const pos = offset + done;
      const st = await this.blockStatus(pos, buf.length - done);
      const part = buf.subarray(done, done + st.length);
      if (!st.allocated) jobs.push(this.ctx.readBacking(part, pos));
      else jobs.push(this.readHost(part, st.hostOffset!));
      done += st.length;
    }
    await Promise.all(jobs);
  }

  /** Read file data; what lies past the end of the file reads as zeros (as QEMU's file layer). */
  private async readHost(part: Uint8Array, host: number): Promise<void> {
    const inFile = Math.max(0, Math.min(part.length, this.fileSize - host));
    if (inFile < part.length) part.fill(0, inFile);
    if (inFile > 0) await this.file.read(part.subarray(0, inFile), host);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    const jobs: Promise<void>[] = [];
    for (let done = 0; done < buf.length; ) {
      const pos = offset + done;
      const st = await this.blockStatus(pos, buf.length - done);
      const part = buf.subarray(done, done + st.length);
      if (st.allocated) jobs.push(this.file.write(part, st.hostOffset!));
      else jobs.push(this.alloc.run(() => this.allocatingWrite(part, pos)));
      done += st.length;
    }
    await Promise.all(jobs);
  }

  /** Under the allocation lock: write `data` at guest `offset`, allocating where still needed. */
  private async allocatingWrite(data: Uint8Array, offset: number): Promise<void> {
    for (let done = 0; done < data.length; ) {
      // Look again: a write that held the lock before may have allocated these clusters.
      const st = await this.blockStatus(offset + done, data.length - done);
      const part = data.subarray(done, done + st.length);
      if (st.allocated) await this.file.write(part, st.hostOffset!);
      else await this.allocate(part, offset + done);
      done += st.length;
    }
  }

  /** Append the clusters under [offset, offset + data.length) (all unallocated) and fill them. */
  private async allocate(data: Uint8Array, offset: number): Promise<void> {
    const cs = this.clusterSize;
    const first = Math.floor(offset / cs);
    const n = Math.ceil((offset + data.length) / cs) - first;
    if (first + n > this.header.batEntries) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `Parallels image has no BAT entry for cluster ${first + n - 1} (BAT of ${this.header.batEntries} entries)`,
        { path: this.file.path },
      );
    }
    // Clusters start on a whole BAT unit (QEMU divides and truncates; only odd images differ).
    const startSector = Math.ceil(this.dataEnd / this.mult) * this.mult;
    const firstEntry = startSector / this.mult;
    const host = startSector * SECTOR;
    const hostEnd = host + n * cs;
    if (firstEntry + n - 1 > MAX_ENTRY || hostEnd > Number.MAX_SAFE_INTEGER) {
      throw new VdiskError('TOO_LARGE', 'The Parallels image has reached its largest size', {
        path: this.file.path,
      });
    }
    const head = offset - first * cs;
    await this.file.write(data, host + head);
    // The rest of the new clusters must read as zeros: space past the end of the file does.
    await this.zeroRange(host, host + head);
    await this.zeroRange(host + head + data.length, hostEnd);
    if (hostEnd > this.fileSize) {
      await this.file.truncate(hostEnd);
      this.fileSize = hostEnd;
    } else {
      this.fileSize = Math.max(this.fileSize, host + head + data.length);
    }
    // Then the BAT entries that point at the data.
    const out = new Uint8Array(4 * n);
    const v = new DataView(out.buffer);
    for (let i = 0; i < n; i++) v.setUint32(4 * i, firstEntry + i, true);
    await this.file.write(out, batEntryOffset(first));
    for (let i = 0; i < n; i++) this.bat[first + i] = firstEntry + i;
    this.dataEnd = startSector + n * this.header.tracks;
  }

  /** Make [start, end) of the file read as zeros where it lies inside the file. */
  private async zeroRange(start: number, end: number): Promise<void> {
    const stop = Math.min(end, this.fileSize);
    if (start >= stop) return;
    const zero = new Uint8Array(Math.min(ZERO_CHUNK, stop - start));
    for (let p = start; p < stop; p += zero.length) {
      await this.file.write(zero.subarray(0, Math.min(zero.length, stop - p)), p);
    }
  }

  async writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    // Unallocated clusters read as zeros already (a Parallels image has no backing file here).
    // QEMU has no write-zeroes for parallels and writes zero buffers, allocating; vdisk zeroes
    // allocated clusters in place (a punched hole when unmapping is allowed) and leaves
    // unallocated ones alone.
    for (let done = 0; done < length; ) {
      const st = await this.blockStatus(offset + done, length - done);
      if (st.allocated) {
        const host = st.hostOffset!;
        if (!(unmap && this.file.punchHole(host, st.length))) {
          await this.zeroRange(host, host + st.length);
        }
      }
      done += st.length;
    }
  }

  async discard(_offset: number, _length: number): Promise<void> {
    // QEMU's parallels driver has no discard; the request is advisory.
  }

  flush(): Promise<void> {
    return this.file.flush();
  }

  private async writeInUse(value: number): Promise<void> {
    new DataView(this.rawHeader.buffer, this.rawHeader.byteOffset).setUint32(OFF.inuse, value, true);
    await this.file.write(this.rawHeader, 0);
  }

  /** Mark the image in use (QEMU does so when it opens an image for writing). */
  async markInUse(): Promise<void> {
    await this.writeInUse(HEADER_INUSE_MAGIC);
    await this.file.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (this.file.writable) {
        await this.alloc.run(async () => {
          // As QEMU's parallels_close: cut the file at the end of the data (this drops space
          // leaked by an interrupted allocation), then clear the in-use mark.
          const end = this.dataEnd * SECTOR;
          if (end !== this.fileSize && end <= Number.MAX_SAFE_INTEGER) {
            await this.file.flush();
            // QEMU ignores a failure here (e.g. EFBIG for a BAT entry far past the end).
            await this.file.truncate(end).then(
              () => {
                this.fileSize = end;
              },
              () => {},
            );
          }
          await this.file.flush();
          await this.writeInUse(0);
          await this.file.flush();
        });
      }
    } finally {
      await this.file.close();
    }
  }

  /**
   * Write the BAT entries `indices` (ascending) from memory, one write per run of entries that
   * lie within 64 KiB of each other: a hostile image can need a million repairs, and one
   * 4-byte write each took seconds (QEMU writes its BAT back by sectors too).
   */
  private async writeBatEntries(indices: readonly number[]): Promise<void> {
    const GAP = 16384; // entries: 64 KiB of BAT
    const MAX = 1 << 20; // entries per write: 4 MiB
    let k = 0;
    while (k < indices.length) {
      const first = indices[k]!;
      let last = first;
      while (k + 1 < indices.length && indices[k + 1]! - last <= GAP && indices[k + 1]! - first < MAX) {
        last = indices[++k]!;
      }
      k++;
      const n = last - first + 1;
      const out = Buffer.allocUnsafe(n * 4);
      for (let i = 0; i < n; i++) out.writeUInt32LE(this.bat[first + i]!, i * 4);
      await this.file.write(out, batEntryOffset(first));
    }
  }

  actualSize(): Promise<number> {
    return this.file.allocatedSize();
  }

  /**
   * qemu-img check as QEMU 7.2's parallels_co_check counts it: the in-use mark is a
   * corruption; a BAT entry past the end of the file is a corruption (repaired by clearing
   * it; without repair it still counts as allocated, as in QEMU); the image should end one
   * cluster past the highest cluster, and space beyond is leaked (repaired by truncating).
   * QEMU 7.2 finds no duplicate BAT entries; neither does this.
   */
  check(repair: 'none' | 'leaks' | 'all'): Promise<CheckResult> {
    return this.alloc.run(async () => {
      const writable = this.file.writable;
      const fixErrors = repair === 'all' && writable;
      const fixLeaks = repair !== 'none' && writable;
      const cs = this.clusterSize;
      const fileSize = await this.file.size();
      this.fileSize = fileSize;
      // bdrv_getlength: the file's length in whole sectors.
      const size = Math.ceil(fileSize / SECTOR) * SECTOR;
      const r: CheckResult = {
        corruptions: 0,
        leaks: 0,
        checkErrors: 0,
        corruptionsFixed: 0,
        leaksFixed: 0,
        allocatedClusters: 0,
        totalClusters: this.header.batEntries,
        fragmentedClusters: 0,
        compressedClusters: 0,
        messages: [],
      };
      if (this.unclean) {
        r.messages.push(`${fixErrors ? 'Repairing' : 'ERROR'} image was not closed correctly`);
        r.corruptions++;
        if (fixErrors) {
          r.corruptionsFixed++;
          this.unclean = false;
        }
      }
      let highOff = 0;
      let prevOff = 0;
      const fixed: number[] = [];
      for (let i = 0; i < this.bat.length; i++) {
        const off = this.bat[i]! * this.mult * SECTOR;
        if (off === 0) {
          prevOff = 0;
          continue;
        }
        if (off > size) {
          r.messages.push(`${fixErrors ? 'Repairing' : 'ERROR'} cluster ${i} is outside image`);
          r.corruptions++;
          if (fixErrors) {
            prevOff = 0;
            this.bat[i] = 0;
            fixed.push(i);
            r.corruptionsFixed++;
            continue;
          }
        }
        r.allocatedClusters!++;
        if (off > highOff) highOff = off;
        if (prevOff !== 0 && prevOff + cs !== off) r.fragmentedClusters!++;
        prevOff = off;
      }
      await this.writeBatEntries(fixed);
      if (fixed.length > 0) await this.file.flush();
      // QEMU 7.2 puts the end one cluster past the highest cluster even when none is
      // allocated (so an empty image whose BAT ends before its first cluster "leaks").
      const imageEnd = highOff + cs;
      r.imageEndOffset = imageEnd;
      if (size > imageEnd) {
        const count = Math.ceil((size - imageEnd) / cs);
        r.messages.push(
          `${fixLeaks ? 'Repairing' : 'ERROR'} space leaked at the end of the image ${size - imageEnd}`,
        );
        r.leaks += count;
        if (fixLeaks) {
          await this.file.truncate(imageEnd);
          this.fileSize = imageEnd;
          r.leaksFixed += count;
        }
      }
      return r;
    });
  }
}

/** Where a header's data area starts, and the BAT size in bytes (for validation). */
export function batBytes(h: ParallelsHeader): number {
  return HEADER_SIZE + 4 * h.batEntries;
}
