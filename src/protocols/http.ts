/**
 * http:// and https:// sources, read as qemu's curl driver (block/curl.c) reads them: one HEAD
 * for the size (the server must report a length and accept byte ranges), then Range GETs.
 * Read-only, as qemu's curl driver is.
 *
 * Where vdisk differs from qemu (the bytes read are the same):
 * - reads go through the block cache of cached-source.ts with a read-ahead window fetched by
 *   several requests in flight on keep-alive connections (qemu's curl: one request per read
 *   plus `readahead` bytes, 256 KiB by default, so a sequential copy waits on every request);
 *   `readahead` sets the window's size (at least 1 MiB per request);
 * - a request that fails on the way (a reset or dropped connection, a short body, 5xx, a
 *   stall) is tried again with backoff, up to 5 times (qemu fails the read at once);
 * - `timeout` (seconds, qemu's default 5) bounds the time without progress on a request,
 *   not its whole transfer (curl's CURLOPT_TIMEOUT), so that a large request on a slow link
 *   is not cut off while data still flows.
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { LookupFunction } from 'node:net';
import { VdiskError } from '../core/errors.js';
import type { ReadSource } from '../core/host-file.js';
import { parseBoolOption } from '../core/options.js';
import { lookupSecretUtf8, type Secrets } from '../core/secrets.js';
import { parseSize } from '../core/size.js';
import { cachedSource } from './cached-source.js';
import { RangeWire, WireError } from './http-wire.js';
import { tlsCa } from './tls-ca.js';

/** qemu's curl runtime options (block/curl.c runtime_opts), as given by json:/--image-opts. */
export interface HttpSourceOptions {
  /** Read-ahead in bytes (qemu: a multiple of 512, default 256 KiB). */
  readahead?: number;
  /** Seconds (qemu's default 5, at most 2^31-1 ms). */
  timeout?: number;
  sslverify?: boolean;
  cookie?: string;
  username?: string;
  password?: string;
  /** Requests in flight at once for read-ahead (default 4). */
  parallel?: number;
  /** Tries per request before its error is reported (default 6). */
  tries?: number;
  /**
   * Resolves host names instead of node's DNS lookup, for every connection (node:http and
   * the wire client): a caller pins or checks the address connected to (the registry's
   * web-download refuses internal addresses). Its errors are thrown as they are, not
   * reworded or retried. Not called for IP literals: check those from `redirect` and
   * before opening.
   */
  lookup?: LookupFunction;
  /**
   * Decides each redirect (a 301, 302, 303, 307 or 308 answer) instead of the curl rules:
   * returns the URL to go to, or throws (the error is thrown as it is) to refuse it.
   * Without it, Location is followed (10 hops at most) when it keeps the scheme, as qemu's
   * curl (FOLLOWLOCATION with http/https only) does.
   */
  redirect?: RedirectPolicy;
}

/** One redirect to decide: `hop` counts from 1; `location` is the header as sent. */
export type RedirectPolicy = (r: {
  from: URL;
  location: string | undefined;
  status: number;
  statusMessage: string;
  hop: number;
}) => URL;

const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);

const MiB = 1 << 20;
const MAX_REDIRECTS = 10;
const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);

/** An error of one request: `retry` when trying again may succeed. */
class RequestError extends Error {
  constructor(
    message: string,
    readonly retry: boolean,
  ) {
    super(message);
  }
}

interface Response {
  status: number;
  statusMessage: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

/** The open connection pool and request settings of one source. */
class HttpClient {
  private readonly agents = new Map<string, HttpAgent>();
  /** Range GETs go by the minimal client of http-wire.ts while it will do. */
  private wire: RangeWire | null;
  /** The caller's lookup, with its failures noted so that they are thrown as they are. */
  private readonly lookup: LookupFunction | undefined;
  private readonly hookErrors = new WeakSet<object>();
  constructor(
    private url: URL,
    private readonly opts: HttpSourceOptions,
  ) {
    const user = opts.lookup;
    this.lookup =
      user === undefined
        ? undefined
        : (host, o, cb) =>
            user(host, o, ((err: NodeJS.ErrnoException | null, ...rest: unknown[]) => {
              if (err !== null && typeof err === 'object') this.hookErrors.add(err);
              (cb as (...a: unknown[]) => void)(err, ...rest);
            }) as typeof cb);
    // Connections kept open between requests: the read-ahead's, and one per read of a caller
    // with several in flight (convert's -m workers, at most 16), whose large reads go around
    // the cache (cached-source.ts, `direct`): fewer, and each burst would connect again.
    this.wire = new RangeWire(Math.max(16, (opts.parallel ?? 4) + 1), this.lookup, () => ({
      rejectUnauthorized: opts.sslverify !== false,
      ...tlsCa(),
    }));
  }

