/**
 * HostFile's two ways to a local file: small reads first from the page cache on the calling
 * thread (preadv2 RWF_NOWAIT), the thread pool for the rest; small writes inline when the file
 * was opened for it. Both must read and write exactly what the pool does: short reads at the
 * end of the file, reads past it (zeros), and sizes on either side of the limit.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
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

describe('untouched space and reserveZeroed', () => {
  it('knows where nothing was written, allocates ahead, and gives back at close what no write reached', async () => {
    const p = join(dir, 'reserve.bin');
    writeFileSync(p, Buffer.alloc(8192, 1));
    const f = await HostFile.open(p, { writable: true });
    // Before the size is known nothing counts as untouched.
    expect(f.untouchedFrom()).toBe(Number.POSITIVE_INFINITY);
    expect(f.reserveZeroed(1 << 20, 65536, 1 << 20)).toBe(false);
    expect(await f.size()).toBe(8192);
    expect(f.untouchedFrom()).toBe(8192);
    expect(f.reserveZeroed(4096, 4096, 1 << 20)).toBe(false); // inside the file
    // A write moves it as soon as it is issued.
    const w = f.write(Buffer.alloc(4096, 2), 65536);
    expect(f.untouchedFrom()).toBe(69632);
    await w;
    expect(f.reserveZeroed(65536, 65536, 1 << 20)).toBe(false); // written
    // 64 KiB at 128 KiB, allocated 1 MiB ahead: the next ones inside cost nothing.
    expect(f.reserveZeroed(131072, 65536, 1 << 20)).toBe(true);
    expect(statSync(p).size).toBe(131072 + (1 << 20));
    expect(f.reserveZeroed(196608, 65536, 1 << 20)).toBe(true);
    expect(statSync(p).size).toBe(131072 + (1 << 20));
    await f.write(Buffer.alloc(4096, 3), 196608 + 8192);
    await f.close();
    // The end of the last reservation; what was allocated past it is given back.
    expect(statSync(p).size).toBe(262144);
    const back = readFileSync(p);
    expect(back.subarray(131072, 196608 + 8192).every((b) => b === 0)).toBe(true);
    expect(back.subarray(196608 + 8192, 196608 + 12288).every((b) => b === 3)).toBe(true);
  });
});
