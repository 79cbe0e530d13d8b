/** Runs docs/workflow.md's shell blocks exactly as written, in order, in an empty directory. */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { CLI_ENTRY, qemuImg, TSX_LOADER, tempDir } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

it('the documented master/differential workflow runs as written', () => {
  const doc = readFileSync(join(process.cwd(), 'docs/workflow.md'), 'utf8');
  const blocks = [...doc.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
  expect(blocks.length).toBeGreaterThanOrEqual(5);
  const prelude = `set -e\nvdisk() { node --import ${TSX_LOADER} ${JSON.stringify(CLI_ENTRY)} "$@"; }\n`;
  const outputs: string[] = [];
  for (const block of blocks) {
    const r = spawnSync('bash', ['-c', prelude + block], {
      cwd: dir,
      encoding: 'utf8',
      env: { ...process.env, NODE_PATH: join(process.cwd(), 'node_modules') },
    });
    expect(r.status, `${block}\n${r.stderr}`).toBe(0);
    outputs.push(r.stdout);
  }
  const finalTree = outputs.at(-2)!;
  expect(finalTree).toMatch(/^master-v2\.qed .*master/m);
  expect(finalTree).toMatch(/[├└]── diff4\.qed/);
  expect(finalTree).toMatch(/[├└]── diffn\.qed/);
  expect(outputs.at(-1)).not.toContain('backing file');
  for (const f of ['master.qed', 'master-v2.qed', 'diffn.qed', 'diff4.qed']) {
    expect(qemuImg(['check', join(dir, f)]).code, f).toBe(0);
  }
});
