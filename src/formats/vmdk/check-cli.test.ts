/** `vdisk check` on vmdk and vdi images, clean and corrupt, against qemu-img check (text, JSON, -r, exit codes). */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

async function sameAsQemu(p: string): Promise<void> {
  for (const args of [[], ['--output=json'], ['-r', 'all'], ['-r', 'leaks']]) {
    const q = qemuImg(['check', ...args, p]);
    const v = await vdisk(['check', ...args, p]);
    expect(
      { code: v.code, out: v.stdout, err: v.stderr.replaceAll('vdisk:', 'qemu-img:') },
      args.join(' '),
    ).toEqual({
      code: q.code,
      out: q.stdout,
      err: q.stderr,
    });
  }
}

it('vdi: clean, then with shared and out-of-range map entries', async () => {
  const p = join(dir, 'c.vdi');
  qemuImgOk(['create', '-q', '-f', 'vdi', p, '8M']);
  qemuIo(p, ['write -P 1 0 3M'], 'vdi');
  await sameAsQemu(p);
  const f = readFileSync(p);
  f.writeUInt32LE(1, 0x200 + 2 * 4);
  f.writeUInt32LE(77, 0x200 + 5 * 4);
  writeFileSync(p, f);
  await sameAsQemu(p);
});

it('vmdk: clean in every subformat, then a grain past the end (the check fails as in QEMU)', async () => {
  for (const sf of ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'streamOptimized']) {
    const p = join(dir, `${sf}.vmdk`);
    qemuImgOk(['create', '-q', '-f', 'vmdk', '-o', `subformat=${sf}`, p, '5M']);
    qemuIo(p, ['write -P 1 0 128k'], 'vmdk');
    await sameAsQemu(p);
  }
  const p = join(dir, 'monolithicSparse.vmdk');
  const f = readFileSync(p);
  const gd = Number(f.readBigUInt64LE(56));
  f.writeUInt32LE(0x100000, (gd + 1) * 512 + 4);
  writeFileSync(p, f);
  await sameAsQemu(p);
});
