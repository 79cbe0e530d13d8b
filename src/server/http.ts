/**
 * The HTTP layer: node:http directly (no framework: streaming request bodies straight to the
 * store is the hot path), a small router, one HttpError mapped to a response in one place.
 * Error bodies follow the two services we imitate: Keystone answers JSON
 * `{"error": {code, message, title}}`, Glance answers webob's plain-text page.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type ErrorCode, fromHostError, isVdiskError, strerror } from '../core/errors.js';

export class HttpError extends Error {
  readonly status: number;
  readonly headers: Record<string, string>;
  constructor(status: number, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.status = status;
    this.headers = headers;
  }
}

/**
 * Engine errors as HTTP answers: one table over every code (the compiler checks it is complete).
 * Storage failures are 503 and a full store 413, as Glance answers them (StorageFull,
 * StorageWriteDenied); a stored image the engine cannot read is a conflict with the request
 * (409), not a server error.
 */
export const ERROR_STATUS: Readonly<Record<ErrorCode, number>> = {
  ENOENT: 404,
  EACCES: 503,
  EIO: 503,
  ENOSPC: 413,
  INVALID_ARGUMENT: 400,
  UNKNOWN_FORMAT: 400,
  FORMAT_MISMATCH: 415,
  INVALID_IMAGE: 409,
  CORRUPT_IMAGE: 409,
  UNSUPPORTED: 400,
  OUT_OF_RANGE: 416,
  READ_ONLY: 500,
  LOCKED: 409,
  NOT_ALLOWED: 403,
  CHAIN_TOO_DEEP: 409,
  TOO_LARGE: 413,
  NOT_FOUND: 404,
  INTERNAL: 500,
};

/** Glance's words before the detail, where Glance has some. */
const ERROR_PREFIX: Partial<Record<ErrorCode, string>> = {
  ENOSPC: 'Image storage media is full: ',
  EACCES: 'Insufficient permissions on image storage media: ',
};

/**
 * An error thrown below the HTTP layer as the answer it deserves: a VdiskError or a host error
 * (ENOSPC from a store's write…) through ERROR_STATUS, null for anything else (a bug: 500).
 */
export function httpErrorOf(err: unknown): HttpError | null {
  if (err instanceof HttpError) return err;
  const hostCode = (err as { code?: unknown } | null)?.code;
  if (!isVdiskError(err) && typeof hostCode !== 'string') return null;
  const v = isVdiskError(err) ? err : fromHostError(err, { message: strerror(err) });
  if (!isVdiskError(err) && v.code === 'EIO' && !/^E[A-Z]+$/.test(hostCode as string)) return null;
  return new HttpError(ERROR_STATUS[v.code], `${ERROR_PREFIX[v.code] ?? ''}${v.message}`);
}

