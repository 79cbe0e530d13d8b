/** Suggestions for the create form: a disk format from a URL's file name, a master from a backing file name. */
import type { Image } from './types.js';

const BY_EXTENSION: Record<string, string> = {
  qcow2: 'qcow2',
  qcow: 'qcow2',
  qed: 'qed',
  vmdk: 'vmdk',
  vdi: 'vdi',
  vhd: 'vhd',
  vpc: 'vhd',
  vhdx: 'vhdx',
  iso: 'iso',
  img: 'raw',
  raw: 'raw',
};

/** The disk format a URL's file name suggests (`…/debian-12.qcow2?x=1` → qcow2), or undefined. */
export function formatFromName(url: string): string | undefined {
  let path = url;
  try {
    path = new URL(url).pathname;
  } catch {
    // not a full URL: use the text as a path
  }
  const base = path.split('/').pop() ?? '';
  const m = /\.([A-Za-z0-9]+)$/.exec(base);
  return m === null ? undefined : BY_EXTENSION[m[1]!.toLowerCase()];
}

/** A name for the image from a file name or URL: the last path part, without query. */
export function nameFromPath(path: string): string {
  let p = path;
  try {
    p = decodeURIComponent(new URL(path).pathname);
  } catch {
    // a plain file name
  }
  return (p.split(/[/\\]/).pop() ?? '').trim();
}

const stem = (s: string) => s.replace(/\.(qcow2|qed|img|raw)$/i, '').toLowerCase();

/**
 * The image most likely to be the master an overlay's backing file names: an active image
 * whose name is the backing file's base name (with or without its extension), own project first.
 */
export function guessMaster(backingFile: string, candidates: Image[], projectId: string): Image | undefined {
  const base = nameFromPath(backingFile);
  if (base === '') return undefined;
  const exact = candidates.filter((i) => i.status === 'active' && i.name === base);
  const loose = candidates.filter(
    (i) => i.status === 'active' && i.name !== null && stem(i.name) === stem(base),
  );
  for (const list of [exact, loose]) {
    const own = list.find((i) => i.owner === projectId);
    if (own !== undefined) return own;
    if (list[0] !== undefined) return list[0];
  }
  return undefined;
}
