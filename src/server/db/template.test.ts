import { describe, expect, it } from 'vitest';
import { dataEnd } from './template.js';

describe('dataEnd', () => {
  /** The reference: the last non-zero byte, found one byte at a time. */
  const slow = (b: Buffer) => {
    let end = b.length;
    while (end > 0 && b[end - 1] === 0) end--;
    return end;
  };
  it('finds the end of the data before trailing zeros, on every side of a 64 KiB step', () => {
    const K = 64 * 1024;
    for (const size of [0, 1, 511, K - 1, K, K + 1, 3 * K + 7, 16 << 20]) {
      for (const last of [-1, 0, 1, K - 1, K, K + 1, size - K - 1, size - K, size - 1]) {
        const b = Buffer.alloc(size);
        if (last >= 0 && last < size) b[last] = 0x5a;
        expect(dataEnd(b), `${size} ${last}`).toBe(slow(b));
      }
    }
    expect(dataEnd(Buffer.from([1, 2, 3]))).toBe(3);
  });
});
