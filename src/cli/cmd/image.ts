/**
 * `vdisk image …`: an Image API v2 client with `openstack image`'s commands, options and
 * output (cliff's table / json / value formatters, openstackclient's columns), so that a
 * script written for `openstack image` runs with `vdisk image`.
 *
 * Authentication as openstackclient: `--os-*` options or the OS_* environment (OS_AUTH_URL,
 * OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME/OS_PROJECT_ID, OS_USER_DOMAIN_NAME,
 * OS_PROJECT_DOMAIN_NAME) with Keystone v3 password auth and the catalog's `image`
 * endpoint; or OS_TOKEN + OS_IMAGE_URL (no Keystone). Progress on upload/download with
 * `--progress` (src/cli/progress.ts, drawn on stderr so `image save` can write to stdout).
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { VdiskError } from '../../core/errors.js';
import type { Io } from '../io.js';
import type { CliCommand } from '../main.js';
import { Progress } from '../progress.js';

type Env = Record<string, string | undefined>;
type Json = Record<string, unknown>;

const SYNTAX =
  'image list|show|create|save|set|unset|delete|add project|remove project|member list [options] (as `openstack image`)';

const HELP = [
  'An Image API v2 (Glance) client with the commands and options of `openstack image`:',
  '  image list [--long] [--public|--private|--community|--shared] [--name N] [--status S]',
  '             [--tag T] [--property K=V] [--member-status S] [--project P] [--limit N] [--marker ID] [--sort K:D]',
  '  image show [--human-readable] IMAGE',
  '  image create [--file F] [--disk-format raw] [--container-format bare] [--public|--private|--community|--shared]',
  '               [--protected|--unprotected] [--min-disk G] [--min-ram M] [--property K=V]... [--tag T]... [--id ID] [--progress] NAME',
  '  image save [--file F] [--progress] IMAGE',
  '  image set [--name N] [--visibility flags] [--protected|--unprotected] [--min-disk] [--min-ram] [--disk-format]',
  '            [--container-format] [--property K=V]... [--tag T]... [--activate|--deactivate]',
  '            [--accept|--reject|--pending [--project P]] IMAGE',
  '  image unset [--property K]... [--tag T]... IMAGE',
  '  image delete IMAGE...',
  '  image add project IMAGE PROJECT | image remove project IMAGE PROJECT | image member list IMAGE',
  'Output: -f table|json|value|csv, -c COLUMN (repeatable). Authentication: --os-auth-url, --os-username,',
  '--os-password, --os-project-name, --os-user-domain-name, --os-project-domain-name, --os-token,',
  '--os-image-url, or the OS_* environment variables of the same names.',
].join('\n');

// ---------------------------------------------------------------------------------------
// Arguments: openstack-style (--name value, --name=value, repeatable options, flags).

interface Parsed {
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
]);
const SHORT: Record<string, string> = { f: 'format', c: 'column' };

function parse(argv: string[]): Parsed {
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
    if (FLAG_OPTS.has(name)) {
      if (inline !== undefined) throw usage(`argument --${name}: ignored explicit argument '${inline}'`);
      flags.add(name);
    } else if (VALUE_OPTS.has(name)) {
      const v = inline ?? argv[++i];
      if (v === undefined) throw usage(`argument --${name}: expected one argument`);
      add(name, v);
    } else throw usage(`unrecognized arguments: ${a}`);
  }
  return { values, flags, args };
}

const usage = (msg: string) => new VdiskError('INVALID_ARGUMENT', `image: error: ${msg}`);
const one = (p: Parsed, k: string) => p.values.get(k)?.at(-1);
const all = (p: Parsed, k: string) => p.values.get(k) ?? [];

// ---------------------------------------------------------------------------------------
// HTTP

interface Response {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

function send(
  method: string,
  url: string,
  headers: Record<string, string>,
  body?: Buffer | NodeJS.ReadableStream,
): Promise<IncomingMessage> {
  const u = new URL(url);
  const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(u, { method, headers });
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

async function readAll(res: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of res) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function call(
  method: string,
  url: string,
  headers: Record<string, string>,
  body?: Buffer | NodeJS.ReadableStream,
): Promise<Response> {
  const res = await send(method, url, headers, body);
  return { status: res.statusCode ?? 0, headers: res.headers, body: await readAll(res) };
}

/** openstacksdk's wording of an HTTP error: `HttpException: 409: Client Error for url: …, text`. */
function httpError(method: string, url: string, r: Response): VdiskError {
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

class Session {
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

  /** An image by id, else by name (unique), as openstackclient's find_image. */
  async find(nameOrId: string): Promise<Json> {
    const url = `${this.imageUrl}/v2/images/${encodeURIComponent(nameOrId)}`;
    if (/^[0-9a-fA-F-]{32,36}$/.test(nameOrId)) {
      const r = await call('GET', url, this.headers());
      if (r.status === 200) return JSON.parse(r.body.toString('utf8')) as Json;
      if (r.status !== 404) throw httpError('GET', url, r);
    }
    const l = await this.get(
      `/v2/images?name=${encodeURIComponent(nameOrId)}&visibility=all&member_status=all`,
    );
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

// ---------------------------------------------------------------------------------------
// Output: cliff's formatters.

type Cell = string | number | boolean | null | undefined | string[] | Json;

interface Out {
  format: string;
  columns: string[];
}

function outOpts(p: Parsed): Out {
  const format = one(p, 'format') ?? 'table';
  if (!['table', 'json', 'value', 'csv', 'shell', 'yaml'].includes(format))
    throw usage(`argument -f/--format: invalid choice: '${format}'`);
  return { format, columns: all(p, 'column') };
}

function human(v: Cell): string {
  if (v === null || v === undefined) return '';
  if (Array.isArray(v)) return [...v].sort().join(', ');
  if (typeof v === 'object')
    return Object.keys(v)
      .sort()
      .map((k) => `${k}=${pyRepr(v[k])}`)
      .join(', ');
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  return String(v);
}

function pyRepr(v: unknown): string {
  if (typeof v === 'string') return `'${v.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'`;
  if (typeof v === 'boolean') return `'${v ? 'True' : 'False'}'`;
  if (v === null || v === undefined) return 'None';
  return `'${String(v)}'`;
}

function pyValue(v: Cell): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (Array.isArray(v)) return `[${v.map((x) => `'${x}'`).join(', ')}]`;
  if (typeof v === 'object')
    return `{${Object.entries(v)
      .map(
        ([k, x]) =>
          `'${k}': ${typeof x === 'string' ? `'${x}'` : typeof x === 'boolean' ? (x ? 'True' : 'False') : String(x)}`,
      )
      .join(', ')}}`;
  return String(v);
}

/** prettytable as cliff draws it: numbers right-aligned (by the first row), the rest left. */
function table(headers: string[], rows: Cell[][], alignRight: boolean[]): string {
  const text = rows.map((r) => r.map((c) => human(c)));
  const cellLines = text.map((r) => r.map((c) => c.split('\n')));
  const widths = headers.map((h, i) =>
    Math.max(h.length, ...cellLines.map((r) => Math.max(...r[i]!.map((l) => l.length)))),
  );
  const sep = `+${widths.map((w) => '-'.repeat(w + 2)).join('+')}+`;
  const line = (cells: string[]) =>
    `|${cells.map((c, i) => ` ${alignRight[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)} `).join('|')}|`;
  const out = [sep, line(headers), sep];
  for (const r of cellLines) {
    const height = Math.max(...r.map((l) => l.length));
    for (let k = 0; k < height; k++) out.push(line(r.map((l) => l[k] ?? '')));
  }
  out.push(sep);
  return `${out.join('\n')}\n`;
}

/** cliff's -c: the named columns, in the data's order; an error when none is known. */
function pick(o: Out, headers: string[]): number[] {
  if (o.columns.length === 0) return headers.map((_, i) => i);
  const idx = headers.map((_, i) => i).filter((i) => o.columns.includes(headers[i]!));
  if (idx.length === 0)
    throw usage(
      `No recognized column names in [${o.columns.map((c) => `'${c}'`).join(', ')}]. Recognized columns are (${headers.map((h) => `'${h}'`).join(', ')}).`,
    );
  return idx;
}

function jsonCell(v: Cell): unknown {
  return v === undefined ? null : v;
}

/** cliff's Lister output. */
function emitList(io: Io, o: Out, headers: string[], rows: Cell[][]): void {
  const idx = pick(o, headers);
  const hs = idx.map((i) => headers[i]!);
  const rs = rows.map((r) => idx.map((i) => r[i]));
  switch (o.format) {
    case 'json':
      io.out(
        `${JSON.stringify(
          rs.map((r) => Object.fromEntries(hs.map((h, i) => [h, jsonCell(r[i])]))),
          null,
          2,
        )}\n`,
      );
      return;
    case 'value':
      for (const r of rs) io.out(`${r.map((c) => pyValue(c)).join(' ')}\n`);
      return;
    case 'csv':
      io.out(`${hs.map((h) => `"${h}"`).join(',')}\n`);
      for (const r of rs) io.out(`${r.map((c) => `"${human(c).replaceAll('"', '""')}"`).join(',')}\n`);
      return;
    default:
      // cliff prints an empty line for a table without rows
      if (rs.length === 0) {
        io.out('\n');
        return;
      }
      io.out(
        table(
          hs,
          rs,
          rs[0]!.map((c) => typeof c === 'number'),
        ),
      );
  }
}

/** cliff's ShowOne output (fields sorted by name, as openstackclient passes them). */
function emitShow(io: Io, o: Out, info: Record<string, Cell>): void {
  const names = Object.keys(info).sort();
  const idx = pick(o, names);
  const keys = idx.map((i) => names[i]!);
  switch (o.format) {
    case 'json':
      io.out(`${JSON.stringify(Object.fromEntries(keys.map((k) => [k, jsonCell(info[k])])), null, 2)}\n`);
      return;
    case 'value':
      for (const k of keys) io.out(`${pyValue(info[k])}\n`);
      return;
    case 'shell':
      for (const k of keys)
        io.out(`${k.replace(/[^A-Za-z0-9_]/g, '_')}="${human(info[k]).replaceAll('"', '\\"')}"\n`);
      return;
    default:
      io.out(
        table(
          ['Field', 'Value'],
          keys.map((k) => [k, info[k]]),
          [false, false],
        ),
      );
  }
}

/** The fields `openstack image show` prints (openstackclient's _format_image). */
const SHOWN = new Set([
  'status',
  'name',
  'container_format',
  'created_at',
  'size',
  'disk_format',
  'updated_at',
  'visibility',
  'min_disk',
  'protected',
  'id',
  'file',
  'checksum',
  'owner',
  'virtual_size',
  'min_ram',
  'schema',
]);
/** openstacksdk's Image attributes that openstackclient lists under `properties` first. */
const SDK_PROPS = ['os_hidden', 'os_hash_algo', 'os_hash_value'];
const NOT_PROPS = new Set(['tags', 'self', 'locations', 'location', 'direct_url', 'stores', 'properties']);

function formatImage(img: Json, humanReadable = false): Record<string, Cell> {
  const info: Record<string, Cell> = {};
  const props: Json = {};
  for (const k of SDK_PROPS) if (img[k] !== undefined && img[k] !== null) props[k] = img[k];
  for (const [k, v] of Object.entries(img)) {
    if (v === null || v === undefined) continue;
    if (SHOWN.has(k)) info[k] = v as Cell;
    else if (!NOT_PROPS.has(k) && !SDK_PROPS.includes(k)) props[k] = v;
  }
  if (humanReadable && typeof info['size'] === 'number') info['size'] = formatSize(info['size']);
  info['tags'] = (img['tags'] as string[] | undefined) ?? [];
  if (Object.keys(props).length > 0) info['properties'] = props;
  return info;
}

/** osc_lib.utils.format_size: steps of 1000, one decimal with trailing zeros dropped. */
function formatSize(size: number): string {
  const suffixes = ['', 'K', 'M', 'G', 'T', 'P', 'E', 'Z', 'Y'];
  let s = size;
  let i = 0;
  while (s >= 1000 && i < suffixes.length - 1) {
    s /= 1000;
    i++;
  }
  const t = s.toFixed(1).replace(/0+$/, '').replace(/\.$/, '');
  return `${t}${suffixes[i]}`;
}

// ---------------------------------------------------------------------------------------
// Commands

function visibilityOf(p: Parsed): string | undefined {
  const v = ['public', 'private', 'community', 'shared'].filter((x) => p.flags.has(x));
  if (v.length > 1) throw usage(`argument --${v[1]}: not allowed with argument --${v[0]}`);
  return v[0] ?? one(p, 'visibility');
}

function properties(p: Parsed): Json {
  const out: Json = {};
  for (const kv of all(p, 'property')) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw usage(`argument --property: Expected 'key=value' type, but got: ${kv}`);
    out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

function intOpt(p: Parsed, k: string): number | undefined {
  const v = one(p, k);
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw usage(`argument --${k}: invalid int value: '${v}'`);
  return Number(v);
}

function need(p: Parsed, n: number, what: string, variadic = false): string[] {
  if (p.args.length < n) throw usage(`the following arguments are required: ${what}`);
  if (p.args.length > n && !variadic) throw usage(`unrecognized arguments: ${p.args.slice(n).join(' ')}`);
  return p.args;
}

function progressIo(io: Io): Io {
  return { out: (t) => io.err(t), err: (t) => io.err(t), isTTY: io.isTTY };
}

async function upload(s: Session, id: string, file: string, io: Io, progress: boolean): Promise<void> {
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

/** osc_lib.utils.sort_items: `key[:asc|desc],…`, applied on the client (openstackclient's default name:asc). */
function sortItems(items: Json[], spec: string): void {
  const keys = spec.split(',').map((k) => {
    const [key, dir = 'asc'] = k.split(':');
    if (dir !== 'asc' && dir !== 'desc')
      throw usage(`Unknown sort direction: ${dir}, must be one of: asc, desc`);
    return { key: key!, sign: dir === 'asc' ? 1 : -1 };
  });
  for (const { key, sign } of keys.reverse()) {
    items.sort((a, b) => {
      const x = String(a[key] ?? '');
      const y = String(b[key] ?? '');
      return x < y ? -sign : x > y ? sign : 0;
    });
  }
}

async function list(s: Session, p: Parsed, io: Io): Promise<number> {
  const q = new URLSearchParams();
  const vis = visibilityOf(p);
  if (vis !== undefined) q.set('visibility', vis);
  for (const k of ['name', 'status', 'member-status', 'limit', 'marker']) {
    const v = one(p, k);
    if (v !== undefined) q.set(k.replace('-', '_'), v);
  }
  const project = one(p, 'project');
  if (project !== undefined) q.set('owner', await s.projectId(project));
  for (const t of all(p, 'tag')) q.append('tag', t);
  for (const [k, v] of Object.entries(properties(p))) q.set(k, String(v));
  if (p.flags.has('hidden')) q.set('os_hidden', 'true');
  const limit = one(p, 'limit');
  const images: Json[] = [];
  let next: string | undefined = `/v2/images?${q}`;
  while (next !== undefined) {
    const page = await s.get(next.startsWith('/v2/') ? next : `/v2/${next.replace(/^\//, '')}`);
    images.push(...(page['images'] as Json[]));
    next = limit !== undefined ? undefined : (page['next'] as string | undefined);
  }
  sortItems(images, one(p, 'sort') ?? 'name:asc');
  const o = outOpts(p);
  if (p.flags.has('long')) {
    const headers = [
      'ID',
      'Name',
      'Disk Format',
      'Container Format',
      'Size',
      'Checksum',
      'Status',
      'Visibility',
      'Protected',
      'Project',
      'Tags',
    ];
    const rows = images.map((i) => [
      i['id'],
      i['name'],
      i['disk_format'],
      i['container_format'],
      i['size'],
      i['checksum'],
      i['status'],
      i['visibility'],
      i['protected'],
      i['owner'],
      (i['tags'] as string[]) ?? [],
    ]) as Cell[][];
    emitList(io, o, headers, rows);
  } else {
    emitList(
      io,
      o,
      ['ID', 'Name', 'Status'],
      images.map((i) => [i['id'], i['name'], i['status']]) as Cell[][],
    );
  }
  return 0;
}

async function create(s: Session, p: Parsed, io: Io): Promise<number> {
  const [name] = need(p, 1, '<image-name>');
  const body: Json = {
    name,
    disk_format: one(p, 'disk-format') ?? 'raw',
    container_format: one(p, 'container-format') ?? 'bare',
  };
  const vis = visibilityOf(p);
  if (vis !== undefined) body['visibility'] = vis;
  if (p.flags.has('protected')) body['protected'] = true;
  if (p.flags.has('unprotected')) body['protected'] = false;
  const md = intOpt(p, 'min-disk');
  if (md !== undefined) body['min_disk'] = md;
  const mr = intOpt(p, 'min-ram');
  if (mr !== undefined) body['min_ram'] = mr;
  const id = one(p, 'id');
  if (id !== undefined) body['id'] = id;
  const project = one(p, 'project');
  if (project !== undefined) body['owner'] = await s.projectId(project);
  const tags = all(p, 'tag');
  if (tags.length > 0) body['tags'] = tags;
  Object.assign(body, properties(p));
  const file = one(p, 'file');
  if (file !== undefined)
    await stat(file).catch(() => {
      throw new VdiskError('NOT_FOUND', `[Errno 2] No such file or directory: '${file}'`);
    });
  let img = JSON.parse((await s.json('POST', '/v2/images', body)).body.toString('utf8')) as Json;
  if (file !== undefined) {
    try {
      await upload(s, String(img['id']), file, io, p.flags.has('progress'));
    } catch (e) {
      // as openstacksdk: an image whose upload failed is deleted
      await call('DELETE', `${s.imageUrl}/v2/images/${img['id']}`, s.headers()).catch(() => undefined);
      throw e;
    }
    img = await s.get(`/v2/images/${img['id']}`);
  }
  emitShow(io, outOpts(p), formatImage(img));
  return 0;
}

async function save(s: Session, p: Parsed, io: Io): Promise<number> {
  const [ref] = need(p, 1, '<image>');
  const img = await s.find(ref!);
  const url = `${s.imageUrl}/v2/images/${img['id']}/file`;
  const res = await send('GET', url, s.headers());
  if ((res.statusCode ?? 0) >= 400)
    throw httpError('GET', url, {
      status: res.statusCode ?? 0,
      headers: res.headers,
      body: await readAll(res),
    });
  if (res.statusCode === 204) {
    res.resume();
    throw new VdiskError('NOT_FOUND', `Image ${img['id']} has no data.`);
  }
  const total = Number(res.headers['content-length'] ?? img['size'] ?? 0);
  const expected = res.headers['content-md5'];
  const md5 = createHash('md5');
  const bar = p.flags.has('progress') ? new Progress(progressIo(io), 'human', 1) : null;
  bar?.set(0);
  const file = one(p, 'file');
  const sink = file !== undefined ? createWriteStream(file) : process.stdout;
  let done = 0;
  for await (const chunk of res) {
    const b = chunk as Buffer;
    md5.update(b);
    done += b.length;
    bar?.set(total > 0 ? (done / total) * 100 : 100);
    if (!sink.write(b)) await new Promise<void>((r) => sink.once('drain', () => r()));
  }
  if (file !== undefined)
    await new Promise<void>((resolve, reject) =>
      (sink as ReturnType<typeof createWriteStream>).end((e?: Error | null) => (e ? reject(e) : resolve())),
    );
  bar?.end();
  if (!res.complete) throw new VdiskError('EIO', `The download of image ${img['id']} was cut short.`);
  if (typeof expected === 'string' && expected !== md5.digest('hex'))
    throw new VdiskError(
      'CORRUPT_IMAGE',
      `Corrupted image. Checksum was ${md5.copy().digest('hex')} expected ${expected}`,
    );
  return 0;
}

async function setImage(s: Session, p: Parsed, io: Io): Promise<number> {
  const [ref] = need(p, 1, '<image>');
  const img = await s.find(ref!);
  const id = String(img['id']);
  const status = ['accept', 'reject', 'pending'].filter((x) => p.flags.has(x));
  if (status.length > 1) throw usage(`argument --${status[1]}: not allowed with argument --${status[0]}`);
  if (status.length === 1) {
    const project = one(p, 'project');
    const member = project !== undefined ? await s.projectId(project) : s.project;
    if (member === null)
      throw new VdiskError('INVALID_ARGUMENT', '--project is required to change a membership');
    const word = { accept: 'accepted', reject: 'rejected', pending: 'pending' }[status[0] as 'accept'];
    await s.json('PUT', `/v2/images/${id}/members/${member}`, { status: word });
  }
  if (p.flags.has('activate')) await s.json('POST', `/v2/images/${id}/actions/reactivate`);
  if (p.flags.has('deactivate')) await s.json('POST', `/v2/images/${id}/actions/deactivate`);
  const ops: Json[] = [];
  const put = (path: string, value: unknown) =>
    ops.push({ op: img[path] === undefined ? 'add' : 'replace', path: `/${path}`, value });
  const name = one(p, 'name');
  if (name !== undefined) put('name', name);
  const vis = visibilityOf(p);
  if (vis !== undefined) put('visibility', vis);
  if (p.flags.has('protected')) put('protected', true);
  if (p.flags.has('unprotected')) put('protected', false);
  if (p.flags.has('hidden')) put('os_hidden', true);
  if (p.flags.has('unhidden')) put('os_hidden', false);
  for (const [k, opt] of [
    ['min_disk', 'min-disk'],
    ['min_ram', 'min-ram'],
  ] as const) {
    const v = intOpt(p, opt);
    if (v !== undefined) put(k, v);
  }
  for (const [k, opt] of [
    ['disk_format', 'disk-format'],
    ['container_format', 'container-format'],
  ] as const) {
    const v = one(p, opt);
    if (v !== undefined) put(k, v);
  }
  for (const [k, v] of Object.entries(properties(p))) put(k, v);
  const tags = all(p, 'tag');
  if (tags.length > 0) {
    const merged = [...new Set([...((img['tags'] as string[]) ?? []), ...tags])];
    ops.push({ op: 'replace', path: '/tags', value: merged });
  }
  // `--project` with a membership flag names the member; alone, it changes the owner.
  const project = one(p, 'project');
  if (project !== undefined && status.length === 0) put('owner', await s.projectId(project));
  if (ops.length > 0)
    await s.json('PATCH', `/v2/images/${id}`, ops, 'application/openstack-images-v2.1-json-patch');
  void io;
  return 0;
}

async function unset(s: Session, p: Parsed): Promise<number> {
  const [ref] = need(p, 1, '<image>');
  const img = await s.find(ref!);
  const id = String(img['id']);
  for (const t of all(p, 'tag')) {
    const url = `${s.imageUrl}/v2/images/${id}/tags/${encodeURIComponent(t)}`;
    const r = await call('DELETE', url, s.headers());
    if (r.status >= 400 && r.status !== 404) throw httpError('DELETE', url, r);
  }
  const missing: string[] = [];
  const ops: Json[] = [];
  for (const k of all(p, 'property')) {
    if (img[k] === undefined) missing.push(k);
    else ops.push({ op: 'remove', path: `/${k}` });
  }
  if (ops.length > 0)
    await s.json('PATCH', `/v2/images/${id}`, ops, 'application/openstack-images-v2.1-json-patch');
  if (missing.length > 0)
    throw new VdiskError(
      'NOT_FOUND',
      `Failed to unset ${missing.length} of ${all(p, 'property').length} properties.`,
    );
  return 0;
}

async function remove(s: Session, p: Parsed, io: Io): Promise<number> {
  need(p, 1, '<image>', true);
  let failed = 0;
  for (const ref of p.args) {
    try {
      const img = await s.find(ref);
      await s.json('DELETE', `/v2/images/${img['id']}`);
    } catch (e) {
      failed++;
      io.err(`Failed to delete image with name or ID '${ref}': ${(e as Error).message}\n`);
    }
  }
  if (failed > 0) throw new VdiskError('EIO', `Failed to delete ${failed} of ${p.args.length} images.`);
  return 0;
}

function memberInfo(m: Json): Record<string, Cell> {
  const info: Record<string, Cell> = {};
  for (const k of ['created_at', 'image_id', 'member_id', 'schema', 'status', 'updated_at'])
    info[k] = m[k] as Cell;
  return info;
}

async function addProject(s: Session, p: Parsed, io: Io): Promise<number> {
  const [ref, project] = need(p, 2, '<image>, <project>');
  const img = await s.find(ref!);
  const member = await s.projectId(project!);
  const r = await s.json('POST', `/v2/images/${img['id']}/members`, { member });
  emitShow(io, outOpts(p), memberInfo(JSON.parse(r.body.toString('utf8')) as Json));
  return 0;
}

async function removeProject(s: Session, p: Parsed): Promise<number> {
  const [ref, project] = need(p, 2, '<image>, <project>');
  const img = await s.find(ref!);
  const member = await s.projectId(project!);
  await s.json('DELETE', `/v2/images/${img['id']}/members/${encodeURIComponent(member)}`);
  return 0;
}

async function memberList(s: Session, p: Parsed, io: Io): Promise<number> {
  const [ref] = need(p, 1, '<image>');
  const img = await s.find(ref!);
  const members = (await s.get(`/v2/images/${img['id']}/members`))['members'] as Json[];
  emitList(
    io,
    outOpts(p),
    ['Image ID', 'Member ID', 'Status'],
    members.map((m) => [m['image_id'], m['member_id'], m['status']]) as Cell[][],
  );
  return 0;
}

async function show(s: Session, p: Parsed, io: Io): Promise<number> {
  const [ref] = need(p, 1, '<image>');
  emitShow(io, outOpts(p), formatImage(await s.find(ref!), p.flags.has('human-readable')));
  return 0;
}

/** Run with an explicit environment (tests); `run` passes process.env. */
export async function runImage(argv: string[], io: Io, env: Env): Promise<number> {
  let words = 1;
  let sub = argv[0];
  if (sub === 'add' || sub === 'remove' || sub === 'member') {
    const second = argv[1];
    const want = sub === 'member' ? 'list' : 'project';
    if (second !== want) throw usage(`unknown command: image ${sub}${second ? ` ${second}` : ''}`);
    sub = `${sub} ${second}`;
    words = 2;
  }
  const handlers: Record<string, (s: Session, p: Parsed, io: Io) => Promise<number>> = {
    list,
    show,
    create,
    save,
    set: setImage,
    unset: (s, p) => unset(s, p),
    delete: remove,
    'add project': addProject,
    'remove project': (s, p) => removeProject(s, p),
    'member list': memberList,
  };
  const h = sub === undefined ? undefined : handlers[sub];
  if (h === undefined)
    throw usage(
      `unknown command: image${sub ? ` ${sub}` : ''}. Commands: ${Object.keys(handlers).join(', ')}`,
    );
  const p = parse(argv.slice(words));
  outOpts(p);
  const s = await Session.open(p, env);
  return h(s, p, io);
}

const command: CliCommand = {
  syntax: SYNTAX,
  help: HELP,
  run: (argv, io) => runImage(argv, io, process.env),
};

export default command;
