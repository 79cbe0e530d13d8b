/**
 * `vdisk image` and layered images: a registry image names its master with the property
 * `backing_image_id`, and the registry follows only that (never the backing file name stored
 * inside an overlay). This module ties local files to those chains:
 *
 * - `image create --file OVERLAY`: the overlay's local backing file is looked up in the
 *   registry by its sha512 (`os_hash_value`), or named with `--backing-image`, or uploaded
 *   first with `--upload-backing` (level by level, each named after its file).
 * - `image pull IMAGE [DIR]`: an image and its masters as files that qemu-img opens as one
 *   chain: each overlay's stored backing file name is rewritten (`rebase -u`) to the local
 *   file of its master. Files already there are kept: a master by its sha512, an overlay (whose
 *   bytes the rewrite changed) by the manifest `DIR/.vdisk-pull.json`.
 * - `image tree [IMAGE]`: masters and their overlays in the registry, drawn as `vdisk tree`
 *   draws files.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, realpath, rename, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { DEFAULT_MAX_DEPTH, openImage, resolveRelative } from '../../chain/open.js';
import { rebaseCommand } from '../../commands/rebase.js';
import type { FileRef } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { probeFormat } from '../../core/formats.js';
import { HostFile } from '../../core/host-file.js';
import { registerBuiltinFormats } from '../../formats/index.js';
// The registry's table of disk formats (plain constants, no server code runs).
import { diskFormatOf, ENGINE_FORMAT, engineFormatOf } from '../../server/image/formats.js';
import { sizeToStr } from '../format.js';
import type { Io } from '../io.js';
import {
  createImage,
  download,
  type Json,
  listImages,
  need,
  one,
  type Parsed,
  type Session,
  usage,
} from './image-http.js';

export const BACKING_PROP = 'backing_image_id';
/** disk_formats an overlay may have in the registry. */
const LAYERED = ['qcow2', 'qed'];

const masterOf = (img: Json): string | undefined => {
  const m = img[BACKING_PROP];
  return typeof m === 'string' && m !== '' ? m : undefined;
};

/** The disk_format the registry gives an engine format ('vpc' → 'vhd'); undefined: none. */
function glanceFormat(engine: string): string | undefined {
  return Object.values(ENGINE_FORMAT).includes(engine) ? diskFormatOf(engine) : undefined;
}

/** `-f table|json`: the two forms of pull and tree. */
function jsonOutput(p: Parsed): boolean {
  const f = one(p, 'format') ?? 'table';
  if (f !== 'table' && f !== 'json')
    throw usage(`argument -f/--format: invalid choice: '${f}' (table or json)`);
  return f === 'json';
}

async function sha512Of(path: string): Promise<string> {
  const h = createHash('sha512');
  try {
    for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) h.update(chunk as Buffer);
  } catch (err) {
    throw new VdiskError('EIO', `Could not read '${path}': ${(err as Error).message}`, { cause: err });
  }
  return h.digest('hex');
}

// ---------------------------------------------------------------------------------------
// create: finding the master of an overlay file

interface LocalLayer {
  path: string;
  /** The engine's format, probed. */
  format: string;
  /** The engine opened it: `backing` is known. */
  opened: boolean;
  /** The backing file as stored, and where it is (resolved as QEMU does). */
  backing?: { name: string; path: string };
}

async function inspectLocal(path: string): Promise<LocalLayer> {
  registerBuiltinFormats();
  const h = await HostFile.open(path, { lock: 'none' });
  let format: string;
  try {
    format = await probeFormat(h);
  } finally {
    await h.close();
  }
  let ref: FileRef | undefined;
  let opened = false;
  try {
    const image = await openImage(path, {
      format,
      backing: 'ignore',
      forceShare: true,
      noIo: true,
      imageOpts: false,
    });
    ref = image.driver.backing;
    opened = true;
    await image.close();
  } catch {
    // What the engine cannot open (an encrypted image, a damaged header) goes up as it is:
    // the registry's upload inspection judges it and says why.
  }
  return ref === undefined
    ? { path, format, opened }
    : { path, format, opened, backing: { name: ref.filename, path: resolveRelative(path, ref.filename) } };
}

