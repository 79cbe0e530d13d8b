/**
 * JSON as qemu-img prints it. qemu-img builds its JSON from QDicts, whose iteration order is
 * the order of their hash buckets (qobject/qdict.c: tdb_hash(key) % 512; a bucket lists its
 * newest entry first), and pretty-prints with four-space indents. Reproducing the hash gives
 * byte-identical output for every dictionary qemu-img prints, whatever order we build it in.
 */

const BUCKETS = 512;

/** QEMU's tdb_hash(key) % QDICT_BUCKET_MAX. */
export function qdictBucket(key: string): number {
  const bytes = Buffer.from(key, 'utf8');
  let v = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    v = (v + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  }
  return ((Math.imul(1103515243, v) + 12345) >>> 0) % BUCKETS;
}

/** Keys of a QDict built by inserting `keys` in order, in the order QEMU iterates them. */
export function qdictOrder(keys: string[]): string[] {
  return keys
    .map((k, i) => ({ k, i, b: qdictBucket(k) }))
    .sort((x, y) => x.b - y.b || y.i - x.i)
    .map((x) => x.k);
}

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
