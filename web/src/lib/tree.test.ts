import { describe, expect, it } from 'vitest';
import { buildForest, treeTotals, walkTree } from './tree.js';
import type { Image } from './types.js';

const img = (id: string, name: string, master?: string, size = 100, vsize = 1000): Image => ({
  id,
  name,
  status: 'active',
  disk_format: 'qcow2',
  container_format: 'bare',
  visibility: 'shared',
  size,
  virtual_size: vsize,
  checksum: null,
  os_hash_algo: null,
  os_hash_value: null,
  protected: false,
  min_ram: 0,
  min_disk: 0,
  owner: 'p',
  os_hidden: false,
  created_at: `2026-01-01T00:00:0${id.length}Z`,
  updated_at: '2026-01-01T00:00:00Z',
  tags: [],
  ...(master !== undefined ? { backing_image_id: master } : {}),
});

const shape = (roots: ReturnType<typeof buildForest>) =>
  roots.map((r) =>
    [...walkTree(r)].map((n) => `${'  '.repeat(n.depth)}${n.image?.name ?? `? ${n.id}`}`).join('\n'),
  );

describe('masters and overlays from image lists', () => {
  it('nests overlays under their masters, sorted by name', () => {
    const list = [
      img('l2', 'lab2', 'c'),
      img('c', 'course', 'd'),
      img('l1', 'lab1', 'c'),
      img('d', 'debian'),
      img('x', 'alone'),
      img('l3', 'lab1-fix', 'l1'),
    ];
    expect(shape(buildForest(list))).toEqual([
      'alone',
      'debian\n  course\n    lab1\n      lab1-fix\n    lab2',
    ]);
  });
  it('a master not in the list is a placeholder root', () => {
    const roots = buildForest([img('m1', 'mine', 'hidden'), img('m2', 'mine2', 'hidden')]);
    expect(roots).toHaveLength(1);
    expect(roots[0]!.image).toBeUndefined();
    expect(shape(roots)).toEqual(['? hidden\n  mine\n  mine2']);
  });
  it('layeredOnly keeps the trees that have overlays; duplicates count once', () => {
    const list = [img('d', 'debian'), img('x', 'alone'), img('c', 'course', 'd'), img('c', 'course', 'd')];
    const roots = buildForest(list, { layeredOnly: true });
    expect(shape(roots)).toEqual(['debian\n  course']);
    expect(treeTotals(roots[0]!)).toEqual({ images: 2, stored: 200, virtual: 2000 });
  });
  it('cuts a loop instead of hanging', () => {
    const roots = buildForest([img('a', 'a', 'b'), img('b', 'b', 'a')]);
    expect(
      roots
        .flatMap((r) => [...walkTree(r)])
        .map((n) => n.id)
        .sort(),
    ).toEqual(['a', 'b']);
  });
});
