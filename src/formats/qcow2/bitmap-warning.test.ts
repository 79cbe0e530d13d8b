/**
 * The warning QEMU prints when it opens a qcow2 image whose bitmaps a program without bitmap
 * support has invalidated (the bitmaps extension without its autoclear bit; a v2 image with
 * the extension), as qemu-img prints it for info, check, map, compare and convert; and a
 * writable open dropping the extension as QEMU does.
 */
import { closeSync, copyFileSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
const p = (n: string) => join(dir, n);

/**
 * qemu-img's stderr as vdisk prints it: the program's name, and the newline QEMU leaves out
 * after "…on the image file to fix." (its error_printf has none: stdout's next line would run
 * on from it).
 */
const asVdisk = (s: string) => s.replaceAll('qemu-img', 'vdisk').replaceAll('to fix.', 'to fix.\n');

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-bmwarn-'));
  const img = p('base.qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', img, '4M']);
  qemuImgOk(['bitmap', '--add', img, 'b0']);
  qemuImgOk(['bitmap', '--add', '-g', '4096', img, 'b1']);
  qemuIo(img, ['write 64k 100k', 'write 2M 4k'], 'qcow2');
  // v3: a program without bitmap support cleared the autoclear bits (header offset 88).
  copyFileSync(img, p('v3.qcow2'));
  const fd = openSync(p('v3.qcow2'), 'r+');
  writeSync(fd, Buffer.alloc(8), 0, 8, 88);
  closeSync(fd);
  // v2: qemu-img amend keeps the extension, which a v2 image cannot validate.
  copyFileSync(img, p('v2.qcow2'));
  qemuImgOk(['amend', '-o', 'compat=0.10', p('v2.qcow2')]);
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'v3.qcow2', '-F', 'qcow2', p('top.qcow2')]);
});
afterAll(() => cleanup?.());

describe('bitmaps invalidated by a program without bitmap support', () => {
  it('warn as qemu-img does in info, check, map, compare and convert', async () => {
    for (const image of ['v3.qcow2', 'v2.qcow2']) {
      for (const args of [
        ['info', image],
        ['info', '--output=json', image],
        ['check', image],
        ['map', image],
        ['compare', image, image],
        ['convert', '-O', 'raw', image, `${image}.raw`],
        ['info', '--backing-chain', 'top.qcow2'],
      ]) {
        const q = qemuImg(args, dir);
        const v = await vdisk(args, dir);
        expect(v.stderr, args.join(' ')).toBe(asVdisk(q.stderr));
        expect(v.stdout, args.join(' ')).toBe(q.stdout.replaceAll('qemu-img', 'vdisk'));
        expect(v.code, args.join(' ')).toBe(q.code);
      }
    }
    // The test can fail: the warning is there, with QEMU's words for each version.
    expect((await vdisk(['info', 'v3.qcow2'], dir)).stderr).toBe(
      'vdisk: warning: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent\n' +
        "Some clusters may be leaked, run 'vdisk check -r' on the image file to fix.\n",
    );
    expect((await vdisk(['info', 'v2.qcow2'], dir)).stderr).toContain(
      'vdisk: warning: This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent\n',
    );
  });

  it('commit warns for each image of the chain as qemu-img commit, and drops the extensions it writes', async () => {
    for (const who of ['q', 'v']) {
      mkdirSync(p(who), { recursive: true });
      copyFileSync(p('v3.qcow2'), p(`${who}/base.qcow2`));
      qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p(`${who}/top.qcow2`)]);
      qemuIo(p(`${who}/top.qcow2`), ['write -P 7 1M 64k'], 'qcow2');
    }
    const q = qemuImg(['commit', 'top.qcow2'], p('q'));
    const v = await vdisk(['commit', 'top.qcow2'], p('v'));
    expect(v.stderr).toBe(asVdisk(q.stderr));
    expect(v.stderr).toContain('a program lacking bitmap support');
    expect(v.stdout).toBe(q.stdout);
    expect(v.code).toBe(q.code);
    for (const f of ['base.qcow2', 'top.qcow2']) {
      expect(qemuImg(['info', p(`v/${f}`)]).stderr).toBe(qemuImg(['info', p(`q/${f}`)]).stderr);
    }
    expect(qemuImg(['check', p('v/base.qcow2')]).code).toBe(qemuImg(['check', p('q/base.qcow2')]).code);
  });

  it('a writable open drops the extension as QEMU does (check -r, resize): the warning goes', async () => {
    for (const image of ['v3.qcow2', 'v2.qcow2']) {
      for (const args of [
        ['check', '-r', 'leaks', 'IMG'],
        ['resize', 'IMG', '+1M'],
      ]) {
        copyFileSync(p(image), p('q.qcow2'));
        copyFileSync(p(image), p('v.qcow2'));
        const q = qemuImg(
          args.map((a) => (a === 'IMG' ? 'q.qcow2' : a)),
          dir,
        );
        const v = await vdisk(
          args.map((a) => (a === 'IMG' ? 'v.qcow2' : a)),
          dir,
        );
        expect(v.stderr, args.join(' ')).toBe(asVdisk(q.stderr));
        expect(v.code).toBe(q.code);
        // Afterwards: no warning, and qemu-img check sees the same image.
        const qi = qemuImg(['info', 'q.qcow2'], dir);
        const vi = qemuImg(['info', 'v.qcow2'], dir);
        expect(vi.stderr).toBe('');
        expect(vi.stderr).toBe(qi.stderr);
        const qc = qemuImg(['check', 'q.qcow2'], dir);
        const vc = qemuImg(['check', 'v.qcow2'], dir);
        expect(vc.stdout.replace(/Image end offset: \d+/, '')).toBe(
          qc.stdout.replace(/Image end offset: \d+/, ''),
        );
        expect(vc.code).toBe(qc.code);
      }
    }
  });
});
