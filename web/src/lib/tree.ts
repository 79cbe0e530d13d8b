/**
 * Masters and their overlays as a forest, from image lists: an image names its master with
 * the property `backing_image_id`. A master that is not in the list (not visible, or not
 * loaded) becomes a placeholder root so that its overlays still show where they belong.
 */
import type { Image } from './types.js';

export interface TreeNode {
  id: string;
  /** Undefined: a master the list does not hold (a placeholder). */
  image: Image | undefined;
  children: TreeNode[];
  /** Depth from the root (0). */
  depth: number;
}

export const masterOf = (img: Image): string | undefined => {
  const m = img.backing_image_id;
  return typeof m === 'string' && m !== '' ? m : undefined;
};

const byName = (a: TreeNode, b: TreeNode): number => {
  const an = a.image?.name ?? '';
  const bn = b.image?.name ?? '';
  if (an !== bn) return an < bn ? -1 : 1;
  const ac = a.image?.created_at ?? '';
  const bc = b.image?.created_at ?? '';
  if (ac !== bc) return ac < bc ? -1 : 1;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
};

export interface ForestOptions {
  /** Keep only trees with at least one overlay (default false: every image is a root or a node). */
  layeredOnly?: boolean;
}

/** Build the forest; duplicates (an image in two lists) count once. Loops cannot come from the API but are cut. */
export function buildForest(images: Iterable<Image>, opts: ForestOptions = {}): TreeNode[] {
  const nodes = new Map<string, TreeNode>();
  const node = (id: string): TreeNode => {
    let n = nodes.get(id);
    if (n === undefined) {
      n = { id, image: undefined, children: [], depth: 0 };
      nodes.set(id, n);
    }
    return n;
  };
  for (const img of images) node(img.id).image = img;
  const hasParent = new Set<string>();
  for (const n of [...nodes.values()]) {
    if (n.image === undefined) continue;
    const m = masterOf(n.image);
    if (m === undefined || m === n.id) continue;
    node(m).children.push(n);
    hasParent.add(n.id);
  }
  const roots = [...nodes.values()].filter((n) => !hasParent.has(n.id));
  // Depths and order; a loop (no root reaches it) is broken at its first member by id.
  const seen = new Set<string>();
  const walk = (n: TreeNode, depth: number) => {
    seen.add(n.id);
    n.depth = depth;
    n.children = n.children.filter((c) => !seen.has(c.id)).sort(byName);
    for (const c of n.children) walk(c, depth + 1);
  };
  roots.sort(byName);
  for (const r of roots) walk(r, 0);
  for (const n of [...nodes.values()].sort((a, b) => (a.id < b.id ? -1 : 1))) {
    if (!seen.has(n.id)) {
      roots.push(n);
      walk(n, 0);
    }
  }
  return opts.layeredOnly === true ? roots.filter((r) => r.children.length > 0) : roots;
}

/** Every node of a tree, depth first (the order the page lists them). */
export function* walkTree(n: TreeNode): Generator<TreeNode> {
  yield n;
  for (const c of n.children) yield* walkTree(c);
}

export interface TreeTotals {
  images: number;
  /** Bytes stored by the visible images of the tree. */
  stored: number;
  /** Sum of the virtual sizes: what the images hold once each is flattened. */
  virtual: number;
}

export function treeTotals(root: TreeNode): TreeTotals {
  const t: TreeTotals = { images: 0, stored: 0, virtual: 0 };
  for (const n of walkTree(root)) {
    if (n.image === undefined) continue;
    t.images++;
    t.stored += n.image.size ?? 0;
    t.virtual += n.image.virtual_size ?? 0;
  }
  return t;
}

/** Ids of the images that have at least one overlay in the list. */
export function mastersIn(roots: TreeNode[]): Set<string> {
  const out = new Set<string>();
  for (const r of roots) for (const n of walkTree(r)) if (n.children.length > 0) out.add(n.id);
  return out;
}
