import { closeSync, ftruncateSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { qemuImgOk, tempDir } from '../test/oracle.js';
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
    // Exact ties round to even, as C's printf does.
    expect(cFormatG(192.5, 3)).toBe('192');
    expect(cFormatG(188.5, 3)).toBe('188');
    expect(cFormatG(193.5, 3)).toBe('194');
    expect(cFormatG(2.25, 2)).toBe('2.2');
  });
  it('prints what qemu-img info prints for the same sizes, ties included', () => {
    const { dir, cleanup } = tempDir();
    try {
      // 192.5 KiB, 188.5 KiB, 2.5 KiB, 1.25 MiB, 100.5 MiB, 1000.5 KiB, 10.5 GiB (sparse raw files).
      for (const size of [197120, 193024, 2560, 1310720, 105381888, 1024512, 11274289152, 512, 1023]) {
        const f = join(dir, `${size}.raw`);
        const fd = openSync(f, 'w');
        ftruncateSync(fd, size);
        closeSync(fd);
        const line = qemuImgOk(['info', '-f', 'raw', f]).split('\n')[2]!;
        expect(line).toBe(
          `virtual size: ${sizeToStr(Math.ceil(size / 512) * 512)} (${Math.ceil(size / 512) * 512} bytes)`,
        );
      }
    } finally {
      cleanup();
    }
  });
});
