/**
 * What the `vdisk image` commands share (src/cli/cmd/image.ts, image-layers.ts): the
 * openstack-style argument parser, HTTP with openstacksdk's error wording, the Session (a
 * token and the image endpoint), image lists over every page, and transfers: uploads, and
 * downloads that go through `FILE.part` so that a failed one leaves nothing under FILE.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { VdiskError } from '../../core/errors.js';
import { tlsCa } from '../../protocols/tls-ca.js';
import type { Io } from '../io.js';
import { Progress } from '../progress.js';

export type Env = Record<string, string | undefined>;
export type Json = Record<string, unknown>;

// ---------------------------------------------------------------------------------------
// Arguments: openstack-style (--name value, --name=value, repeatable options, flags).

export interface Parsed {
  values: Map<string, string[]>;
  flags: Set<string>;
  args: string[];
}

const VALUE_OPTS = new Set([
  'file',
  'disk-format',
  'container-format',
  'min-disk',
  'min-ram',
  'property',
  'tag',
  'id',
  'project',
  'project-domain',
  'name',
  'status',
  'limit',
  'marker',
  'sort',
  'sort-column',
  'sort-ascending',
  'member-status',
  'visibility',
  'format',
  'column',
  'subformat',
  'backing-image',
  'os-auth-url',
  'os-username',
  'os-password',
  'os-project-name',
  'os-project-id',
  'os-user-domain-name',
  'os-project-domain-name',
  'os-token',
  'os-image-url',
  'os-endpoint',
]);
const FLAG_OPTS = new Set([
  'long',
  'public',
  'private',
  'community',
  'shared',
  'protected',
  'unprotected',
  'progress',
  'human-readable',
  'activate',
  'deactivate',
  'accept',
  'reject',
  'pending',
  'hidden',
  'unhidden',
  'no-flatten',
  'compress',
  'upload-backing',
  'wait',
]);
const SHORT: Record<string, string> = { f: 'format', c: 'column' };

/**
 * `aliases` gives an option another meaning in one command: `image save -f qcow2` is a disk
 * format (qemu-img's -f), where every other command's -f/--format picks cliff's formatter.
 */
export function parse(argv: string[], aliases: Readonly<Record<string, string>> = {}): Parsed {
  const values = new Map<string, string[]>();
  const flags = new Set<string>();
  const args: string[] = [];
  const add = (k: string, v: string) => values.set(k, [...(values.get(k) ?? []), v]);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      args.push(...argv.slice(i + 1));
      break;
    }
    let name: string | undefined;
    let inline: string | undefined;
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      if (eq >= 0) inline = a.slice(eq + 1);
    } else if (/^-[a-zA-Z]/.test(a)) {
      name = SHORT[a[1]!];
      if (name === undefined) throw usage(`unrecognized arguments: ${a}`);
      if (a.length > 2) inline = a.slice(2);
    }
    if (name === undefined) {
      args.push(a);
      continue;
    }
    const key = aliases[name] ?? name;
    if (FLAG_OPTS.has(key)) {
      if (inline !== undefined) throw usage(`argument --${name}: ignored explicit argument '${inline}'`);
      flags.add(key);
    } else if (VALUE_OPTS.has(key)) {
      const v = inline ?? argv[++i];
      if (v === undefined) throw usage(`argument --${name}: expected one argument`);
      add(key, v);
    } else throw usage(`unrecognized arguments: ${a}`);
  }
  return { values, flags, args };
}

export const usage = (msg: string) => new VdiskError('INVALID_ARGUMENT', `image: error: ${msg}`);
export const one = (p: Parsed, k: string) => p.values.get(k)?.at(-1);
export const all = (p: Parsed, k: string) => p.values.get(k) ?? [];

// ---------------------------------------------------------------------------------------
// HTTP

