/**
 * The options of --image-opts against qemu-img 7.2, for every format qemu-img creates: each
 * format's own runtime options and the generic ones are accepted, the local file's (`file.*`)
 * too, and anything else is refused with QEMU's words (before, every driver but raw took any
 * option silently, and raw refused `file.locking`).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgLuks, qemuImgOk, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
const FORMATS = ['raw', 'qcow2', 'qcow', 'qed', 'vmdk', 'vdi', 'vhdx', 'vpc', 'parallels', 'luks'];
const SECRET = ['--object', 'secret,id=s0,data=pw'];

beforeAll(() => {
  ({ dir, cleanup } = tempDir());
  for (const f of FORMATS) {
    const img = join(dir, `img.${f}`);
    if (f === 'luks') {
      // qemuImgLuks: again while QEMU's PBKDF2 timing reads 0 ms (as a clean-clone CI run met).
      const r = qemuImgLuks(['create', '-q', '-f', 'luks', ...SECRET, '-o', 'key-secret=s0', img, '1M']);
      if (r.code !== 0) throw new Error(`qemu-img create -f luks failed: ${r.stderr}`);
    } else qemuImgOk(['create', '-q', '-f', f, img, '1M']);
  }
});
afterAll(() => cleanup());

// One name of every kind: generic, file-posix, each format's own, a child's, and unknown ones.
const OPTIONS = [
  'node-name=n0',
  'read-only=on',
  'discard=unmap',
  'cache.direct=off',
  'cache.no-flush=on',
  'detect-zeroes=off',
  'force-share=on',
  'cache.writeback=on',
  'file.locking=off',
  'file.aio=threads',
  'file.drop-cache=on',
  'file.cache.direct=off',
  'file.bogus=1',
  'lazy-refcounts=on',
  'pass-discard-other=on',
  'overlap-check=none',
  'overlap-check.inactive-l2=off',
  'l2-cache-size=1M',
  'cache-clean-interval=0',
  'encrypt.key-secret=s0',
  'data-file.filename=x',
  'force_size_calc=chs',
  'offset=0',
  'size=1048576',
  'table_size=4',
  'bogus=1',
  // info opens the image as QEMU does without its backing: nothing takes these.
  'backing.driver=qcow2',
  'backing.foo=1',
  'backing=null',
];

describe('--image-opts options, each format, as qemu-img 7.2', () => {
  it.each(FORMATS)('%s', async (f) => {
    for (const o of OPTIONS) {
      const opts = `driver=${f},file.filename=${join(dir, `img.${f}`)},${f === 'luks' ? 'key-secret=s0,' : ''}${o}`;
      const args = ['info', ...SECRET, '--image-opts', opts];
      const q = qemuImg(args);
      const v = await vdisk(args);
      expect(v.code, `${f} ${o}: ${v.stderr}`).toBe(q.code);
      expect(v.stderr, `${f} ${o}`).toBe(q.stderr.replaceAll('qemu-img:', 'vdisk:'));
    }
  });
});
