/**
 * seSparse extents (VMware ESXi "space-efficient sparse"), read-only as in QEMU: a constant
 * header, a volatile header, a grain directory of 64-bit entries pointing at grain tables of
 * 4096 64-bit entries, 4 KiB grains. QEMU's strict checks (block/vmdk.c) apply: the format
 * is not publicly documented, so anything unexpected is refused.
 */
import type { Extent } from '../../core/device.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { type Below, type CheckProblem, Jobs, type VmdkExtent } from './extent.js';
import { SECTOR } from './header.js';

const CONST_MAGIC = 0xcafebaben;
const VOLATILE_MAGIC = 0xcafecafen;
const GT_CACHE_TABLES = 512;

type State = { kind: 'unallocated' } | { kind: 'zero' } | { kind: 'data'; sector: number };

function inv(msg: string): VdiskError {
  return new VdiskError('INVALID_IMAGE', msg);
}
function unsup(msg: string): VdiskError {
  return new VdiskError('UNSUPPORTED', msg);
}
const hex16 = (v: bigint) => `0x${v.toString(16).padStart(16, '0')}`;

export class SeSparseExtent implements VmdkExtent {
  readonly flat = false;
  readonly compressed = false;
  readonly grainSize = 4096;
  readonly type = 'SESPARSE';
  private readonly cache = new Map<number, BigUint64Array>();

  private constructor(
    readonly file: HostFile,
    readonly start: number,
    readonly size: number,
    readonly infoFilename: string,
    private readonly gd: BigUint64Array,
    private readonly gtsOffset: number,
    private readonly grainsOffset: number,
    private readonly fileSize: number,
  ) {}

  static async open(
    file: HostFile,
    fileSize: number,
    start: number,
    writable: boolean,
    infoFilename: string,
  ): Promise<SeSparseExtent> {
    if (writable) throw unsup('No write support for seSparse images available');
    const h = new Uint8Array(SECTOR);
    await file.read(h, 0);
    const v = new DataView(h.buffer);
    const q = (i: number) => v.getBigUint64(i * 8, true);
    const [magic, version, capacity, grainSize, gtSize, flags] = [q(0), q(1), q(2), q(3), q(4), q(5)];
    if (magic !== CONST_MAGIC) throw inv(`Bad const header magic: ${hex16(magic)}`);
    if (version !== 0x0000000200000001n) throw unsup(`Unsupported version: ${hex16(version)}`);
    if (grainSize !== 8n) throw unsup(`Unsupported grain size: ${grainSize}`);
    if (gtSize !== 64n) throw unsup(`Unsupported grain table size: ${gtSize}`);
    if (flags !== 0n) throw unsup(`Unsupported flags: ${hex16(flags)}`);
    if (q(6) !== 0n || q(7) !== 0n || q(8) !== 0n || q(9) !== 0n) {
      throw unsup(`Unsupported reserved bits: ${hex16(q(6))} ${hex16(q(7))} ${hex16(q(8))} ${hex16(q(9))}`);
    }
    if (h.subarray(208).some((b) => b !== 0)) throw unsup('Unsupported non-zero const header padding');
    const sectorsOf = (x: bigint, what: string) => {
      if (x * 512n > BigInt(Number.MAX_SAFE_INTEGER))
        throw inv(`Invalid seSparse header: ${what} out of range`);
      return Number(x);
    };
    const volatileOffset = sectorsOf(q(10), 'volatile header offset');
    const gdOffset = sectorsOf(q(16), 'grain directory offset');
    const gdSectors = sectorsOf(q(17), 'grain directory size');
    const gtsOffset = sectorsOf(q(18), 'grain tables offset');
    const grainsOffset = sectorsOf(q(24), 'grains offset');
    const cap = sectorsOf(capacity, 'capacity');
    const vol = new Uint8Array(SECTOR);
    await file.read(vol, volatileOffset * SECTOR);
    const vv = new DataView(vol.buffer);
    const vmagic = vv.getBigUint64(0, true);
    if (vmagic !== VOLATILE_MAGIC) throw inv(`Bad volatile header magic: ${hex16(vmagic)}`);
    if (vv.getBigUint64(24, true) !== 0n) throw unsup('Image is dirty, Replaying journal not supported');
    if (vol.subarray(32).some((b) => b !== 0)) throw unsup('Unsupported non-zero volatile header padding');
    const gdEntries = (gdSectors * SECTOR) / 8;
    if (gdEntries > 32 * 1024 * 1024) throw new VdiskError('TOO_LARGE', 'L1 size too big');
    // Beyond QEMU: the directory must be in the file and cover the capacity.
    if ((gdOffset + gdSectors) * SECTOR > fileSize) {
      throw inv(
        `Invalid seSparse image: the grain directory at sector ${gdOffset} lies past the end of the file`,
      );
    }
    if (gdEntries * 4096 * 8 < cap)
      throw inv('Invalid seSparse image: the grain directory does not cover the capacity');
    const raw = new Uint8Array(gdSectors * SECTOR);
    await file.read(raw, gdOffset * SECTOR);
    const gd = new BigUint64Array(gdEntries);
    const dv = new DataView(raw.buffer);
    for (let i = 0; i < gdEntries; i++) gd[i] = dv.getBigUint64(i * 8, true);
    return new SeSparseExtent(file, start, cap * SECTOR, infoFilename, gd, gtsOffset, grainsOffset, fileSize);
  }

