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
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { BlockList, isIP, type LookupFunction } from 'node:net';

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

/**
 * GET `uri` (already validated by the caller), following allowed redirects. Resolves with
 * the final 2xx response, unread; the caller consumes or destroys it.
 */
export async function fetchImage(
  uri: string,
  f: ImportFilter,
  signal?: AbortSignal,
): Promise<IncomingMessage> {
  let url = new URL(uri);
  for (let hop = 0; ; hop++) {
    if (!validateImportUri(url.href, f))
      throw new ImportUriError(`URI for web-download does not pass filtering: ${url.href}`);
    const host = hostnameOf(url);
    const target = await resolveChecked(host, f);
    const lookup: LookupFunction = (_h, opts, cb) => {
      if ((opts as { all?: boolean }).all)
        (cb as unknown as (e: null, a: { address: string; family: number }[]) => void)(null, [target]);
      else cb(null, target.address, target.family);
    };
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(
        url,
        {
          method: 'GET',
          lookup,
          headers: { 'User-Agent': 'vdisk-web-download', Accept: '*/*' },
          ...(signal !== undefined ? { signal } : {}),
        },
        resolve,
      );
      req.setTimeout(IDLE_TIMEOUT_MS, () =>
        req.destroy(new ImportUriError(`timed out fetching ${url.href}`)),
      );
      req.on('error', reject);
      req.end();
    });
    res.setTimeout(IDLE_TIMEOUT_MS, () => res.destroy(new ImportUriError(`timed out reading ${url.href}`)));
    const status = res.statusCode ?? 0;
    if ([301, 302, 303, 307, 308].includes(status)) {
      res.resume();
      const loc = res.headers.location;
      if (loc === undefined) throw new ImportUriError(describe(status, res.statusMessage));
      if (hop + 1 > MAX_REDIRECTS)
        throw new ImportUriError(
          `HTTP Error ${status}: The HTTP server returned a redirect error that would lead to an infinite loop.`,
        );
      const next = new URL(loc, url);
      if (!validateImportUri(next.href, f))
        throw new ImportUriError(`Redirect to a disallowed URI: ${next.href}`);
      url = next;
      continue;
    }
    if (status < 200 || status > 299) {
      res.resume();
      throw new ImportUriError(describe(status, res.statusMessage));
    }
    return res;
  }
}
