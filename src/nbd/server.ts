/**
 * An NBD server: listens on a TCP address or a Unix socket and serves its exports to each
 * client in an NbdSession, with qemu-nbd's connection rules — at most `shared` clients at once
 * (others wait, unanswered, as in qemu-nbd's listen backlog), and, unless `persistent`, the
 * server stops when the last client that completed a handshake leaves.
 */
import { lstat, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { VdiskError } from '../core/errors.js';
import type { NbdExport } from './export.js';
import { BufferPool, ByteBudget } from './io.js';
import { NbdSession, type SessionHost } from './session.js';

export type Listen = { path: string } | { host: string; port: number };

export interface NbdServerOptions {
  exports: NbdExport[];
  listen: Listen;
  /** Clients served at once; 0 is no limit (qemu-nbd -e; default 1). */
  shared?: number;
  /** Keep serving after the last client left (qemu-nbd -t). */
  persistent?: boolean;
  /** Milliseconds a client has to finish its handshake (default 10 s; 0: no limit). */
  handshakeLimitMs?: number;
  /** Bytes of request and reply buffers all connections may hold together (default 64 MiB). */
  bufferBudget?: number;
  /**
   * Send cached data stored as is (raw, uncompressed unencrypted qcow2) straight from the file
   * with sendfile (default: true unless VDISK_NBD_SENDFILE=0).
   */
  directIo?: boolean;
  log?: (message: string) => void;
}

/** Connections kept waiting for a free slot; more are closed at once. */
const MAX_WAITING = 128;

export class NbdServer implements SessionHost {
  readonly exports: readonly NbdExport[];
  readonly budget: ByteBudget;
  readonly pool = new BufferPool(16 << 20);
  readonly handshakeLimitMs: number;
  readonly directIo: boolean;
  private readonly byName = new Map<string, NbdExport>();
  private readonly shared: number;
  private readonly persistent: boolean;
  private readonly logFn: (message: string) => void;
  private active = new Set<Socket>();
  private waiting: Socket[] = [];
  private stopped = false;
  private resolveDone!: () => void;
  /** Resolves once the server has stopped (close(), or the last client of a non-persistent one). */
  readonly done: Promise<void> = new Promise((resolve) => {
    this.resolveDone = resolve;
  });

  private constructor(
    private readonly server: Server,
    readonly listen: Listen,
    o: NbdServerOptions,
  ) {
    this.exports = o.exports;
    for (const e of o.exports) this.byName.set(Buffer.from(e.name, 'utf8').toString('hex'), e);
    this.shared = o.shared ?? 1;
    this.persistent = o.persistent === true;
    this.handshakeLimitMs = o.handshakeLimitMs ?? 10_000;
    this.directIo = o.directIo ?? process.env['VDISK_NBD_SENDFILE'] !== '0';
    this.budget = new ByteBudget(o.bufferBudget ?? 64 << 20);
    this.logFn = o.log ?? (() => {});
  }

  static async start(o: NbdServerOptions): Promise<NbdServer> {
    const server = createServer({ allowHalfOpen: true, noDelay: true });
    const nbd = new NbdServer(server, o.listen, o);
    server.on('connection', (sock) => nbd.accept(sock));
    if ('path' in o.listen) await removeStaleSocket(o.listen.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        const where = 'path' in o.listen ? o.listen.path : `${o.listen.host}:${o.listen.port}`;
        reject(
          new VdiskError(
            err.code === 'EADDRINUSE' ? 'INVALID_ARGUMENT' : 'EIO',
            `Failed to bind socket to ${where}: ${err.code === 'EADDRINUSE' ? 'Address already in use' : err.message}`,
            { cause: err },
          ),
        );
      });
      const backlog = 511;
      if ('path' in o.listen) server.listen({ path: o.listen.path, backlog }, resolve);
      else server.listen({ host: o.listen.host, port: o.listen.port, backlog }, resolve);
    });
    server.on('error', (err) => nbd.log(`listening socket: ${err.message}`));
    return nbd;
  }

  /** Where the server listens: the socket path, or host and port (the port chosen when 0 was asked). */
  address(): Listen {
    const a = this.server.address();
    if (a !== null && typeof a === 'object') return { host: a.address, port: a.port };
    return this.listen;
  }

  /** Clients being served now. */
  get clients(): number {
    return this.active.size;
  }

  log(message: string): void {
    this.logFn(message);
  }

  findExport(name: Buffer): NbdExport | undefined {
    return this.byName.get(name.toString('hex'));
  }

  private accept(sock: Socket): void {
    if (this.stopped) {
      sock.destroy();
      return;
    }
    if (this.shared !== 0 && this.active.size >= this.shared) {
      if (this.waiting.length >= MAX_WAITING) {
        sock.destroy();
        return;
      }
      this.waiting.push(sock);
      sock.once('close', () => {
        const i = this.waiting.indexOf(sock);
        if (i >= 0) this.waiting.splice(i, 1);
      });
      sock.on('error', () => {});
      return;
    }
    this.serve(sock);
  }

  private serve(sock: Socket): void {
    this.active.add(sock);
    const session = new NbdSession(sock, this);
    void session.run().then(() => {
      this.active.delete(sock);
      const negotiated = session.export !== null;
      if (negotiated && this.active.size === 0 && !this.persistent && !this.stopped) {
        void this.close();
        return;
      }
      while (
        !this.stopped &&
        this.waiting.length > 0 &&
        (this.shared === 0 || this.active.size < this.shared)
      ) {
        const next = this.waiting.shift()!;
        if (!next.destroyed) this.serve(next);
      }
    });
  }

  /** Stop listening, drop waiting and active clients, and resolve `done`. Exports stay open. */
  async close(): Promise<void> {
    if (this.stopped) return this.done;
    this.stopped = true;
    for (const s of this.waiting) s.destroy();
    this.waiting = [];
    for (const s of this.active) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    if ('path' in this.listen) await unlink(this.listen.path).catch(() => {});
    this.resolveDone();
  }
}

/** A socket file left by an earlier server is removed (as QEMU does); anything else is kept. */
async function removeStaleSocket(path: string): Promise<void> {
  try {
    const st = await lstat(path);
    if (st.isSocket()) await unlink(path);
  } catch {
    // Absent: nothing to remove.
  }
}
