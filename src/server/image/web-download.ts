/**
 * web-download: the server fetches an image from a URL (Glance's _WebDownload,
 * glance/async_/flows/_internal_plugins/web_download.py) after the URL passes Glance's
 * `[import_filtering_opts]` (glance/common/utils.py validate_import_uri):
 *
 * - scheme: in `allowed_schemes` (default http, https), or, when that list is empty, not in
 *   `disallowed_schemes`;
 * - host: in `allowed_hosts` when that list is set, else not in `disallowed_hosts`;
 * - port (only when the URL names one, as Glance): in `allowed_ports` (default 80, 443),
 *   or, when that list is empty, not in `disallowed_ports`.
 *
 * Two things Glance 25 does not do, because a registry that fetches URLs for its users is
 * an SSRF tool otherwise:
 * - every address the host resolves to (or the literal address) must be a public one:
 *   loopback, private (RFC 1918, ULA), link-local, CGNAT, multicast and unspecified
 *   addresses are refused unless the host is named in `allowed_hosts` (so an operator can
 *   allow a mirror on the local network, and tests can allow 127.0.0.1). The connection is
 *   made to the address that was checked (no second DNS lookup an attacker could answer
 *   differently).
 * - redirects are followed (10 at most, as urllib) only when the new URL passes the same
 *   checks; a redirect to a disallowed URL fails the import.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import { Readable } from 'node:stream';
import type { ReadSource } from '../../core/host-file.js';
import { type HttpSourceOptions, openHttpSource, openHttpStream } from '../../protocols/http.js';

export interface ImportFilter {
  allowedSchemes: string[];
  disallowedSchemes: string[];
  allowedHosts: string[];
  disallowedHosts: string[];
  allowedPorts: number[];
  disallowedPorts: number[];
}

export class ImportUriError extends Error {}

const MAX_REDIRECTS = 10;
const IDLE_TIMEOUT_MS = 60_000;

/** The host as urllib.parse gives `hostname`: lower case, IPv6 without brackets. */
function hostnameOf(u: URL): string {
  return u.hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
}

/** Glance's validate_import_uri (allowed lists win over disallowed ones). */
export function validateImportUri(uri: string, f: ImportFilter): boolean {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    return false;
  }
  const scheme = u.protocol.replace(/:$/, '').toLowerCase();
  const host = hostnameOf(u);
  const port = u.port === '' ? null : Number(u.port);
  const blSchemes = f.allowedSchemes.length > 0 ? [] : f.disallowedSchemes;
  const blHosts = f.allowedHosts.length > 0 ? [] : f.disallowedHosts;
  const blPorts = f.allowedPorts.length > 0 ? [] : f.disallowedPorts;
  if (scheme === '' || (f.allowedSchemes.length > 0 && !f.allowedSchemes.includes(scheme))) return false;
  if (blSchemes.includes(scheme)) return false;
  if (host === '' || (f.allowedHosts.length > 0 && !f.allowedHosts.includes(host))) return false;
  if (blHosts.includes(host)) return false;
  if (
    port !== null &&
    ((f.allowedPorts.length > 0 && !f.allowedPorts.includes(port)) || blPorts.includes(port))
  )
    return false;
  // What we can fetch at all.
  return scheme === 'http' || scheme === 'https';
}

const internal = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const)
  internal.addSubnet(net, bits, 'ipv4');
for (const [net, bits] of [
  ['::', 128],
  ['::1', 128],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
  ['64:ff9b::', 96],
  ['2001:db8::', 32],
] as const)
  internal.addSubnet(net, bits, 'ipv6');

/** Loopback, private, link-local, multicast, unspecified… (IPv4-mapped IPv6 as its IPv4). */
export function isInternalAddress(addr: string): boolean {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(addr);
  if (mapped !== null) return internal.check(mapped[1]!, 'ipv4');
  const family = isIP(addr);
  if (family === 4) return internal.check(addr, 'ipv4');
  if (family === 6) return internal.check(addr, 'ipv6');
  return true;
}

/** Resolve `host` and check every address; the first one is where we connect. */
async function resolveChecked(host: string, f: ImportFilter): Promise<{ address: string; family: number }> {
  const explicit = f.allowedHosts.includes(host);
  const addrs =
    isIP(host) !== 0 ? [{ address: host, family: isIP(host) }] : await dnsLookup(host, { all: true });
  if (addrs.length === 0) throw new ImportUriError(`cannot resolve ${host}`);
  if (!explicit)
    for (const a of addrs)
      if (isInternalAddress(a.address))
        throw new ImportUriError(
          `URI for web-download does not pass filtering: ${host} resolves to the internal address ${a.address}`,
        );
  return addrs[0]!;
}

function describe(status: number, message: string | undefined): string {
  return `HTTP Error ${status}: ${message ?? ''}`.trim();
}

/** A literal address in `url` must be a public one unless allowed (names: see `hooks`). */
function checkLiteral(url: URL, f: ImportFilter): void {
  const host = hostnameOf(url);
  if (isIP(host) !== 0 && !f.allowedHosts.includes(host) && isInternalAddress(host))
    throw new ImportUriError(
      `URI for web-download does not pass filtering: ${host} resolves to the internal address ${host}`,
    );
}

/**
 * The filter as the engine's HTTP client takes it: each name resolved and checked on every
 * connection (the connection goes to the address checked), each redirect checked.
 */
