import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../chain/open.js';
import { qemuImg, qemuImgOk, tempDir } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

const MiB = 1 << 20;

describe('Image metadata operations', () => {
  it('refuse a read-only image before reaching the driver', async () => {
    const p = join(dir, 'a.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', p, '4M']);
    const before = readFileSync(p);
    const img = await openImage(p, { format: 'qcow2', writable: false });
    for (const op of [
      () => img.resize(8 * MiB, { shrink: false }),
      () => img.amend({ lazy_refcounts: true }),
      () => img.changeBackingFile(undefined),
      () => img.makeEmpty(),
      () => img.createSnapshot('s', { sec: 0, nsec: 0 }),
    ]) {
      await expect(op()).rejects.toMatchObject({ code: 'READ_ONLY' });
    }
    await img.close();
    expect(readFileSync(p).equals(before)).toBe(true);
  });

  it("say what a format without the operation lacks, in qemu-img's words", async () => {
    const p = join(dir, 'a.raw');
    qemuImgOk(['create', '-q', '-f', 'raw', p, '1M']);
    const img = await openImage(p, { format: 'raw', writable: true });
    expect(img.supports('resize')).toBe(true);
    for (const op of ['amend', 'backingFile', 'makeEmpty', 'snapshots'] as const)
      expect(img.supports(op)).toBe(false);
    await expect(img.amend({})).rejects.toMatchObject({
      code: 'UNSUPPORTED',
      message: "Format driver 'raw' does not support option amendment",
    });
    await expect(img.changeBackingFile(undefined)).rejects.toMatchObject({
      code: 'UNSUPPORTED',
      message: "Format 'raw' does not support backing files",
    });
    await expect(img.makeEmpty()).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    await expect(img.createSnapshot('s', { sec: 0, nsec: 0 })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    await expect(img.deleteSnapshot('s')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await img.close();
    // The words the snapshot command wraps are qemu-img's.
    const img2 = await openImage(p, { format: 'raw', writable: true });
    const err = await img2.applySnapshot('s').catch((e: Error) => e);
    await img2.close();
    // (qemu-img snapshot has no -f: the probed raw image's warnings come first.)
    const q = qemuImg(['snapshot', '-a', 's', p]);
    expect(q.stderr.trimEnd().split('\n').pop()).toBe(
      `qemu-img: Could not apply snapshot 's': ${(err as Error).message}`,
    );
  });

  it('wait for the writes already in flight: a snapshot taken meanwhile holds them all', async () => {
    const p = join(dir, 'a.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', p, '8M']);
    const model = Buffer.alloc(8 * MiB);
    const img = await openImage(p, { format: 'qcow2', writable: true });
    const jobs: Promise<unknown>[] = [];
    for (let i = 0; i < 16; i++) {
      const data = randomBytes(192 * 1024);
      data.copy(model, i * 512 * 1024);
      jobs.push(img.writeAt(data, i * 512 * 1024));
    }
    jobs.push(img.createSnapshot('s', { sec: 1, nsec: 0 }));
    // Writes after the snapshot change only the active layer.
    jobs.push(img.writeAt(randomBytes(4 * MiB), 0));
    await Promise.all(jobs);
    await img.close();
    const ref = join(dir, 'model.raw');
    writeFileSync(ref, model);
    const snap = join(dir, 'snap.raw');
    qemuImgOk(['convert', '-f', 'qcow2', '-O', 'raw', '-l', 'snapshot.name=s', p, snap]);
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'raw', snap, ref]).stdout).toBe('Images are identical.\n');
    expect(qemuImg(['check', '-f', 'qcow2', p]).code).toBe(0);
  });
});
