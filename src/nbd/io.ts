/**
 * The byte plumbing of the NBD server: an exact-length reader over a socket that stops
 * reading (pauses the socket) when the server is not asking for more, a byte budget shared by
 * all connections, and a pool of the large buffers that requests read and write through.
 */
import type { Socket } from 'node:net';

/** The connection ended: cleanly between messages (`partial` false) or in the middle of one. */
export class ConnectionClosed extends Error {
  constructor(readonly partial: boolean) {
    super(partial ? 'Unexpected end-of-file before all bytes were read' : 'connection closed');
  }
}

type Pending =
  | { kind: 'read'; n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void }
  | { kind: 'fill'; buf: Buffer; pos: number; resolve: () => void; reject: (e: Error) => void }
  | { kind: 'skip'; n: number; left: number; resolve: () => void; reject: (e: Error) => void };

/**
 * Reads exact lengths from a socket. Data the server has not asked for is kept up to
 * `highWater` bytes; beyond that the socket is paused, so a client that sends faster than the
 * server works is held back by TCP.
 */
export class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private pending: Pending | null = null;
  private ended: ConnectionClosed | Error | null = null;
  private paused = false;

  constructor(
    private readonly sock: Socket,
    private readonly highWater = 256 << 10,
  ) {
    sock.on('data', (c: Buffer) => this.onData(c));
    sock.on('end', () => this.end(null));
    sock.on('close', () => this.end(null));
    sock.on('error', (e) => this.end(e));
  }

  /** Bytes received and not yet consumed. */
  get available(): number {
    return this.buffered;
  }

  read(n: number): Promise<Buffer> {
    if (n === 0) return Promise.resolve(Buffer.alloc(0));
    if (this.buffered >= n) return Promise.resolve(this.take(n));
    if (this.ended !== null) return Promise.reject(this.endError(this.buffered > 0));
    return new Promise((resolve, reject) => {
      this.pending = { kind: 'read', n, resolve, reject };
      this.flow();
    });
  }

  /** Fill `buf` entirely; large payloads are copied straight into it as they arrive. */
  readInto(buf: Buffer): Promise<void> {
    let pos = 0;
    while (pos < buf.length && this.chunks.length > 0) {
      const c = this.chunks[0]!;
      const n = Math.min(c.length, buf.length - pos);
      c.copy(buf, pos, 0, n);
      this.consume(n);
      pos += n;
    }
    if (pos === buf.length) {
      this.flow();
      return Promise.resolve();
    }
    if (this.ended !== null) return Promise.reject(this.endError(pos > 0));
    return new Promise((resolve, reject) => {
      this.pending = { kind: 'fill', buf, pos, resolve, reject };
      this.flow();
    });
  }

  /** Read and drop n bytes (a payload the server refuses), without keeping them. */
  skip(n: number): Promise<void> {
    let left = n;
    while (left > 0 && this.chunks.length > 0) {
      const k = Math.min(this.chunks[0]!.length, left);
      this.consume(k);
      left -= k;
    }
    if (left === 0) {
      this.flow();
      return Promise.resolve();
    }
    if (this.ended !== null) return Promise.reject(this.endError(left < n));
    return new Promise((resolve, reject) => {
      this.pending = { kind: 'skip', n, left, resolve, reject };
      this.flow();
    });
  }

  private onData(c: Buffer): void {
    const p = this.pending;
    if (p !== null && p.kind === 'fill' && this.buffered === 0) {
      const n = Math.min(c.length, p.buf.length - p.pos);
      c.copy(p.buf, p.pos, 0, n);
      p.pos += n;
      if (n < c.length) this.push(c.subarray(n));
      if (p.pos === p.buf.length) {
        this.pending = null;
        p.resolve();
      }
    } else if (p !== null && p.kind === 'skip' && this.buffered === 0) {
      const n = Math.min(c.length, p.left);
      p.left -= n;
      if (n < c.length) this.push(c.subarray(n));
      if (p.left === 0) {
        this.pending = null;
        p.resolve();
      }
    } else {
      this.push(c);
      if (p !== null && p.kind === 'read' && this.buffered >= p.n) {
        this.pending = null;
        p.resolve(this.take(p.n));
      }
    }
    this.flow();
  }

  private push(c: Buffer): void {
    this.chunks.push(c);
    this.buffered += c.length;
  }

  /** Pause the socket while enough is buffered and nobody waits; resume otherwise. */
  private flow(): void {
    if (this.ended !== null) return;
    const want = this.pending !== null || this.buffered < this.highWater;
    if (want && this.paused) {
      this.paused = false;
      this.sock.resume();
    } else if (!want && !this.paused) {
      this.paused = true;
      this.sock.pause();
    }
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      this.consume(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let pos = 0;
      while (pos < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - pos);
        c.copy(out, pos, 0, k);
        this.consume(k);
        pos += k;
      }
    }
    queueMicrotask(() => this.flow());
    return out;
  }

  private consume(n: number): void {
    const c = this.chunks[0]!;
    if (n === c.length) this.chunks.shift();
    else this.chunks[0] = c.subarray(n);
    this.buffered -= n;
  }

  private end(err: Error | null): void {
    if (this.ended !== null) return;
    this.ended = err ?? new ConnectionClosed(false);
    const p = this.pending;
    this.pending = null;
    if (p === null) return;
    const partial =
      this.buffered > 0 || (p.kind === 'fill' && p.pos > 0) || (p.kind === 'skip' && p.left < p.n);
    p.reject(this.endError(partial));
  }

  /** The error of a read the end interrupted: partial when part of its message had come. */
  private endError(partial: boolean): Error {
    if (this.ended instanceof ConnectionClosed) return new ConnectionClosed(partial);
    return this.ended ?? new ConnectionClosed(partial);
  }

  /** Has the peer closed (or the socket failed)? */
  get closed(): boolean {
    return this.ended !== null;
  }
}