/** The active image, among those the caller sees, whose bytes have this sha512. */
async function imageWithHash(s: Session, sha512: string): Promise<Json | undefined> {
  const q = new URLSearchParams({
    os_hash_value: sha512,
    status: 'active',
    visibility: 'all',
    limit: '1000',
  });
  const found = await listImages(s, q);
  // The same bytes may be there more than once: the caller's own copy first, then the oldest.
  const own = (i: Json) => (i['owner'] === s.project ? 0 : 1);
  found.sort((a, b) => own(a) - own(b) || String(a['created_at']).localeCompare(String(b['created_at'])));
  return found[0];
}

/** An overlay must be qcow2 or qed in the registry; say so before anything is uploaded. */
function checkLayered(level: LocalLayer): void {
  const f = glanceFormat(level.format);
  if (f === undefined || !LAYERED.includes(f))
    throw new VdiskError(
      'UNSUPPORTED',
      `'${level.path}' is a ${level.format} overlay; the registry keeps overlays as qcow2 or qed only: convert it (vdisk convert -O qcow2 -B BACKING …)`,
    );
}

export interface CreateLayers {
  /** The file's disk_format (probed) when the registry knows it. */
  diskFormat?: string | undefined;
  /** The master to name (backing_image_id). */
  masterId?: string | undefined;
}

/**
 * What `image create` adds for layered images: the probed disk_format of `file`, and when it
 * is an overlay, its master in the registry, found by the sha512 of the local backing file
 * (or `named`: --backing-image, by id or name). With --upload-backing the missing masters are
 * uploaded first, bottom first, with `masterFields` (container format, visibility). Nothing
 * is created when a master cannot be found.
 */
export async function layersForCreate(
  s: Session,
  p: Parsed,
  file: string | undefined,
  named: string | undefined,
  masterFields: Json,
  io: Io,
): Promise<CreateLayers> {
  const uploadBacking = p.flags.has('upload-backing');
  if (named !== undefined && uploadBacking)
    throw usage(
      `argument --upload-backing: not allowed with argument --backing-image (or --property ${BACKING_PROP})`,
    );
  const namedId = async () => String((await s.find(named!))['id']);
  if (file === undefined) {
    if (uploadBacking) throw usage('argument --upload-backing: needs --file');
    return named === undefined ? {} : { masterId: await namedId() };
  }
  const top = await inspectLocal(file);
  const diskFormat = glanceFormat(top.format);
  if (top.backing === undefined) {
    // A file the engine could not read goes up with the master asked for: the registry judges.
    if (named !== undefined && top.opened)
      throw new VdiskError(
        'INVALID_ARGUMENT',
        `'${file}' names no backing file: --backing-image is for overlays (drop it to upload a standalone image)`,
      );
    return named === undefined ? { diskFormat } : { diskFormat, masterId: await namedId() };
  }
  checkLayered(top);
  if (named !== undefined) return { diskFormat, masterId: await namedId() };

  // Down the local chain to the first level the registry holds; the levels above it are missing.
  const missing: LocalLayer[] = [];
  const seen = new Set([await realpath(file)]);
  let masterId: string | undefined;
  for (let level = top; ; ) {
    const b = level.backing!;
    const real = await realpath(b.path).catch(() => {
      throw new VdiskError(
        'ENOENT',
        `The backing file '${b.name}' of '${level.path}' is not here (${b.path}): name its master in the registry with --backing-image ID`,
      );
    });
    if (seen.has(real) || seen.size > DEFAULT_MAX_DEPTH)
      throw new VdiskError(
        'CHAIN_TOO_DEEP',
        `The backing chain of '${file}' loops or is too deep at '${b.path}'`,
      );
    seen.add(real);
    const found = await imageWithHash(s, await sha512Of(b.path));
    if (found !== undefined) {
      masterId = String(found['id']);
      break;
    }
    if (!uploadBacking)
      throw new VdiskError(
        'NOT_FOUND',
        `No active image you can see in the registry holds '${b.path}' (the backing file of '${level.path}', compared by sha512): upload it first, add --upload-backing to upload it with this image, or name the master with --backing-image ID`,
      );
    const below = await inspectLocal(b.path);
    if (below.backing !== undefined) checkLayered(below);
    else if (glanceFormat(below.format) === undefined)
      throw new VdiskError(
        'UNSUPPORTED',
        `'${below.path}' is a ${below.format} image, which the registry does not store: convert it (vdisk convert -O qcow2 …) and rebase '${level.path}' onto the result`,
      );
    missing.push(below);
    if (below.backing === undefined) break;
    level = below;
  }
  for (const level of missing.reverse()) {
    const name = basename(level.path);
    const body: Json = { ...masterFields, name, disk_format: glanceFormat(level.format) };
    if (masterId !== undefined) body[BACKING_PROP] = masterId;
    const img = await createImage(s, body, level.path, io, p.flags.has('progress'));
    masterId = String(img['id']);
    io.err(`Uploaded the master '${level.path}' as image ${masterId}.\n`);
  }
  return { diskFormat, masterId };
}

