/**
 * convert --bitmaps / --skip-broken-bitmaps against qemu-img convert: the same bitmaps in the
 * target (directory and contents, read by qemu-nbd -B), the same messages and exit codes when
 * the source or the target cannot have bitmaps or a bitmap is in use.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuBitmapMap } from '../test/bitmap-helpers.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
let src: string;
let inUse: string;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-convert-bitmaps-'));
  src = join(dir, 'src.qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', src, '64M']);
  qemuImgOk(['bitmap', '--add', src, 'b0']);
  qemuImgOk(['bitmap', '--add', '-g', '512', src, 'fine']);
  qemuIo(src, ['write -P 1 1M 64k', 'write 40M 3k']);
  qemuImgOk(['bitmap', '--add', '-g', '2M', '--disable', src, 'off']);
  // An in-use bitmap, as a process that died with the image open leaves it.
  inUse = join(dir, 'inuse.qcow2');
  writeFileSync(inUse, readFileSync(src));
  qemuImgOk(['bitmap', '--add', inUse, 'x']);
  const b = readFileSync(inUse);
  let off = 112;
  while (b.readUInt32BE(off) !== 0x23852875) off += 8 + Math.ceil(b.readUInt32BE(off + 4) / 8) * 8;
  const d = Number(b.readBigUInt64BE(off + 24));
  b.writeUInt32BE(3, d + 12); // the first bitmap (b0): in_use | auto
  writeFileSync(inUse, b);
});
afterAll(() => cleanup());

const mask = (t: string, p: string) => t.replaceAll(p, 'OUT').replace(/^vdisk:/gm, 'qemu-img:');

async function both(args: string[], from = src): Promise<{ q: string; v: string }> {
  const q = join(dir, 'q.out');
  const v = join(dir, 'v.out');
  for (const p of [q, v]) if (existsSync(p)) rmSync(p);
  const qr = qemuImg(['convert', ...args, from, q]);
  const vr = await vdisk(['convert', ...args, from, v]);
  expect(mask(vr.stderr, v)).toBe(mask(qr.stderr, q));
  expect(vr.code).toBe(qr.code);
  return { q, v };
}

describe('convert --bitmaps against qemu-img', () => {
  it.each([[['-O', 'qcow2']], [['-O', 'qcow2', '-c']], [['-O', 'qcow2', '-o', 'cluster_size=4k']]])(
    'copies every bitmap, enabled or not, with its contents: %j',
    async (opts) => {
      const { q, v } = await both(['--bitmaps', ...opts]);
      const info = (p: string) =>
        qemuImgOk(['info', p])
          .replaceAll(p, 'OUT')
          .replace(/disk size: .*\n/, '');
      expect(info(v)).toBe(info(q));
      expect(qemuImgOk(['check', v])).toContain('No errors were found');
      for (const name of ['b0', 'fine', 'off']) {
        expect(await qemuBitmapMap(dir, v, name), name).toBe(await qemuBitmapMap(dir, q, name));
      }
    },
  );

  it('fails as qemu-img does for targets and sources without bitmaps, and in-use bitmaps', async () => {
    await both(['--bitmaps', '-O', 'raw']);
    await both(['--bitmaps', '-O', 'vmdk']);
    await both(['--bitmaps', '-O', 'qcow2', '-o', 'compat=0.10']);
    const raw = join(dir, 'r.raw');
    qemuImgOk(['create', '-q', '-f', 'raw', raw, '1M']);
    await both(['--bitmaps', '-f', 'raw', '-O', 'qcow2'], raw);
    await both(['--bitmaps', '-O', 'qcow2'], inUse);
    const { q, v } = await both(['--bitmaps', '--skip-broken-bitmaps', '-O', 'qcow2'], inUse);
    const info = (p: string) =>
      qemuImgOk(['info', p])
        .replaceAll(p, 'OUT')
        .replace(/disk size: .*\n/, '');
    expect(info(v)).toBe(info(q));
    expect(qemuImgOk(['check', v])).toContain('No errors were found');
  });
});
