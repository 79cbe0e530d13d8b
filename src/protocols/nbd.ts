/**
 * The nbd protocol: images on an NBD server, named as qemu-img names them (block/nbd.c in
 * qemu 7.2):
 *
 * - `nbd://host[:port][/export]` and `nbd+tcp://…` (port 10809 by default, no query);
 * - `nbd+unix:///export?socket=PATH` (no host, no port, exactly one query parameter);
 * - the legacy `nbd:host:port[:exportname=NAME]` and `nbd:unix:PATH[:exportname=NAME]`;
 * - options (`json:{"file.driver":"nbd",…}`, --image-opts): `server.type` inet/unix with
 *   `server.host`/`server.port`/`server.path`, `export`, or the old `host`/`port`/`path`.
 *
 * The export becomes a HostFile over an NbdSource: reads, writes, WRITE_ZEROES, TRIM, FLUSH and
 * block status through `base:allocation`, split at the server's maximum block size and aligned
 * to its minimum, with requests pipelined on one connection. The image is then named as qemu
 * names it (nbd_refresh_filename): `nbd://host:port/export` or `nbd+unix:///export?socket=…`.
 */
import { VdiskError } from '../core/errors.js';
import { type HostExtent, HostFile, type HostOpenOptions, type ReadSource } from '../core/host-file.js';
import { NbdClient, NbdOptionError, NbdRequestError } from '../nbd/client.js';
import * as P from '../nbd/protocol.js';
import { type NbdTarget, nbdCanonicalName, parseNbdName } from './nbd-name.js';

// The names live in nbd-name.ts (loaded without the client); their users import them from here.
export {
  NBD_DEFAULT_PORT,
  type NbdTarget,
  nbdCanonicalName,
  nbdFromOptions,
  parseNbdName,
} from './nbd-name.js';

const socketErrors: Record<string, string> = {
  ECONNREFUSED: 'Connection refused',
  ENOENT: 'No such file or directory',
  EACCES: 'Permission denied',
  ETIMEDOUT: 'Connection timed out',
  EHOSTUNREACH: 'No route to host',
  ENETUNREACH: 'Network is unreachable',
  ECONNRESET: 'Connection reset by peer',
  ENOTSOCK: 'Socket operation on non-socket',
};

/** The reasons qemu's client gives for an option the server refused (nbd_handle_reply_err). */
function optionError(e: NbdOptionError): string {
  const opt = `${e.option} (${P.optionName(e.option)})`;
  const what: Record<number, string> = {
    [P.REP_ERR_UNSUP]: `Unsupported option ${opt}`,
    [P.REP_ERR_POLICY]: `Denied by server for option ${opt}`,
    [P.REP_ERR_INVALID]: `Invalid parameters for option ${opt}`,
    2147483652: `Server lacks support for option ${opt}`,
    2147483653: `TLS negotiation required before option ${opt}`,
    [P.REP_ERR_UNKNOWN]: 'Requested export not available',
    [P.REP_ERR_SHUTDOWN]: `Server shutting down before option ${opt}`,
    2147483656: `Server requires INFO_BLOCK_SIZE for option ${opt}`,
  };
  const text = what[e.type] ?? `Unknown error code when asking for option ${opt}`;
  return e.serverMessage === '' ? text : `${text}\nserver reported: ${e.serverMessage}`;
}

/** Connect and negotiate; errors become qemu-img's one-line reasons. */
export async function connectNbd(t: NbdTarget, contexts: string[] = ['base:allocation']): Promise<NbdClient> {
  const where = 'path' in t.server ? t.server.path : `${t.server.host}:${t.server.port}`;
  try {
    return await NbdClient.connect(t.server, {
      ...(t.exportName !== undefined ? { exportName: t.exportName } : {}),
      contexts,
    });
  } catch (err) {
    if (err instanceof NbdOptionError)
      throw new VdiskError(err.type === P.REP_ERR_UNKNOWN ? 'NOT_FOUND' : 'UNSUPPORTED', optionError(err));
    const e = err as { code?: string; syscall?: string };
    const code = e.code ?? '';
    if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || e.syscall === 'getaddrinfo') {
      throw new VdiskError(
        'INVALID_ARGUMENT',
        `address resolution failed for ${where}: Name or service not known`,
      );
    }
    if (e.syscall === 'connect' || socketErrors[code] !== undefined) {
      throw new VdiskError(
        code === 'ENOENT' ? 'ENOENT' : 'EIO',
        `Failed to connect to '${where}': ${socketErrors[code] ?? (err as Error).message}`,
      );
    }
    // The server closed the connection or spoke something else during the handshake.
    throw new VdiskError('EIO', `Failed to read initial magic: ${(err as Error).message}`);
  }
}

