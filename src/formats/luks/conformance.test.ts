import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { openImage } from '../../chain/open.js';
import { Secrets } from '../../core/secrets.js';
import { runDeviceConformance } from '../../test/conformance.js';
import { OBJ, qemuCreateLuks } from '../../test/luks.js';
import { qemuImgLuks, tempDir } from '../../test/oracle.js';

/** The secret `s0` of src/test/luks.ts, in the store each open passes (as the CLI's --object). */
const secrets = new Secrets().define('s0', new TextEncoder().encode('hunter2'));

/**
 * qemu-img create of an encrypted image costs seconds (QEMU times PBKDF2 for at least 500 ms of
 * CPU, twice, whatever iter-time says): each target creates its image once and every case works
 * on a copy.
 */
function once(make: (path: string, size: number) => void): (path: string, size: number) => Promise<void> {
  const made = new Map<number, string>();
  return async (path, size) => {
    let template = made.get(size);
    if (template === undefined) {
      template = join(templates.dir, `t${made.size}-${templates.n++}`);
      make(template, size);
      made.set(size, template);
    }
    copyFileSync(template, path);
  };
}

const templates = { dir: '', n: 0, cleanup: () => {} };
beforeAll(() => {
  const t = tempDir();
  templates.dir = t.dir;
  templates.cleanup = t.cleanup;
});
afterAll(() => templates.cleanup());

runDeviceConformance({
  format: 'luks',
  label: 'luks (created by qemu-img)',
  zeroInit: false,
  create: once((path, size) => {
    qemuCreateLuks(['-o', 'key-secret=s0,iter-time=10', path, String(size)]);
  }),
  open: (path, writable) =>
    openImage(path, { format: 'luks', writable, secrets, driverOptions: { 'key-secret': 's0' } }),
  qemuImage: (path) => [
    ...OBJ,
    `json:${JSON.stringify({ driver: 'luks', 'key-secret': 's0', file: { driver: 'file', filename: path } })}`,
  ],
});

runDeviceConformance({
  format: 'qcow2',
  label: 'qcow2 encrypt.format=luks (created by qemu-img)',
  checkable: true,
  create: once((path, size) => {
    const r = qemuImgLuks([
      'create',
      '-q',
      '-f',
      'qcow2',
      ...OBJ,
      '-o',
      'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10',
      path,
      String(size),
    ]);
    if (r.code !== 0) throw new Error(r.stderr);
  }),
  open: (path, writable) =>
    openImage(path, { format: 'qcow2', writable, secrets, driverOptions: { 'encrypt.key-secret': 's0' } }),
  qemuImage: (path) => [
    ...OBJ,
    `json:${JSON.stringify({ driver: 'qcow2', encrypt: { 'key-secret': 's0' }, file: { driver: 'file', filename: path } })}`,
  ],
});
