/**
 * A minimal HTTP/1.1 client for the one request a remote image source makes by the million:
 * `GET` with `Range: bytes=a-b` over TCP or TLS, its body read straight into the caller's buffer.
 *
 * node:http costs about as much CPU as the copy itself at loopback speed: its parser, one
 * 64 KiB Buffer per socket read (and the GC of them), and one more copy. Here each keep-alive
 * connection is a `net.Socket` with `onread` (Node reads the socket into memory we hand it):
 * the status line and headers land in a small scratch buffer of the connection's own, and once
 * they are parsed the kernel reads the body directly into the destination, at most the bytes
 * still expected, so there is no per-read allocation and no copy of the body (but for the few
 * bytes that came with the headers).
 *
 * https goes the same way over a `tls.TLSSocket`, which takes `onread` too: the records are
 * decrypted into the memory handed over, where node:https hands out a Buffer per 16 KiB record
 * and the caller copies it (a 603 MiB qcow2 over https on loopback: 2.4–2.9 s of user CPU that
 * way; docs/benchmarks.md, "https"). The certificate checks are node:tls's, as node:https's.
 *
 * Only the answer a good range server gives is handled here: `206` with a `Content-Length`
 * equal to the range's length and a `Content-Range` starting at its first byte, no
 * `Transfer-Encoding`. Anything else (a redirect, `200` with the whole object, a chunked
 * body, headers that do not fit in the scratch buffer) returns `fallback`, the connection
 * closed, and the caller asks again with node:http, which has the complete protocol and the
 * error messages. `4xx`/`5xx` statuses reject with the status, as node:http's path would.
 */
