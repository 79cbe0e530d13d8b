/**
 * HostFile: one file on the host, the only place that touches node:fs for image I/O.
 *
 * - pread/pwrite that always complete (short reads past end of file read as zeros, as
 *   QEMU's file protocol does);
 * - data/hole discovery with lseek SEEK_DATA/SEEK_HOLE through the native addon: one
 *   system call per extent, no data read. Without the addon, `st_blocks` tells whether a
 *   file is fully allocated, and otherwise every byte is reported as data (callers then
 *   detect zeros by reading);
 * - hole punching, zeroing and preallocation through fallocate(2);
 * - QEMU-compatible OFD byte-range locks, so that vdisk and qemu see each other's locks.
 */
import {
  close,
  fdatasync,
  constants as fsc,
  open as fsOpen,
  fstatSync,
  ftruncate,
  read,
  realpath,
  stat,
  write,
  writeSync,
  writev,
} from 'node:fs';
import { type Lane, native } from '../native/index.js';
import { errnoName, fromHostError, strerror, VdiskError } from './errors.js';

export interface HostExtent {
  offset: number;
  length: number;
  data: boolean;
  /** Reads as zeros. Absent: a hole reads as zeros, data does not (a local file's extents). */
  zero?: boolean;
}

export type LockMode = 'none' | 'read' | 'write';

/**
 * A random-access byte source that is not a local file: an object in a blob store read by
 * ranges (the registry's S3 store, read-only), or an NBD export (src/protocols/nbd.ts), which
 * may also write, zero, trim, flush and tell its extents. HostFile.fromSource makes the engine
 * use it as it uses a file, so that drivers need not know where their bytes come from.
 */
export interface ReadSource {
  readonly size: number;
  /** Read up to buf.length bytes at offset; resolves with the count (less only at the end). */
  read(buf: Uint8Array, offset: number): Promise<number>;
  close(): Promise<void>;
  /**
   * Reads should come in offset order (a stream: standard input): drivers then read nothing
   * speculatively ahead (qcow2's L2 read-ahead would make the stream skip the data between).
   */
  readonly sequential?: boolean;
  /** True when the source accepts writes (then `write` is present). */
  readonly writable?: boolean;
  write?(buf: Uint8Array, offset: number): Promise<void>;
  flush?(): Promise<void>;
  /** Make a range read as zeros without sending them; false when the source cannot. */
  writeZeroes?(offset: number, length: number, unmap: boolean): Promise<boolean>;
  /** Deallocate a range (it may then read as anything); false when the source cannot. */
  trim?(offset: number, length: number): Promise<boolean>;
  /** Data/hole extents of a range, clipped to the size, at most `max` of them. */
  extents?(offset: number, length: number, max: number): Promise<HostExtent[]>;
  /** Change the size, where the source can (it may refuse with a VdiskError). */
  truncate?(length: number): Promise<void>;
  /** The space it takes is unknown (a URL: qemu-img says "disk size: unavailable"). */
  readonly allocationUnknown?: boolean;
}

export interface HostOpenOptions {
  writable?: boolean;
  create?: boolean; // create (truncate) the file
  /** Image lock to take: 'read' forbids other writers, 'write' forbids others entirely except
   * force-share readers. 'none' is -U / force-share. Default: 'read' or 'write' by `writable`. */
  lock?: LockMode;
  /**
   * cache=unsafe (QEMU's BDRV_O_NO_FLUSH): flush() does nothing. qemu-img convert opens its
   * target so by default: a target left by a crash is thrown away anyway, and a format whose
   * metadata protocol flushes (vhdx's log) would otherwise write the whole copy back to disk.
   */
  noFlush?: boolean;
  /**
   * Writes of up to 128 KiB go to the page cache on the calling thread (pwrite), not through
   * Node's thread pool: ~5 us against ~15-20 us of wake-ups and promise work each (frag2→qcow2
   * writes 200,000 clusters of 4 KiB). For batch commands, where nothing else waits on the event
   * loop; a server keeps every write on the pool (a write the kernel throttles for its dirty
   * page limit would stall every client).
   */
  inlineSmallWrites?: boolean;
}