function hooks(f: ImportFilter): Pick<HttpSourceOptions, 'lookup' | 'redirect'> {
  const lookup: LookupFunction = (host, opts, cb) => {
    resolveChecked(host.toLowerCase(), f).then(
      (target) => {
        if ((opts as { all?: boolean }).all)
          (cb as unknown as (e: null, a: { address: string; family: number }[]) => void)(null, [target]);
        else cb(null, target.address, target.family);
      },
      (err: NodeJS.ErrnoException) => cb(err, '', 0),
    );
  };
  return {
    lookup,
    redirect: ({ from, location, status, statusMessage, hop }) => {
      if (location === undefined) throw new ImportUriError(describe(status, statusMessage));
      if (hop > MAX_REDIRECTS)
        throw new ImportUriError(
          `HTTP Error ${status}: The HTTP server returned a redirect error that would lead to an infinite loop.`,
        );
      const next = new URL(location, from);
      if (!validateImportUri(next.href, f))
        throw new ImportUriError(`Redirect to a disallowed URI: ${next.href}`);
      checkLiteral(next, f);
      return next;
    },
  };
}

/** The final 2xx answer to a GET of `uri`, and where the redirects led. */
async function fetchFinal(
  uri: string,
  f: ImportFilter,
  signal?: AbortSignal,
): Promise<{ res: IncomingMessage; url: URL }> {
  const url = new URL(uri);
  if (!validateImportUri(url.href, f))
    throw new ImportUriError(`URI for web-download does not pass filtering: ${url.href}`);
  checkLiteral(url, f);
  const got = await openHttpStream(url.href, {
    ...hooks(f),
    timeout: IDLE_TIMEOUT_MS / 1000,
    ...(signal !== undefined ? { signal } : {}),
  });
  const status = got.res.statusCode ?? 0;
  if (status < 200 || status > 299) {
    got.res.resume();
    throw new ImportUriError(describe(status, got.res.statusMessage));
  }
  return got;
}

/**
 * GET `uri` (already validated by the caller), following allowed redirects. Resolves with
 * the final 2xx response, unread; the caller consumes or destroys it.
 */
export async function fetchImage(
  uri: string,
  f: ImportFilter,
  signal?: AbortSignal,
): Promise<IncomingMessage> {
  return (await fetchFinal(uri, f, signal)).res;
}

function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error('The operation was aborted');
}

/**
 * `p`, or a rejection as soon as `signal` aborts (the HEAD and first range of a slow server
 * would otherwise hold a shutdown until their timeout); what `p` gives after that goes to
 * `late` (to close it).
 */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined, late: (v: T) => void): Promise<T> {
  if (signal === undefined) return p;
  if (signal.aborted) {
    p.then(late, () => {});
    return Promise.reject(abortError(signal));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      p.then(late, () => {});
      reject(abortError(signal));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/** The image's bytes in order, and its length as the server declared it. */
export type WebImage = Readable & { headers: IncomingHttpHeaders };

const CHUNK = 1 << 20;

/**
 * The image at `uri` as a stream, by byte ranges when the server serves them (then a
 * dropped connection or a 5xx part way is retried from where it stopped, see
 * protocols/http.ts), else by one GET as Glance reads it. The GET that decides is the one
 * fetchImage makes (the same checks, errors and messages); when its answer has a length and
 * "Accept-Ranges: bytes", it is dropped and the image read through the engine's range
 * source from the URL the redirects led to, with the same filter. Should that source not
 * open, the image is fetched again by one GET.
 */
export async function openWebImage(uri: string, f: ImportFilter, signal?: AbortSignal): Promise<WebImage> {
  const first = await fetchFinal(uri, f, signal);
  const length = first.res.headers['content-length'];
  const ranges = first.res.headers['accept-ranges'];
  if (length === undefined || !/^\d+$/.test(length) || ranges === undefined || !/^\s*bytes\s*$/i.test(ranges))
    return first.res;
  first.res.destroy();
  let source: ReadSource;
  try {
    source = await untilAborted(
      openHttpSource(first.url.href, {
        ...hooks(f),
        timeout: IDLE_TIMEOUT_MS / 1000,
        readahead: 16 << 20,
        parallel: 2,
      }),
      signal,
      (late) => void late.close(),
    );
  } catch (err) {
    if (err instanceof ImportUriError || signal?.aborted === true) throw err;
    return fetchImage(uri, f, signal);
  }
  // The first range read before the import relies on ranges: a server that says
  // "Accept-Ranges: bytes" but answers 200 to a Range GET is read by one GET, as Glance would.
  // An abort meanwhile closes the source, which ends the read.
  const onAbort = () => void source.close();
  signal?.addEventListener('abort', onAbort, { once: true });
  let firstChunk: Buffer | null = null;
  try {
    if (source.size === Number(length)) {
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, source.size));
      const n = await source.read(buf, 0);
      if (n === buf.length) firstChunk = buf;
    }
  } catch (err) {
    if (err instanceof ImportUriError) {
      await source.close();
      throw err;
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  if (signal?.aborted === true) {
    await source.close();
    throw abortError(signal);
  }
  if (firstChunk === null) {
    await source.close();
    return fetchImage(uri, f, signal);
  }
  async function* read(src: ReadSource, first: Buffer): AsyncGenerator<Buffer> {
    try {
      if (first.length > 0) yield first;
      for (let at = first.length; at < src.size; ) {
        const buf = Buffer.allocUnsafe(Math.min(CHUNK, src.size - at));
        const n = await src.read(buf, at);
        if (n <= 0) throw new Error(`The server ended the image at byte ${at} of ${src.size}`);
        at += n;
        yield n === buf.length ? buf : buf.subarray(0, n);
      }
    } finally {
      await src.close();
    }
  }
  const body = Readable.from(read(source, firstChunk), { objectMode: false, highWaterMark: CHUNK });
  // Destroyed early (a failed or aborted import): close the connections now, which also
  // ends a read in flight, rather than after it.
  body.once('close', () => void source.close());
  return Object.assign(body, { headers: { 'content-length': String(source.size) } });
}
