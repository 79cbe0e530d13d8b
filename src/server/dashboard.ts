/**
 * The web dashboard's files (built from web/ into dist/web/ by `npm run build`), served under
 * /dashboard/. Loaded on the first request for it (server.ts imports this module lazily), so
 * `vdisk serve` start-up and the CLI pay nothing for it.
 *
 * Only flat file names of the build directory are served (no other path can be named: no
 * traversal, no dot files); index.html is `no-cache` with an ETag, content-hashed assets are
 * `immutable`. Every answer carries a strict Content-Security-Policy (scripts and styles from
 * this origin only, no inline script, API calls to this origin only), nosniff and
 * no-referrer. Text files are gzipped when the client accepts it (kept in memory: a few KiB).
 */
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { HttpError } from './http.js';

export const DASHBOARD_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const SECURITY_HEADERS: Record<string, string> = {
  'Content-Security-Policy': DASHBOARD_CSP,
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Cross-Origin-Opener-Policy': 'same-origin',
};

const TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
  map: 'application/json; charset=utf-8',
  json: 'application/json; charset=utf-8',
  svg: 'image/svg+xml',
  png: 'image/png',
  ico: 'image/x-icon',
  woff2: 'font/woff2',
  txt: 'text/plain; charset=utf-8',
};
const COMPRESSIBLE = new Set(['html', 'js', 'css', 'map', 'json', 'svg', 'txt']);

/** `name-HASH.ext` as esbuild writes them (entryNames '[name]-[hash]'). */
const HASHED = /-[A-Z0-9]{8}\.[a-z0-9]+$/;
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)+$/;

/** The build directory: dist/web next to dist/server (or, running from src/, the repository's dist/web). */
let found: string | undefined;
export function defaultDashboardDir(): string | undefined {
  if (found !== undefined) return found;
  const candidates = [new URL('../web/', import.meta.url), new URL('../../dist/web/', import.meta.url)].map(
    (u) => fileURLToPath(u),
  );
  found = candidates.find((d) => existsSync(join(d, 'index.html')));
  return found;
}

interface Cached {
  mtimeMs: number;
  size: number;
  body: Buffer;
  gzip: Buffer | null;
  etag: string;
}
const cache = new Map<string, Cached>();

async function load(file: string, ext: string): Promise<Cached | undefined> {
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(file);
  } catch {
    return undefined;
  }
  if (!st.isFile()) return undefined;
  const hit = cache.get(file);
  if (hit !== undefined && hit.mtimeMs === st.mtimeMs && hit.size === st.size) return hit;
  const body = await readFile(file);
  const entry: Cached = {
    mtimeMs: st.mtimeMs,
    size: st.size,
    body,
    gzip: COMPRESSIBLE.has(ext) && body.length > 512 ? gzipSync(body, { level: 9 }) : null,
    etag: `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`,
  };
  cache.set(file, entry);
  return entry;
}

/** GET/HEAD of /dashboard and /dashboard/…; throws HttpError (404, 405) otherwise. */
export async function serveDashboard(
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  dir: string | undefined = defaultDashboardDir(),
): Promise<void> {
  const method = req.method ?? 'GET';
  if (method !== 'GET' && method !== 'HEAD')
    throw new HttpError(405, 'The method is not allowed for the requested URL.', { Allow: 'GET, HEAD' });
  if (path === '/dashboard') {
    res.writeHead(301, { Location: '/dashboard/', 'Content-Length': '0', ...SECURITY_HEADERS });
    res.end();
    return;
  }
  const rest = path.slice('/dashboard/'.length);
  let name: string;
  try {
    name = rest === '' ? 'index.html' : decodeURIComponent(rest);
  } catch {
    throw new HttpError(404, 'The resource could not be found.');
  }
  if (!SAFE_NAME.test(name) || name.includes('..'))
    throw new HttpError(404, 'The resource could not be found.');
  if (dir === undefined)
    throw new HttpError(404, 'The dashboard is not built: run `npm run build` (it writes dist/web/).');
  const ext = name.slice(name.lastIndexOf('.') + 1).toLowerCase();
  const file = await load(join(dir, name), ext);
  if (file === undefined) throw new HttpError(404, 'The resource could not be found.');

  const headers: Record<string, string> = {
    ...SECURITY_HEADERS,
    'Content-Type': TYPES[ext] ?? 'application/octet-stream',
    'Cache-Control': HASHED.test(name) ? 'public, max-age=31536000, immutable' : 'no-cache',
    ETag: file.etag,
  };
  if (file.gzip !== null) headers['Vary'] = 'Accept-Encoding';
  if (req.headers['if-none-match'] === file.etag) {
    res.writeHead(304, headers);
    res.end();
    return;
  }
  const gzip = file.gzip !== null && /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
  const body = gzip ? file.gzip! : file.body;
  if (gzip) headers['Content-Encoding'] = 'gzip';
  headers['Content-Length'] = String(body.length);
  res.writeHead(200, headers);
  res.end(method === 'HEAD' ? undefined : body);
}