  /** The keep-alive pool for `protocol` (a redirect may change it when `redirect` allows). */
  private agent(protocol: string): HttpAgent {
    let a = this.agents.get(protocol);
    if (a === undefined) {
      const maxSockets = (this.opts.parallel ?? 4) + 1;
      a =
        protocol === 'https:'
          ? new HttpsAgent({
              keepAlive: true,
              maxSockets,
              rejectUnauthorized: this.opts.sslverify !== false,
              ...tlsCa(),
            })
          : new HttpAgent({ keepAlive: true, maxSockets });
      this.agents.set(protocol, a);
    }
    return a;
  }

  get href(): string {
    return this.url.href;
  }

  get current(): URL {
    return this.url;
  }

  /** Whether `err` came from the caller's lookup (thrown as it is). */
  isHookError(err: unknown): boolean {
    return typeof err === 'object' && err !== null && this.hookErrors.has(err);
  }

  /**
   * The URL a redirect answer leads to, or null when it is not one to follow (then it is
   * the answer). Throws what the caller's `redirect` policy throws.
   */
  nextHop(
    res: { status: number; statusMessage: string; headers: IncomingMessage['headers'] },
    hop: number,
  ): URL | null {
    const loc = res.headers.location;
    const policy = this.opts.redirect;
    if (policy !== undefined) {
      if (!REDIRECT_STATUS.has(res.status)) return null;
      return policy({
        from: this.url,
        location: loc,
        status: res.status,
        statusMessage: res.statusMessage,
        hop: hop + 1,
      });
    }
    if (res.status >= 300 && res.status < 400 && loc !== undefined && hop < MAX_REDIRECTS) {
      const next = new URL(loc, this.url);
      if (next.protocol !== this.url.protocol) {
        throw new RequestError(
          `Protocol "${next.protocol.slice(0, -1)}" not supported or disabled in libcurl`,
          false,
        );
      }
      return next;
    }
    return null;
  }

  private headers(extra: Record<string, string>): Record<string, string> {
    const h: Record<string, string> = { 'user-agent': 'vdisk', ...extra };
    if (this.opts.cookie !== undefined) h.cookie = this.opts.cookie;
    if (this.opts.username !== undefined) {
      h.authorization = `Basic ${Buffer.from(`${this.opts.username}:${this.opts.password ?? ''}`).toString('base64')}`;
    }
    return h;
  }

  /**
   * One request, redirects followed (curl's FOLLOWLOCATION, which qemu sets); the body is read
   * only into `into` when given (a Range GET of known length), else dropped. Rejects with a
   * RequestError in curl's words.
   */
  async request(method: 'HEAD' | 'GET', extra: Record<string, string>, into?: Buffer): Promise<Response> {
    for (let hop = 0; ; hop++) {
      const res = await this.once(method, extra, into);
      const next = this.nextHop(res, hop);
      if (next !== null) {
        this.url = next;
        continue;
      }
      if (res.status >= 400) {
        throw new RequestError(
          `The requested URL returned error: ${res.status}`,
          RETRY_STATUS.has(res.status),
        );
      }
      return res;
    }
  }

