/**
 * The order in which QEMU iterates a QDict: the order of its hash buckets (qobject/qdict.c:
 * tdb_hash(key) % 512; a bucket lists its newest entry first). Whatever prints a QDict the way
 * qemu-img does (its JSON output, the json:{…} names of images opened by options) orders keys
 * with it.
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
