/**
 * A round trip through vpc and vhdx (fixed and dynamic) and back, copying by extents through
 * the Image API (the convert command is not on this branch yet): the content survives, and
 * every intermediate image passes qemu-img (compare, and check where qemu checks the format).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { extentsOf } from '../../core/device.js';
import { qemuImg, qemuImgOk, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

const MiB = 1 << 20;

async function copy(src: string, srcFmt: string, dst: string, dstFmt: string, opts: string): Promise<void> {
  const s = await openImage(src, { format: srcFmt });
  const r = await vdisk(['create', '-q', '-f', dstFmt, '-o', opts, dst, String(s.size)]);
  expect(r.stderr).toBe('');
  const d = await openImage(dst, { format: dstFmt, writable: true });
  expect(d.size).toBe(s.size);
  for await (const e of extentsOf(s)) {
    if (e.zero) continue;
    for (let off = e.offset; off < e.offset + e.length; off += 4 * MiB) {
      const buf = Buffer.alloc(Math.min(4 * MiB, e.offset + e.length - off));
      await s.readAt(buf, off);
      await d.writeAt(buf, off);
    }
  }
  await d.close();
  await s.close();
  const cmp = qemuImg(['compare', '-f', srcFmt, '-F', dstFmt, src, dst]);
  expect(cmp.stdout).toBe('Images are identical.\n');
  if (dstFmt === 'vhdx') expect(qemuImg(['check', '-f', 'vhdx', dst]).code).toBe(0);
}

it('raw → vpc → vhdx → vpc (fixed) → vhdx (fixed) → raw keeps every byte', async () => {
  const raw = join(dir, 'a.raw');
  const size = 48 * MiB;
  const content = Buffer.alloc(size);
  for (const [off, len] of [
    [0, MiB],
    [5 * MiB + 512, 3 * MiB],
    [20 * MiB, 64 * 1024],
    [size - 4096, 4096],
  ] as const) {
    randomBytes(len).copy(content, off);
  }
  writeFileSync(raw, content);
  const chain: Array<[string, string, string]> = [
    ['b.vhd', 'vpc', 'force_size=on'],
    ['c.vhdx', 'vhdx', 'block_size=1M'],
    ['d.vhd', 'vpc', 'subformat=fixed,force_size=on'],
    ['e.vhdx', 'vhdx', 'subformat=fixed,block_state_zero=off'],
    ['f.raw', 'raw', 'preallocation=off'],
  ];
  let prev: [string, string] = [raw, 'raw'];
  for (const [name, fmt, opts] of chain) {
    const p = join(dir, name);
    await copy(prev[0], prev[1], p, fmt, opts);
    prev = [p, fmt];
  }
  expect(readFileSync(prev[0]).equals(content)).toBe(true);
  qemuImgOk(['compare', '-f', 'raw', '-F', 'raw', raw, prev[0]]);
});
