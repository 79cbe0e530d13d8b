/**
 * A parallels writer killed (SIGKILL) at random moments leaves an image that is only "not
 * closed correctly" (and at worst leaks its last clusters): qemu-img check -r all repairs it
 * to clean, and vdisk reads what qemu-img reads before and after.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { qemuImg, qemuImgOk, qemuRawDigest, sha256, TSX_LOADER, tempDir } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

async function digest(path: string): Promise<string> {
  const img = await openImage(path, { format: 'parallels' });
  try {
    const buf = Buffer.alloc(img.size);
    await img.readAt(buf, 0);
    return sha256(buf);
  } finally {
    await img.close();
  }
}

it('parallels survives SIGKILL during allocating writes', async () => {
  const p = join(dir, 'k.hdd');
  qemuImgOk(['create', '-q', '-f', 'parallels', '-o', 'cluster_size=64k', p, '64M']);
  const script = `
    import { openImage } from '${join(process.cwd(), 'src/chain/open.ts')}';
    const img = await openImage(process.argv[2], { format: 'parallels', writable: true });
    process.stdout.write('ready\\n');
    for (let i = 0; ; i++) {
      const off = ((i * 7919) % 60) * 1048576 + (i % 5) * 4096 + (i % 3) * 65536;
      const jobs = [];
      for (let k = 0; k < 4; k++) jobs.push(img.writeAt(Buffer.alloc(65536 + 512 * k, (i + k) & 255), off + k * 131072));
      await Promise.all(jobs);
      if (i % 7 === 0) await img.flush();
    }
  `;
  const scriptPath = join(dir, 'writer.mts');
  writeFileSync(scriptPath, script);
  for (let round = 0; round < 4; round++) {
    const child = spawn(process.execPath, ['--import', TSX_LOADER, scriptPath, p], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    await new Promise((r) => setTimeout(r, 30 + Math.random() * 400));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    // Killed while open for writing: the in-use mark is the only corruption.
    const before = qemuImg(['check', '--output=json', '-f', 'parallels', p]);
    const j = JSON.parse(before.stdout) as { corruptions?: number };
    expect(j.corruptions, before.stderr).toBe(1);
    expect(before.stderr).toMatch(/^ERROR image was not closed correctly\n/);
    expect(await digest(p)).toBe(qemuRawDigest(p, 'parallels'));
    const c = qemuImg(['check', '-r', 'all', '-f', 'parallels', p]);
    expect(c.code, c.stdout + c.stderr).toBe(0);
    expect(qemuImg(['check', '-f', 'parallels', p]).stdout).toMatch(/^No errors were found on the image\./);
    expect(await digest(p)).toBe(qemuRawDigest(p, 'parallels'));
  }
});
