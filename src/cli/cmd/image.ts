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
 *
 * Beyond openstack: layered images (`create` of an overlay, `save --format`, `pull`, `tree`;
 * image-layers.ts). Arguments, HTTP, the session and transfers are in image-http.ts.
 */
import { stat } from 'node:fs/promises';
import { VdiskError } from '../../core/errors.js';
import type { Io } from '../io.js';
import type { CliCommand } from '../main.js';
import { Progress } from '../progress.js';
import {
  all,
  call,
  createImage,
  download,
  type Env,
  httpError,
  type Json,
  listImages,
  need,
  one,
  type Parsed,
  parse,
  progressIo,
  Session,
  usage,
} from './image-http.js';
import { BACKING_PROP, layersForCreate, pull, tree } from './image-layers.js';

const SYNTAX =
  'image list|show|create|save|pull|tree|flatten|set|unset|delete|add project|remove project|member list [options] (as `openstack image`)';

const HELP = [
  'An Image API v2 (Glance) client with the commands and options of `openstack image`:',
  '  image list [--long] [--public|--private|--community|--shared] [--name N] [--status S]',
  '             [--tag T] [--property K=V] [--member-status S] [--project P] [--limit N] [--marker ID] [--sort K:D]',
  '  image show [--human-readable] IMAGE',
  '  image create [--file F] [--disk-format F] [--container-format bare] [--public|--private|--community|--shared]',
  '               [--protected|--unprotected] [--min-disk G] [--min-ram M] [--property K=V]... [--tag T]... [--id ID] [--progress]',
  '               [--backing-image IMAGE | --upload-backing] NAME',
  '  image save [--file F] [--progress] IMAGE [FILE]',
  '  image save --format F [--subformat S] [--no-flatten] [--compress] [--progress] IMAGE [FILE]',
  '  image pull [--progress] [-f table|json] IMAGE [DIR]',
  '  image tree [-f table|json] [IMAGE]',
  '  image flatten [--name N] [--disk-format qcow2] [--backing-image IMAGE] [--public|--private|--community|--shared]',
  '                [--property K=V]... [--tag T]... [--min-disk G] [--min-ram M] [--wait [--progress]] IMAGE',
  '  image set [--name N] [--visibility flags] [--protected|--unprotected] [--min-disk] [--min-ram] [--disk-format]',
  '            [--container-format] [--property K=V]... [--tag T]... [--activate|--deactivate]',
  '            [--accept|--reject|--pending [--project P]] IMAGE',
  '  image unset [--property K]... [--tag T]... IMAGE',
  '  image delete IMAGE...',
  '  image add project IMAGE PROJECT | image remove project IMAGE PROJECT | image member list IMAGE',
  'Layered images (an overlay names its master with the property backing_image_id):',
  "  create --file F   the disk format defaults to F's own (vpc as vhd); when F is an overlay, its master is",
  "                    the active image whose os_hash_value is the sha512 of F's local backing file",
  '    --backing-image IMAGE  name the master instead (no hashing)',
  '    --upload-backing       first upload the masters the registry lacks, each named after its file',
  '  save --format F   the image converted by the registry, its chain flattened (F: raw, qcow2, qed, vmdk, vdi,',
  '                    vhd, vhdx, qcow; -f F too); --subformat S (vmdk: monolithicSparse|streamOptimized,',
  '                    vhd, vhdx: dynamic|fixed), --no-flatten (the top layer alone, naming its master by id),',
  '                    --compress. FILE is written as FILE.part and renamed once complete.',
  '  pull IMAGE [DIR]  IMAGE and its masters as DIR/NAME-ID8.EXT (DIR: .), each overlay rebased (-u) onto its',
  "                    master's file; files already there are kept (by sha512; DIR/.vdisk-pull.json)",
  '  flatten IMAGE     a new master made by the registry from IMAGE and its masters, in your project (--wait:',
  '                    until it is active); --backing-image M: an overlay of M holding only what differs',
  '  tree [IMAGE]      the images you see (yours, shared with you, public, community) under their masters;',
  '                    with IMAGE, its masters and its dependents; "? ID (not visible)": a master hidden from you',
  'Output: -f table|json|value|csv, -c COLUMN (repeatable). Authentication: --os-auth-url, --os-username,',
  '--os-password, --os-project-name, --os-user-domain-name, --os-project-domain-name, --os-token,',
  '--os-image-url, or the OS_* environment variables of the same names.',
].join('\n');

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
  const images = await listImages(s, q, one(p, 'limit') === undefined);
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
  const file = one(p, 'file');
  if (file !== undefined)
    await stat(file).catch(() => {
      throw new VdiskError('NOT_FOUND', `[Errno 2] No such file or directory: '${file}'`);
    });
  const props = properties(p);
  const container = one(p, 'container-format') ?? 'bare';
  const vis = visibilityOf(p);
  // Masters uploaded with --upload-backing are seen by whoever sees the overlay.
  const masterFields: Json = {
    container_format: container,
    ...(vis !== undefined ? { visibility: vis } : {}),
  };
  const named = one(p, 'backing-image') ?? (props[BACKING_PROP] as string | undefined);
  const layers = await layersForCreate(s, p, file, named, masterFields, io);
  const body: Json = {
    name,
    // The file's own format rather than openstack's raw: the registry refuses qcow2 data as raw.
    disk_format: one(p, 'disk-format') ?? layers.diskFormat ?? 'raw',
    container_format: container,
  };
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
  Object.assign(body, props);
  if (layers.masterId !== undefined) body[BACKING_PROP] = layers.masterId;
  const img = await createImage(s, body, file, io, p.flags.has('progress'));
  emitShow(io, outOpts(p), formatImage(img));
  return 0;
}