  /**
   * A Range GET of `into.length` bytes from `start` by the wire client: true when the body is
   * in `into`, false when node:http should ask instead (see http-wire.ts). Rejects with a
   * RequestError in the words node:http's path would give.
   */
  async wireRange(start: number, into: Buffer): Promise<boolean> {
    const wire = this.wire;
    if (wire === null) return false;
    const headers = this.headers({});
    // Values node:http would refuse: leave them to it (and its error).
    if (Object.values(headers).some((v) => /[\r\n\0]/.test(v))) return false;
    const timeoutMs = Math.round((this.opts.timeout ?? 5) * 1000);
    try {
      const r = await wire.get(this.url, headers, start, into, timeoutMs);
      if (r.kind === 'done') return true;
      if (r.final && this.wire === wire) {
        this.wire = null;
        wire.close();
      }
      return false;
    } catch (err) {
      if (err instanceof WireError) throw new RequestError(err.message, err.retry);
      if (this.isHookError(err)) throw err;
      throw new RequestError(describe(err, this.url), isTransient(err));
    }
  }

  private once(method: 'HEAD' | 'GET', extra: Record<string, string>, into?: Buffer): Promise<Response> {
    const timeoutMs = Math.round((this.opts.timeout ?? 5) * 1000);
    const send = this.url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise<Response>((resolve, reject) => {
      let got = 0;
      let settled = false;
      const fail = (message: string, retry: boolean, hookError?: unknown) => {
        if (settled) return;
        settled = true;
        reject(hookError ?? new RequestError(message, retry));
        req.destroy();
      };
      const options = {
        method,
        agent: this.agent(this.url.protocol),
        headers: this.headers(extra),
        ...(this.lookup !== undefined ? { lookup: this.lookup } : {}),
      };
      const req = send(this.url, options, (res) => {
        const status = res.statusCode ?? 0;
        const done = () => {
          if (settled) return;
          settled = true;
          resolve({
            status,
            statusMessage: res.statusMessage ?? '',
            headers: res.headers,
            body: into === undefined ? Buffer.alloc(0) : into.subarray(0, got),
          });
        };
        // A Range GET answered otherwise than 206 (a whole object): its body is not read, the
        // caller refuses it at once rather than retrying the overflow.
        if (
          into === undefined ||
          status < 200 ||
          status >= 300 ||
          (extra.range !== undefined && status !== 206)
        ) {
          res.resume();
          res.on('end', done);
        } else {
          res.on('data', (chunk: Buffer) => {
            if (got + chunk.length > into.length) {
              fail('Transferred a partial file', true);
              return;
            }
            chunk.copy(into, got);
            got += chunk.length;
          });
          res.on('end', done);
        }
        res.on('error', (err) => fail(describe(err, this.url), true));
        res.on('aborted', () => fail('Transferred a partial file', true));
      });
      req.setTimeout(timeoutMs, () =>
        fail(`Operation timed out after ${timeoutMs} milliseconds with ${got} bytes received`, true),
      );
      req.on('error', (err) =>
        fail(describe(err, this.url), isTransient(err), this.isHookError(err) ? err : undefined),
      );
      req.end();
    });
  }

  /**
   * A GET of the whole object, redirects followed as `request` follows them; resolves with
   * the final answer's head and its body unread (any status: the caller judges it).
   * Rejects with node's error as it is (or the caller's lookup or redirect error); no retry.
   */
  async stream(idleMs: number, signal?: AbortSignal): Promise<IncomingMessage> {
    for (let hop = 0; ; hop++) {
      const url = this.url;
      const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
      const res = await new Promise<IncomingMessage>((resolve, reject) => {
        const req = send(
          url,
          {
            method: 'GET',
            agent: this.agent(url.protocol),
            headers: this.headers({ accept: '*/*' }),
            ...(this.lookup !== undefined ? { lookup: this.lookup } : {}),
            ...(signal !== undefined ? { signal } : {}),
          },
          resolve,
        );
        req.setTimeout(idleMs, () => req.destroy(new Error(`timed out fetching ${url.href}`)));
        req.on('error', reject);
        req.end();
      });
      res.setTimeout(idleMs, () => res.destroy(new Error(`timed out reading ${url.href}`)));
      let next: URL | null;
      try {
        next = this.nextHop(
          { status: res.statusCode ?? 0, statusMessage: res.statusMessage ?? '', headers: res.headers },
          hop,
        );
      } catch (err) {
        res.destroy();
        throw err;
      }
      if (next === null) return res;
      res.resume();
      this.url = next;
    }
  }