/** The largest request vdisk sends: qemu's NBD_MAX_BUFFER_SIZE, or the server's maximum. */
const MAX_REQUEST = 32 << 20;

/** An NBD export as a byte source the engine reads, writes and asks for block status. */
export class NbdSource implements ReadSource {
  readonly size: number;
  readonly writable: boolean;
  /** Request alignment (the server's minimum block size) and largest request. */
  private readonly align: number;
  private readonly maxRequest: number;
  private readonly allocation: number | undefined;

  constructor(
    private readonly client: NbdClient,
    private readonly name: string,
    wantWrite: boolean,
  ) {
    this.size = client.size;
    this.writable = wantWrite && (client.flags & P.FLAG_READ_ONLY) === 0;
    const [min, , max] = client.blockSizes ?? [1, 4096, MAX_REQUEST];
    this.align = min > 0 && (min & (min - 1)) === 0 ? min : 1;
    this.maxRequest = Math.max(this.align, Math.min(max || MAX_REQUEST, MAX_REQUEST));
    this.maxRequest -= this.maxRequest % this.align;
    this.allocation = client.contexts.get('base:allocation');
  }

  private fail(op: string, offset: number, err: unknown): VdiskError {
    if (err instanceof NbdRequestError) {
      const code = err.errno === P.ENOSPC ? 'ENOSPC' : err.errno === P.EPERM ? 'READ_ONLY' : 'EIO';
      return new VdiskError(
        code,
        err.message === `NBD error ${err.errno}` ? errnoText(err.errno) : err.message,
        {
          path: this.name,
          offset,
          op,
        },
      );
    }
    // The connection is gone (the server died or closed it mid-request): qemu's client answers
    // EIO. No cause: callers would word the socket's own error (ECONNRESET) instead.
    return new VdiskError('EIO', 'Input/output error', { path: this.name, offset, op });
  }

  /** Run fn over [offset, offset+length) in pieces of at most maxRequest bytes, in parallel. */
  private async split(
    offset: number,
    length: number,
    limit: number,
    fn: (off: number, len: number) => Promise<void>,
  ): Promise<void> {
    const jobs: Promise<void>[] = [];
    for (let pos = offset; pos < offset + length; pos += limit) {
      jobs.push(fn(pos, Math.min(limit, offset + length - pos)));
    }
    await Promise.all(jobs);
  }

  async read(buf: Uint8Array, offset: number): Promise<number> {
    const n = Math.max(0, Math.min(buf.length, this.size - offset));
    if (n === 0) return 0;
    const a = this.align;
    const start = offset - (offset % a);
    const end = Math.min(this.size, Math.ceil((offset + n) / a) * a);
    if (start === offset && end === offset + n) {
      await this.split(offset, n, this.maxRequest, async (off, len) => {
        await this.client
          .readInto(buf.subarray(off - offset, off - offset + len), off)
          .catch((e: unknown) => {
            throw this.fail('read', off, e);
          });
      });
    } else {
      const tmp = new Uint8Array(end - start);
      await this.read(tmp, start);
      buf.set(tmp.subarray(offset - start, offset - start + n));
    }
    return n;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    const a = this.align;
    const start = offset - (offset % a);
    const end = Math.ceil((offset + buf.length) / a) * a;
    if (start !== offset || end !== offset + buf.length) {
      // Read-modify-write of the blocks the write covers in part, as qemu's block layer does.
      const tmp = new Uint8Array(end - start);
      await this.read(tmp.subarray(0, a), start);
      if (end - a > start) await this.read(tmp.subarray(tmp.length - a), end - a);
      tmp.set(buf, offset - start);
      return this.write(tmp, start);
    }
    await this.split(offset, buf.length, this.maxRequest, async (off, len) => {
      const part = buf.subarray(off - offset, off - offset + len);
      await this.client.write(off, part).catch((e: unknown) => {
        throw this.fail('write', off, e);
      });
    });
  }

  async flush(): Promise<void> {
    if ((this.client.flags & P.FLAG_SEND_FLUSH) === 0) return;
    await this.client.flush().catch((e: unknown) => {
      throw this.fail('flush', 0, e);
    });
  }

