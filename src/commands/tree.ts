/**
 * `tree` (beyond qemu-img): the forest of masters and their copy-on-write overlays under a
 * directory or among given files, with what each layer holds, overlays whose backing file is
 * missing or changed underneath them, and the answer to "what breaks if I change or delete this
 * file?" (its dependents).
 *
 * Images are opened read-only without locks and without following any backing file: only
 * their headers and allocation maps are read.
 */
import { readdir, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { openImage, resolveRelative } from '../chain/open.js';
import { extentsOf } from '../core/device.js';
import { VdiskError } from '../core/errors.js';
import { probeFormat } from '../core/formats.js';
import { HostFile } from '../core/host-file.js';
import { registerBuiltinFormats } from '../formats/index.js';

export interface TreeNode {
  /** Path as found (relative to the scanned directory's parent when scanning a directory). */
  path: string;
  format: string;
  virtualSize: number;
  /** Bytes the file takes on the host. */
  actualSize: number;
  /** Guest bytes this layer itself allocates (what it holds over its backing). */
  allocatedSize: number;
  /** The backing file name as stored in the image. */
  backingFile?: string;
  backingFormat?: string;
  /** Problems: the backing file is missing, or changed after this overlay was last written. */
  warnings: string[];
  children: TreeNode[];
}

export interface TreeOptions {
  /** Directories to scan recursively, or image files. */
  paths: string[];
  /** Report the images that depend on this file (directly or through other overlays). */
  dependentsOf?: string | undefined;
}

export interface TreeResult {
  roots: TreeNode[];
  /** With dependentsOf: every image whose content needs that file, nearest first. */
  dependents?: string[];
}

const IMAGE_EXTENSIONS = /\.(img|raw|iso|qcow2?|qed|vmdk|vdi|vhdx?|vpc|hdd|dmg|bochs|cloop)$/i;
const MAX_FILES = 100_000;

async function collect(paths: string[]): Promise<string[]> {
  const out: string[] = [];
  const walk = async (p: string, explicit: boolean): Promise<void> => {
    let st: Awaited<ReturnType<typeof stat>>;
    try {
      st = await stat(p);
    } catch (err) {
      if (explicit)
        throw new VdiskError('ENOENT', `Could not open '${p}': No such file or directory`, { cause: err });
      return;
    }
    if (st.isDirectory()) {
      const names = (await readdir(p)).sort();
      for (const n of names) {
        if (n.startsWith('.') || n === 'node_modules') continue;
        await walk(join(p, n), false);
        if (out.length > MAX_FILES)
          throw new VdiskError('TOO_LARGE', `More than ${MAX_FILES} files under '${p}'`);
      }
    } else if (st.isFile()) {
      out.push(p);
    }
  };
  for (const p of paths) await walk(p, true);
  return out;
}

interface Found {
  node: TreeNode;
  real: string;
  mtimeMs: number;
  backingReal?: string | undefined;
}

async function realOrNull(p: string): Promise<string | null> {
  try {
    return await realpath(p);
  } catch {
    return null;
  }
}

export async function treeCommand(o: TreeOptions): Promise<TreeResult> {
  registerBuiltinFormats();
  const files = await collect(o.paths.length > 0 ? o.paths : ['.']);
  const found = new Map<string, Found>();
  const rawCandidates: string[] = [];
  for (const f of files) {
    let format: string;
    try {
      const h = await HostFile.open(f, { lock: 'none' });
      try {
        format = await probeFormat(h);
      } finally {
        await h.close();
      }
    } catch {
      continue;
    }
    if (format === 'raw') {
      rawCandidates.push(f);
      continue;
    }
    const entry = await describe(f, format);
    if (entry !== null) found.set(entry.real, entry);
  }
  // A raw file belongs in the tree when it has an image's extension or some image backs onto it.
  const backed = new Set(
    [...found.values()].map((e) => e.backingReal).filter((x): x is string => x !== undefined),
  );
  for (const f of rawCandidates) {
    const real = (await realOrNull(f)) ?? f;
    if (!IMAGE_EXTENSIONS.test(f) && !backed.has(real)) continue;
    const entry = await describe(f, 'raw');
    if (entry !== null) found.set(entry.real, entry);
  }
  const roots: TreeNode[] = [];
  for (const e of found.values()) {
    const parent = e.backingReal !== undefined ? found.get(e.backingReal) : undefined;
    if (e.node.backingFile !== undefined && parent === undefined) {
      const exists = e.backingReal !== undefined;
      if (!exists) e.node.warnings.push(`backing file '${e.node.backingFile}' is missing`);
    }
    if (parent !== undefined) {
      if (parent.mtimeMs > e.mtimeMs + 1000) {
        e.node.warnings.push(
          `backing file '${e.node.backingFile}' was modified after this overlay was last written`,
        );
      }
      if (parent.node.virtualSize !== e.node.virtualSize && parent.node.virtualSize > e.node.virtualSize) {
        e.node.warnings.push(`backing file is larger (${parent.node.virtualSize} bytes) than this overlay`);
      }
      parent.node.children.push(e.node);
    } else {
      roots.push(e.node);
    }
  }
  const result: TreeResult = { roots };
  if (o.dependentsOf !== undefined) {
    const target = await realOrNull(o.dependentsOf);
    if (target === null)
      throw new VdiskError('ENOENT', `Could not open '${o.dependentsOf}': No such file or directory`);
    const start = found.get(target);
    const dependents: string[] = [];
    const visit = (n: TreeNode) => {
      for (const c of n.children) {
        dependents.push(c.path);
        visit(c);
      }
    };
    if (start !== undefined) visit(start.node);
    result.dependents = dependents;
  }
  return result;
}

async function describe(path: string, format: string): Promise<Found | null> {
  let image: Awaited<ReturnType<typeof openImage>>;
  try {
    image = await openImage(path, { format, backing: 'ignore', forceShare: true, allowDataFile: false });
  } catch {
    return null;
  }
  try {
    const d = image.driver;
    let allocated = 0;
    // What this layer stores itself: its data extents (zero clusters store nothing).
    for await (const e of extentsOf(image)) if (e.data) allocated += e.length;
    const st = await stat(path);
    const node: TreeNode = {
      path,
      format: d.format,
      virtualSize: d.size,
      actualSize: await d.actualSize(),
      allocatedSize: allocated,
      warnings: [],
      children: [],
    };
    let backingReal: string | undefined;
    if (d.backing !== undefined) {
      node.backingFile = d.backing.filename;
      if (d.backing.format !== undefined) node.backingFormat = d.backing.format;
      backingReal = (await realOrNull(resolveRelative(path, d.backing.filename))) ?? undefined;
    }
    return { node, real: (await realOrNull(path)) ?? path, mtimeMs: st.mtimeMs, backingReal };
  } finally {
    await image.close();
  }
}
