import { spawnSync } from 'node:child_process';
import { readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { extentsOf } from '../../core/device.js';
import { VdiskError } from '../../core/errors.js';
import { hasNative } from '../../native/index.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

describe('raw driver', () => {
  it('has the native addon built (holes and locks depend on it)', () => {
    expect(hasNative).toBe(true);
  });

  it('reports holes and data as qemu-img map does', async () => {
    const p = join(dir, 'r.img');
    qemuImgOk(['create', '-f', 'raw', p, '16M']);
    qemuIo(p, ['write -P 0xab 1M 64k', 'write -P 0xcd 8M 1M'], 'raw');
    const img = await openImage(p, { format: 'raw' });
    const ext = [];
    for await (const e of extentsOf(img))
      ext.push({ start: e.offset, length: e.length, data: e.data, zero: e.zero });
    await img.close();
    const qemu = JSON.parse(qemuImgOk(['map', '--output=json', '-f', 'raw', p])) as Array<
      Record<string, unknown>
    >;
    expect(ext).toEqual(
      qemu.map((e) => ({ start: e['start'], length: e['length'], data: e['data'], zero: e['zero'] })),
    );
  });

  it('reads and writes bytes exactly, zeroes by punching holes', async () => {
    const p = join(dir, 'w.img');
    writeFileSync(p, Buffer.alloc(0));
    truncateSync(p, 4 << 20);
    const img = await openImage(p, { format: 'raw', writable: true });
    const data = Buffer.alloc(100_000, 7);
    await img.writeAt(data, 12345);
    await img.writeZeroes(0, 1 << 20, { unmap: true });
    const back = Buffer.alloc(100_000);
    await img.readAt(back, 12345);
    expect(back.every((b) => b === 0)).toBe(true);
    await img.writeAt(data, 2 << 20);
    await img.close();
    const file = readFileSync(p);
    expect(file.subarray(2 << 20, (2 << 20) + 100_000).equals(data)).toBe(true);
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'raw', p, p]).code).toBe(0);
  });

  it('locks an image open for writing against qemu-img and against a second writer', async () => {
    const p = join(dir, 'l.img');
    qemuImgOk(['create', '-f', 'raw', p, '1M']);
    const img = await openImage(p, { format: 'raw', writable: true });
    try {
      // qemu-io asking for write permission meets our lock (QEMU's own OFD byte scheme).
      const q = spawnSync('qemu-io', ['-f', 'raw', '-c', 'write 0 512', p], { encoding: 'utf8' });
      expect(q.status).toBe(1);
      expect(q.stderr).toContain('Failed to get "write" lock');
      expect(qemuImg(['info', '-U', p]).code).toBe(0);
      await expect(openImage(p, { format: 'raw', writable: true })).rejects.toMatchObject({ code: 'LOCKED' });
      await expect(openImage(p, { format: 'raw' })).rejects.toBeInstanceOf(VdiskError);
      const shared = await openImage(p, { format: 'raw', forceShare: true });
      await shared.close();
    } finally {
      await img.close();
    }
    const again = await openImage(p, { format: 'raw', writable: true });
    await again.close();
  });
});

describe('create and info (raw) against qemu-img', () => {
  it('prints the same Formatting line, info text and JSON', async () => {
    for (const args of [
      ['1G'],
      ['100M'],
      ['1000'],
      ['1.5k'],
      ['-o', 'preallocation=falloc', '3M'],
      ['-o', 'preallocation=falloc', '1000'],
      ['-o', 'preallocation=full', '1000'],
    ]) {
      const q = join(dir, 'q.img');
      const v = join(dir, 'v.img');
      const qOut = qemuImgOk(['create', '-f', 'raw', ...args.slice(0, -1), 'q.img', args.at(-1)!], dir);
      const vOut = await vdisk(['create', '-f', 'raw', ...args.slice(0, -1), 'v.img', args.at(-1)!], dir);
      expect(vOut.code).toBe(0);
      expect(vOut.stdout).toBe(qOut.replace("'q.img'", "'v.img'"));
      // The file itself: qemu-img rounds 1000 bytes up to 1024.
      expect(statSync(v).size, args.join(' ')).toBe(statSync(q).size);
      const qi = qemuImgOk(['info', q]);
      const vi = await vdisk(['info', v]);
      expect(vi.stdout).toBe(qi.replaceAll(q, v));
      const qj = qemuImgOk(['info', '--output=json', q]);
      const vj = await vdisk(['info', '--output=json', v]);
      expect(vj.stdout).toBe(qj.replaceAll(q, v));
    }
  });

  it('rejects what qemu-img rejects, with one line and exit 1', async () => {
    for (const args of [
      ['create', '-f', 'raw', 'x.img'],
      ['create', '-f', 'raw', 'x.img', '1x'],
      ['info', 'missing.img'],
    ]) {
      const q = qemuImg(args, dir);
      const v = await vdisk(args, dir);
      expect(v.code).toBe(q.code);
      expect(v.stderr.replaceAll('vdisk:', 'qemu-img:')).toBe(q.stderr);
    }
  });
});
