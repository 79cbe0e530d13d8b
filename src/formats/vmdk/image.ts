/**
 * A VMDK image: a descriptor (its own file, or embedded in a monolithic sparse file) and one
 * or more extents laid end to end. The backing file is the descriptor's parentFileNameHint;
 * reads through it are allowed only while the parent's CID equals this image's parentCID,
 * as QEMU checks (vmdk_is_cid_valid).
 */
import { randomInt } from 'node:crypto';
import type { Extent } from '../../core/device.js';
import type { CheckResult, DriverContext, FileRef, FormatImage, FormatSpecific } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { Mutex } from '../../core/lock.js';
import { replaceCid } from './descriptor.js';
import { type Below, Jobs, type VmdkExtent } from './extent.js';

/** Where the descriptor text lives, for rewriting its CID. */
export interface DescriptorLocation {
  file: HostFile;
  /** Byte offset of the text in the file. */
  offset: number;
  /** Room for the text (embedded descriptors); undefined for a descriptor file. */
  room: number | undefined;
  text: string;
}

export interface VmdkImageInit {
  files: HostFile[];
  extents: VmdkExtent[];
  descriptor: DescriptorLocation;
  cid: number;
  parentCid: number;
  createType: string;
  parentHint: string | undefined;
  readOnly: boolean;
}

export class VmdkImage implements FormatImage {
  readonly format = 'vmdk';
  readonly alignment = 512;
  readonly size: number;
  readonly readOnly: boolean;
  readonly clusterSize: number | undefined;
  readonly backing: FileRef | undefined;
  cid: number;
  readonly parentCid: number;
  readonly createType: string;
  private readonly extents: VmdkExtent[];
  private readonly files: HostFile[];
  private readonly descriptor: DescriptorLocation;
  private ctx: DriverContext | null = null;
  private cidUpdated = false;
  private cidChecked = false;
  private readonly cidLock = new Mutex();

  constructor(init: VmdkImageInit) {
    this.extents = init.extents;
    this.files = init.files;
    this.descriptor = init.descriptor;
    this.cid = init.cid;
    this.parentCid = init.parentCid;
    this.createType = init.createType;
    this.readOnly = init.readOnly;
    const last = init.extents.at(-1);
    this.size = last === undefined ? 0 : last.start + last.size;
    // QEMU's vmdk_get_info: a cluster size only when every extent is of the same kind and sparse.
    const first = init.extents[0];
    const same = init.extents.every(
      (e) =>
        first !== undefined &&
        e.flat === first.flat &&
        e.compressed === first.compressed &&
        (e.flat || e.grainSize === first.grainSize),
    );
    this.clusterSize = first !== undefined && same && !first.flat ? first.grainSize : undefined;
    // QEMU records the hint as the backing file name, with format vmdk (vmdk_parent_open).
    this.backing = init.parentHint === undefined ? undefined : { filename: init.parentHint, format: 'vmdk' };
  }

  attach(ctx: DriverContext): void {
    this.ctx = ctx;
  }

  /** Whether the image holds compressed grains (writes then go through writeCompressed). */
  get compressed(): boolean {
    return this.extents[0]?.compressed === true;
  }

  private readonly below: Below = {
    get hasBacking() {
      return false;
    },
    read: async () => {},
  };

  private belowLayer(): Below {
    const ctx = this.ctx;
    if (ctx === null || !ctx.hasBacking) return this.below;
    return {
      hasBacking: true,
      read: async (buf, offset) => {
        this.checkParentCid(ctx);
        await ctx.readBacking(buf, offset);
      },
    };
  }

  private checkParentCid(ctx: DriverContext): void {
    if (this.cidChecked) return;
    const parent = ctx.backingImage;
    const parentCid = parent instanceof VmdkImage ? parent.cid : undefined;
    if (parentCid !== this.parentCid) {
      throw new VdiskError(
        'INVALID_IMAGE',
        parentCid === undefined
          ? `VMDK parent of this image is not a vmdk image, so its parentCID cannot be valid: Invalid argument`
          : `VMDK parent CID ${parentCid.toString(16)} does not match parentCID ${this.parentCid.toString(16)} (the parent changed after this image was made): Invalid argument`,
      );
    }
    this.cidChecked = true;
  }

