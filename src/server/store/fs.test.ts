/**
 * The file store's writer: whatever the mix of chunk sizes (small ones coalesced, whole-MiB
 * ones written in place from the caller's buffer), the committed blob holds exactly the bytes
 * in order; the caller may overwrite a chunk as soon as its write resolved; an aborted writer
 * leaves nothing, not even its temporary file; a large blob, whose write-back starts while
 * it is written (sync_file_range), is whole, and aborting one mid-way leaves nothing either.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { native } from '../../native/index.js';
import { FsStore } from './fs.js';

const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'vdisk-fsstore-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('FsStore writer', () => {
  it('keeps every byte in order across coalesced and in-place writes', async () => {
    const store = await FsStore.open(dir);
    const sizes = [4 * MiB, 5, 2 * MiB + 3, MiB, 4 * MiB, 65536, MiB - 1, 1, 3 * MiB, 0, 17];
    const data = randomBytes(sizes.reduce((a, b) => a + b, 0));
    const w = await store.create('mixed');
    // One reused buffer, overwritten after each write resolves (as the upload's blocks are).
    const scratch = Buffer.alloc(4 * MiB);
    let off = 0;
    for (const n of sizes) {
      data.copy(scratch, 0, off, off + n);
      await w.write(scratch.subarray(0, n));
      scratch.fill(0xee);
      off += n;
    }
    await w.commit();
    expect(readFileSync(join(dir, 'mixed')).equals(data)).toBe(true);
    expect(await store.size('mixed')).toBe(data.length);
    expect(readdirSync(join(dir, '.tmp'))).toEqual([]);
  });

  it('abort removes the temporary file and publishes nothing', async () => {
    const store = await FsStore.open(dir);
    const w = await store.create('gone');
    await w.write(randomBytes(4 * MiB));
    await w.write(randomBytes(100));
    await w.abort();
    expect(await store.size('gone')).toBe(null);
    expect(readdirSync(join(dir, '.tmp'))).toEqual([]);
  });

  it('a blob large enough for early write-back is whole; an abort mid-way leaves nothing', async () => {
    expect(native?.syncRange).toBeDefined();
    const f = await open(join(dir, 'probe'), 'w');
    await f.write(randomBytes(MiB));
    expect(await native!.syncRange!(f.fd, 0, MiB)).toBe(0);
    await f.close();
    expect(await native!.syncRange!(987654, 0, MiB)).toBeLessThan(0); // EBADF, no crash
    rmSync(join(dir, 'probe'));

    const store = await FsStore.open(dir);
    const data = randomBytes(40 * MiB + 123);
    const w = await store.create('large');
    const block = Buffer.alloc(4 * MiB);
    for (let off = 0; off < data.length; off += block.length) {
      const n = data.copy(block, 0, off, Math.min(data.length, off + block.length));
      await w.write(block.subarray(0, n));
    }
    await w.commit();
    expect(readFileSync(join(dir, 'large')).equals(data)).toBe(true);

    const a = await store.create('cut');
    for (let i = 0; i < 6; i++) await a.write(randomBytes(4 * MiB));
    await a.abort();
    expect(await store.size('cut')).toBe(null);
    expect(readdirSync(join(dir, '.tmp'))).toEqual([]);
  });
});
