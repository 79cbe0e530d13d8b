/**
 * How create and convert word a target they cannot make, against qemu-img on the same
 * arguments: a file that cannot be created (file-posix's "Could not create"), and bad -o
 * options (create names the image in front, convert does not).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir());
  writeFileSync(join(dir, 'x.raw'), Buffer.alloc(4096, 1));
});
afterAll(() => cleanup());

const same = async (args: string[]) => {
  const q = qemuImg(args);
  const v = await vdisk(args);
  expect(v.stderr, args.join(' ')).toBe(q.stderr.replaceAll('qemu-img:', 'vdisk:'));
  expect(v.code, args.join(' ')).toBe(q.code);
};

describe('create and convert: a target that cannot be made', () => {
  it('a file that cannot be created, in every format', async () => {
    const bad = join(dir, 'no-such-dir', 'out.img');
    for (const f of ['raw', 'qcow2', 'vmdk', 'vdi', 'vpc', 'vhdx', 'qed', 'parallels', 'qcow']) {
      await same(['create', '-q', '-f', f, bad, '1M']);
      await same(['convert', '-O', f, join(dir, 'x.raw'), bad]);
    }
  });

  it('bad -o options: named by create, bare in convert', async () => {
    for (const o of ['foo=1', 'cluster_size=abc', 'lazy_refcounts=maybe', 'refcount_bits=x']) {
      await same(['create', '-q', '-f', 'qcow2', '-o', o, join(dir, 'c.qcow2'), '1M']);
      await same(['convert', '-O', 'qcow2', '-o', o, join(dir, 'x.raw'), join(dir, 'v.qcow2')]);
    }
    await same(['create', '-q', '-f', 'raw', '-o', 'foo=1', join(dir, 'c.raw'), '1M']);
  });
});
