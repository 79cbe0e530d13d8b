/**
 * HostFile's two ways to a local file: small reads first from the page cache on the calling
 * thread (preadv2 RWF_NOWAIT), the thread pool for the rest; small writes inline when the file
 * was opened for it. Both must read and write exactly what the pool does: short reads at the
 * end of the file, reads past it (zeros), and sizes on either side of the limit.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../test/oracle.js';
import { HostFile } from './host-file.js';

let dir: string;
let cleanup: () => void;
const DATA = randomBytes(300_000);

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-host-file-'));
  writeFileSync(join(dir, 'data.bin'), DATA);
});
afterAll(() => cleanup());

/** DATA read at [off, off+n), zeros past its end. */
const expected = (off: number, n: number) => {
  const b = Buffer.alloc(n);
  if (off < DATA.length) DATA.copy(b, 0, off, Math.min(DATA.length, off + n));
  return b;
};

describe('HostFile reads and writes', () => {
  it('reads small and large ranges, across and past the end of the file, as they are', async () => {
    const f = await HostFile.open(join(dir, 'data.bin'));
    try {
      for (const [off, n] of [
        [0, 4096],
        [1, 511],
        [65_536, 131_072], // the inline limit exactly
        [65_536, 131_073], // one byte over: the pool
        [299_000, 4096], // a short read at the end, then zeros
        [300_000, 512], // at the end: zeros
        [1 << 30, 4096], // far past it
        [10, 290_000],
      ] as const) {
        const b = Buffer.alloc(n, 0xee);
        await f.read(b, off);
        expect(b.equals(expected(off, n)), `${off}+${n}`).toBe(true);
      }
    } finally {
      await f.close();
    }
  });

  it('writes small ones inline and large ones through the pool, with the same result', async () => {
    for (const inline of [false, true]) {
      const p = join(dir, `w-${inline}.bin`);
      writeFileSync(p, Buffer.alloc(0));
      const f = await HostFile.open(p, { writable: true, lock: 'none', inlineSmallWrites: inline });
      const model = Buffer.alloc(400_000);
      try {
        for (const [off, n] of [
          [0, 4096],
          [5000, 100],
          [131_072, 131_072],
          [262_144, 131_073],
          [399_000, 1000],
        ] as const) {
          const b = randomBytes(n);
          await f.write(b, off);
          b.copy(model, off);
        }
      } finally {
        await f.close();
      }
      expect(readFileSync(p).equals(model), `inline ${inline}`).toBe(true);
    }
  });

  it('a write to a read-only file is refused either way', async () => {
    const f = await HostFile.open(join(dir, 'data.bin'), { inlineSmallWrites: true });
    try {
      await expect(f.write(Buffer.alloc(10), 0)).rejects.toThrow(/read-only/);
    } finally {
      await f.close();
    }
  });
});
