import { describe, expect, it } from 'vitest';
import { describeBucket, mapParts, summarizeMap } from './map-summary.js';
import type { AllocationMap } from './types.js';

const MiB = 1 << 20;
const map = (totals: AllocationMap['totals'], chain: AllocationMap['chain'], vsize = 100 * MiB) => ({
  virtual_size: vsize,
  kinds: ['data', 'compressed', 'zero', 'master'] as AllocationMap['kinds'],
  totals,
  chain,
});
const self = { id: 'o', name: 'lab1', disk_format: 'qcow2', size: 1 };

describe('the allocation map in words', () => {
  it('names the master and the unallocated rest', () => {
    const m = map({ data: 12 * MiB, compressed: 0, zero: 8 * MiB, master: 40 * MiB }, [
      self,
      { id: 'd', name: 'debian', disk_format: 'qcow2', size: 1 },
    ]);
    expect(summarizeMap(m)).toBe(
      '100 MiB virtual disk: 12 % stored here (12 MiB), 8 % declared zero here (8 MiB), 40 % from master debian (40 MiB), 40 % unallocated (reads as zeros) (40 MiB).',
    );
    expect(mapParts(m).map((p) => p.kind)).toEqual(['data', 'zero', 'master', 'unallocated']);
  });
  it('a chain of masters, compressed data, nothing unallocated', () => {
    const m = map({ data: 0, compressed: 50 * MiB, zero: 0, master: 50 * MiB }, [
      self,
      { id: 'c', name: 'course', disk_format: 'qcow2', size: 1 },
      { id: 'd', name: null, disk_format: 'qcow2', size: 1 },
    ]);
    expect(summarizeMap(m)).toBe(
      '100 MiB virtual disk: 50 % stored here, compressed (50 MiB), 50 % from masters course and d (50 MiB).',
    );
  });
  it('an empty disk is all unallocated', () => {
    expect(summarizeMap(map({ data: 0, compressed: 0, zero: 0, master: 0 }, [self], 0))).toBe(
      '0 bytes virtual disk: 100 % unallocated (reads as zeros) (0 bytes).',
    );
  });
  it('describes one bucket', () => {
    expect(
      describeBucket([0.25, 0, 0, 0.5], ['data', 'compressed', 'zero', 'master'], {
        chain: [self, { ...self, id: 'm', name: 'base' }],
      }),
    ).toBe('25 % stored here, 50 % from master base, 25 % unallocated');
    expect(describeBucket([1, 0, 0, 0], ['data', 'compressed', 'zero', 'master'], { chain: [self] })).toBe(
      '100 % stored here',
    );
  });
});