// QEMU (block/file-posix.c) locks one byte per permission at 100 + bit ("I use it") and at
// 200 + bit ("I do not share it"). Bits: 0 consistent read, 1 write, 2 write unchanged, 3 resize.
const PERM_BASE = 100;
const SHARED_BASE = 200;
const PERM_READ = 0;
const PERM_WRITE = 1;
const PERM_RESIZE = 3;
/** Largest single read/write: Node's fs asserts (aborts the process) on lengths of 2 GiB and more. */
const MAX_IO = 1 << 30;
/** Reads up to this size try the page cache on the calling thread first (HostFile.read). */
const NOWAIT_MAX = 128 * 1024;

/** A node:fs call with a callback, as a promise (what node:fs/promises does, without loading it). */
function promised<T>(
  call: (done: (err: NodeJS.ErrnoException | null, value: T) => void) => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => call((err, value) => (err ? reject(err) : resolve(value))));
}

/**
 * A local file's descriptor, with what is in flight on it: close() waits for that, as
 * FileHandle.close does, so that a descriptor number is never closed (and maybe reused by the
 * next open) under a read or write still queued on the thread pool.
 *
 * Not node:fs/promises: loading that module costs every command ~3.5 ms of start-up (33 %
 * more than `node -e 0` spends on its own modules), and each of its calls allocates a promise
 * request with its own stat array; node:fs's callback calls are loaded with Node.
 */
class Descriptor {
  private inflight = 0;
  private drained: (() => void) | null = null;
  closed = false;

  constructor(readonly fd: number) {}

  /** Run a call on the descriptor, counted in flight until it settles. */
  run<T>(call: (fd: number) => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(Object.assign(new Error('EBADF: file closed'), { code: 'EBADF' }));
    this.inflight++;
    const settle = () => {
      if (--this.inflight === 0) this.drained?.();
    };
    const p = call(this.fd);
    p.then(settle, settle);
    return p;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.inflight > 0) {
      await new Promise<void>((resolve) => {
        this.drained = resolve;
      });
    }
    await promised<void>((done) => close(this.fd, done));
  }
}

/** A host error for an errno number the native addon returned (as node:fs's errors look). */
function errnoError(errno: number): Error & { code: string } {
  const code = errnoName(errno) ?? 'EIO';
  const err = Object.assign(new Error(code), { code });
  return Object.assign(err, { message: strerror(err) });
}

export class HostFile {
  private constructor(
    readonly path: string,
    private readonly fh: Descriptor | null,
    readonly writable: boolean,
    private readonly source: ReadSource | null = null,
  ) {}

  /**
   * A file over a ReadSource, named `name` in messages. Nothing is locked. A read-only source
   * reads as all data (no hole discovery) and refuses writes as any read-only file; a source
   * with the optional methods writes, zeroes, trims, flushes and tells its extents through them.
   */
  static fromSource(name: string, source: ReadSource, opts: { noFlush?: boolean } = {}): HostFile {
    const file = new HostFile(name, null, source.writable === true && source.write !== undefined, source);
    if (opts.noFlush === true) file.noFlush = true;
    return file;
  }

  /** True for a file over a ReadSource (not a local file: no locks, no host allocation). */
  get remote(): boolean {
    return this.source !== null;
  }

  /** Reads should come in offset order (ReadSource.sequential): no speculative reads ahead. */
  get sequential(): boolean {
    return this.source?.sequential === true;
  }

  private get handle(): Descriptor {
    if (this.fh === null) throw new VdiskError('UNSUPPORTED', `'${this.path}' is not a local file`);
    return this.fh;
  }

  private noFlush = false;
  /** copyFrom(): the file system refused reflinks (clone) or copy_file_range (copy) for this file. */
  private noClone = false;
  private noCopy = false;
  private inlineWrites = false;
  /**
   * The file's write lane (native/vdisk_lane.c), made at its first write off the main thread:
   * its writes one after another, back to back, as the kernel takes them anyway (one inode
   * lock per file); null without the addon (libuv's pool then takes them side by side).
   */
  private lane: Lane | null | undefined = undefined;
  /** Writes queued on the lane whose end has not come back. */
  private laneBusy = 0;
  /** The size size() first returned (-1: never asked), and the end of every write issued since open. */
  private seenSize = -1;
  private writeEnd = 0;
  /** reserveZeroed(): the end of what callers reserved, and of what was allocated ahead of it. */
  private reservedEnd = 0;
  private allocatedTo = 0;

