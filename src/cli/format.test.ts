import { describe, expect, it } from 'vitest';
import { cFormatG, sizeToStr } from './format.js';

describe('sizeToStr (QEMU size_to_str)', () => {
  it.each([
    [0, '0 B'],
    [999, '999 B'],
    [1000, '0.977 KiB'],
    [1024, '1 KiB'],
    [200704, '196 KiB'],
    [1536, '1.5 KiB'],
    [104857600, '100 MiB'],
    [1073741824, '1 GiB'],
    [1099511627776, '1 TiB'],
    [2 ** 60, '1 EiB'],
  ])('%d → %s', (n, s) => {
    expect(sizeToStr(n)).toBe(s);
  });
  it('formats like printf %g', () => {
    expect(cFormatG(1.5, 3)).toBe('1.5');
    expect(cFormatG(100, 3)).toBe('100');
    expect(cFormatG(999.9, 3)).toBe('1e+03');
    expect(cFormatG(0.0001234, 3)).toBe('0.000123');
  });
});