export interface Response {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

export function send(
  method: string,
  url: string,
  headers: Record<string, string>,
  body?: Buffer | NodeJS.ReadableStream,
): Promise<IncomingMessage> {
  const u = new URL(url);
  const req =
    u.protocol === 'https:'
      ? httpsRequest(u, { method, headers, ...tlsCa() })
      : httpRequest(u, { method, headers });
  return new Promise((resolve, reject) => {
    req.on('response', resolve);
    req.on('error', (e) =>
      reject(new VdiskError('EIO', `Unable to establish connection to ${url}: ${e.message}`)),
    );
    if (body === undefined) req.end();
    else if (Buffer.isBuffer(body)) req.end(body);
    else {
      body.on('error', (e: Error) => req.destroy(e));
      body.pipe(req);
    }
  });
}

export async function readAll(res: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of res) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

export async function call(
  method: string,
  url: string,
  headers: Record<string, string>,
  body?: Buffer | NodeJS.ReadableStream,
): Promise<Response> {
  const res = await send(method, url, headers, body);
  return { status: res.statusCode ?? 0, headers: res.headers, body: await readAll(res) };
}

/** openstacksdk's wording of an HTTP error: `HttpException: 409: Client Error for url: …, text`. */
export function httpError(method: string, url: string, r: Response): VdiskError {
  const kind = r.status >= 500 ? 'Server Error' : 'Client Error';
  let detail = r.body.toString('utf8').trim();
  const m = /^\d{3} [^\n]*\n\n([\s\S]*?)\s*$/.exec(detail);
  if (m) detail = m[1]!.trim();
  try {
    const j = JSON.parse(detail) as { error?: { message?: string } };
    if (j.error?.message !== undefined) detail = j.error.message;
  } catch {
    // plain text (Glance's webob page)
  }
  const name =
    r.status === 404 ? 'NotFoundException' : r.status === 409 ? 'ConflictException' : 'HttpException';
  void method;
  return new VdiskError('EIO', `${name}: ${r.status}: ${kind} for url: ${url}, ${detail}`);
}

// ---------------------------------------------------------------------------------------
// Session: a token and the image endpoint.

export class Session {
  constructor(
    readonly token: string,
    readonly imageUrl: string,
    readonly project: string | null,
    readonly identityUrl: string | null,
  ) {}

  static async open(p: Parsed, env: Env): Promise<Session> {
    const opt = (k: string) => one(p, `os-${k}`) ?? env[`OS_${k.toUpperCase().replaceAll('-', '_')}`];
    const token = opt('token');
    const imageOverride = opt('image-url') ?? opt('endpoint');
    if (token !== undefined && token !== '') {
      if (imageOverride === undefined)
        throw new VdiskError('INVALID_ARGUMENT', 'OS_TOKEN needs OS_IMAGE_URL (the image endpoint)');
      return new Session(token, trimSlash(imageOverride), opt('project-id') ?? null, null);
    }
    const authUrl = opt('auth-url');
    if (authUrl === undefined)
      throw new VdiskError(
        'INVALID_ARGUMENT',
        'Missing value auth-url required for auth plugin password (set OS_AUTH_URL or --os-auth-url)',
      );
    const username = opt('username');
    const password = opt('password');
    if (username === undefined || password === undefined)
      throw new VdiskError(
        'INVALID_ARGUMENT',
        'Missing value username/password (set OS_USERNAME and OS_PASSWORD)',
      );
    let base = trimSlash(authUrl);
    if (!/\/v3$/.test(base)) base = `${base}/v3`;
    const projectName = opt('project-name');
    const projectId = opt('project-id');
    const scope =
      projectId !== undefined
        ? { project: { id: projectId } }
        : projectName !== undefined
          ? { project: { name: projectName, domain: { name: opt('project-domain-name') ?? 'Default' } } }
          : undefined;
    const body = {
      auth: {
        identity: {
          methods: ['password'],
          password: {
            user: { name: username, domain: { name: opt('user-domain-name') ?? 'Default' }, password },
          },
        },
        ...(scope ? { scope } : {}),
      },
    };
    const url = `${base}/auth/tokens`;
    const r = await call(
      'POST',
      url,
      { 'Content-Type': 'application/json' },
      Buffer.from(JSON.stringify(body)),
    );
    if (r.status === 401)
      throw new VdiskError('NOT_ALLOWED', 'The request you have made requires authentication. (HTTP 401)');
    if (r.status !== 201) throw httpError('POST', url, r);
    const t = JSON.parse(r.body.toString('utf8')) as {
      token: {
        project?: { id: string };
        catalog?: Array<{ type: string; endpoints: Array<{ interface: string; url: string }> }>;
      };
    };
    let image = imageOverride;
    if (image === undefined) {
      const svc = t.token.catalog?.find((s) => s.type === 'image');
      const ep =
        svc?.endpoints.find((e) => e.interface === (opt('interface') ?? 'public')) ?? svc?.endpoints[0];
      if (ep === undefined) throw new VdiskError('NOT_FOUND', 'public endpoint for image service not found');
      image = ep.url;
    }
    return new Session(
      String(r.headers['x-subject-token']),
      trimSlash(image),
      t.token.project?.id ?? null,
      base,
    );
  }

