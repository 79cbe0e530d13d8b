/**
 * An NBD client: fixed newstyle handshake (NBD_OPT_GO, structured replies, metadata
 * contexts, falling back to NBD_OPT_EXPORT_NAME where the server knows no NBD_OPT_GO, as
 * qemu's client does) and pipelined requests. vdisk's tests use it to drive the server where
 * the real clients cannot (hostile input, exact replies), `npm run bench` to hold many
 * requests in flight, and src/protocols/nbd.ts to open `nbd://` images. No TLS.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { SocketReader } from './io.js';
import * as P from './protocol.js';
import type { Listen } from './server.js';

export interface ClientOptions {
  exportName?: string;
  /** Ask for structured replies (default true). */
  structured?: boolean;
  /** Metadata contexts to select (needs structured replies). */
  contexts?: string[];
}

/** An option the server refused during the handshake (`type` is the NBD_REP_ERR_* value). */
export class NbdOptionError extends Error {
  constructor(
    readonly option: number,
    readonly type: number,
    readonly serverMessage: string,
  ) {
    super(serverMessage || `NBD option ${option} failed (0x${type.toString(16)})`);
  }
}

/** A request the server answered with an error value. */
export class NbdRequestError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message || `NBD error ${errno}`);
  }
}

export interface StatusExtent {
  length: number;
  flags: number;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
  data?: Buffer;
  extents: Map<number, StatusExtent[]>;
  error?: NbdRequestError;
  chunks: number;
  /** Where a read's data goes (readInto): straight from the socket, no copy. */
  dest?: Buffer;
}

export interface Reply {
  data?: Buffer;
  extents: Map<number, StatusExtent[]>;
  /** Structured chunks received (0 for a simple reply). */
  chunks: number;
}

export class NbdClient {
  size = 0;
  flags = 0;
  blockSizes: [number, number, number] | null = null;
  description = '';
  /** Context name → id, as the server assigned them. */
  readonly contexts = new Map<string, number>();
  private readonly pending = new Map<bigint, Pending>();
  private next = 1n;
  private structured = false;
  private closed: Error | null = null;

  private constructor(
    private readonly sock: Socket,
    private readonly reader: SocketReader,
  ) {}

  static async connect(to: Listen, o: ClientOptions = {}): Promise<NbdClient> {
    const sock = await openSocket(to);
    const client = new NbdClient(sock, new SocketReader(sock, 8 << 20));
    try {
      await client.handshake(o);
    } catch (err) {
      sock.destroy();
      throw err;
    }
    void client.replies();
    return client;
  }

  private async handshake(o: ClientOptions): Promise<void> {
    const hello = await this.reader.read(18);
    if (hello.readBigUInt64BE(0) !== P.NBDMAGIC || hello.readBigUInt64BE(8) !== P.IHAVEOPT) {
      throw new Error('not an NBD newstyle server');
    }
    const serverFlags = hello.readUInt16BE(16);
    const noZeroes = (serverFlags & P.FLAG_NO_ZEROES) !== 0;
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE((serverFlags & P.FLAG_C_FIXED_NEWSTYLE) | (noZeroes ? P.FLAG_C_NO_ZEROES : 0));
    this.sock.write(flags);
    const name = Buffer.from(o.exportName ?? '', 'utf8');
    if ((serverFlags & P.FLAG_FIXED_NEWSTYLE) === 0) {
      // A plain newstyle server knows only NBD_OPT_EXPORT_NAME.
      await this.exportName(name, noZeroes);
      return;
    }
    if (o.structured !== false) {
      const r = await this.option(P.OPT_STRUCTURED_REPLY, Buffer.alloc(0));
      this.structured = r.at(-1)?.type === P.REP_ACK;
    }
    if (this.structured && o.contexts !== undefined && o.contexts.length > 0) {
      const parts = [u32(name.length), name, u32(o.contexts.length)];
      for (const c of o.contexts) {
        const q = Buffer.from(c, 'utf8');
        parts.push(u32(q.length), q);
      }
      for (const r of await this.option(P.OPT_SET_META_CONTEXT, Buffer.concat(parts))) {
        if (r.type === P.REP_META_CONTEXT)
          this.contexts.set(r.data.toString('utf8', 4), r.data.readUInt32BE(0));
      }
    }
    const go = Buffer.concat([
      u32(name.length),
      name,
      u16(2),
      u16(P.INFO_BLOCK_SIZE),
      u16(P.INFO_DESCRIPTION),
    ]);
    const replies = await this.option(P.OPT_GO, go);
    const last = replies.at(-1)!;
    if (last.type === P.REP_ERR_UNSUP) {
      // An older server: qemu's client then falls back to NBD_OPT_EXPORT_NAME.
      this.contexts.clear();
      await this.exportName(name, noZeroes);
      return;
    }
    if (last.type !== P.REP_ACK) {
      throw new NbdOptionError(P.OPT_GO, last.type, last.data.toString('utf8'));
    }
    for (const r of replies) {
      if (r.type !== P.REP_INFO) continue;
      const what = r.data.readUInt16BE(0);
      if (what === P.INFO_EXPORT) {
        this.size = Number(r.data.readBigUInt64BE(2));
        this.flags = r.data.readUInt16BE(10);
      } else if (what === P.INFO_BLOCK_SIZE) {
        this.blockSizes = [r.data.readUInt32BE(2), r.data.readUInt32BE(6), r.data.readUInt32BE(10)];
      } else if (what === P.INFO_DESCRIPTION) {
        this.description = r.data.toString('utf8', 2);
      }
    }
  }