/**
 * `save IMAGE [FILE]`: the image's own bytes (GET /file, checked against Content-MD5), or with
 * `--format` (qemu-img's -f: save takes no output formatter) the image converted by the
 * registry, its whole chain by default (GET /export). To stdout without a file.
 */
async function save(s: Session, p: Parsed, io: Io): Promise<number> {
  if (p.args.length > 2) throw usage(`unrecognized arguments: ${p.args.slice(2).join(' ')}`);
  const [ref, positional] = need(p, 1, '<image>', true);
  if (positional !== undefined && one(p, 'file') !== undefined)
    throw usage('argument --file: not allowed with a FILE argument');
  const file = positional ?? one(p, 'file') ?? null;
  const format = one(p, 'disk-format');
  const orphan =
    one(p, 'subformat') !== undefined ? 'subformat' : ['no-flatten', 'compress'].find((f) => p.flags.has(f));
  if (format === undefined && orphan !== undefined)
    throw usage(`argument --${orphan}: needs --format (a conversion by the registry)`);
  const id = String((await s.find(ref!))['id']);
  const progress = p.flags.has('progress');
  if (format === undefined) {
    await download(s, `/v2/images/${id}/file`, file, io, { what: `image ${id}`, progress });
    return 0;
  }
  const q = new URLSearchParams({ disk_format: format });
  const sub = one(p, 'subformat');
  if (sub !== undefined) q.set('subformat', sub);
  if (p.flags.has('no-flatten')) q.set('flatten', 'false');
  if (p.flags.has('compress')) q.set('compress', 'true');
  await download(s, `/v2/images/${id}/export?${q}`, file, io, {
    what: `the ${format} export of image ${id}`,
    progress,
  });
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

/**
 * `flatten IMAGE`: the registry makes a new standalone image of IMAGE and its masters (or, with
 * --backing-image, an overlay of that master holding what differs), owned by the caller's
 * project. Shows the new image; with --wait, waits until it is active (the task's progress on
 * stderr with --progress) and fails with the task's message if it does not become active.
 */
async function flatten(s: Session, p: Parsed, io: Io): Promise<number> {
  const [ref] = need(p, 1, '<image>');
  const src = await s.find(ref!);
  const body: Json = {};
  const name = one(p, 'name');
  if (name !== undefined) body['name'] = name;
  const df = one(p, 'disk-format');
  if (df !== undefined) body['disk_format'] = df;
  const cf = one(p, 'container-format');
  if (cf !== undefined) body['container_format'] = cf;
  const vis = visibilityOf(p);
  if (vis !== undefined) body['visibility'] = vis;
  if (p.flags.has('protected')) body['protected'] = true;
  const md = intOpt(p, 'min-disk');
  if (md !== undefined) body['min_disk'] = md;
  const mr = intOpt(p, 'min-ram');
  if (mr !== undefined) body['min_ram'] = mr;
  const tags = all(p, 'tag');
  if (tags.length > 0) body['tags'] = tags;
  Object.assign(body, properties(p));
  const onto = one(p, 'backing-image');
  if (onto !== undefined) body[BACKING_PROP] = String((await s.find(onto))['id']);
  const r = await s.json('POST', `/v2/images/${src['id']}/actions/flatten`, body);
  let img = JSON.parse(r.body.toString('utf8')) as Json;
  if (p.flags.has('wait')) {
    const bar = p.flags.has('progress') ? new Progress(progressIo(io), 'human', 1) : null;
    const id = String(img['id']);
    while (img['status'] === 'importing') {
      await new Promise((res) => setTimeout(res, 500));
      img = await s.get(`/v2/images/${id}`);
      if (bar !== null) {
        const tasks = ((await s.get(`/v2/images/${id}/tasks`))['tasks'] as Json[]) ?? [];
        const m = /Copied (\d+) MiB/.exec(String(tasks[0]?.['message'] ?? ''));
        if (m) bar.bytes(Number(m[1]) * (1 << 20));
      }
    }
    bar?.end();
    if (img['status'] !== 'active') {
      const tasks = ((await s.get(`/v2/images/${id}/tasks`))['tasks'] as Json[]) ?? [];
      throw new VdiskError(
        'EIO',
        `The flatten of image ${src['id']} into image ${id} failed: ${String(tasks[0]?.['message'] ?? img['status'])}`,
      );
    }
  }
  emitShow(io, outOpts(p), formatImage(img));
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
    pull,
    tree,
    flatten,
  };
  const h = sub === undefined ? undefined : handlers[sub];
  if (h === undefined)
    throw usage(
      `unknown command: image${sub ? ` ${sub}` : ''}. Commands: ${Object.keys(handlers).join(', ')}`,
    );
  // save: -f/--format is the disk format of a conversion (it prints nothing to format).
  const p = parse(argv.slice(words), sub === 'save' ? { format: 'disk-format' } : {});
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