  headers(extra: Record<string, string> = {}): Record<string, string> {
    return { 'X-Auth-Token': this.token, 'User-Agent': 'vdisk-image', ...extra };
  }

  async json(method: string, path: string, body?: unknown, type = 'application/json'): Promise<Response> {
    const url = `${this.imageUrl}${path}`;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const r = await call(method, url, this.headers(payload ? { 'Content-Type': type } : {}), payload);
    if (r.status >= 400) throw httpError(method, url, r);
    return r;
  }

  async get(path: string): Promise<Json> {
    return JSON.parse((await this.json('GET', path)).body.toString('utf8')) as Json;
  }

  /** An image by id; null when there is none the caller can see (404). */
  async byId(id: string): Promise<Json | null> {
    const url = `${this.imageUrl}/v2/images/${encodeURIComponent(id)}`;
    const r = await call('GET', url, this.headers());
    if (r.status === 200) return JSON.parse(r.body.toString('utf8')) as Json;
    if (r.status !== 404) throw httpError('GET', url, r);
    return null;
  }

  /** An image by id, else by name (unique), as openstackclient's find_image. */
  async find(nameOrId: string): Promise<Json> {
    if (/^[0-9a-fA-F-]{32,36}$/.test(nameOrId)) {
      const img = await this.byId(nameOrId);
      if (img !== null) return img;
    }
    // Glance reads `name=a:b` as operator `a`: such a name goes with an explicit `eq:`.
    const name = nameOrId.includes(':') ? `eq:${nameOrId}` : nameOrId;
    const l = await this.get(`/v2/images?name=${encodeURIComponent(name)}&visibility=all&member_status=all`);
    const found = (l['images'] as Json[]) ?? [];
    if (found.length > 1)
      throw new VdiskError('INVALID_ARGUMENT', `More than one Image exists with the name '${nameOrId}'.`);
    if (found.length === 0) throw new VdiskError('NOT_FOUND', `No Image found for ${nameOrId}`);
    return found[0]!;
  }

