import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../test/oracle.js';
import { runBoth, runEach } from '../test/same.js';

let dir: string;
let cleanup: () => void;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-dd-'));
  qemuImgOk(['create', '-f', 'raw', join(dir, 'r.img'), '16M']);
  qemuIo(
    join(dir, 'r.img'),
    ['write -P 0xab 1M 64k', 'write -P 0xcd 8M 3M', 'write -P 0x11 16320k 64k'],
    'raw',
  );
  qemuImgOk(['create', '-f', 'qed', '-b', 'r.img', '-F', 'raw', join(dir, 'top.qed'), '20M']);
  qemuIo(join(dir, 'top.qed'), ['write -P 0x22 9M 100k', 'write -P 0x33 18M 4k'], 'qed');
  writeFileSync(join(dir, 'odd.img'), Buffer.alloc(1000, 5));
});
afterAll(() => cleanup());

let n = 0;
async function ddBoth(args: string[], out: string, fmt = 'raw'): Promise<void> {
  n++;
  const q = join(dir, `q${n}`);
  const v = join(dir, `v${n}`);
  mkdirSync(q);
  mkdirSync(v);
  const at = (d: string) => args.map((a) => (a === 'of=OUT' ? `of=${join(d, out)}` : a));
  const { qemu, ours } = await runEach(['dd', ...at(q)], ['dd', ...at(v)], dir);
  expect(ours).toEqual({ ...qemu, stderr: qemu.stderr.replaceAll(q, v) });
  if (qemu.code !== 0) return;
  // Same guest content and size (vdisk leaves zero ranges unwritten: allocation may differ).
  expect(qemuImg(['compare', '-f', fmt, '-F', fmt, join(q, out), join(v, out)]).stdout).toBe(
    'Images are identical.\n',
  );
  const size = (f: string) => JSON.parse(qemuImgOk(['info', '--output=json', '-f', fmt, f]))['virtual-size'];
  expect(size(join(v, out))).toBe(size(join(q, out)));
  if (fmt !== 'raw') expect(qemuImg(['check', '-f', fmt, join(v, out)]).code).toBe(0);
}

describe('dd against qemu-img', () => {
  it('whole image', () => ddBoth(['if=r.img', 'of=OUT'], 'o.img'));
  it('bs and count', () => ddBoth(['if=r.img', 'of=OUT', 'bs=1M', 'count=9'], 'o.img'));
  it('count includes skipped blocks', () =>
    ddBoth(['if=r.img', 'of=OUT', 'bs=1M', 'count=10', 'skip=4'], 'o.img'));
  it('skip only', () => ddBoth(['skip=3', 'bs=3M', 'if=r.img', 'of=OUT'], 'o.img'));
  it('odd block size', () => ddBoth(['if=r.img', 'of=OUT', 'bs=1000', 'count=9000', 'skip=3'], 'o.img'));
  it('skip past the end', () => ddBoth(['if=r.img', 'of=OUT', 'bs=1M', 'skip=100'], 'o.img'));
  it('count=0', () => ddBoth(['if=r.img', 'of=OUT', 'count=0'], 'o.img'));
  it('a chain into qed', () => ddBoth(['-O', 'qed', 'if=top.qed', 'of=OUT', 'bs=64k'], 'o.qed', 'qed'));
  it('-f and -U', () => ddBoth(['-f', 'qed', '-U', 'if=top.qed', 'of=OUT', 'bs=1M', 'count=19'], 'o.img'));
  it('odd-sized input', () => ddBoth(['if=odd.img', 'of=OUT'], 'o.img'));
  const errors = [
    ['if=r.img', 'of=OUT', '-O', 'foo'],
    ['if=r.img'],
    ['of=OUT'],
    [],
    ['if=r.img', 'of=OUT', 'bs=0'],
    ['if=r.img', 'of=OUT', 'bs=3G'],
    ['if=r.img', 'of=OUT', 'bs=1.5k', 'count=abc'],
    ['if=r.img', 'of=OUT', 'skip=-1'],
    ['if=r.img', 'of=OUT', 'foo=1'],
    ['if=r.img', 'of=OUT', 'junk'],
    ['if=nope.img', 'of=OUT'],
    ['-f', 'qed', 'if=r.img', 'of=OUT'],
    ['-x', 'if=r.img', 'of=OUT'],
  ];
  for (const args of errors) it(`error: ${args.join(' ')}`, () => ddBoth(args, 'o.img'));
});

const measures: string[][] = [
  ['--size', '1G'],
  ['--size', '1G', '--output=json'],
  ['--size', '1000'],
  ['--size', '1.5k', '--output', 'human'],
  ['r.img'],
  ['--output=json', 'r.img'],
  ['-f', 'raw', '-U', 'r.img'],
  ['top.qed'],
  ['odd.img'],
  ['--size', '1G', '-o', 'preallocation=full'],
  ['--size', '1G', '-o', 'nocow=on'],
  ['-O', 'raw', '--size', '1G', '-o', 'size=5G'],
  // errors
  ['--size', '1G', 'r.img'],
  [],
  ['-f', 'raw'],
  ['-l', 'snap'],
  ['--size', '1G', '-o', 'foo=1'],
  ['--size', '1G', '-O', 'foo'],
  ['--size', 'abc'],
  ['--size=-1'],
  ['--size', '1G', 'a', 'b'],
  ['-l', 'snap', 'r.img'],
  ['-l', 'snapshot.x=1', 'r.img'],
  ['-O', 'qed', '--size', '1G'],
  ['-O', 'vpc', 'r.img'],
  ['-O', 'raw', '-o', 'help', '--size', '1G'],
  ['--output=xml', '--size', '1G'],
  ['nope.img'],
];

describe('measure against qemu-img (raw)', () => {
  for (const args of measures) {
    it(args.join(' ') || '(no arguments)', async () => {
      const { qemu, ours } = await runBoth(['measure', ...args], dir);
      expect(ours).toEqual(qemu);
    });
  }
  it('an unknown option: glibc words it, then the general help, exit 0', async () => {
    const { qemu, ours } = await runBoth(['measure', '-x'], dir);
    expect(ours.code).toBe(qemu.code);
    expect(ours.stderr).toBe(qemu.stderr);
    expect(ours.stdout).toContain('Command syntax:');
  });
});