  /** A request tried again with backoff while its failure is transient. */
  async withRetries<T>(attempt: () => Promise<T>): Promise<T> {
    const tries = Math.max(1, this.opts.tries ?? 6);
    for (let i = 1; ; i++) {
      try {
        return await attempt();
      } catch (err) {
        if (!(err instanceof RequestError) || !err.retry || i >= tries) throw err;
        await new Promise((r) => setTimeout(r, Math.min(2000, 50 * 2 ** i)));
      }
    }
  }

  close(): void {
    this.wire?.close();
    for (const a of this.agents.values()) a.destroy();
  }
}

function isTransient(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return (
    code === 'ECONNRESET' ||
    code === 'EPIPE' ||
    code === 'ETIMEDOUT' ||
    code === 'ECONNABORTED' ||
    code === 'EAI_AGAIN' ||
    code === 'UND_ERR_SOCKET' ||
    // A keep-alive connection the server closed as the request went out.
    (err as Error).message === 'socket hang up'
  );
}

/** A connection error in curl's words (what qemu-img prints after "CURL: Error opening file: "). */
function describe(err: unknown, url: URL): string {
  const e = err as { code?: string; message?: string };
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = url.port !== '' ? url.port : url.protocol === 'https:' ? '443' : '80';
  switch (e.code) {
    case 'ECONNREFUSED':
      return `Failed to connect to ${host} port ${port} after 0 ms: Couldn't connect to server`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `Could not resolve host: ${host}`;
    case 'ECONNRESET':
      return 'Recv failure: Connection reset by peer';
    // Debian's qemu-img links libcurl-gnutls, whose words for any certificate that does not
    // verify are these (the CAfile/CRLfile part included).
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'CERT_HAS_EXPIRED':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
      return 'server certificate verification failed. CAfile: none CRLfile: none';
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return `SSL: no alternative certificate subject name matches target host name '${host}'`;
    default:
      return e.message ?? String(err);
  }
}

/** Open `url` as a read-only source; errors in qemu's words (`CURL: Error opening file: …`). */
export async function openHttpSource(
  url: string,
  opts: HttpSourceOptions = {},
  scheme: 'http' | 'https' = /^https:\/\//i.test(url) ? 'https' : 'http',
): Promise<ReadSource> {
  if (!url.toLowerCase().startsWith(`${scheme}://`)) {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `${scheme} curl driver cannot handle the URL '${url}' (does not start with '${scheme}://')`,
    );
  }
  const readahead = opts.readahead ?? 256 * 1024;
  if (readahead % 512 !== 0) {
    throw new VdiskError('INVALID_ARGUMENT', `HTTP_READAHEAD_SIZE ${readahead} is not a multiple of 512`);
  }
  if (opts.timeout !== undefined && (opts.timeout < 0 || opts.timeout > 0x7fffffff / 1000)) {
    throw new VdiskError('INVALID_ARGUMENT', 'timeout parameter is too large or negative');
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `CURL: Error opening file: URL using bad/illegal format or missing URL`,
    );
  }
  const client = new HttpClient(parsed, opts);
  const opening = (message: string) => new VdiskError('EIO', `CURL: Error opening file: ${message}`);
  let size: number;
  try {
    const head = await client.withRetries(() => client.request('HEAD', {}));
    const length = head.headers['content-length'];
    if (length === undefined || !/^\d+$/.test(length)) throw opening("Server didn't report file size.");
    size = Number(length);
    // curl_header_cb: an "Accept-Ranges: bytes" header, nothing else, says ranges work.
    const ranges = head.headers['accept-ranges'];
    if (ranges === undefined || !/^\s*bytes\s*$/i.test(ranges)) {
      throw opening("Server does not support 'range' (byte ranges).");
    }
  } catch (err) {
    client.close();
    if (err instanceof RequestError) throw opening(err.message);
    throw err;
  }

  const parallel = Math.max(1, opts.parallel ?? 4);
  // The window: qemu's readahead, but at least `parallel` requests of 4 MiB, so that several
  // are in flight while the consumer works.
  const aheadRequest = Math.max(4 * MiB, Math.ceil(readahead / parallel / MiB) * MiB);
  const readAhead = aheadRequest * parallel;
  const fetchRange = async (start: number, end: number, into?: Buffer): Promise<Buffer> => {
    const buf = into ?? Buffer.allocUnsafe(end - start);
    return client
      .withRetries(async () => {
        if (await client.wireRange(start, buf)) return buf;
        const res = await client.request('GET', { range: `bytes=${start}-${end - 1}` }, buf);
        const range = res.headers['content-range'];
        if (res.status !== 206 || range === undefined || !range.startsWith(`bytes ${start}-`)) {
          // A server that answers 200 (the whole object) or another range: qemu's curl would
          // copy wrong bytes; vdisk refuses.
          throw new RequestError("Server does not support 'range' (byte ranges).", false);
        }
        if (res.body.length !== end - start) throw new RequestError('Transferred a partial file', true);
        return res.body;
      })
      .catch((err: unknown) => {
        if (err instanceof RequestError) {
          throw new VdiskError('EIO', `CURL: Error reading ${client.href} at byte ${start}: ${err.message}`, {
            offset: start,
          });
        }
        throw err;
      });
  };
  const source = cachedSource(
    { size, fetch: fetchRange, close: async () => client.close() },
    { readAhead, aheadRequest, maxRequest: 16 * MiB, cacheBlocks: 8, direct: true },
  );
  return Object.assign(source, { allocationUnknown: true });
}