  /**
   * Where untouched space begins: bytes at or past it were past the end of the file when
   * size() first looked and nothing was written there through this handle since (writes count
   * from the moment they are issued; allocate() and truncate() leave zeros), so they read as
   * zeros. Infinity before size() was asked, and for sources.
   */
  untouchedFrom(): number {
    if (this.source !== null || this.seenSize < 0) return Number.POSITIVE_INFINITY;
    return Math.max(this.seenSize, this.writeEnd);
  }

  /**
   * Give [offset, offset + length) of untouched space host blocks that read as zeros, as
   * QEMU's fallocate(ZERO_RANGE) of each new qcow2 cluster does, but `ahead` bytes at a time: a
   * run of new clusters costs one system call instead of one each. close() truncates what was
   * allocated past every write and every reservation. False where the range is not in
   * untouched space or the host cannot allocate: the caller zeroes it itself. (Where it lies
   * below what was allocated ahead it is already zeros: true, with nothing to do.)
   */
  reserveZeroed(offset: number, length: number, ahead: number): boolean {
    if (offset < this.untouchedFrom()) return false;
    const end = offset + length;
    if (end > this.allocatedTo) {
      const from = Math.max(offset, this.allocatedTo);
      const to = Math.max(end, from + ahead);
      if (!this.allocate(from, to - from)) return false;
      this.allocatedTo = to;
    }
    this.reservedEnd = Math.max(this.reservedEnd, end);
    return true;
  }

  static async open(path: string, opts: HostOpenOptions = {}): Promise<HostFile> {
    const writable = opts.writable === true || opts.create === true;
    const flags = opts.create ? fsc.O_RDWR | fsc.O_CREAT | fsc.O_TRUNC : writable ? fsc.O_RDWR : fsc.O_RDONLY;
    let handle: Descriptor;
    try {
      handle = new Descriptor(await promised<number>((done) => fsOpen(path, flags, 0o644, done)));
    } catch (err) {
      // Creating an image's file: file-posix's raw_co_create words it "Could not create".
      throw fromHostError(
        err,
        opts.create === true
          ? { path, op: 'open', message: `Could not create '${path}': ${strerror(err)}` }
          : { path, op: 'open' },
      );
    }
    const file = new HostFile(path, handle, writable);
    if (opts.noFlush === true) file.noFlush = true;
    if (opts.inlineSmallWrites === true) file.inlineWrites = true;
    try {
      const st = fstatSync(handle.fd);
      if (st.isDirectory())
        throw new VdiskError('INVALID_ARGUMENT', `Could not open '${path}': Is a directory`, { path });
      file.lock(opts.lock ?? (writable ? 'write' : 'read'));
    } catch (err) {
      await handle.close().catch(() => {});
      throw err;
    }
    return file;
  }

  /** The descriptor of a local file (-1 once closed, as FileHandle.fd). */
  get fd(): number {
    return this.handle.closed ? -1 : this.handle.fd;
  }

  /** The descriptor of a local file; null for a file over a ReadSource. */
  get localFd(): number | null {
    return this.fh === null ? null : this.fd;
  }

  private lock(mode: LockMode): void {
    const n = native;
    if (mode === 'none' || n === null) return;
    const fd = this.fd;
    const used = mode === 'write' ? [PERM_READ, PERM_WRITE, PERM_RESIZE] : [PERM_READ];
    const unshared = mode === 'write' ? [PERM_WRITE, PERM_RESIZE] : [PERM_WRITE];
    // Take our bytes first (shared locks), then test for the conflicting bytes of others.
    for (const b of used) n.ofdLock(fd, 1, PERM_BASE + b, 1);
    for (const b of unshared) n.ofdLock(fd, 1, SHARED_BASE + b, 1);
    const conflict = (start: number) => n.ofdTest(fd, 2, start, 1) === 1;
    for (const b of used) {
      if (conflict(SHARED_BASE + b)) throw this.lockError(b, false);
    }
    for (const b of unshared) {
      if (conflict(PERM_BASE + b)) throw this.lockError(b, true);
    }
  }