  /** NBD_OPT_EXPORT_NAME: the server answers with size and flags, or closes the connection. */
  private async exportName(name: Buffer, noZeroes: boolean): Promise<void> {
    const head = Buffer.alloc(16);
    head.writeBigUInt64BE(P.IHAVEOPT, 0);
    head.writeUInt32BE(P.OPT_EXPORT_NAME, 8);
    head.writeUInt32BE(name.length, 12);
    this.sock.write(Buffer.concat([head, name]));
    let r: Buffer;
    try {
      r = await this.reader.read(noZeroes ? 10 : 134);
    } catch {
      throw new NbdOptionError(P.OPT_EXPORT_NAME, P.REP_ERR_UNKNOWN, '');
    }
    this.size = Number(r.readBigUInt64BE(0));
    this.flags = r.readUInt16BE(8);
  }

  /** Send one option and collect its replies up to the final one (ACK or an error). */
  async option(option: number, data: Buffer): Promise<{ type: number; data: Buffer }[]> {
    const head = Buffer.alloc(16);
    head.writeBigUInt64BE(P.IHAVEOPT, 0);
    head.writeUInt32BE(option, 8);
    head.writeUInt32BE(data.length, 12);
    this.sock.write(Buffer.concat([head, data]));
    const out: { type: number; data: Buffer }[] = [];
    for (;;) {
      const h = await this.reader.read(20);
      if (h.readBigUInt64BE(0) !== P.REPLY_MAGIC) throw new Error('bad option reply magic');
      const type = h.readUInt32BE(12);
      const n = h.readUInt32BE(16);
      const d = n > 0 ? await this.reader.read(n) : Buffer.alloc(0);
      out.push({ type, data: Buffer.from(d) });
      if (type === P.REP_ACK || type >= 0x80000000) return out;
    }
  }

