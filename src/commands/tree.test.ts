import { utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';
import { treeCommand } from './tree.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

it('builds the forest of masters and overlays with what each holds, and flags broken links', async () => {
  const p = (n: string) => join(dir, n);
  qemuImgOk(['create', '-q', '-f', 'raw', p('base.img'), '16M']);
  qemuIo(p('base.img'), ['write 0 2M'], 'raw');
  qemuImgOk(['create', '-q', '-f', 'qed', '-b', 'base.img', '-F', 'raw', p('a.qed')]);
  qemuIo(p('a.qed'), ['write 1M 3M'], 'qed');
  qemuImgOk(['create', '-q', '-f', 'qed', '-b', 'a.qed', '-F', 'qed', p('b.qed')]);
  qemuImgOk(['create', '-q', '-f', 'qed', '-u', '-b', 'missing.qed', '-F', 'qed', p('orphan.qed'), '1M']);
  writeFileSync(p('notes.txt'), 'not an image');
  const old = new Date(Date.now() - 3600_000);
  utimesSync(p('b.qed'), old, old);
  const r = await treeCommand({ paths: [dir], dependentsOf: p('base.img') });
  const names = (ns: typeof r.roots) => ns.map((n) => n.path.slice(dir.length + 1)).sort();
  expect(names(r.roots)).toEqual(['base.img', 'orphan.qed']);
  const base = r.roots.find((n) => n.path.endsWith('base.img'))!;
  expect(base.allocatedSize).toBe(2 << 20);
  const a = base.children[0]!;
  expect(a.path.endsWith('a.qed')).toBe(true);
  expect(a.allocatedSize).toBe(3 << 20);
  expect(a.children[0]!.warnings.join()).toContain('modified after');
  expect(r.roots.find((n) => n.path.endsWith('orphan.qed'))!.warnings.join()).toContain(
    "'missing.qed' is missing",
  );
  expect(r.dependents!.map((d) => d.slice(dir.length + 1))).toEqual(['a.qed', 'b.qed']);
  const cli = await vdisk(['tree', '--output=json', dir]);
  expect(cli.code).toBe(0);
  expect(JSON.parse(cli.stdout)).toHaveLength(2);
});