  /** A project by id or name (Keystone, when the caller may list projects), else as given. */
  async projectId(nameOrId: string): Promise<string> {
    if (this.identityUrl === null) return nameOrId;
    const url = `${this.identityUrl}/projects?name=${encodeURIComponent(nameOrId)}`;
    const r = await call('GET', url, this.headers());
    if (r.status === 200) {
      const ps = (JSON.parse(r.body.toString('utf8')) as { projects: Array<{ id: string }> }).projects;
      if (ps.length === 1) return ps[0]!.id;
    }
    return nameOrId;
  }
}

const trimSlash = (s: string) => s.replace(/\/+$/, '');

export function need(p: Parsed, n: number, what: string, variadic = false): string[] {
  if (p.args.length < n) throw usage(`the following arguments are required: ${what}`);
  if (p.args.length > n && !variadic) throw usage(`unrecognized arguments: ${p.args.slice(n).join(' ')}`);
  return p.args;
}

export function progressIo(io: Io): Io {
  return { out: (t) => io.err(t), err: (t) => io.err(t), isTTY: io.isTTY };
}

export async function upload(s: Session, id: string, file: string, io: Io, progress: boolean): Promise<void> {
  const size = (await stat(file)).size;
  const stream = createReadStream(file, { highWaterMark: 4 << 20 });
  const bar = progress ? new Progress(progressIo(io), 'human', 1) : null;
  if (bar) {
    let done = 0;
    bar.set(0);
    stream.on('data', (c) => {
      done += (c as Buffer).length;
      bar.set(size === 0 ? 100 : (done / size) * 100);
    });
  }
  const url = `${s.imageUrl}/v2/images/${id}/file`;
  const r = await call(
    'PUT',
    url,
    s.headers({ 'Content-Type': 'application/octet-stream', 'Content-Length': String(size) }),
    stream,
  );
  bar?.end();
  if (r.status >= 400) throw httpError('PUT', url, r);
}

/** POST an image, then upload `file` into it; the image as it is afterwards. */
export async function createImage(
  s: Session,
  body: Json,
  file: string | undefined,
  io: Io,
  progress: boolean,
): Promise<Json> {
  const img = JSON.parse((await s.json('POST', '/v2/images', body)).body.toString('utf8')) as Json;
  if (file === undefined) return img;
  try {
    await upload(s, String(img['id']), file, io, progress);
  } catch (e) {
    // as openstacksdk: an image whose upload failed is deleted
    await call('DELETE', `${s.imageUrl}/v2/images/${img['id']}`, s.headers()).catch(() => undefined);
    throw e;
  }
  return s.get(`/v2/images/${img['id']}`);
}

// ---------------------------------------------------------------------------------------
// Lists and downloads

/** The images of a list query, following `next` over every page unless `allPages` is false. */
export async function listImages(s: Session, query: URLSearchParams, allPages = true): Promise<Json[]> {
  const images: Json[] = [];
  let next: string | undefined = `/v2/images?${query}`;
  while (next !== undefined) {
    const page = await s.get(next.startsWith('/v2/') ? next : `/v2/${next.replace(/^\//, '')}`);
    images.push(...(page['images'] as Json[]));
    next = allPages ? (page['next'] as string | undefined) : undefined;
  }
  return images;
}

/** What a download received: its length and digests. */
export interface Received {
  bytes: number;
  md5: string;
  sha512: string;
}

export interface DownloadOptions {
  /** What comes, for messages: "image ID", "the qcow2 export of image ID". */
  what: string;
  progress: boolean;
  /** The last step on the complete file before it takes its name (checks, rewrites). */
  finish?: (part: string, got: Received) => Promise<void>;
}

/** Written in place: stdout (null) and what is not a regular file (/dev/null, a fifo). */
async function inPlace(file: string | null): Promise<boolean> {
  if (file === null) return true;
  const st = await stat(file).catch(() => null);
  return st !== null && !st.isFile();
}

/**
 * GET `path` into `file` (stdout when null), hashing on the way. A file is written as
 * `FILE.part` and renamed only once the whole body has arrived and passed the checks (its
 * Content-Length, Content-MD5, then `finish`): a failed or cut download leaves nothing under
 * FILE, and a FILE that was there stays as it was.
 */
export async function download(
  s: Session,
  path: string,
  file: string | null,
  io: Io,
  o: DownloadOptions,
): Promise<Received> {
  const url = `${s.imageUrl}${path}`;
  const res = await send('GET', url, s.headers());
  const status = res.statusCode ?? 0;
  if (status >= 400) throw httpError('GET', url, { status, headers: res.headers, body: await readAll(res) });
  if (status === 204) {
    res.resume();
    throw new VdiskError('NOT_FOUND', `${o.what[0]!.toUpperCase()}${o.what.slice(1)} has no data.`);
  }
  const length = res.headers['content-length'];
  const total = length === undefined ? null : Number(length);
  const md5 = createHash('md5');
  const sha512 = createHash('sha512');
  const bar = o.progress ? new Progress(progressIo(io), 'human', 1) : null;
  const draw = (n: number) =>
    total === null ? bar?.bytes(n) : bar?.set(total === 0 ? 100 : (n / total) * 100);
  let done = 0;
  const count = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      md5.update(chunk);
      sha512.update(chunk);
      done += chunk.length;
      draw(done);
      callback(null, chunk);
    },
  });
  const direct = await inPlace(file);
  const part = direct ? file : `${file}.part`;
  const cut = () =>
    new VdiskError(
      'EIO',
      `The download of ${o.what} was cut short after ${done}${total !== null ? ` of ${total}` : ''} bytes; ${
        direct ? `${file ?? 'the output'} is incomplete` : `nothing was written to ${file}`
      }: try again.`,
    );
  const sink = part === null ? process.stdout : createWriteStream(part);
  let writeError: Error | undefined;
  sink.once('error', (e: Error) => {
    writeError = e;
  });
  draw(0);
  try {
    try {
      await pipeline(res, count, sink, { end: part !== null });
    } catch (err) {
      if (writeError !== undefined)
        throw new VdiskError(
          'EIO',
          `Could not write ${part ?? 'the standard output'}: ${writeError.message}`,
        );
      throw res.complete ? new VdiskError('EIO', (err as Error).message) : cut();
    } finally {
      bar?.end();
    }
    if (!res.complete || (total !== null && done !== total)) throw cut();
    const got = { bytes: done, md5: md5.digest('hex'), sha512: sha512.digest('hex') };
    const expected = res.headers['content-md5'];
    if (typeof expected === 'string' && expected !== got.md5)
      throw new VdiskError('CORRUPT_IMAGE', `Corrupted image. Checksum was ${got.md5} expected ${expected}`);
    if (part !== null) await o.finish?.(part, got);
    if (!direct) await rename(part!, file!);
    return got;
  } catch (err) {
    res.destroy();
    if (!direct) await rm(part!, { force: true });
    throw err;
  }
}
