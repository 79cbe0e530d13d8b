import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { makeBochs } from '../../test/builders.js';
import { qemuImgOk, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

it.each([
  [1, 1 << 20, 64 << 10],
  [2, 1 << 20, 64 << 10],
  [2, 3 << 20, 512 << 10],
])('reads a version %d redolog (size %d, extent %d) as qemu-img does', async (version, size, extent) => {
  const p = join(dir, 'd.bochs');
  writeFileSync(p, makeBochs(size, extent, version as 1 | 2));
  const img = await openImage(p);
  expect(img.format).toBe('bochs');
  const buf = Buffer.alloc(img.size);
  await img.readAt(buf, 0);
  await img.close();
  expect(sha256(buf)).toBe(qemuRawDigest(p));
  const v = await vdisk(['info', '--output=json', p]);
  expect(v.stdout).toBe(qemuImgOk(['info', '--output=json', p]));
});

it('refuses writing and absurd headers', async () => {
  const p = join(dir, 'd.bochs');
  const good = makeBochs(1 << 20, 64 << 10, 2);
  writeFileSync(p, good);
  expect((await vdisk(['resize', p, '2M'])).code).toBe(1);
  const bad = Buffer.from(good);
  bad.writeUInt32LE(0x7fffffff, 72);
  writeFileSync(p, bad);
  const r = await vdisk(['info', p]);
  expect(r.code).toBe(1);
  expect(r.stderr).toContain('Catalog size is too large');
});
