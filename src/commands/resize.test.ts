import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

describe('resize against qemu-img', () => {
  const cases: Array<[string, string[]]> = [
    ['raw', ['20M']],
    ['raw', ['+1000']],
    ['raw', ['5M']],
    ['raw', ['--shrink', '5M']],
    ['raw', ['--shrink', '--', '-3M']],
    ['raw', ['--preallocation=falloc', '20M']],
    ['raw', ['--preallocation=full', '+1M']],
    ['raw', ['--shrink', '0']],
    ['qed', ['20M']],
    ['qed', ['+1T']],
    ['qed', ['5M']],
    ['qed', ['--shrink', '5M']],
    ['qed', ['--preallocation=full', '20M']],
    ['qed', ['1000']],
  ];
  it.each(cases)('%s %j: same output, exit code, size and content', async (fmt, args) => {
    const v = join(dir, `v.${fmt}`);
    const q = join(dir, `q.${fmt}`);
    qemuImgOk(['create', '-q', '-f', fmt, q, '10M']);
    qemuIo(q, ['write -P 0x5a 1M 8M'], fmt);
    copyFileSync(q, v);
    const qr = qemuImg(['resize', '-f', fmt, ...withFile(args, q)]);
    const vr = await vdisk(['resize', '-f', fmt, ...withFile(args, v)]);
    expect(vr.code).toBe(qr.code);
    expect(vr.stdout).toBe(qr.stdout);
    expect(vr.stderr.replace(/^vdisk:/gm, 'qemu-img:')).toBe(qr.stderr);
    const size = (p: string) =>
      (JSON.parse(qemuImgOk(['info', '--output=json', '-f', fmt, p])) as { 'virtual-size': number })[
        'virtual-size'
      ];
    expect(size(v)).toBe(size(q));
    if (size(q) <= 64 << 20) expect(qemuRawDigest(v, fmt)).toBe(qemuRawDigest(q, fmt));
    else expect(qemuImg(['compare', '-f', fmt, '-F', fmt, v, q]).code).toBe(0);
  });
});

/** Put the file name before the size (the last argument), keeping a `--` before a negative size. */
function withFile(args: string[], file: string): string[] {
  const size = args.at(-1)!;
  const rest = args.slice(0, -1).filter((a) => a !== '--');
  return size.startsWith('-') ? [...rest, '--', file, size] : [...rest, file, size];
}
