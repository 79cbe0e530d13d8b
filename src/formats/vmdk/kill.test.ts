/**
 * A writer killed (SIGKILL) at random moments leaves a consistent image: qemu-img checks it
 * clean and reads what vdisk reads (vmdk: grain data is written before the table entry that
 * names it; vdi: block data, then the header's count, then the block map).
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { digest } from '../../test/image-helpers.js';
import { qemuImg, qemuImgOk, qemuRawDigest, TSX_LOADER, tempDir } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

async function killWriter(p: string, format: string, rounds: number, compressed = false): Promise<void> {
  const script = `
    import { openImage } from '${join(process.cwd(), 'src/chain/open.ts')}';
    const img = await openImage(process.argv[2], { format: '${format}', writable: true });
    process.stdout.write('ready\\n');
    for (let i = 0; ; i++) {
      const jobs = [];
      for (let k = 0; k < 4; k++) {
        const off = (((i * 4 + k) * 7919) % 900) * 65536;
        const buf = Buffer.alloc(65536, (i + k) & 255);
        jobs.push(${compressed ? 'img.driver.writeCompressed(buf, off)' : 'img.writeAt(buf.subarray(0, 60000), off + (k % 3) * 512)'});
      }
      await Promise.all(jobs);
      if (i % 7 === 0) await img.flush();
    }
  `;
  const scriptPath = join(dir, 'writer.mts');
  writeFileSync(scriptPath, script);
  for (let round = 0; round < rounds; round++) {
    const child = spawn(process.execPath, ['--import', TSX_LOADER, scriptPath, p], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    await new Promise((r) => setTimeout(r, 30 + Math.random() * 300));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const c = qemuImg(['check', '-f', format, p]);
    if (format === 'vdi' && c.code !== 0) {
      // Only a leaked block is allowed (header counted, map not yet written) ...
      expect(c.stderr).toMatch(/^ERROR: allocated blocks mismatch, is (\d+), should be (\d+)\n/);
      const [, is, should] = /is (\d+), should be (\d+)/.exec(c.stderr)!;
      expect(Number(should)).toBe(Number(is) + 1);
      // ... which vdisk sets right when it opens the image for writing.
      await (await openImage(p, { format, writable: true })).close();
    }
    expect(qemuImg(['check', '-f', format, p]).stdout).toBe('No errors were found on the image.\n');
    const img = await openImage(p, { format });
    expect(await digest(img)).toBe(qemuRawDigest(p, format));
    await img.close();
  }
}

it('vmdk monolithicSparse survives SIGKILL during allocating writes', async () => {
  const p = join(dir, 'k.vmdk');
  qemuImgOk(['create', '-q', '-f', 'vmdk', p, '64M']);
  await killWriter(p, 'vmdk', 4);
});

it('vmdk streamOptimized survives SIGKILL during compressed writes', async () => {
  const p = join(dir, 'k.vmdk');
  qemuImgOk(['create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', p, '64M']);
  await killWriter(p, 'vmdk', 4, true);
});

it('vdi survives SIGKILL during allocating writes', async () => {
  const p = join(dir, 'k.vdi');
  qemuImgOk(['create', '-q', '-f', 'vdi', p, '64M']);
  await killWriter(p, 'vdi', 5);
});