import { connect, type LookupFunction, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

/** An error of one wire request: `retry` when trying again may succeed. */
export class WireError extends Error {
  constructor(
    message: string,
    readonly retry: boolean,
    /** The HTTP status of an error answer (4xx/5xx). */
    readonly status?: number,
  ) {
    super(message);
  }
}

/**
 * `done`: the body is in the buffer. `fallback`: ask node:http (`final`: this server's
 * answers will not do here, do not use the wire again).
 */
export type WireResult = { kind: 'done' } | { kind: 'fallback'; final: boolean };

const SCRATCH = 16 * 1024;
const CRLFCRLF = Buffer.from('\r\n\r\n');

/** The state of the request a connection is serving. */
interface Pending {
  into: Buffer;
  start: number;
  /** Header bytes in the scratch buffer (before the body starts). */
  head: number;
  /** Body bytes read into `into` (-1 while the headers are being read). */
  got: number;
  /** Whether any byte of the answer has arrived. */
  any: boolean;
  keepAlive: boolean;
  settle: (err: Error | null, result?: WireResult) => void;
}

class Conn {
  readonly socket: Socket;
  readonly scratch = Buffer.allocUnsafe(SCRATCH);
  next: Uint8Array = this.scratch;
  pending: Pending | null = null;
  /** Whether the connection served a request before (a stale keep-alive one may be closed). */
  used = false;
  dead = false;

  constructor(
    readonly key: string,
    host: string,
    port: number,
    onIdleGone: (c: Conn) => void,
    lookup: LookupFunction | undefined,
    tls: WireTls | null,
  ) {
    const options = {
      host,
      port,
      noDelay: true,
      ...(lookup !== undefined ? { lookup } : {}),
      onread: { buffer: () => this.next, callback: (n: number, buf: Uint8Array) => this.onData(n, buf) },
    };
    // TLS: the request written at once is sent once the handshake is done.
    this.socket =
      tls === null
        ? connect(options)
        : tlsConnect({
            ...options,
            rejectUnauthorized: tls.rejectUnauthorized,
            ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
            // SNI and the certificate's name check take the host name, not an address.
            ...(isIpLiteral(host) ? {} : { servername: host }),
          });
    this.socket.on('error', (err) => this.fail(err));
    this.socket.on('close', () => {
      this.dead = true;
      const p = this.pending;
      if (p === null) {
        onIdleGone(this);
        return;
      }
      if (!p.any && this.used) this.fail(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }));
      else this.fail(new WireError('Transferred a partial file', true));
    });
    this.socket.on('timeout', () => {
      const p = this.pending;
      if (p === null) return;
      const ms = this.socket.timeout ?? 0;
      this.fail(
        new WireError(
          `Operation timed out after ${ms} milliseconds with ${Math.max(0, p.got)} bytes received`,
          true,
        ),
      );
    });
  }

  private fail(err: Error): void {
    const p = this.pending;
    this.pending = null;
    this.next = this.scratch;
    this.dead = true;
    this.socket.destroy();
    p?.settle(err);
  }

  private finish(result: WireResult, keep: boolean): void {
    const p = this.pending;
    this.pending = null;
    this.next = this.scratch;
    if (!keep) {
      this.dead = true;
      this.socket.destroy();
    }
    p?.settle(null, result);
  }

  private onData(n: number, buf: Uint8Array): boolean {
    const p = this.pending;
    if (p === null) {
      // Bytes nobody asked for: the connection is out of step.
      this.dead = true;
      this.socket.destroy();
      return false;
    }
    p.any = true;
    if (p.got >= 0) {
      p.got += n;
      if (p.got === p.into.length) this.finish({ kind: 'done' }, p.keepAlive);
      else this.next = p.into.subarray(p.got);
      return true;
    }
    // Headers: the scratch buffer fills from `head` on.
    const have = p.head + n;
    if (buf !== this.scratch) {
      this.finish({ kind: 'fallback', final: true }, false);
      return false;
    }
    const end = this.scratch.subarray(0, have).indexOf(CRLFCRLF);
    if (end < 0) {
      if (have >= SCRATCH) this.finish({ kind: 'fallback', final: true }, false);
      else {
        p.head = have;
        this.next = this.scratch.subarray(have);
      }
      return true;
    }
    const verdict = parseHead(this.scratch.toString('latin1', 0, end), p.start, p.into.length);
    if (verdict.kind !== 'body') {
      if (verdict.kind === 'error') this.fail(new WireError(verdict.message, verdict.retry, verdict.status));
      else this.finish(verdict, false);
      return false;
    }
    p.keepAlive = verdict.keepAlive;
    const bodyStart = end + 4;
    const extra = have - bodyStart;
    if (extra > p.into.length) {
      // More than the body: a server that answers what was not asked.
      this.finish({ kind: 'fallback', final: true }, false);
      return false;
    }
    this.scratch.copy(p.into, 0, bodyStart, have);
    p.got = extra;
    if (p.got === p.into.length) this.finish({ kind: 'done' }, p.keepAlive);
    else this.next = p.into.subarray(p.got);
    return true;
  }

  send(request: string, p: Pending, timeoutMs: number): void {
    this.pending = p;
    this.next = this.scratch;
    this.socket.setTimeout(timeoutMs);
    this.socket.ref();
    this.socket.write(request, 'latin1');
  }

  idle(): void {
    this.used = true;
    this.socket.setTimeout(0);
    this.socket.unref();
  }
}

type HeadVerdict =
  | { kind: 'body'; keepAlive: boolean }
  | { kind: 'fallback'; final: boolean }
  | { kind: 'error'; message: string; retry: boolean; status: number };

const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);

/** The status line and headers of an answer to `Range: bytes=start-(start+length-1)`. */
function parseHead(head: string, start: number, length: number): HeadVerdict {
  const lines = head.split('\r\n');
  const m = /^HTTP\/1\.([01]) (\d{3})/.exec(lines[0] ?? '');
  if (m === null) return { kind: 'fallback', final: true };
  const status = Number(m[2]);
  if (status >= 400) {
    return {
      kind: 'error',
      message: `The requested URL returned error: ${status}`,
      retry: RETRY_STATUS.has(status),
      status,
    };
  }
  // A redirect (node:http follows it and the next requests go to its target) or no range.
  if (status !== 206) return { kind: 'fallback', final: status < 300 || status >= 400 };
  let contentLength: string | undefined;
  let contentRange: string | undefined;
  let keepAlive = m[1] === '1';
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(':');
    if (colon <= 0) return { kind: 'fallback', final: true };
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'content-length') {
      if (contentLength !== undefined && contentLength !== value) return { kind: 'fallback', final: true };
      contentLength = value;
    } else if (name === 'content-range') contentRange = value;
    else if (name === 'transfer-encoding') return { kind: 'fallback', final: true };
    else if (name === 'connection') {
      const v = value.toLowerCase();
      if (v.includes('close')) keepAlive = false;
      else if (v.includes('keep-alive')) keepAlive = true;
    }
  }
  if (
    contentLength !== String(length) ||
    contentRange === undefined ||
    !contentRange.startsWith(`bytes ${start}-${start + length - 1}/`)
  ) {
    return { kind: 'fallback', final: true };
  }
  return { kind: 'body', keepAlive };
}

