/**
 * Downloads from the file store with sendfile(2): the kernel moves the blob's page-cache pages
 * to the socket, nothing passes through JavaScript (native/vdisk_sendfile.c, one thread per
 * transfer waiting in poll(2) while the client reads).
 *
 * The handover: the response's headers are written through Node as usual, and the transfer
 * starts only once the socket has taken them (the write's callback) and Node has nothing
 * left queued on it; from then on Node writes nothing to the socket (it owns the connection's
 * one response) until `res.end()`, which adds no bytes to a Content-Length response. The
 * thread works on duplicates of the socket's and the file's descriptors: when Node closes the
 * socket (the client reset it, the server shuts down), its 'close' cancels the thread, which
 * then lets go of the connection; a client that goes away makes sendfile fail with EPIPE or
 * ECONNRESET. Either way the socket is destroyed and the download rejects, as the copying
 * path's does.
 *
 * Used for plain TCP sockets only (TLS needs the bytes in user space), for transfers of at
 * least ZERO_COPY_MIN bytes (below that, the copying path's one read and write costs less
 * than a thread), and at most MAX_TRANSFERS at a time (then the copying path serves).
 * `VDISK_ZERO_COPY=0` turns it off (the benchmark compares both paths in one run).
 */
import type { FileHandle } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { constants } from 'node:os';
import { errnoName } from '../../core/errors.js';
import { native, type SendfileJob } from '../../native/index.js';

export const ZERO_COPY_MIN = 256 << 10;
const MAX_TRANSFERS = 256;
let transfers = 0;

const available =
  process.platform === 'linux' && native?.sendfileStart !== undefined && native.sendfileCancel !== undefined;
let enabled = available && process.env['VDISK_ZERO_COPY'] !== '0';

/** Whether downloads may take the zero-copy path in this process. */
export function zeroCopyEnabled(): boolean {
  return enabled;
}

/** Turn the zero-copy path on or off (tests run both paths); on needs the addon. */
export function setZeroCopy(on: boolean): void {
  enabled = on && available;
}

/** Transfers started through sendfile since the process started, and their bytes (tests). */
export const zeroCopyStats = { transfers: 0, bytes: 0 };

interface SocketInternals {
  encrypted?: boolean;
  _handle?: { fd?: number; writeQueueSize?: number } | null;
}

/** Bytes sendfile put on each socket, which Node's `socket.bytesWritten` does not see. */
const outside = new WeakMap<Socket, number>();

/** What a socket has carried, with what went through sendfile (the access log, /metrics). */
export function socketBytesWritten(socket: Socket): number {
  return socket.bytesWritten + (outside.get(socket) ?? 0);
}

function plainFd(socket: Socket | null): number | null {
  if (socket === null) return null;
  const s = socket as unknown as SocketInternals;
  if (s.encrypted === true) return null;
  const fd = s._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

/** Whether a download of `length` bytes on this response may go through sendfile. */
export function canZeroCopy(res: ServerResponse, length: number): boolean {
  return enabled && length >= ZERO_COPY_MIN && transfers < MAX_TRANSFERS && plainFd(res.socket) !== null;
}

class ClientGone extends Error {
  constructor(why: string) {
    super(`the client went away during the download (${why})`);
  }
}

/**
 * Bytes [start, end] of `fh` as the body of `res`, whose head is set (writeHead) but not yet
 * written. Resolves when the response has ended; false, with nothing written but the head,
 * when the socket is not in a state to hand over (the caller then sends the body itself).
 * Rejects (the socket destroyed) when the client went away or the file ended early.
 */
export async function sendZeroCopy(
  fh: FileHandle,
  start: number,
  end: number,
  res: ServerResponse,
): Promise<boolean> {
  const socket = res.socket;
  let onClose: () => void = () => {};
  const closed = new Promise<never>((_, reject) => {
    onClose = () => reject(new ClientGone('socket closed'));
    res.once('close', onClose);
  });
  closed.catch(() => {});
  transfers++;
  try {
    // The head, through Node: the callback comes once the kernel has every byte of it.
    await Promise.race([
      new Promise<void>((resolve, reject) => res.write('', (err) => (err ? reject(err) : resolve()))),
      closed,
    ]);
    if (socket === null || socket.destroyed) throw new ClientGone('socket closed');
    const fd = plainFd(socket);
    const s = socket as unknown as SocketInternals;
    if (fd === null || socket.writableLength !== 0 || s._handle?.writeQueueSize !== 0) return false;
    const count = end - start + 1;
    let settle: (r: { errno: number; sent: number }) => void = () => {};
    const finished = new Promise<{ errno: number; sent: number }>((resolve) => {
      settle = resolve;
    });
    let job: SendfileJob;
    try {
      job = native!.sendfileStart!(fd, fh.fd, start, count, (e, n) => settle({ errno: e, sent: n }));
    } catch {
      // No thread or descriptor to spare: the copying path serves this one.
      return false;
    }
    zeroCopyStats.transfers++;
    const cancel = () => native!.sendfileCancel!(job);
    res.once('close', cancel);
    const { errno, sent } = await finished;
    res.off('close', cancel);
    outside.set(socket, (outside.get(socket) ?? 0) + sent);
    zeroCopyStats.bytes += sent;
    if (errno !== 0) {
      socket.destroy();
      if (errno === constants.errno.ENODATA) throw new Error('image data shorter than its recorded size');
      const name = errnoName(errno) ?? `errno ${errno}`;
      if (['ECANCELED', 'EPIPE', 'ECONNRESET', 'ETIMEDOUT'].includes(name)) throw new ClientGone(name);
      throw new Error(`sendfile: ${name}`);
    }
    await Promise.race([new Promise<void>((resolve) => res.end(resolve)), closed]);
    return true;
  } finally {
    transfers--;
    res.off('close', onClose);
  }
}