  private corrupt(msg: string): VdiskError {
    return new VdiskError('CORRUPT_IMAGE', msg, { path: this.file.path });
  }

  private async table(l1: number): Promise<BigUint64Array | null> {
    const e = this.gd[l1];
    if (e === undefined) throw this.corrupt(`seSparse grain ${l1 * 4096} lies beyond the grain directory`);
    if (e === 0n) return null;
    // The top 32 bits must be 0x10000000 for an allocated table (QEMU's strict check).
    if (e >> 32n !== 0x10000000n) throw this.corrupt(`seSparse grain directory entry ${l1} is invalid`);
    const hit = this.cache.get(l1);
    if (hit !== undefined) return hit;
    const sector = this.gtsOffset + Number(e & 0xffffffffn) * 64;
    if ((sector + 64) * SECTOR > this.fileSize) {
      throw this.corrupt(`seSparse grain table ${l1} lies past the end of the file`);
    }
    const raw = new Uint8Array(64 * SECTOR);
    await this.file.read(raw, sector * SECTOR);
    const v = new DataView(raw.buffer);
    const t = new BigUint64Array(4096);
    for (let i = 0; i < 4096; i++) t[i] = v.getBigUint64(i * 8, true);
    if (this.cache.size >= GT_CACHE_TABLES) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(l1, t);
    return t;
  }

  private async lookup(g: number): Promise<State> {
    const t = await this.table(Math.floor(g / 4096));
    if (t === null) return { kind: 'unallocated' };
    const e = t[g % 4096]!;
    switch (e >> 60n) {
      case 0n:
        if (e !== 0n) throw this.corrupt(`seSparse grain ${g} has an invalid entry`);
        return { kind: 'unallocated' };
      case 1n: // unmapped
      case 2n: // zero
        return { kind: 'zero' };
      case 3n: {
        const cluster = ((e & 0x0fff000000000000n) >> 48n) | ((e & 0x0000ffffffffffffn) << 12n);
        const sector = this.grainsOffset + Number(cluster) * 8;
        if (!Number.isSafeInteger(sector * SECTOR) || sector * SECTOR + 4096 > this.fileSize) {
          throw this.corrupt(`seSparse grain ${g} lies past the end of the file`);
        }
        return { kind: 'data', sector };
      }
      default:
        throw this.corrupt(`seSparse grain ${g} has an invalid entry`);
    }
  }

  async status(offset: number, length: number): Promise<Extent> {
    const gs = this.grainSize;
    let g = Math.floor(offset / gs);
    const first = await this.lookup(g);
    const end = offset + length;
    let pos = (g + 1) * gs;
    let next = first.kind === 'data' ? first.sector + 8 : 0;
    g++;
    while (pos < end) {
      const s = await this.lookup(g);
      if (s.kind !== first.kind || (s.kind === 'data' && s.sector !== next)) break;
      if (s.kind === 'data') next += 8;
      pos += gs;
      g++;
    }
    const len = Math.min(pos, end) - offset;
    if (first.kind === 'unallocated')
      return { offset, length: len, allocated: false, zero: true, data: false };
    if (first.kind === 'zero') return { offset, length: len, allocated: true, zero: true, data: false };
    return {
      offset,
      length: len,
      allocated: true,
      zero: false,
      data: true,
      hostOffset: first.sector * SECTOR + (offset % gs),
      file: this.file.path,
    };
  }

  async read(buf: Uint8Array, offset: number, below: Below): Promise<void> {
    const jobs = new Jobs();
    for (let pos = 0; pos < buf.length; ) {
      const e = await this.status(offset + pos, buf.length - pos);
      const part = buf.subarray(pos, pos + e.length);
      if (!e.allocated) {
        if (below.hasBacking) jobs.add(below.read(part, this.start + offset + pos));
        else part.fill(0);
      } else if (e.zero) part.fill(0);
      else jobs.add(this.file.read(part, e.hostOffset!));
      pos += e.length;
    }
    await jobs.done();
  }

  private readOnly(): never {
    throw unsup('No write support for seSparse images available');
  }
  async write(): Promise<void> {
    this.readOnly();
  }
  async writeZeroes(): Promise<void> {
    this.readOnly();
  }

  /** QEMU's walk: the first grain that cannot be looked up or points past the end. */
  async check(): Promise<CheckProblem | null> {
    const len = await this.file.size();
    const grains = Math.ceil(this.size / this.grainSize);
    for (let g = 0; g < grains; g++) {
      const sectorNum = this.start / SECTOR + g * 8;
      let s: State;
      try {
        if (g % 4096 === 0 && this.gd[g / 4096] === 0n) {
          g += 4095;
          continue;
        }
        s = await this.lookup(g);
      } catch {
        return {
          message: `ERROR: could not get cluster_offset for sector ${sectorNum}`,
          failure: 'Operation not permitted',
        };
      }
      if (s.kind === 'data' && s.sector * SECTOR >= len) {
        return {
          message: `ERROR: cluster offset for sector ${sectorNum} points after EOF`,
          failure: 'Invalid argument',
        };
      }
    }
    return null;
  }

  async flushMetadata(): Promise<void> {}
}