// ---------------------------------------------------------------------------------------
// pull

/** The image and its masters, top first, each seen by the caller. */
async function chainOf(s: Session, top: Json): Promise<Json[]> {
  const chain = [top];
  for (let cur = top; ; ) {
    const id = masterOf(cur);
    if (id === undefined) return chain;
    if (chain.some((i) => i['id'] === id) || chain.length > DEFAULT_MAX_DEPTH)
      throw new VdiskError(
        'CHAIN_TOO_DEEP',
        `The chain of masters of image ${top['id']} loops or is too deep`,
      );
    const next = await s.byId(id);
    if (next === null)
      throw new VdiskError(
        'NOT_ALLOWED',
        `The master image ${id} of image ${cur['id']} is not visible to you: ask its owner to share it with your project`,
      );
    chain.push(next);
    cur = next;
  }
}

/** `<name>-<first 8 chars of id>.<ext>`, the name reduced to a safe file name. */
function localName(img: Json): string {
  const fmt = String(img['disk_format'] ?? '');
  const ext = /^[a-z0-9]+$/.test(fmt) ? fmt : 'img';
  const stem =
    String(img['name'] ?? '')
      .trim()
      .replace(new RegExp(`\\.${ext}$`, 'i'), '')
      .replace(/[^A-Za-z0-9._-]+/g, '_')
      // no hidden file, nothing an option parser takes for an option
      .replace(/^[.-]+/, '_')
      .slice(0, 100) || 'image';
  return `${stem}-${String(img['id']).slice(0, 8)}.${ext}`;
}

const MANIFEST = '.vdisk-pull.json';

/** What pull wrote for an overlay: whose bytes, and the file's sha512 after the rewrite. */
interface ManifestEntry {
  image_id: string;
  os_hash_value: string | null;
  sha512: string;
  backing_file: string;
}
type Manifest = Record<string, ManifestEntry>;

async function readManifest(dir: string): Promise<Manifest> {
  try {
    const m = JSON.parse(await readFile(join(dir, MANIFEST), 'utf8')) as { files?: Manifest };
    return m.files ?? {};
  } catch {
    // No manifest (or a damaged one): files are checked as if pulled for the first time.
    return {};
  }
}

async function writeManifest(dir: string, files: Manifest): Promise<void> {
  const path = join(dir, MANIFEST);
  await writeFile(`${path}.part`, `${JSON.stringify({ files }, null, 2)}\n`);
  await rename(`${path}.part`, path);
}

/**
 * Is `file` already what pull would write there? A root master is the image's bytes (its
 * sha512 is the image's os_hash_value); an overlay's bytes were changed by the rewrite, so the
 * manifest says which image, which registry bytes and which master name made it.
 */
async function alreadyPulled(
  file: string,
  id: string,
  hash: string | null,
  backing: string | null,
  entry: ManifestEntry | undefined,
): Promise<boolean> {
  const isFile = await stat(file).then(
    (st) => st.isFile(),
    () => false,
  );
  if (!isFile) return false;
  if (backing === null) return hash !== null && (await sha512Of(file)) === hash;
  return (
    entry !== undefined &&
    entry.image_id === id &&
    entry.os_hash_value === hash &&
    entry.backing_file === backing &&
    (await sha512Of(file)) === entry.sha512
  );
}