  /** Send a request; resolves with the complete reply, rejects with NbdRequestError. */
  request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    payload?: Uint8Array,
    dest?: Buffer,
  ): Promise<Reply> {
    if (this.closed !== null) return Promise.reject(this.closed);
    const cookie = this.next++;
    const head = Buffer.allocUnsafe(28);
    head.writeUInt32BE(P.REQUEST_MAGIC, 0);
    head.writeUInt16BE(flags, 4);
    head.writeUInt16BE(type, 6);
    head.writeBigUInt64BE(cookie, 8);
    head.writeBigUInt64BE(BigInt(offset), 16);
    head.writeUInt32BE(length, 24);
    const done = new Promise<Reply>((resolve, reject) => {
      this.pending.set(cookie, {
        type,
        offset,
        length,
        resolve,
        reject,
        extents: new Map(),
        chunks: 0,
        ...(dest !== undefined ? { dest } : {}),
      });
    });
    if (payload !== undefined) {
      this.sock.cork();
      this.sock.write(head);
      this.sock.write(payload);
      this.sock.uncork();
    } else this.sock.write(head);
    return done;
  }

  async read(offset: number, length: number, flags = 0): Promise<Buffer> {
    return (await this.request(P.CMD_READ, flags, offset, length)).data ?? Buffer.alloc(0);
  }

  /** Read into `dest` (dest.length bytes at offset), the socket's bytes copied once. */
  async readInto(dest: Uint8Array, offset: number, flags = 0): Promise<void> {
    const b = Buffer.from(dest.buffer, dest.byteOffset, dest.length);
    await this.request(P.CMD_READ, flags, offset, dest.length, undefined, b);
  }

  async write(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    await this.request(P.CMD_WRITE, flags, offset, data.length, data);
  }

  async flush(): Promise<void> {
    await this.request(P.CMD_FLUSH, 0, 0, 0);
  }

  async blockStatus(offset: number, length: number, flags = 0): Promise<Map<number, StatusExtent[]>> {
    return (await this.request(P.CMD_BLOCK_STATUS, flags, offset, length)).extents;
  }

  /** NBD_CMD_DISC, then wait for the server to close the connection. */
  async disconnect(): Promise<void> {
    if (this.closed === null) {
      const head = Buffer.alloc(28);
      head.writeUInt32BE(P.REQUEST_MAGIC, 0);
      head.writeUInt16BE(P.CMD_DISC, 6);
      this.sock.write(head);
    }
    await new Promise<void>((resolve) => {
      if (this.sock.destroyed) resolve();
      else this.sock.once('close', () => resolve());
    });
  }

  close(): void {
    this.sock.destroy();
  }

  private async replies(): Promise<void> {
    try {
      for (;;) {
        const magic = (await this.reader.read(4)).readUInt32BE(0);
        if (magic === P.SIMPLE_REPLY_MAGIC) {
          const h = await this.reader.read(12);
          const error = h.readUInt32BE(0);
          const p = this.take(h.readBigUInt64BE(4));
          if (error !== 0) p.reject(new NbdRequestError(error, ''));
          else if (p.type === P.CMD_READ) {
            const data = p.dest ?? Buffer.allocUnsafe(p.length);
            await this.reader.readInto(data);
            p.resolve({ data, extents: p.extents, chunks: 0 });
          } else p.resolve({ extents: p.extents, chunks: 0 });
        } else if (magic === P.STRUCTURED_REPLY_MAGIC) {
          const h = await this.reader.read(16);
          const flags = h.readUInt16BE(0);
          const type = h.readUInt16BE(2);
          const cookie = h.readBigUInt64BE(4);
          const n = h.readUInt32BE(12);
          const p = this.pending.get(cookie);
          if (p === undefined) throw new Error(`reply to unknown cookie ${cookie}`);
          p.chunks++;
          if (type === P.REPLY_TYPE_OFFSET_DATA && p.type === P.CMD_READ && n >= 8) {
            // Data goes from the socket into the reply's buffer, checked to lie in the request.
            const at = Number((await this.reader.read(8)).readBigUInt64BE(0)) - p.offset;
            if (at < 0 || at + n - 8 > p.length) throw new Error('read reply chunk outside the request');
            p.data ??= p.dest ?? Buffer.alloc(p.length);
            await this.reader.readInto(p.data.subarray(at, at + n - 8));
          } else {
            if (n > P.MAX_PAYLOAD) throw new Error(`reply chunk of ${n} bytes`);
            const payload = n > 0 ? Buffer.from(await this.reader.read(n)) : Buffer.alloc(0);
            this.chunk(p, type, payload);
          }
          if ((flags & P.REPLY_FLAG_DONE) !== 0) {
            this.pending.delete(cookie);
            if (p.error !== undefined) p.reject(p.error);
            else
              p.resolve({
                ...(p.data !== undefined ? { data: p.data } : {}),
                extents: p.extents,
                chunks: p.chunks,
              });
          }
        } else {
          throw new Error(`bad reply magic 0x${magic.toString(16)}`);
        }
      }
    } catch (err) {
      this.closed = err instanceof Error ? err : new Error(String(err));
      for (const p of this.pending.values()) p.reject(this.closed);
      this.pending.clear();
      this.sock.destroy();
    }
  }

  private take(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (p === undefined) throw new Error(`reply to unknown cookie ${cookie}`);
    this.pending.delete(cookie);
    return p;
  }

  private chunk(p: Pending, type: number, payload: Buffer): void {
    if (type === P.REPLY_TYPE_OFFSET_DATA || type === P.REPLY_TYPE_OFFSET_HOLE) {
      if (payload.length < (type === P.REPLY_TYPE_OFFSET_HOLE ? 12 : 8)) throw new Error('short read chunk');
      p.data ??= p.dest ?? Buffer.alloc(p.length);
      const at = Number(payload.readBigUInt64BE(0)) - p.offset;
      const n = type === P.REPLY_TYPE_OFFSET_DATA ? payload.length - 8 : payload.readUInt32BE(8);
      if (at < 0 || at + n > p.length) throw new Error('read reply chunk outside the request');
      if (type === P.REPLY_TYPE_OFFSET_DATA) payload.copy(p.data, at, 8);
      else p.data.fill(0, at, at + n);
    } else if (type === P.REPLY_TYPE_BLOCK_STATUS) {
      const id = payload.readUInt32BE(0);
      const list: StatusExtent[] = [];
      for (let at = 4; at + 8 <= payload.length; at += 8) {
        list.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
      }
      p.extents.set(id, list);
    } else if ((type & 0x8000) !== 0) {
      const errno = payload.readUInt32BE(0);
      const n = payload.readUInt16BE(4);
      p.error = new NbdRequestError(errno, payload.toString('utf8', 6, 6 + n));
    }
  }
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function u16(n: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(n);
  return b;
}

/** Connect a socket to a Unix path or a host and port. */
export function openSocket(to: Listen): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = 'path' in to ? netConnect(to.path) : netConnect(to.port, to.host);
    sock.once('connect', () => {
      sock.off('error', reject);
      sock.setNoDelay(true);
      resolve(sock);
    });
    sock.once('error', reject);
  });
}