/**
 * A GET of the whole of `url` as a stream, for servers that do not serve byte ranges:
 * redirects followed as openHttpSource follows them (or as `opts.redirect` decides), the
 * caller's `lookup` used, `opts.timeout` seconds (default 5) without progress failing the
 * request. Resolves with the final answer, body unread, whatever its status (the caller
 * judges it); `url` is where the redirects led. Rejects with node's error as it is (no
 * retry: a stream cannot resume). The connection is closed when the body is.
 */
export async function openHttpStream(
  url: string,
  opts: HttpSourceOptions & { signal?: AbortSignal } = {},
): Promise<{ res: IncomingMessage; url: URL }> {
  const client = new HttpClient(new URL(url), opts);
  try {
    const res = await client.stream(Math.round((opts.timeout ?? 5) * 1000), opts.signal);
    res.once('close', () => client.close());
    return { res, url: client.current };
  } catch (err) {
    client.close();
    throw err;
  }
}

/**
 * The curl options of an image named by options (image-opts.ts), checked as curl_open checks
 * them: sizes with suffixes, booleans as on/off, secrets looked up by id in `secrets`.
 */
export function httpOptions(
  o: Readonly<Record<string, string>>,
  secrets?: Secrets | undefined,
): HttpSourceOptions {
  const out: HttpSourceOptions = {};
  if (o.readahead !== undefined) {
    const v = parseSize(o.readahead);
    if (v === null) {
      throw new VdiskError(
        'INVALID_ARGUMENT',
        `Parameter 'readahead' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.`,
      );
    }
    out.readahead = v;
  }
  if (o.timeout !== undefined) {
    if (!/^\d+$/.test(o.timeout))
      throw new VdiskError('INVALID_ARGUMENT', "Parameter 'timeout' expects a number");
    out.timeout = Number(o.timeout);
  }
  if (o.sslverify !== undefined) out.sslverify = parseBoolOption('sslverify', o.sslverify);
  if (o.cookie !== undefined && o['cookie-secret'] !== undefined) {
    throw new VdiskError('INVALID_ARGUMENT', 'curl driver cannot handle both cookie and cookie secret');
  }
  const secret = (id: string) => new TextDecoder().decode(lookupSecretUtf8(secrets, id));
  if (o['cookie-secret'] !== undefined) out.cookie = secret(o['cookie-secret']);
  else if (o.cookie !== undefined) out.cookie = o.cookie;
  if (o.username !== undefined) out.username = o.username;
  if (o['password-secret'] !== undefined) out.password = secret(o['password-secret']);
  // proxy-username/proxy-password-secret: vdisk connects directly (no proxy support yet).
  if (o['proxy-password-secret'] !== undefined) secret(o['proxy-password-secret']);
  return out;
}
