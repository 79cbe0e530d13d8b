/**
 * Writes side by side in one cluster (Qcow2Image.claim): a write with no byte in common with
 * a write in flight goes ahead in the clusters that one takes in place (an allocated cluster,
 * or the fresh cluster of a pending allocation) instead of waiting for its data; a write that
 * shares bytes with it, or any other operation, still waits. Checked with qemu-img and qemu-io.
 */

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import type { WriteSource } from '../../core/driver.js';
import { HostFile } from '../../core/host-file.js';
import type { Image } from '../../core/image.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-claims-'));
});
afterAll(() => cleanup());

const CS = 65536;

/** Whether `p` settles within a few turns of the event loop. */
async function settlesSoon(p: Promise<unknown>): Promise<boolean> {
  let settled = false;
  p.then(
    () => {
      settled = true;
    },
    () => {
      settled = true;
    },
  );
  for (let i = 0; i < 20 && !settled; i++) await new Promise((r) => setImmediate(r));
  return settled;
}

async function fresh(name: string, opts = ''): Promise<{ path: string; img: Image }> {
  const path = join(dir, name);
  qemuImgOk(['create', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), path, '4M']);
  return { path, img: await openImage(path, { writable: true }) };
}

/** The data clusters qemu-img map lists: [guest, host]. */
function dataClusters(path: string): Array<[number, number | undefined]> {
  const map = JSON.parse(qemuImgOk(['map', '--output=json', path])) as Array<{
    start: number;
    length: number;
    data: boolean;
    offset?: number;
  }>;
  return map.filter((m) => m.data).map((m) => [m.start, m.offset]);
}

