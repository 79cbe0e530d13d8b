/**
 * Runs docs/workflow.md's shell blocks exactly as written, in order, in an empty directory:
 * the local master/differential workflow, then its registry version against a fresh
 * `vdisk serve` with the real `openstack` client (an administrator's credentials in OS_*).
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { ADMIN_PASSWORD, startTestServer } from '../server/test/harness.js';
import { CLI_ENTRY, qemuImg, TSX_LOADER, tempDir } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

const REGISTRY = '## In the registry';
const doc = readFileSync(join(process.cwd(), 'docs/workflow.md'), 'utf8');
const blocksOf = (text: string) => [...text.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
const prelude = `set -e\nvdisk() { node --import ${TSX_LOADER} ${JSON.stringify(CLI_ENTRY)} "$@"; }\n`;

/** Each block in its own bash, in order; asynchronously (the registry runs in this process). */
async function runBlocks(blocks: string[], env: Record<string, string | undefined>): Promise<string[]> {
  const outputs: string[] = [];
  for (const block of blocks) {
    const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn('bash', ['-c', prelude + block], {
        cwd: dir,
        env: { ...process.env, NODE_PATH: join(process.cwd(), 'node_modules'), ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
      });
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      child.on('close', (status) => resolve({ status, stdout, stderr }));
    });
    expect(r.status, `${block}\n${r.stdout}\n${r.stderr}`).toBe(0);
    outputs.push(r.stdout);
  }
  return outputs;
}

it('the documented master/differential workflow runs as written', async () => {
  const blocks = blocksOf(doc.slice(0, doc.indexOf(REGISTRY)));
  expect(blocks.length).toBeGreaterThanOrEqual(5);
  const outputs = await runBlocks(blocks, {});
  const finalTree = outputs.at(-2)!;
  expect(finalTree).toMatch(/^master-v2\.qed .*master/m);
  expect(finalTree).toMatch(/[├└]── diff4\.qed/);
  expect(finalTree).toMatch(/[├└]── diffn\.qed/);
  expect(outputs.at(-1)).not.toContain('backing file');
  for (const f of ['master.qed', 'master-v2.qed', 'diffn.qed', 'diff4.qed']) {
    expect(qemuImg(['check', join(dir, f)]).code, f).toBe(0);
  }
});

it('its registry version runs as written with the real openstack client', async () => {
  const blocks = blocksOf(doc.slice(doc.indexOf(REGISTRY)));
  expect(blocks.length).toBe(5);
  const ts = await startTestServer();
  try {
    const outputs = await runBlocks(blocks, {
      HOME: join(dir, 'home'),
      LANG: 'C.UTF-8',
      OS_AUTH_URL: `${ts.url}/v3`,
      OS_USERNAME: 'admin',
      OS_PASSWORD: ADMIN_PASSWORD,
      OS_PROJECT_NAME: 'admin',
      OS_USER_DOMAIN_NAME: 'Default',
      OS_PROJECT_DOMAIN_NAME: 'Default',
      OS_IDENTITY_API_VERSION: '3',
    });
    const [, , student, teacher, last] = outputs as [string, string, string, string, string];
    // The student's overlays sit under the pulled master; only diffn went to the registry.
    expect(student).toMatch(/^lab\/debian-master-\w{8}\.qcow2 .*master/m);
    expect(student).toMatch(/[├└]── lab\/diffn\.qcow2/);
    expect(student).toMatch(/\| \S+ \| diffn +\| active \|/);
    // The registry's tree: the overlay under its master; the master kept; master v2 made.
    expect(teacher).toMatch(/^debian-master .*\n[├└]── diffn /m);
    expect(teacher).toContain('debian-master is kept: an overlay depends on it');
    expect(teacher).toMatch(/\| debian-master-v2 +\| active \|/);
    expect(last).toContain('Images are identical.');
    for (const f of ['debian-v2.vmdk', 'debian-v2.qcow2'])
      expect(qemuImg(['check', join(dir, f)]).code).toBe(0);
    const v2 = qemuImg([
      'compare',
      '-F',
      'qcow2',
      join(dir, 'lab', 'diffn.qcow2'),
      join(dir, 'debian-v2.qcow2'),
    ]);
    expect(v2.stdout).toContain('Images are identical');
  } finally {
    await ts.stop();
  }
});
