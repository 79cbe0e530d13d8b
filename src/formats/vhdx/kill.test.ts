/**
 * A writer killed (SIGKILL) at random moments leaves a consistent image: qemu-img opens it
 * (after replaying the log, for vhdx), checks it clean, and reads what vdisk reads.
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

async function digest(path: string, format: string): Promise<string> {
  const img = await openImage(path, { format });
  try {
    const buf = Buffer.alloc(img.size);
    await img.readAt(buf, 0);
    return sha256(buf);
  } finally {
    await img.close();
  }
}

async function killWriter(p: string, format: string, rounds: number): Promise<void> {
  const script = `
    import { openImage } from '${join(process.cwd(), 'src/chain/open.ts')}';
    const img = await openImage(process.argv[2], { format: '${format}', writable: true });
    process.stdout.write('ready\\n');
    for (let i = 0; ; i++) {
      const off = ((i * 7919) % 60) * 1048576 + (i % 5) * 4096;
      const jobs = [];
      for (let k = 0; k < 4; k++) jobs.push(img.writeAt(Buffer.alloc(65536, (i + k) & 255), off + k * 131072));
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
    await new Promise((r) => setTimeout(r, 30 + Math.random() * 400));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    if (format === 'vhdx') {
      // A log left behind is replayed (qemu-img check -r all opens the image writable).
      const c = qemuImg(['check', '-r', 'all', '-f', 'vhdx', p]);
      expect(c.code, c.stdout + c.stderr).toBe(0);
      expect(qemuImg(['check', '-f', 'vhdx', p]).stdout).toBe('No errors were found on the image.\n');
    } else {
      expect(qemuImg(['info', '-f', format, p]).code).toBe(0);
    }
    expect(await digest(p, format)).toBe(qemuRawDigest(p, format));
  }
}

it('vhdx survives SIGKILL during allocating writes and log commits', async () => {
  const p = join(dir, 'k.vhdx');
  qemuImgOk(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', p, '64M']);
  await killWriter(p, 'vhdx', 4);
});

it('vpc survives SIGKILL during allocating writes', async () => {
  const p = join(dir, 'k.vhd');
  qemuImgOk(['create', '-q', '-f', 'vpc', '-o', 'force_size=on', p, '64M']);
  await killWriter(p, 'vpc', 4);
});