  private lockError(bit: number, shared: boolean): VdiskError {
    const name = bit === PERM_WRITE ? 'write' : bit === PERM_RESIZE ? 'resize' : 'consistent read';
    return new VdiskError(
      'LOCKED',
      `Failed to get ${shared ? 'shared ' : ''}"${name}" lock\nIs another process using the image [${this.path}]?`,
      { path: this.path },
    );
  }

  async size(): Promise<number> {
    if (this.source !== null) return this.source.size;
    try {
      // fstat on an open descriptor never waits on the disk: called synchronously, it costs
      // ~2 µs instead of a trip through libuv's pool (block status asks on every extent).
      const size = fstatSync(this.handle.fd).size;
      if (this.seenSize < 0) this.seenSize = size;
      return size;
    } catch (err) {
      throw fromHostError(err, { path: this.path, op: 'stat', message: `Could not stat '${this.path}': ` });
    }
  }

  /** Bytes the host has allocated for the file (st_blocks * 512). */
  async allocatedSize(): Promise<number> {
    if (this.source !== null) {
      // qemu-img info prints "disk size: unavailable" for an NBD export (its extents are the
      // server's) and for a URL (allocationUnknown); a blob reads as its size.
      if (this.source.allocationUnknown === true || this.source.extents !== undefined)
        throw new VdiskError('UNSUPPORTED', `The space '${this.path}' takes is unknown`);
      return this.source.size;
    }
    return fstatSync(this.fd).blocks * 512;
  }

  /** A failed read or write at `at`, in the words every caller of this file shows. */
  private hostError(err: unknown, op: 'read' | 'write', at: number): VdiskError {
    return fromHostError(err, {
      path: this.path,
      offset: at,
      op,
      message: `Could not ${op} '${this.path}' at offset ${at}: ${(err as Error).message}`,
    });
  }

  /** Read exactly buf.length bytes at offset; bytes past end of file read as zeros. */
  async read(buf: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    // A small read the page cache holds is served at once on this thread (preadv2 RWF_NOWAIT:
    // ~1.5 us for 4 KiB) instead of a round trip through the thread pool (~10-20 us of wake-ups
    // and promise work, which made small scattered I/O, as in frag2's 200,000 clusters, cost
    // several times qemu-img's CPU); what the cache does not hold (EAGAIN) goes to the pool.
    // Large reads stay on the pool: there several run side by side.
    if (native !== null && this.fh !== null && !this.fh.closed && buf.length <= NOWAIT_MAX) {
      const r = native.preadNowait(this.fh.fd, buf, offset);
      if (r === buf.length) return;
      if (r === 0) {
        buf.fill(0);
        return;
      }
      if (r > 0) done = r;
    }
    while (done < buf.length) {
      let n: number;
      try {
        if (this.source !== null) n = await this.source.read(buf.subarray(done), offset + done);
        else
          n = await this.handle.run((fd) =>
            promised<number>((cb) =>
              read(fd, buf, done, Math.min(buf.length - done, MAX_IO), offset + done, cb),
            ),
          );
      } catch (err) {
        throw this.hostError(err, 'read', offset + done);
      }
      if (n === 0) {
        buf.fill(0, done);
        return;
      }
      done += n;
    }
  }