export const TITLES: Record<number, string> = {
  200: 'OK',
  201: 'Created',
  204: 'No Content',
  206: 'Partial Content',
  300: 'Multiple Choices',
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  410: 'Gone',
  411: 'Length Required',
  413: 'Request Entity Too Large',
  415: 'Unsupported Media Type',
  416: 'Requested Range Not Satisfiable',
  422: 'Unprocessable Entity',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

export interface Ctx {
  req: IncomingMessage;
  res: ServerResponse;
  method: string;
  path: string;
  query: URLSearchParams;
  params: Record<string, string>;
}

export type Handler = (ctx: Ctx) => Promise<void>;

interface Route {
  method: string;
  /** As registered: `/v2/images/:id/file` (the metrics' route label). */
  pattern: string;
  parts: string[];
  handler: Handler;
}

export interface RouteMatch {
  handler: Handler;
  params: Record<string, string>;
  route: string;
}

/** Routes like `/v2/images/:id/file`; exact segment count, `:name` captures one segment. */
export class Router {
  private routes: Route[] = [];

  on(method: string, pattern: string, handler: Handler): this {
    this.routes.push({ method, pattern, parts: pattern.split('/').filter((p) => p !== ''), handler });
    return this;
  }

  /** The handler for a request, or an HttpError (404 when no path matches, 405 + Allow on method). */
  match(method: string, path: string): RouteMatch {
    const segs = path.split('/').filter((p) => p !== '');
    // `/v2/images/` names the image whose id is empty (Glance answers 404 for it, not the
    // list): a trailing slash is first tried as an empty last segment, then ignored.
    if (path.length > 1 && path.endsWith('/') && !path.endsWith('//')) {
      try {
        return this.find(method, [...segs, '']);
      } catch (err) {
        if (!(err instanceof HttpError) || (err.status !== 404 && err.status !== 405)) throw err;
      }
    }
    return this.find(method, segs);
  }

  private find(method: string, segs: string[]): RouteMatch {
    const allowed: string[] = [];
    for (const r of this.routes) {
      if (r.parts.length !== segs.length) continue;
      const params: Record<string, string> = {};
      let ok = true;
      for (let i = 0; i < segs.length; i++) {
        const p = r.parts[i]!;
        const s = segs[i]!;
        if (p.startsWith(':')) {
          try {
            params[p.slice(1)] = decodeURIComponent(s);
          } catch {
            ok = false;
            break;
          }
        } else if (p !== s) {
          ok = false;
          break;
        }
      }
      if (!ok) continue;
      if (!allowed.includes(r.method)) allowed.push(r.method);
      if (r.method === method || (method === 'HEAD' && r.method === 'GET'))
        return { handler: r.handler, params, route: r.pattern };
    }
    if (allowed.length > 0)
      throw new HttpError(405, 'The method is not allowed for the requested URL.', {
        Allow: allowed.join(', '),
      });
    throw new HttpError(404, 'The resource could not be found.');
  }
}

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': String(Buffer.byteLength(text)),
    ...headers,
  });
  res.end(res.req.method === 'HEAD' ? undefined : text);
}

export function sendEmpty(res: ServerResponse, status: number, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'Content-Length': '0', ...headers });
  res.end();
}

/** webob's strip_tags: what its plain-text pages make of a message (newlines, tags). */
export function stripTags(s: string): string {
  return s
    .replaceAll('\n', ' ')
    .replaceAll('\r', '')
    .replace(/<br[\s\S]*?>/gi, '\n')
    .replace(/<!--|-->/g, '')
    .replace(/<[\s\S]*?>/g, '');
}

/**
 * webob's plain-text error page, which Glance sends and the clients print: the message
 * through webob's body template and strip_tags (a 405 with Allow has its own template).
 */
export function sendGlanceError(res: ServerResponse, err: HttpError): void {
  const title = TITLES[err.status] ?? 'Error';
  const body =
    err.status === 405 && err.headers['Allow'] !== undefined
      ? `${err.message} <br /><br />\n`
      : `${err.message}<br /><br />\n\n\n`;
  const text = `${err.status} ${title}\n\n${stripTags(body)}`;
  res.writeHead(err.status, {
    'Content-Type': 'text/plain; charset=UTF-8',
    'Content-Length': String(Buffer.byteLength(text)),
    ...err.headers,
  });
  res.end(res.req.method === 'HEAD' ? undefined : text);
}

/** Keystone's JSON error body. */
export function sendKeystoneError(res: ServerResponse, err: HttpError): void {
  sendJson(
    res,
    err.status,
    { error: { code: err.status, message: err.message, title: TITLES[err.status] ?? 'Error' } },
    err.headers,
  );
}

export const MAX_JSON_BODY = 1 << 20;

/** Read a small body (JSON documents); refuses more than `limit` bytes. */
export async function readBody(req: IncomingMessage, limit = MAX_JSON_BODY): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req) {
    const b = chunk as Buffer;
    total += b.length;
    if (total > limit) throw new HttpError(413, 'Request body too large.');
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}

export async function readJson(req: IncomingMessage): Promise<unknown> {
  const body = await readBody(req);
  if (body.length === 0) throw new HttpError(400, 'Body expected in request.');
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new HttpError(400, 'Malformed JSON in request body.');
  }
}

/** The media type of a request, without parameters, lower-cased. */
export function mediaType(req: IncomingMessage): string {
  return (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
}

export const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);