/** How https connections are checked (node:tls's options, as node:https's agent takes them). */
export interface WireTls {
  rejectUnauthorized: boolean;
  /** The trusted certificate authorities (default: Node's). */
  ca?: string[] | undefined;
}

function isIpLiteral(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}

/**
 * Keep-alive connections, by scheme, host and port, at most `maxIdle` of them kept between
 * requests.
 */
export class RangeWire {
  private readonly idleConns: Conn[] = [];
  private readonly busy = new Set<Conn>();
  private closed = false;
  private tlsOptions: WireTls | null = null;

  /**
   * `lookup` resolves host names instead of node's (a caller that pins the address); `tls`
   * gives https connections their checks, asked for when the first one is made.
   */
  constructor(
    private readonly maxIdle: number,
    private readonly lookup?: LookupFunction,
    private readonly tls?: () => WireTls,
  ) {}

  /**
   * GET `url` bytes [start, start + into.length) into `into`, with `headers` (names and
   * values already checked). Rejects with a WireError, or a socket's error (with its code).
   */
  get(
    url: URL,
    headers: Record<string, string>,
    start: number,
    into: Buffer,
    timeoutMs: number,
  ): Promise<WireResult> {
    if (this.closed) return Promise.reject(new Error('the source is closed'));
    let req = `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n`;
    for (const [k, v] of Object.entries(headers)) req += `${k}: ${v}\r\n`;
    req += `Range: bytes=${start}-${start + into.length - 1}\r\nConnection: keep-alive\r\n\r\n`;
    const secure = url.protocol === 'https:';
    if (!secure && url.protocol !== 'http:')
      return Promise.resolve({ kind: 'fallback', final: false } as WireResult);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const port = url.port !== '' ? Number(url.port) : secure ? 443 : 80;
    const key = `${url.protocol}//${host}:${port}`;
    let conn: Conn | undefined;
    for (let i = this.idleConns.length - 1; i >= 0 && conn === undefined; i--) {
      const c = this.idleConns[i]!;
      if (c.dead || c.key === key) {
        this.idleConns.splice(i, 1);
        if (!c.dead) conn = c;
      }
    }
    if (conn === undefined) {
      let tls: WireTls | null = null;
      if (secure) tls = this.tlsOptions ??= this.tls?.() ?? { rejectUnauthorized: true };
      conn = new Conn(
        key,
        host,
        port,
        (c) => {
          const i = this.idleConns.indexOf(c);
          if (i >= 0) this.idleConns.splice(i, 1);
        },
        this.lookup,
        tls,
      );
    }
    const c = conn;
    this.busy.add(c);
    return new Promise<WireResult>((resolve, reject) => {
      c.send(
        req,
        {
          into,
          start,
          head: 0,
          got: -1,
          any: false,
          keepAlive: true,
          settle: (err, result) => {
            this.busy.delete(c);
            if (!c.dead && !this.closed && this.idleConns.length < this.maxIdle) {
              c.idle();
              this.idleConns.push(c);
            } else if (!c.dead) c.socket.destroy();
            if (err !== null) reject(err);
            else resolve(result!);
          },
        },
        timeoutMs,
      );
    });
  }

  close(): void {
    this.closed = true;
    for (const c of [...this.idleConns, ...this.busy]) c.socket.destroy();
    this.idleConns.length = 0;
  }
}