  /**
   * read() of whole sectors with convert's zero scan done on the thread pool as the bytes
   * arrive (native preadScan; the scan's parameters as allocatedSectorsMin takes them): the
   * runs' sector counts (positive data, negative zeros) go into `runs`, and their number is
   * returned. Null where it cannot be done so (no addon, not a local file, not whole sectors)
   * or should not: a small read (≤ 128 KiB) is served from the page cache on the calling thread
   * (read()), ~1.5 µs against a round trip through the pool (frag2→qcow2's 200,000 requests of
   * 4 KiB took 14.7 → 22.6 s through the pool). The caller then reads and scans itself.
   */
  async readScan(
    buf: Uint8Array,
    offset: number,
    scan: { min: number; sectorNum: number; alignment: number },
    runs: Int32Array,
  ): Promise<number | null> {
    const preadScan = native?.preadScan;
    if (preadScan === undefined || this.fh === null || buf.length <= NOWAIT_MAX || buf.length % 512 !== 0)
      return null;
    const r = await this.fh.run((fd) =>
      preadScan(fd, buf, offset, scan.min, scan.sectorNum, scan.alignment, runs),
    );
    if (r >= 0) return r;
    throw this.hostError(errnoError(-r), 'read', offset);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (!this.writable)
      throw new VdiskError('READ_ONLY', `'${this.path}' is open read-only`, { path: this.path });
    if (this.source?.write !== undefined) return this.source.write(buf, offset);
    this.writeEnd = Math.max(this.writeEnd, offset + buf.length);
    let done = 0;
    // Small writes of a file opened for it go to the page cache on this thread
    // (HostOpenOptions), unless the lane is writing: they would wait for its inode lock.
    const inlineFd =
      this.inlineWrites &&
      this.fh !== null &&
      !this.fh.closed &&
      buf.length <= NOWAIT_MAX &&
      this.laneBusy === 0
        ? this.fh.fd
        : null;
    while (done < buf.length) {
      const n = Math.min(buf.length - done, MAX_IO);
      try {
        done +=
          inlineFd !== null
            ? writeSync(inlineFd, buf, done, n, offset + done)
            : await this.writeOffThread([buf.subarray(done, done + n)], offset + done);
      } catch (err) {
        throw this.hostError(err, 'write', offset + done);
      }
    }
  }

