import { describe, expect, it } from 'vitest';
import { formatBytes, formatDate, formatDuration, formatPercent } from './sizes.js';

describe('sizes', () => {
  it('formats bytes in binary units, three significant digits', () => {
    expect(formatBytes(0)).toBe('0 bytes');
    expect(formatBytes(1)).toBe('1 byte');
    expect(formatBytes(1023)).toBe('1023 bytes');
    expect(formatBytes(1024)).toBe('1 KiB');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(448 * 1024)).toBe('448 KiB');
    expect(formatBytes(8.31 * 1024 * 1024)).toBe('8.31 MiB');
    expect(formatBytes(12.5 * 1024 * 1024)).toBe('12.5 MiB');
    expect(formatBytes(2 ** 32)).toBe('4 GiB');
    expect(formatBytes(64 * 2 ** 40)).toBe('64 TiB');
    expect(formatBytes(null)).toBe('—');
    expect(formatBytes(undefined)).toBe('—');
  });
  it('formats percentages', () => {
    expect(formatPercent(0)).toBe('0 %');
    expect(formatPercent(0.4)).toBe('40 %');
    expect(formatPercent(0.123)).toBe('12 %');
    expect(formatPercent(0.004)).toBe('0.4 %');
    expect(formatPercent(0.00001)).toBe('< 0.1 %');
    expect(formatPercent(1)).toBe('100 %');
  });
  it('formats dates and durations', () => {
    expect(formatDate('2026-12-05T14:03:00Z')).toMatch(/^2026-12-0[45] \d\d:03$/);
    expect(formatDate(null)).toBe('—');
    expect(formatDate('nonsense')).toBe('nonsense');
    expect(formatDuration(5)).toBe('5 s');
    expect(formatDuration(65)).toBe('1 min 05 s');
    expect(formatDuration(3700)).toBe('1 h 01 min');
  });
});
