/**
 * NBD image names (qemu 7.2's block/nbd.c): what an `nbd…:` name, a json:{…} name or the options
 * of --image-opts point at, and the canonical name qemu then gives the image. Apart from
 * protocols/nbd.ts (the client) so that opening a local file does not load the NBD client and
 * node:net with it (start-up, docs/benchmarks.md).
 */
import { VdiskError } from '../core/errors.js';
import type { Listen } from '../nbd/server.js';

export const NBD_DEFAULT_PORT = 10809;

export interface NbdTarget {
  server: Listen;
  /** undefined: the name gave none (the server's default export, ""). */
  exportName: string | undefined;
}

const invalidUrl = () => new VdiskError('INVALID_ARGUMENT', 'No valid URL specified');

/** Parse an `nbd…:` name, or the flattened options of a json:/--image-opts name. */
export function parseNbdName(name: string): NbdTarget {
  if (name.startsWith('json:')) return nbdFromOptions(flattenJson(name));
  if (name.includes('://')) return parseUri(name);
  if (/^nbd:/i.test(name)) return parseLegacy(name.slice(4));
  throw invalidUrl();
}

function parseUri(name: string): NbdTarget {
  const scheme = name.slice(0, name.indexOf('://')).toLowerCase();
  const unix = scheme === 'nbd+unix';
  if (scheme !== 'nbd' && scheme !== 'nbd+tcp' && !unix) {
    throw new VdiskError('INVALID_ARGUMENT', `Unknown protocol '${scheme}'`);
  }
  let url: URL;
  try {
    url = new URL(name);
  } catch {
    throw invalidUrl();
  }
  const path = decode(url.pathname);
  const exportName = path.replace(/^\//, '') || undefined;
  const query = [...url.searchParams];
  if (unix) {
    if (url.host !== '' || query.length !== 1 || query[0]![0] !== 'socket') throw invalidUrl();
    return { server: { path: query[0]![1] }, exportName };
  }
  if (query.length > 0 || url.hostname === '') throw invalidUrl();
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  return { server: { host, port: url.port === '' ? NBD_DEFAULT_PORT : Number(url.port) }, exportName };
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw invalidUrl();
  }
}

/** `host:port[:exportname=NAME]` or `unix:PATH[:exportname=NAME]` (after `nbd:`). */
function parseLegacy(spec: string): NbdTarget {
  const at = spec.indexOf(':exportname=');
  const hostSpec = at < 0 ? spec : spec.slice(0, at);
  const exportName = at < 0 ? undefined : spec.slice(at + ':exportname='.length);
  if (hostSpec.startsWith('unix:')) return { server: { path: hostSpec.slice(5) }, exportName };
  const m = /^(?:\[([^\]]*)\]|([^:]*)):(\d+)$/.exec(hostSpec);
  if (m === null || Number(m[3]) > 65535) {
    throw new VdiskError('INVALID_ARGUMENT', `error parsing address '${hostSpec}'`);
  }
  return { server: { host: m[1] ?? m[2] ?? '', port: Number(m[3]) }, exportName };
}

/** json:{…} flattened to dotted keys, as qemu's qdict_flatten does. */
function flattenJson(name: string): Map<string, string> {
  let v: unknown;
  try {
    v = JSON.parse(name.slice(5));
  } catch {
    throw new VdiskError('INVALID_ARGUMENT', `Could not parse the JSON options`);
  }
  const out = new Map<string, string>();
  const walk = (o: unknown, prefix: string) => {
    if (typeof o === 'object' && o !== null && !Array.isArray(o)) {
      for (const [k, x] of Object.entries(o)) walk(x, prefix === '' ? k : `${prefix}.${k}`);
    } else out.set(prefix, String(o));
  };
  walk(v, '');
  return out;
}

/**
 * The nbd target of flattened options, keys starting `file.` (json:) or without it. Names an
 * option vdisk cannot honour in qemu's words: TLS (`tls-creds`) needs a --object vdisk has not.
 */
export function nbdFromOptions(all: ReadonlyMap<string, string>): NbdTarget {
  const o = new Map<string, string>();
  for (const [k, v] of all) o.set(k.startsWith('file.') ? k.slice(5) : k, v);
  const uri = o.get('filename');
  if (uri !== undefined) return parseNbdName(uri);
  const tls = o.get('tls-creds');
  if (tls !== undefined) throw new VdiskError('INVALID_ARGUMENT', `No TLS credentials with id '${tls}'`);
  const exportName = o.get('export');
  const type = o.get('server.type') ?? (o.has('path') ? 'unix' : o.has('host') ? 'inet' : undefined);
  if (type === 'unix') {
    const path = o.get('server.path') ?? o.get('path');
    if (path === undefined) throw new VdiskError('INVALID_ARGUMENT', "Parameter 'path' is missing");
    return { server: { path }, exportName };
  }
  if (type === 'inet') {
    const host = o.get('server.host') ?? o.get('host');
    if (host === undefined) throw new VdiskError('INVALID_ARGUMENT', "Parameter 'host' is missing");
    const port = Number(o.get('server.port') ?? o.get('port') ?? NBD_DEFAULT_PORT);
    if (!Number.isInteger(port) || port < 0 || port > 65535)
      throw new VdiskError('INVALID_ARGUMENT', `error parsing address '${host}:${port}'`);
    return { server: { host, port }, exportName };
  }
  if (type === undefined) throw new VdiskError('INVALID_ARGUMENT', "Parameter 'server.type' is missing");
  throw new VdiskError('INVALID_ARGUMENT', `Parameter 'server.type' does not accept value '${type}'`);
}

/** qemu's name for the export (nbd_refresh_filename). */
export function nbdCanonicalName(t: NbdTarget): string {
  if ('path' in t.server) {
    return t.exportName !== undefined
      ? `nbd+unix:///${t.exportName}?socket=${t.server.path}`
      : `nbd+unix://?socket=${t.server.path}`;
  }
  const base = `nbd://${t.server.host}:${t.server.port}`;
  return t.exportName !== undefined ? `${base}/${t.exportName}` : base;
}