  /**
   * Copy [srcOffset, srcOffset + length) of `src` to this file at `offset` inside the kernel
   * (native/vdisk_copy.c): 'clone' makes this file share the source's blocks (FICLONERANGE: a
   * reflink on XFS and btrfs, no data moved; offsets and length block-aligned), 'copy' is
   * copy_file_range(2), which qemu-img's copy offloading (convert -C) uses. True once done;
   * false when this way is not open for these files or offsets (no reflinks, not the same file
   * system, unaligned, the source ended first, not local files, no addon): the caller then
   * writes the bytes itself. A way the file system refuses outright is not tried again.
   */
  async copyFrom(
    src: HostFile,
    srcOffset: number,
    offset: number,
    length: number,
    how: 'clone' | 'copy',
  ): Promise<boolean> {
    if (!this.writable)
      throw new VdiskError('READ_ONLY', `'${this.path}' is open read-only`, { path: this.path });
    const copyRange = native?.copyRange;
    const inFd = src.localFd;
    if (copyRange === undefined || this.fh === null || inFd === null || length <= 0) return false;
    if (how === 'clone' ? this.noClone : this.noCopy) return false;
    this.writeEnd = Math.max(this.writeEnd, offset + length);
    const r = await this.fh.run((fd) =>
      copyRange(inFd, srcOffset, fd, offset, length, how === 'clone' ? 0 : 1),
    );
    if (r === length) return true;
    if (r >= 0) return false; // the source ended: the rest reads as zeros, which the caller writes
    const err = errnoError(-r);
    if (err.code === 'EINVAL') return false;
    // (EOPNOTSUPP and ENOTSUP are one number on Linux; errnoName gives the first, ENOTSUP.)
    if (['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'ENOSYS', 'ETXTBSY', 'EBADF'].includes(err.code)) {
      if (how === 'clone') this.noClone = true;
      else this.noCopy = true;
      return false;
    }
    throw this.hostError(err, 'write', offset);
  }

  /**
   * bufs back to back at offset, off the main thread: queued on the file's lane (all of them
   * written, or an error), else one pwrite or pwritev on libuv's pool (maybe short). Resolves
   * to the bytes written.
   */
  private writeOffThread(bufs: Uint8Array[], offset: number): Promise<number> {
    const fh = this.handle;
    const laneWrite = native?.laneWrite;
    if (this.lane === undefined) this.lane = native?.laneOpen?.() ?? null;
    const lane = this.lane;
    if (lane === null || laneWrite === undefined || bufs.length > 1024) {
      const [first] = bufs;
      return fh.run((fd) =>
        bufs.length === 1 && first !== undefined
          ? promised<number>((cb) => write(fd, first, 0, first.length, offset, cb))
          : promised<number>((cb) => writev(fd, bufs, offset, cb)),
      );
    }
    return fh.run(async (fd) => {
      this.laneBusy++;
      try {
        const r = await laneWrite(lane, fd, bufs, offset);
        if (r < 0) throw errnoError(-r);
        return r;
      } finally {
        this.laneBusy--;
      }
    });
  }

  /** Write several buffers back to back at offset (one pwritev where the host allows). */
  async writev(bufs: Uint8Array[], offset: number): Promise<void> {
    if (bufs.length === 1) return this.write(bufs[0]!, offset);
    if (!this.writable)
      throw new VdiskError('READ_ONLY', `'${this.path}' is open read-only`, { path: this.path });
    if (this.source !== null) {
      let pos = offset;
      const jobs: Promise<void>[] = [];
      for (const b of bufs) {
        jobs.push(this.write(b, pos));
        pos += b.length;
      }
      await Promise.all(jobs);
      return;
    }
    let end = offset;
    for (const b of bufs) end += b.length;
    this.writeEnd = Math.max(this.writeEnd, end);
    let written: number;
    try {
      written = await this.writeOffThread(bufs, offset);
    } catch (err) {
      throw this.hostError(err, 'write', offset);
    }
    // A short vectored write: finish buffer by buffer.
    let pos = 0;
    for (const b of bufs) {
      const end = pos + b.length;
      if (written < end) {
        const skip = Math.max(0, written - pos);
        await this.write(b.subarray(skip), offset + pos + skip);
      }
      pos = end;
    }
  }

  async truncate(length: number): Promise<void> {
    if (!this.writable)
      throw new VdiskError('READ_ONLY', `'${this.path}' is open read-only`, { path: this.path });
    if (this.source !== null) {
      if (this.source.truncate === undefined)
        throw new VdiskError('UNSUPPORTED', `Could not resize '${this.path}'`, { path: this.path });
      return this.source.truncate(length);
    }
    try {
      await this.handle.run((fd) => promised<void>((cb) => ftruncate(fd, length, cb)));
    } catch (err) {
      throw fromHostError(err, {
        path: this.path,
        op: 'truncate',
        message: `Could not resize '${this.path}': ${(err as Error).message}`,
      });
    }
  }

  /**
   * Data and hole extents of [offset, offset+length), clipped to the file size, at most `max`
   * of them (block status wants only the first). Without the native addon a file with holes
   * is reported as all data.
   */
  async extents(offset: number, length: number, max = Number.POSITIVE_INFINITY): Promise<HostExtent[]> {
    const fileSize = await this.size();
    const end = Math.min(offset + length, fileSize);
    const out: HostExtent[] = [];
    if (offset >= end) return out;
    if (this.source?.extents !== undefined) return this.source.extents(offset, end - offset, max);
    if (native === null || this.source !== null) {
      out.push({ offset, length: end - offset, data: true });
      return out;
    }
    let pos = offset;
    while (pos < end && out.length < max) {
      const data = native.seekData(this.fd, pos);
      if (data < -1) {
        // lseek unsupported (e.g. some filesystems): everything is data.
        out.push({ offset: pos, length: end - pos, data: true });
        break;
      }
      const dataStart = data === -1 ? end : Math.min(data, end);
      if (dataStart > pos) out.push({ offset: pos, length: dataStart - pos, data: false });
      if (dataStart >= end || out.length >= max) break;
      const hole = native.seekHole(this.fd, dataStart);
      const dataEnd = hole < 0 ? end : Math.min(hole, end);
      out.push({ offset: dataStart, length: dataEnd - dataStart, data: true });
      pos = dataEnd;
    }
    return out;
  }

  /** Is [offset, offset+length) a hole (reads as zero without data)? Cheap with the addon. */
  async isHole(offset: number, length: number): Promise<boolean> {
    if (this.source?.extents !== undefined) {
      const [first] = await this.source.extents(offset, length, 1);
      return first !== undefined && !first.data && first.zero !== false && first.length >= length;
    }
    if (native === null || this.source !== null) return false;
    const data = native.seekData(this.fd, offset);
    return data === -1 || data >= offset + length;
  }

  /** Deallocate a range (it then reads as zeros). Returns false where the host cannot. */
  punchHole(offset: number, length: number): boolean {
    if (native === null || length <= 0 || this.source !== null) return false;
    return native.fallocate(this.fd, 1, offset, length) === 0;
  }

  /**
   * Make a range read as zeros without writing them (fallocate ZERO_RANGE: the blocks stay
   * allocated, as unwritten extents). Returns false where the host cannot.
   */
  zeroRange(offset: number, length: number): boolean {
    if (native === null || length <= 0 || this.source !== null || !this.writable) return false;
    return native.fallocate(this.fd, 2, offset, length) === 0;
  }

  /**
   * Make a range read as zeros without writing them, on a local file or a source: deallocate
   * it where `unmap` allows (punch a hole), otherwise zero it in place (ZERO_RANGE; NBD
   * WRITE_ZEROES with NO_HOLE). False where neither can be done: the caller writes zeros.
   */
  async zeroOut(offset: number, length: number, unmap: boolean): Promise<boolean> {
    if (length <= 0) return true;
    if (this.source !== null) {
      if (!this.writable || this.source.writeZeroes === undefined) return false;
      return this.source.writeZeroes(offset, length, unmap);
    }
    if (unmap && this.punchHole(offset, length)) return true;
    return this.zeroRange(offset, length);
  }

  /** Discard a range (a hole in a local file, NBD TRIM on an export); false where it cannot. */
  async discard(offset: number, length: number): Promise<boolean> {
    if (this.source !== null) {
      if (!this.writable || this.source.trim === undefined) return false;
      return this.source.trim(offset, length);
    }
    return this.punchHole(offset, length);
  }

  /** Allocate blocks for a range (growing the file if needed). Returns false where the host cannot. */
  allocate(offset: number, length: number): boolean {
    if (native === null || length <= 0 || this.source !== null) return false;
    return native.fallocate(this.fd, 0, offset, length) === 0;
  }

  async flush(): Promise<void> {
    if (!this.writable) return;
    if (this.source !== null) {
      // Even under cache=unsafe: qemu's nbd driver flushes "to the OS" (bdrv_co_flush_to_os),
      // which BDRV_O_NO_FLUSH does not skip, so qemu-img sends NBD_CMD_FLUSH when it closes.
      await this.source.flush?.();
      return;
    }
    if (this.noFlush) return;
    try {
      await this.handle.run((fd) => promised<void>((cb) => fdatasync(fd, cb)));
    } catch (err) {
      throw fromHostError(err, {
        path: this.path,
        op: 'flush',
        message: `Could not flush '${this.path}': ${(err as Error).message}`,
      });
    }
  }

  async close(): Promise<void> {
    if (this.source !== null) {
      // As qemu's bdrv_close: a writable remote file is flushed before it is closed.
      try {
        if (this.writable) await this.source.flush?.();
      } finally {
        await this.source.close();
      }
    } else {
      // Allocated ahead by reserveZeroed() and reached by no write or reservation: given back
      // (never growing a file that was truncated since).
      const end = Math.max(this.seenSize, this.writeEnd, this.reservedEnd);
      if (this.allocatedTo > end) {
        try {
          if (fstatSync(this.fd).size > end)
            await this.handle.run((fd) => promised<void>((cb) => ftruncate(fd, end, cb)));
        } catch {
          // The file keeps the space; nothing in it is lost.
        }
      }
      await this.handle.close();
      if (this.lane) native?.laneClose?.(this.lane);
      this.lane = null;
    }
  }
}

/** realpath(3) of a path, as node:fs/promises' realpath (without loading that module). */
export function realPath(path: string): Promise<string> {
  return promised<string>((done) => realpath.native(path, done));
}

export async function fileExists(path: string): Promise<boolean> {
  try {
    await promised((done) => stat(path, done));
    return true;
  } catch {
    return false;
  }
}
