import { closeSync, copyFileSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

it('check -r all repairs a parallels image left in use, as qemu-img does (opened for check)', async () => {
  const q = join(dir, 'q.hdd');
  const v = join(dir, 'v.hdd');
  qemuImgOk(['create', '-q', '-f', 'parallels', q, '10M']);
  qemuIo(q, ['write -P 1 0 1M'], 'parallels');
  const fd = openSync(q, 'r+');
  writeSync(fd, Buffer.from([0x59, 0x6e, 0x6f, 0x74]), 0, 4, 44); // the "in use" mark
  closeSync(fd);
  copyFileSync(q, v);
  for (const args of [['check'], ['check', '--output=json'], ['check', '-r', 'all']]) {
    const qr = qemuImg([...args, q]);
    const vr = await vdisk([...args, v]);
    expect(vr.code, args.join(' ')).toBe(qr.code);
    expect(vr.stdout.replaceAll(v, q)).toBe(qr.stdout);
    expect(vr.stderr.replace(/^vdisk:/gm, 'qemu-img:').replaceAll(v, q)).toBe(qr.stderr);
  }
  expect(readFileSync(v).equals(readFileSync(q))).toBe(true);
});