describe('qcow2 writes side by side in a cluster', () => {
  it('a write into the rest of a new cluster goes ahead of the first one’s data, in the same host cluster', async () => {
    const { path, img } = await fresh('pending.qcow2');
    const finishA = await img.prepareWrite(Buffer.alloc(4096, 0xa1), CS + 8192);
    // B: the bytes after A's in the same new cluster; prepared while A's data is not written.
    const prepB = img.prepareWrite(Buffer.alloc(8192, 0xb2), CS + 12288);
    expect(await settlesSoon(prepB)).toBe(true);
    const finishB = await prepB;
    // B lands first, then A.
    await finishB();
    await finishA();
    await img.close();
    const check = qemuImg(['check', path]);
    expect(check.stdout + check.stderr).not.toMatch(/ERROR|Leaked/);
    expect(check.code).toBe(0);
    // One host cluster for both, as when the writes run one after the other.
    expect(dataClusters(path)).toHaveLength(1);
    const out = qemuIo(
      path,
      ['read -P 0 64k 8k', 'read -P 0xa1 72k 4k', 'read -P 0xb2 76k 8k', 'read -P 0 84k 44k'],
      'qcow2',
    );
    expect(out).not.toMatch(/fail|mismatch/i);
  });

  it('a write that shares bytes with one in flight waits for its data, and is written after it', async () => {
    const { path, img } = await fresh('overlap.qcow2');
    const finishA = await img.prepareWrite(Buffer.alloc(8192, 0xa1), CS);
    const prepC = img.prepareWrite(Buffer.alloc(4096, 0xc3), CS + 4096);
    expect(await settlesSoon(prepC)).toBe(false);
    await finishA();
    await (await prepC)();
    // Another operation on the cluster (a zero write) waits for a write in flight too.
    const finishD = await img.prepareWrite(Buffer.alloc(4096, 0xd4), 2 * CS);
    const zero = img.writeZeroes(2 * CS + 8192, 4096);
    expect(await settlesSoon(zero)).toBe(false);
    await finishD();
    await zero;
    await img.close();
    expect(qemuImg(['check', path]).code).toBe(0);
    const out = qemuIo(
      path,
      [
        'read -P 0xa1 64k 4k',
        'read -P 0xc3 68k 4k',
        'read -P 0 72k 56k',
        'read -P 0xd4 128k 4k',
        'read -P 0 132k 60k',
      ],
      'qcow2',
    );
    expect(out).not.toMatch(/fail|mismatch/i);
  });

  it('writes in place into an allocated cluster go side by side', async () => {
    const { path, img } = await fresh('in-place.qcow2');
    await img.writeAt(Buffer.alloc(CS, 0x11), 0);
    const finishA = await img.prepareWrite(Buffer.alloc(4096, 0xa1), 0);
    const prepB = img.prepareWrite(Buffer.alloc(4096, 0xb2), 4096);
    expect(await settlesSoon(prepB)).toBe(true);
    await (await prepB)();
    await finishA();
    await img.close();
    expect(qemuImg(['check', path]).code).toBe(0);
    const out = qemuIo(path, ['read -P 0xa1 0 4k', 'read -P 0xb2 4k 4k', 'read -P 0x11 8k 56k'], 'qcow2');
    expect(out).not.toMatch(/fail|mismatch/i);
  });

  it('extended L2 entries and shared (snapshot) clusters still take turns', async () => {
    const ext = await fresh('ext-l2.qcow2', 'extended_l2=on');
    const finishA = await ext.img.prepareWrite(Buffer.alloc(4096, 0xa1), CS);
    const prepB = ext.img.prepareWrite(Buffer.alloc(4096, 0xb2), CS + 8192);
    expect(await settlesSoon(prepB)).toBe(false);
    await finishA();
    await (await prepB)();
    await ext.img.close();
    expect(qemuImg(['check', ext.path]).code).toBe(0);
    expect(
      qemuIo(ext.path, ['read -P 0xa1 64k 4k', 'read -P 0 68k 4k', 'read -P 0xb2 72k 4k'], 'qcow2'),
    ).not.toMatch(/fail|mismatch/i);

    const snap = join(dir, 'snap.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', snap, '4M']);
    qemuIo(snap, ['write -P 0x11 0 64k'], 'qcow2');
    qemuImgOk(['snapshot', '-c', 's1', snap]);
    const img = await openImage(snap, { writable: true });
    const finishC = await img.prepareWrite(Buffer.alloc(4096, 0xc3), 0);
    const prepD = img.prepareWrite(Buffer.alloc(4096, 0xd4), 8192);
    expect(await settlesSoon(prepD)).toBe(false);
    await finishC();
    await (await prepD)();
    await img.close();
    const check = qemuImg(['check', snap]);
    expect(check.stdout + check.stderr).not.toMatch(/ERROR|Leaked/);
    expect(
      qemuIo(snap, ['read -P 0xc3 0 4k', 'read -P 0x11 4k 4k', 'read -P 0xd4 8k 4k'], 'qcow2'),
    ).not.toMatch(/fail|mismatch/i);
  });

  it('when the first write fails, the one beside it still points the cluster at its host cluster; alone, its allocation leaks as any failed write’s', async () => {
    const { path, img } = await fresh('failed.qcow2');
    const srcPath = join(dir, 'src.raw');
    writeFileSync(srcPath, Buffer.alloc(CS));
    const src = await HostFile.open(srcPath);
    // A write whose bytes come from a source that fails to read them (its data never lands).
    const failing: WriteSource = {
      file: src,
      offset: 0,
      how: 'clone',
      fill: () => Promise.reject(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' })),
    };
    const finishA = await img.prepareWrite(Buffer.alloc(4096, 0xa1), CS, failing);
    const finishB = await img.prepareWrite(Buffer.alloc(4096, 0xb2), CS + 4096);
    await expect(finishA()).rejects.toThrow(/EIO/);
    await finishB();
    // Alone: the cluster's allocation is dropped with the failed write, and a later write
    // into the same cluster takes a new one.
    const finishC = await img.prepareWrite(Buffer.alloc(4096, 0xc3), 3 * CS, failing);
    await expect(finishC()).rejects.toThrow(/EIO/);
    await img.writeAt(Buffer.alloc(4096, 0xd4), 3 * CS + 8192);
    await img.close();
    await src.close();
    const check = qemuImg(['check', path]);
    expect(check.stdout).not.toMatch(/ERROR/);
    expect(check.stdout).toMatch(/^1 leaked clusters were found on the image\./m);
    expect(check.code).toBe(3);
    const out = qemuIo(
      path,
      [
        'read -P 0 64k 4k',
        'read -P 0xb2 68k 4k',
        'read -P 0 72k 56k',
        'read -P 0 192k 8k',
        'read -P 0xd4 200k 4k',
      ],
      'qcow2',
    );
    expect(out).not.toMatch(/fail|mismatch/i);
    expect(dataClusters(path).map(([g]) => g)).toEqual([CS, 3 * CS]);
  });
});
