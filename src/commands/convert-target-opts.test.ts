/**
 * `convert --target-image-opts` against qemu-img: it needs -n, the target is named by its block
 * options (driver=…,file.filename=…, or the format probed without driver=), -O may not name a
 * format as well, and a bare name (`file=`, a node name to QEMU) is refused as qemu-img
 * refuses it. Same messages, exit status and resulting images.
 */
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-target-opts-'));
  const src = join(dir, 'src.qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', src, '4M']);
  qemuIo(src, ['write -P 3 0 1M', 'write -P 9 3M 64k', 'write -z 1M 64k'], 'qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', join(dir, 'empty.qcow2'), '4M']);
  qemuImgOk(['create', '-q', '-f', 'raw', join(dir, 'empty.raw'), '4M']);
});
afterAll(() => cleanup());

/** Both tools on their own copy of `target` (a template name in dir), options naming it via {T}. */
async function both(args: string[], target: string) {
  const q = `q-${target}`;
  const v = `v-${target}`;
  copyFileSync(join(dir, target), join(dir, q));
  copyFileSync(join(dir, target), join(dir, v));
  const qr = qemuImg(['convert', ...args.map((a) => a.replaceAll('{T}', q))], dir);
  const vr = await vdisk(['convert', ...args.map((a) => a.replaceAll('{T}', v))], dir);
  expect(vr.stderr.replaceAll('vdisk:', 'qemu-img:').replaceAll(v, q)).toBe(qr.stderr);
  expect(vr.stdout).toBe(qr.stdout);
  expect(vr.code).toBe(qr.code);
  return { q: join(dir, q), v: join(dir, v), code: qr.code };
}

describe('convert --target-image-opts against qemu-img', () => {
  it('driver=qcow2,file.filename=…: the data lands in the existing image', async () => {
    const r = await both(
      ['--target-image-opts', '-n', 'src.qcow2', 'driver=qcow2,file.filename={T}'],
      'empty.qcow2',
    );
    expect(r.code).toBe(0);
    expect(qemuImg(['compare', join(dir, 'src.qcow2'), r.v]).stdout).toBe('Images are identical.\n');
    expect(qemuImg(['compare', r.q, r.v]).stdout).toBe('Images are identical.\n');
    expect(qemuImg(['check', r.v]).code).toBe(0);
  });

  it('driver=raw', async () => {
    const r = await both(
      ['--target-image-opts', '-n', 'src.qcow2', 'driver=raw,file.filename={T}'],
      'empty.raw',
    );
    expect(r.code).toBe(0);
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'raw', r.q, r.v]).stdout).toBe('Images are identical.\n');
  });

  it('without driver=: the target format is probed', async () => {
    const r = await both(['--target-image-opts', '-n', 'src.qcow2', 'file.filename={T}'], 'empty.qcow2');
    expect(r.code).toBe(0);
    expect(qemuImg(['compare', r.q, r.v]).stdout).toBe('Images are identical.\n');
  });

  const refused: Array<[string, string[]]> = [
    ['without -n', ['--target-image-opts', '-O', 'qcow2', 'src.qcow2', 'driver=qcow2,file.filename={T}']],
    ['a bare name', ['--target-image-opts', '-n', 'src.qcow2', '{T}']],
    ['file= (a node name)', ['--target-image-opts', '-n', 'src.qcow2', 'driver=qcow2,file={T}']],
    [
      '-O as well',
      ['--target-image-opts', '-n', '-O', 'qcow2', 'src.qcow2', 'driver=qcow2,file.filename={T}'],
    ],
    [
      'a missing file',
      ['--target-image-opts', '-n', 'src.qcow2', 'driver=qcow2,file.filename=missing.qcow2'],
    ],
    ['no file at all', ['--target-image-opts', '-n', 'src.qcow2', 'driver=qcow2']],
  ];
  for (const [name, args] of refused) {
    it(`refused: ${name}`, async () => {
      const r = await both(args, 'empty.qcow2');
      expect(r.code).toBe(1);
    });
  }

  it('--image-opts elsewhere: a bare name is a node name to qemu-img as well', async () => {
    const qr = qemuImg(['info', '--image-opts', 'empty.qcow2'], dir);
    const vr = await vdisk(['info', '--image-opts', 'empty.qcow2'], dir);
    expect(vr.stderr.replace('vdisk:', 'qemu-img:')).toBe(qr.stderr);
    expect(vr.code).toBe(qr.code);
  });
});
