/**
 * Crash safety: a child process writing through vdisk (allocating writes, zero writes with
 * unmap, discards, compressed writes, rewrites) is killed with SIGKILL at random moments;
 * `qemu-img check` must then find no corruption (exit 0, or 3 for leaked clusters). With
 * lazy_refcounts the image is dirty after the kill: vdisk repairs it on the next writable
 * open, after which qemu-img check finds it clean.
 *
 * The child runs the compiled build (dist/), which `npm run test:all` builds first.
 */
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { qemuImg, qemuImgOk, tempDir } from '../../test/oracle.js';

const distOpen = fileURLToPath(new URL('../../../dist/chain/open.js', import.meta.url));

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-crash-'));
});
afterAll(() => cleanup());

const writer = (openPath: string) => `
import { openImage } from ${JSON.stringify(openPath)};
const [path, seedText] = process.argv.slice(2);
let a = Number(seedText) >>> 0;
const rand = () => { a = (a + 0x6d2b79f5) >>> 0; let t = a; t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
const img = await openImage(path, { writable: true });
const cs = img.driver.clusterSize;
process.stdout.write('ready\\n');
for (let i = 0; ; i++) {
  const op = rand();
  const off = Math.floor(rand() * (img.size / 512 - 1024)) * 512;
  const len = Math.max(512, Math.floor(rand() * 256) * 512);
  if (op < 0.5) await img.writeAt(Buffer.alloc(len, i & 0xff), off);
  else if (op < 0.65) await img.writeZeroes(off, len, { unmap: true });
  else if (op < 0.75) await img.discard(off, len * 4);
  else if (op < 0.9) await img.driver.writeCompressed(Buffer.alloc(cs, i & 0xff), Math.floor(off / cs) * cs);
  else await img.flush();
}
`;

function runAndKill(script: string, image: string, seed: number, delayMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, image, String(seed)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.stdout.once('data', () => {
      setTimeout(() => child.kill('SIGKILL'), delayMs);
    });
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL') resolve();
      else reject(new Error(`writer exited on its own (${code}): ${err}`));
    });
  });
}

describe('qcow2 crash safety', () => {
  const cases: Array<[string, string]> = [
    ['default', ''],
    ['small clusters, growing refcount table', 'cluster_size=512,refcount_bits=64'],
    ['extended L2', 'extended_l2=on'],
    ['zstd', 'compression_type=zstd,cluster_size=4k'],
  ];
  it.skipIf(!existsSync(distOpen))('leaves at worst leaked clusters when killed at any instant', async () => {
    const script = join(dir, 'writer.mjs');
    writeFileSync(script, writer(distOpen));
    let round = 0;
    for (const [, opts] of cases) {
      for (let k = 0; k < 4; k++) {
        round++;
        const p = join(dir, `crash-${round}.qcow2`);
        qemuImgOk(['create', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), p, '256M']);
        await runAndKill(script, p, round * 7919, 80 + ((round * 97) % 400));
        const r = qemuImg(['check', p]);
        expect(r.stdout + r.stderr).not.toMatch(/ERROR|\d+ errors were found/);
        expect([0, 3]).toContain(r.code);
      }
    }
  });

  it.skipIf(!existsSync(distOpen))(
    'repairs a lazy-refcounts image left dirty by a killed writer',
    async () => {
      const script = join(dir, 'writer.mjs');
      writeFileSync(script, writer(distOpen));
      for (let k = 0; k < 3; k++) {
        const p = join(dir, `lazy-${k}.qcow2`);
        qemuImgOk(['create', '-f', 'qcow2', '-o', 'lazy_refcounts=on', p, '256M']);
        await runAndKill(script, p, 1000 + k, 150 + k * 120);
        const info = JSON.parse(qemuImgOk(['info', '--output=json', '-U', p])) as { 'dirty-flag': boolean };
        expect(info['dirty-flag']).toBe(true);
        const img = await openImage(p, { writable: true });
        expect(img.driver.dirty).toBe(false);
        await img.close();
        const r = qemuImg(['check', p]);
        expect(r.stdout + r.stderr).not.toMatch(/ERROR|Leaked/);
        expect(r.code).toBe(0);
      }
    },
  );
});
