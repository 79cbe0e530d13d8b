import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { Secrets } from '../../core/secrets.js';
import { qemuImgOk, tempDir, vdisk } from '../../test/oracle.js';
import { expectSameAsQemu } from '../../test/same.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => {
  cleanup();
});

const same = (args: string[]) => expectSameAsQemu(args);

// qemu-img 7.2 still creates legacy AES images (only the system emulators refuse them).
describe('legacy AES (qcow v1 and qcow2 crypt_method 1) made by qemu-img', () => {
  for (const fmt of ['qcow', 'qcow2']) {
    // A short passphrase (zero-padded to the 16-byte key) and a long one (cut to 16 bytes).
    for (const pw of ['abc', 'a much longer passphrase than sixteen bytes']) {
      it(`${fmt}, passphrase of ${pw.length} bytes: reads as qemu-img, info equal`, async () => {
        const obj = ['--object', `secret,id=s0,data=${pw}`];
        const p = join(dir, `a.${fmt}`);
        const o = (wrong = false) =>
          `driver=${fmt},encrypt.key-secret=${wrong ? 's1' : 's0'},file.filename=${p}`;
        qemuImgOk([
          'create',
          '-q',
          '-f',
          fmt,
          ...obj,
          '-o',
          'encrypt.format=aes,encrypt.key-secret=s0',
          p,
          '4M',
        ]);
        const io = spawnSync(
          'qemu-io',
          [...obj, '--image-opts', o(), '-c', 'write -P 0x5a 4096 100k', '-c', 'write -P 0x11 3000k 5000'],
          { encoding: 'utf8' },
        );
        expect(io.status).toBe(0);
        const q = join(dir, 'q.raw');
        const v = join(dir, 'v.raw');
        qemuImgOk(['convert', ...obj, '--image-opts', o(), '-O', 'raw', q]);
        const r = await vdisk(['convert', ...obj, '--image-opts', o(), '-O', 'raw', v]);
        expect(r.stderr).toBe('');
        const want = readFileSync(q);
        expect(want[4096]).toBe(0x5a);
        expect(readFileSync(v).equals(want)).toBe(true);
        await same(['info', p]);
        await same(['info', '--output=json', p]);
        await same(['info', ...obj, '--image-opts', o()]);
        await same(['convert', p, '-O', 'raw', v]); // no key-secret: qemu-img's error
        await same(['convert', ...obj, '--image-opts', o(true), '-O', 'raw', v]); // unknown secret
      });
    }
  }

  it('refuses to open them for writing, in one line', async () => {
    const p = join(dir, 'a.qcow2');
    qemuImgOk([
      'create',
      '-q',
      '-f',
      'qcow2',
      '--object',
      'secret,id=s0,data=abc',
      '-o',
      'encrypt.format=aes,encrypt.key-secret=s0',
      p,
      '1M',
    ]);
    const secrets = new Secrets().define('s0', new TextEncoder().encode('abc'));
    await expect(
      openImage(p, { secrets, writable: true, driverOptions: { 'encrypt.key-secret': 's0' } }),
    ).rejects.toThrow(/read-only/);
  });
});
