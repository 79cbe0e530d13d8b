import { describe, expect, it } from 'vitest';
import { qdictOrder, qemuJson } from './json.js';

describe('QEMU JSON', () => {
  it('orders keys as QDict iterates them (as qemu-img info prints)', () => {
    const built = [
      'filename',
      'format',
      'dirty-flag',
      'actual-size',
      'virtual-size',
      'cluster-size',
      'backing-filename',
      'full-backing-filename',
      'backing-filename-format',
      'format-specific',
    ];
    expect(qdictOrder(built)).toEqual([
      'backing-filename-format',
      'virtual-size',
      'filename',
      'cluster-size',
      'format',
      'actual-size',
      'format-specific',
      'full-backing-filename',
      'backing-filename',
      'dirty-flag',
    ]);
  });
  it('pretty-prints with four spaces', () => {
    expect(qemuJson({ format: 'raw', 'virtual-size': 1 })).toBe(
      '{\n    "virtual-size": 1,\n    "format": "raw"\n}',
    );
    expect(qemuJson([{ a: true }])).toBe('[\n    {\n        "a": true\n    }\n]');
  });
});