  /**
   * NBD_CMD_WRITE_ZEROES (NO_HOLE unless unmap may deallocate). False when the server cannot
   * (the caller then writes zeros) or the range is not aligned.
   */
  async writeZeroes(offset: number, length: number, unmap: boolean): Promise<boolean> {
    if ((this.client.flags & P.FLAG_SEND_WRITE_ZEROES) === 0) return false;
    if (offset % this.align !== 0 || (length % this.align !== 0 && offset + length !== this.size))
      return false;
    const flags = unmap ? 0 : P.CMD_FLAG_NO_HOLE;
    await this.split(offset, length, this.maxRequest, async (off, len) => {
      await this.client.request(P.CMD_WRITE_ZEROES, flags, off, len).catch((e: unknown) => {
        throw this.fail('write', off, e);
      });
    });
    return true;
  }

  /** NBD_CMD_TRIM of the aligned part of the range; false when the server cannot. */
  async trim(offset: number, length: number): Promise<boolean> {
    if ((this.client.flags & P.FLAG_SEND_TRIM) === 0) return false;
    const a = this.align;
    const start = Math.ceil(offset / a) * a;
    const end = Math.floor((offset + length) / a) * a;
    if (end <= start) return true;
    const limit = Math.floor(0x7fffffff / a) * a;
    await this.split(start, end - start, limit, async (off, len) => {
      await this.client.request(P.CMD_TRIM, 0, off, len).catch((e: unknown) => {
        throw this.fail('discard', off, e);
      });
    });
    return true;
  }

  /**
   * Block status through `base:allocation` (qemu's reading: data unless NBD_STATE_HOLE, zero
   * when NBD_STATE_ZERO). Without the context everything is data.
   */
  async extents(offset: number, length: number, max: number): Promise<HostExtent[]> {
    const end = Math.min(offset + length, this.size);
    const out: HostExtent[] = [];
    if (offset >= end) return out;
    if (this.allocation === undefined) return [{ offset, length: end - offset, data: true, zero: false }];
    let pos = offset;
    while (pos < end && out.length < max) {
      const len = Math.min(end - pos, 0x80000000 - this.align);
      const got = await this.client.blockStatus(pos, len).catch((e: unknown) => {
        throw this.fail('block status', pos, e);
      });
      const list = got.get(this.allocation) ?? [];
      if (list.length === 0) throw this.fail('block status', pos, new Error('no extents'));
      for (const e of list) {
        if (pos >= end || out.length >= max || e.length === 0) break;
        const n = Math.min(e.length, end - pos);
        const data = (e.flags & P.STATE_HOLE) === 0;
        const zero = (e.flags & P.STATE_ZERO) !== 0;
        const last = out.at(-1);
        if (last !== undefined && last.data === data && last.zero === zero) last.length += n;
        else out.push({ offset: pos, length: n, data, zero });
        pos += n;
      }
    }
    return out;
  }

  async truncate(length: number): Promise<void> {
    // qemu's nbd driver (nbd_co_truncate): an export cannot grow; a smaller size is accepted
    // and changes nothing.
    if (length > this.size) throw new VdiskError('UNSUPPORTED', 'Cannot grow NBD nodes', { path: this.name });
  }

  async close(): Promise<void> {
    await Promise.race([this.client.disconnect(), new Promise((r) => setTimeout(r, 1000).unref())]);
    this.client.close();
  }
}

function errnoText(errno: number): string {
  switch (errno) {
    case P.EPERM:
      return 'Operation not permitted';
    case P.ENOSPC:
      return 'No space left on device';
    case P.EINVAL:
      return 'Invalid argument';
    case P.ENOMEM:
      return 'Cannot allocate memory';
    case P.ENOTSUP:
      return 'Operation not supported';
    case P.ESHUTDOWN:
      return 'Cannot send after transport endpoint shutdown';
    default:
      return 'Input/output error';
  }
}

/** Open an nbd name as a HostFile (no locks: the server owns the image). */
export async function openNbd(name: string, opts: HostOpenOptions = {}): Promise<HostFile> {
  const target = parseNbdName(name);
  const client = await connectNbd(target);
  const wantWrite = opts.writable === true || opts.create === true;
  const source = new NbdSource(client, nbdCanonicalName(target), wantWrite);
  if (wantWrite && !source.writable) {
    await source.close();
    // qemu's words (bdrv_open_common on a read-only node opened read-write).
    throw new VdiskError('READ_ONLY', 'Could not open image: Permission denied', { path: name });
  }
  return HostFile.fromSource(nbdCanonicalName(target), source, { noFlush: opts.noFlush === true });
}