  /** The extent holding virtual offset `offset`. */
  private extentAt(offset: number): VmdkExtent {
    let lo = 0;
    let hi = this.extents.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.extents[mid]!.start <= offset) lo = mid;
      else hi = mid - 1;
    }
    const e = this.extents[lo];
    if (e === undefined || offset < e.start || offset >= e.start + e.size) {
      throw new VdiskError('OUT_OF_RANGE', `No VMDK extent holds offset ${offset}`);
    }
    return e;
  }

  /** Run fn over each extent's part of [offset, offset+length). */
  private async eachExtent(
    offset: number,
    length: number,
    fn: (e: VmdkExtent, rel: number, pos: number, n: number) => Promise<void>,
  ): Promise<void> {
    let pos = 0;
    while (pos < length) {
      const e = this.extentAt(offset + pos);
      const rel = offset + pos - e.start;
      const n = Math.min(length - pos, e.size - rel);
      await fn(e, rel, pos, n);
      pos += n;
    }
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    const e = this.extentAt(offset);
    const rel = offset - e.start;
    const st = await e.status(rel, Math.min(length, e.size - rel));
    return { ...st, offset };
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const below = this.belowLayer();
    const jobs = new Jobs();
    await this.eachExtent(offset, buf.length, async (e, rel, pos, n) => {
      jobs.add(e.read(buf.subarray(pos, pos + n), rel, below));
    });
    await jobs.done();
  }

  /** QEMU gives the descriptor a new random CID on the first write after each open. */
  private async touchCid(): Promise<void> {
    if (this.cidUpdated) return;
    await this.cidLock.run(async () => {
      if (this.cidUpdated) return;
      const cid = randomInt(0, 0xffffffff);
      const d = this.descriptor;
      const text = replaceCid(d.text, cid);
      const bytes = Buffer.from(text, 'latin1');
      if (d.room === undefined) {
        await d.file.write(bytes, d.offset);
        if (bytes.length < Buffer.byteLength(d.text, 'latin1'))
          await d.file.truncate(d.offset + bytes.length);
      } else {
        const len = Math.max(bytes.length, Buffer.byteLength(d.text, 'latin1'));
        if (len > d.room) {
          throw new VdiskError('INVALID_IMAGE', 'VMDK embedded descriptor has no room for a new CID');
        }
        const out = new Uint8Array(len);
        out.set(bytes);
        await d.file.write(out, d.offset);
      }
      d.text = text;
      this.cid = cid;
      this.cidUpdated = true;
    });
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    const below = this.belowLayer();
    await this.eachExtent(offset, buf.length, (e, rel, pos, n) =>
      e.write(buf.subarray(pos, pos + n), rel, below),
    );
    await this.touchCid();
  }

  async writeCompressed(buf: Uint8Array, offset: number): Promise<void> {
    const commit = await this.prepareCompressed(buf, offset);
    await commit();
  }

  async prepareCompressed(buf: Uint8Array, offset: number): Promise<() => Promise<void>> {
    const e = this.extentAt(offset);
    if (e.prepareCompressed === undefined || !e.compressed) {
      // Plain extents store the grain as it is.
      return () => this.write(buf, offset);
    }
    const commit = await e.prepareCompressed(buf, offset - e.start);
    return async () => {
      await commit();
      await this.touchCid();
    };
  }

  /** Every write is compressed (streamOptimized): convert compresses before its ordered writes. */
  get compressesWrites(): boolean {
    return (
      this.extents.length === 1 && this.compressed && this.extents[0]!.prepareCompressedRange !== undefined
    );
  }

  /** prepareCompressed for a run of whole grains inside the (single) compressed extent. */
  async prepareCompressedRange(buf: Uint8Array, offset: number): Promise<() => Promise<void>> {
    const e = this.extentAt(offset);
    if (e.prepareCompressedRange === undefined || !e.compressed || offset + buf.length > e.start + e.size) {
      return () => this.write(buf, offset);
    }
    const commit = await e.prepareCompressedRange(buf, offset - e.start);
    return async () => {
      await commit();
      await this.touchCid();
    };
  }

  async writeZeroes(offset: number, length: number, _unmap: boolean): Promise<void> {
    const below = this.belowLayer();
    await this.eachExtent(offset, length, (e, rel, _pos, n) => e.writeZeroes(rel, n, below));
    await this.touchCid();
  }

  async discard(_offset: number, _length: number): Promise<void> {
    // QEMU's vmdk has no discard; the request is advisory.
  }

  async flush(): Promise<void> {
    for (const e of this.extents) await e.flushMetadata();
    for (const f of this.files) await f.flush();
  }

  async close(): Promise<void> {
    let err: unknown = null;
    for (const e of this.extents) await e.flushMetadata().catch((x: unknown) => (err ??= x));
    for (const f of this.files) await f.close().catch((x: unknown) => (err ??= x));
    if (err !== null) throw err;
  }

  async actualSize(): Promise<number> {
    let n = 0;
    for (const f of this.files) n += await f.allocatedSize();
    return n;
  }

  formatSpecific(): FormatSpecific {
    return {
      type: 'vmdk',
      data: {
        cid: this.cid,
        'parent-cid': this.parentCid,
        'create-type': this.createType,
        extents: this.extents.map((e) => ({
          ...(e.compressed ? { compressed: true } : {}),
          'virtual-size': e.size,
          filename: e.infoFilename,
          ...(e.flat ? {} : { 'cluster-size': e.grainSize }),
          format: e.type,
        })),
      },
    };
  }

  /**
   * qemu-img check for vmdk (vmdk_co_check): the first grain that cannot be looked up or
   * points past the end of its file is one corruption, and the check fails with QEMU's error
   * (qemu-img: "Check failed: Invalid argument", exit 1). `check -r` is refused as QEMU does.
   */
  async check(repair: 'none' | 'leaks' | 'all'): Promise<CheckResult> {
    if (repair !== 'none') throw new VdiskError('UNSUPPORTED', 'This image format does not support checks');
    const res: CheckResult = {
      corruptions: 0,
      leaks: 0,
      checkErrors: 0,
      corruptionsFixed: 0,
      leaksFixed: 0,
      messages: [],
    };
    for (const e of this.extents) {
      const problem = await e.check();
      if (problem !== null) {
        res.messages.push(problem.message);
        res.corruptions = 1;
        res.failure = problem.failure;
        break;
      }
    }
    return res;
  }
}
