/**
 * The file store's writer: whatever the mix of chunk sizes (small ones coalesced, whole-MiB
 * ones written in place from the caller's buffer), the committed blob holds exactly the bytes
 * in order; the caller may overwrite a chunk as soon as its write resolved; an aborted writer
 * leaves nothing, not even its temporary file.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
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
});