interface Pulled {
  image_id: string;
  name: string | null;
  disk_format: string | null;
  file: string;
  backing_file: string | null;
  status: 'downloaded' | 'present';
}

export async function pull(s: Session, p: Parsed, io: Io): Promise<number> {
  if (p.args.length > 2) throw usage(`unrecognized arguments: ${p.args.slice(2).join(' ')}`);
  const [ref, dir = '.'] = need(p, 1, '<image>', true) as [string, string?];
  const json = jsonOutput(p);
  const chain = await chainOf(s, await s.find(ref));
  for (const img of chain)
    if (img['status'] !== 'active')
      throw new VdiskError(
        'NOT_ALLOWED',
        `Image ${img['id']} is ${img['status']}: only active images can be pulled${img === chain[0] ? '' : ` (it is a master of image ${chain[0]!['id']})`}`,
      );
  const names = chain.map(localName);
  await mkdir(dir, { recursive: true });
  const manifest = await readManifest(dir);
  const done: Pulled[] = [];
  // The root master first: whatever stops a pull, the files there are usable chains.
  for (let i = chain.length - 1; i >= 0; i--) {
    const img = chain[i]!;
    const id = String(img['id']);
    const name = names[i]!;
    const file = join(dir, name);
    const master = i + 1 < chain.length ? { img: chain[i + 1]!, file: names[i + 1]! } : undefined;
    const hash = (img['os_hash_value'] as string | null | undefined) ?? null;
    const present = await alreadyPulled(file, id, hash, master?.file ?? null, manifest[name]);
    if (!present) {
      let rewritten: string | undefined;
      await download(s, `/v2/images/${id}/file`, file, io, {
        what: `image ${id}`,
        progress: p.flags.has('progress'),
        finish: async (part, got) => {
          if (hash !== null && got.sha512 !== hash)
            throw new VdiskError(
              'CORRUPT_IMAGE',
              `Corrupted image ${id}: its sha512 is ${got.sha512}, the registry says ${hash}`,
            );
          if (master === undefined) return;
          // The stored name points where the uploader kept the master; here it is master.file.
          await rebaseCommand({
            filename: part,
            format: engineFormatOf(String(img['disk_format'])),
            backingFile: master.file,
            backingFormat: engineFormatOf(String(master.img['disk_format'])),
            unsafe: true,
          });
          rewritten = await sha512Of(part);
        },
      });
      if (master !== undefined && rewritten !== undefined) {
        manifest[name] = { image_id: id, os_hash_value: hash, sha512: rewritten, backing_file: master.file };
        await writeManifest(dir, manifest);
      }
    }
    const row: Pulled = {
      image_id: id,
      name: (img['name'] as string | null) ?? null,
      disk_format: (img['disk_format'] as string | null) ?? null,
      file,
      backing_file: master === undefined ? null : join(dir, master.file),
      status: present ? 'present' : 'downloaded',
    };
    done.push(row);
    if (!json) io.out(`${present ? 'already present' : 'downloaded     '}  ${file}  (image ${id})\n`);
  }
  io.out(json ? `${JSON.stringify(done, null, 2)}\n` : `${join(dir, names[0]!)}\n`);
  return 0;
}

// ---------------------------------------------------------------------------------------
// tree

/** An image of the registry in a tree; `image` null: a master the caller cannot see. */
interface Node {
  id: string;
  image: Json | null;
  children: Node[];
}

const byName = (a: Node, b: Node) =>
  String(a.image?.['name'] ?? '').localeCompare(String(b.image?.['name'] ?? '')) || a.id.localeCompare(b.id);

function sortTree(nodes: Node[]): Node[] {
  nodes.sort(byName);
  for (const n of nodes) sortTree(n.children);
  return nodes;
}

/**
 * Every image the caller sees in lists, as `openstack image list --long` would if it knew
 * every visibility: its own, public, community, and those shared with it (accepted), grouped
 * under their masters. A master that lists leave out but the caller may still read (hidden,
 * or a share not accepted) is fetched by id; one it cannot read is a placeholder.
 */
