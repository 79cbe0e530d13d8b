import { describe, expect, it } from 'vitest';
import { native } from '../native/index.js';
import { ioBuffer } from './io-buffer.js';

describe('ioBuffer', () => {
  it('starts on a page boundary, where a plain large Buffer does not', () => {
    const m = native?.misalignment;
    expect(m, 'the native addon is built').toBeTypeOf('function');
    for (const size of [4096, 65536, 2 << 20, (2 << 20) + 512]) {
      const b = ioBuffer(size);
      expect(b.length).toBe(size);
      expect(m!(b, 4096)).toBe(0);
      b.fill(0xa5);
      expect(b[size - 1]).toBe(0xa5);
    }
    // What it avoids: glibc's header puts a large allocation 16 bytes past a page.
    expect(m!(Buffer.allocUnsafeSlow(2 << 20), 64)).not.toBe(0);
    expect(() => m!(Buffer.alloc(8), 3)).toThrow();
  });
});
