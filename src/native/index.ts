/**
 * Loader for the small C addon in native/ (lseek SEEK_DATA/SEEK_HOLE, fallocate, OFD locks,
 * deflate and zstd on the thread pool, sendfile to a socket).
 * When it is absent (not built), callers fall back to portable but slower paths, so vdisk
 * still works; `hasNative` tells which one runs.
 */
import { fileURLToPath } from 'node:url';

export interface NativeFs {
  /** Next data offset at or after off, or -1 when there is none before end of file (ENXIO). */
  seekData(fd: number, off: number): number;
  /** Next hole offset at or after off (end of file counts as a hole), or -1 at ENXIO. */
  seekHole(fd: number, off: number): number;
  /** mode 0 allocate, 1 punch hole (keep size), 2 zero range. Returns 0 or -errno. */
  fallocate(fd: number, mode: 0 | 1 | 2, off: number, len: number): number;
  /**
   * preadv2(RWF_NOWAIT) on this thread: bytes read from the page cache (short or 0 at the end
   * of the file), or -errno: -EAGAIN when it would wait for the device.
   */
  preadNowait(fd: number, buf: Uint8Array, off: number): number;
  /** pwritev2(RWF_NOWAIT): bytes written or -errno (-EOPNOTSUPP where buffered NOWAIT is not taken). */
  pwriteNowait(fd: number, buf: Uint8Array, off: number): number;
  /**
   * qemu-img's is_allocated_sectors_min over the first n sectors of buf (as
   * src/commands/buffers.ts allocatedSectorsMin): the first run's sector count, negative for
   * zeros. Absent from an addon built before it existed.
   */
  allocatedSectorsMin?(buf: Uint8Array, n: number, min: number, sectorNum: number, alignment: number): number;
  /**
   * Read buf.length bytes of fd at off on the thread pool (zeros past the end of the file),
   * then cut them as convert's write does: run after run of allocatedSectorsMin over what is
   * left, each run's sector count into `runs` (positive data, negative zeros). Resolves to the
   * number of runs, or -errno when the read failed. buf.length is a multiple of 512; runs
   * holds buf.length / 512 entries. Absent from older addons.
   */
  preadScan?(
    fd: number,
    buf: Uint8Array,
    off: number,
    min: number,
    sectorNum: number,
    alignment: number,
    runs: Int32Array,
  ): Promise<number>;
  /** The address of buf's first byte modulo align (a power of two). Absent from older addons. */
  misalignment?(buf: Uint8Array, align: number): number;
  /** type 0 unlock, 1 shared, 2 exclusive. Returns 0 or -errno. */
  ofdLock(fd: number, type: 0 | 1 | 2, start: number, len: number): number;
  /** 1 when another open file description holds a conflicting lock on the range. */
  ofdTest(fd: number, type: 1 | 2, start: number, len: number): number;
  /**
   * sendfile(2) from file `inFd` at `off` to the non-blocking socket `outFd`, looping until
   * `len` bytes are sent or the socket is full: the bytes sent, or -errno (-EAGAIN when none
   * could be). Absent from an addon built before it existed (as are the next three).
   */
  sendFile?(outFd: number, inFd: number, off: number, len: number): number;
  /** send(2) of buf[off, off+len) without blocking (MSG_MORE with `more`): bytes sent, or -errno. */
  sendBytes?(fd: number, buf: Uint8Array, off: number, len: number, more?: 0 | 1): number;
  /** setsockopt(SO_SNDBUF): 0 or -errno. */
  setSendBuffer?(fd: number, bytes: number): number;
  /** fcntl(F_SETPIPE_SZ): the pipe's new capacity, or -errno. Absent from an older addon. */
  setPipeSize?(fd: number, bytes: number): number;
  /**
   * malloc_trim(0): glibc's free heap pages of every arena back to the system (1 when some
   * were, 0 when none, -1 without glibc). Absent from an addon built before it existed.
   */
  mallocTrim?(): number;
  /** 1 when the whole range is in the page cache, 0 when not, -errno on failure. */
  cached?(fd: number, off: number, len: number): number;
  /**
   * Compress on the thread pool (native/vdisk_deflate.c): mode 0 raw deflate (qcow2), 1 zlib
   * (vmdk). null when the output would exceed `limit` bytes or, with probe 1, mode 0 data
   * is incompressible. Absent from an addon built before it existed.
   */
  deflateCluster?(input: Buffer, mode: 0 | 1, limit: number, probe: 0 | 1): Promise<Buffer | null>;
  /**
   * zstd with the system's libzstd on the thread pool (native/vdisk_zstd.c): mode 0 compresses
   * at `level` into at most `size` bytes (null when it does not fit), mode 1 decompresses one
   * frame into exactly `size` bytes (rejects otherwise).
   */
  zstdCluster?(input: Buffer, mode: 0 | 1, size: number, level: number): Promise<Buffer | null>;
  /**
   * sync_file_range(2) with SYNC_FILE_RANGE_WRITE on libuv's pool: the kernel starts writing
   * the range back now; resolves to 0 or -errno. Absent from an addon built before it existed.
   */
  syncRange?(fd: number, offset: number, length: number): Promise<number>;
  /**
   * sendfile(2) of `count` bytes of `fileFd` from `offset` to the socket `sockFd`, on a thread
   * of its own (native/vdisk_sendfile.c) that holds duplicates of both descriptors. `done`
   * runs on the main thread with 0 when every byte went, else an errno (ECANCELED after
   * `sendfileCancel`, ENODATA when the file ended early, EPIPE/ECONNRESET when the peer went
   * away), and the bytes the socket took. Throws when it cannot start (no thread, no fd).
   * Absent from an addon built before it existed.
   */
  sendfileStart?(
    sockFd: number,
    fileFd: number,
    offset: number,
    count: number,
    done: (errno: number, sent: number) => void,
  ): SendfileJob;
  /** Stop a transfer: its `done` follows soon with ECANCELED (or its real outcome). */
  sendfileCancel?(job: SendfileJob): void;
  /**
   * [inOff, inOff + len) of one file to outOff of another inside the kernel, on libuv's pool
   * (native/vdisk_copy.c): mode 0 FICLONERANGE (a reflink, all or nothing), mode 1
   * copy_file_range(2). Resolves to the bytes done (fewer only when the source ended) or
   * -errno. Absent from an addon built before it existed.
   */
  copyRange?(
    inFd: number,
    inOff: number,
    outFd: number,
    outOff: number,
    len: number,
    mode: 0 | 1,
  ): Promise<number>;
  /**
   * Replace Node's out-of-memory report (a GC trace, a stack, abort: exit 134) for this
   * isolate with one `vdisk: Cannot allocate memory …` line and exit status 1
   * (native/vdisk_oom.cc). Only the CLI's process entry calls it. Absent from an addon built
   * before it existed.
   */
  installOomHandler?(): boolean;
  /**
   * V8's memory-pressure notification at its critical level (native/vdisk_oom.cc): a full
   * collection now and the young generation back to its initial size. `vdisk serve` calls it
   * once idle. false without an isolate; absent from an addon built before it existed.
   */
  memoryPressure?(): boolean;
  /**
   * V8's SetFlagsFromString (native/vdisk_oom.cc), as node:v8's setFlagsFromString without
   * loading that module. true once V8 took the string. Absent from an addon built before it
   * existed.
   */
  setV8Flags?(flags: string): boolean;
  /**
   * _exit(status) (native/vdisk_native.c): the process ends at once, without Node's and V8's
   * teardown. Only for a process whose event loop has nothing left to do (src/cli/engine.ts).
   * Absent from an addon built before it existed.
   */
  exitNow?(status: number): never;
  /**
   * A file's write lane (native/vdisk_lane.c): writes queued in C and written one after
   * another, back to back, by one pool job, as a buffered write holds the file's inode lock
   * anyway. The three are absent from an addon built before they existed.
   */
  laneOpen?(): Lane;
  /**
   * bufs written back to back at off on fd, after every write queued before it on the lane:
   * resolves to the bytes written (all of them) or -errno. The buffers stay referenced until
   * then; fd must stay open until it settles.
   */
  laneWrite?(lane: Lane, fd: number, bufs: Uint8Array[], off: number): Promise<number>;
  /** No write is queued after this (the caller awaits its writes first). */
  laneClose?(lane: Lane): void;
}

/** An opaque handle of a write lane. */
export type Lane = { readonly __lane: unique symbol };

/** An opaque handle of a transfer in progress. */
export type SendfileJob = { readonly __sendfileJob: unique symbol };

function load(): NativeFs | null {
  if (process.env['VDISK_NO_NATIVE'] === '1') return null;
  try {
    // dist/native/index.js, src/native/index.ts and the CLI script dist/cli/vdisk.cjs all sit two
    // levels below the package root. process.dlopen is what require() does for a .node file,
    // without loading node:module (start-up, docs/benchmarks.md).
    const addon = { exports: {} as NativeFs };
    process.dlopen(
      addon,
      fileURLToPath(new URL('../../native/build/Release/vdisk_native.node', import.meta.url)),
    );
    return addon.exports;
  } catch {
    return null;
  }
}

export const native: NativeFs | null = load();
export const hasNative = native !== null;