async function forest(s: Session): Promise<Node[]> {
  const images = await listImages(s, new URLSearchParams({ visibility: 'all', limit: '1000' }));
  const nodes = new Map<string, Node>(
    images.map((i) => [String(i['id']), { id: String(i['id']), image: i, children: [] }]),
  );
  const todo = [...nodes.values()];
  for (let n = todo.pop(); n !== undefined; n = todo.pop()) {
    const m = n.image === null ? undefined : masterOf(n.image);
    if (m === undefined || nodes.has(m)) continue;
    const master: Node = { id: m, image: await s.byId(m), children: [] };
    nodes.set(m, master);
    todo.push(master);
  }
  const roots: Node[] = [];
  for (const n of nodes.values()) {
    const m = n.image === null ? undefined : masterOf(n.image);
    if (m === undefined) roots.push(n);
    else nodes.get(m)!.children.push(n);
  }
  return sortTree(roots);
}

/** The overlays of `id`, and theirs, as far down as they go. */
async function dependents(s: Session, id: string, seen: Set<string>): Promise<Node[]> {
  const q = new URLSearchParams({ [BACKING_PROP]: id, visibility: 'all', limit: '1000' });
  const out: Node[] = [];
  for (const i of await listImages(s, q)) {
    const cid = String(i['id']);
    if (seen.has(cid)) continue;
    seen.add(cid);
    out.push({ id: cid, image: i, children: await dependents(s, cid, seen) });
  }
  return sortTree(out);
}

/** The tree through one image: its masters up to the root, and everything that depends on it. */
async function treeOf(s: Session, img: Json): Promise<Node[]> {
  const id = String(img['id']);
  const seen = new Set([id]);
  let node: Node = { id, image: img, children: await dependents(s, id, seen) };
  for (let cur: Json | null = img, depth = 0; cur !== null && depth <= DEFAULT_MAX_DEPTH; depth++) {
    const m = masterOf(cur);
    if (m === undefined || seen.has(m)) break;
    seen.add(m);
    cur = await s.byId(m);
    node = { id: m, image: cur, children: [node] };
  }
  return [node];
}

function describeNode(n: Node): string {
  if (n.image === null) return `? ${n.id} (not visible)`;
  const i = n.image;
  const size = (v: unknown) => (typeof v === 'number' ? sizeToStr(v) : '-');
  const name = typeof i['name'] === 'string' && i['name'] !== '' ? i['name'] : '(no name)';
  return `${name}  ${n.id}  [${i['disk_format'] ?? '-'}, ${i['status']}] virtual ${size(i['virtual_size'])}, stored ${size(i['size'])}`;
}

/** The forest as JSON: the image's main fields, or `visible: false` for a placeholder. */
function nodeJson(n: Node): Json {
  const children = n.children.map(nodeJson);
  if (n.image === null) return { id: n.id, visible: false, children };
  const i = n.image;
  return {
    id: n.id,
    name: i['name'] ?? null,
    disk_format: i['disk_format'] ?? null,
    status: i['status'],
    visibility: i['visibility'],
    virtual_size: i['virtual_size'] ?? null,
    size: i['size'] ?? null,
    visible: true,
    children,
  };
}

export async function tree(s: Session, p: Parsed, io: Io): Promise<number> {
  if (p.args.length > 1) throw usage(`unrecognized arguments: ${p.args.slice(1).join(' ')}`);
  const json = jsonOutput(p);
  const ref = p.args[0];
  const roots = ref === undefined ? await forest(s) : await treeOf(s, await s.find(ref));
  if (json) {
    io.out(`${JSON.stringify(roots.map(nodeJson), null, 2)}\n`);
    return 0;
  }
  if (roots.length === 0) {
    io.out('No images.\n');
    return 0;
  }
  // The layout of `vdisk tree` (src/cli/cmd/tree.ts): roots flush left, box-drawing branches.
  const lines: string[] = [];
  const walk = (n: Node, prefix: string, branch: string, below: string) => {
    lines.push(`${prefix}${branch}${describeNode(n)}`);
    n.children.forEach((c, k) => {
      const last = k === n.children.length - 1;
      walk(c, prefix + below, last ? '└── ' : '├── ', last ? '    ' : '│   ');
    });
  };
  for (const r of roots) walk(r, '', '', '');
  io.out(`${lines.join('\n')}\n`);
  return 0;
}
