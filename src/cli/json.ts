/**
 * JSON as qemu-img prints it. qemu-img builds its JSON from QDicts, whose iteration order is
 * the order of their hash buckets (src/core/qdict.ts), and pretty-prints with four-space
 * indents. Reproducing the hash gives byte-identical output for every dictionary qemu-img
 * prints, whatever order we build it in.
 */

import { qdictOrder } from '../core/qdict.js';

// The engine orders json:{…} names with it too (chain/image-opts.ts): it lives in core.
export { qdictBucket, qdictOrder } from '../core/qdict.js';

/** Pretty JSON in QEMU's style; objects are ordered as QDicts. Undefined members are dropped. */
export function qemuJson(value: unknown, indent = 0): string {
  const pad = (n: number) => ' '.repeat(n * 4);
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (value.length === 0) return '[\n' + pad(indent) + ']';
    return `[\n${value.map((v) => pad(indent + 1) + qemuJson(v, indent + 1)).join(',\n')}\n${pad(indent)}]`;
  }
  const obj = value as Record<string, unknown>;
  const keys = qdictOrder(Object.keys(obj).filter((k) => obj[k] !== undefined));
  if (keys.length === 0) return '{\n' + pad(indent) + '}';
  return `{\n${keys.map((k) => `${pad(indent + 1)}${JSON.stringify(k)}: ${qemuJson(obj[k], indent + 1)}`).join(',\n')}\n${pad(indent)}}`;
}