/**
 * A budget of bytes shared by every connection (buffers of requests being served and of
 * replies not yet handed to the kernel). Waiters are served first come, first served.
 */
export class ByteBudget {
  private used = 0;
  private waiters: { n: number; grant: () => void }[] = [];

  constructor(readonly limit: number) {}

  get inUse(): number {
    return this.used;
  }

  /** Wait for n bytes (at most the whole budget); rejects if `signal` aborts first. */
  acquire(n: number, signal?: AbortSignal): Promise<void> {
    const want = Math.min(n, this.limit);
    if (this.waiters.length === 0 && this.used + want <= this.limit) {
      this.used += want;
      return Promise.resolve();
    }
    if (signal?.aborted) return Promise.reject(new ConnectionClosed(true));
    return new Promise((resolve, reject) => {
      const waiter = {
        n: want,
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          this.used += want;
          resolve();
        },
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        this.pump();
        reject(new ConnectionClosed(true));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  release(n: number): void {
    this.used -= Math.min(n, this.limit);
    this.pump();
  }

  private pump(): void {
    while (this.waiters.length > 0 && this.used + this.waiters[0]!.n <= this.limit) {
      this.waiters.shift()!.grant();
    }
  }
}

const MIN_POOLED = 64 << 10;

/**
 * Large buffers by power-of-two size class, kept for reuse (a fresh 256 KiB buffer per request
 * costs an mmap, page faults and garbage collection). At most `maxKept` bytes are kept.
 */
export class BufferPool {
  private free = new Map<number, Buffer[]>();
  private kept = 0;

  constructor(private readonly maxKept = 32 << 20) {}

  /** A buffer of exactly n bytes (a view of a pooled one for large sizes). */
  get(n: number): Buffer {
    if (n < MIN_POOLED) return Buffer.allocUnsafe(n);
    const cls = sizeClass(n);
    const list = this.free.get(cls);
    const b = list?.pop();
    if (b !== undefined) {
      this.kept -= cls;
      return b.subarray(0, n);
    }
    return Buffer.allocUnsafeSlow(cls).subarray(0, n);
  }

  /** Give back a buffer from get() once nothing uses it any more. */
  put(b: Buffer): void {
    if (b.length < MIN_POOLED || b.byteOffset !== 0) return;
    const whole = Buffer.from(b.buffer, 0, b.buffer.byteLength);
    const cls = whole.length;
    if (cls !== sizeClass(b.length) || this.kept + cls > this.maxKept) return;
    let list = this.free.get(cls);
    if (list === undefined) {
      list = [];
      this.free.set(cls, list);
    }
    list.push(whole);
    this.kept += cls;
  }
}

function sizeClass(n: number): number {
  let c = MIN_POOLED;
  while (c < n) c *= 2;
  return c;
}
