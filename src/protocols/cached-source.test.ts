/**
 * The block cache over ranged reads (S3's random access), on a real file read by ranges:
 * every read returns the file's bytes; small reads within a block cost one request; a forward
 * walk is fetched ahead in a few large requests; a failed request is retried by the next read.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rng } from '../test/rng.js';
import { cachedSource, type RangeReader } from './cached-source.js';

const MiB = 1 << 20;
const data = randomBytes(37 * MiB + 12345);

/** Ranges of `data`, counted; `failNext` makes the next request fail. */
function reader(): RangeReader & { requests: Array<[number, number]>; failNext: boolean } {
  const r = {
    size: data.length,
    requests: [] as Array<[number, number]>,
    failNext: false,
    async fetch(start: number, end: number) {
      r.requests.push([start, end]);
      await new Promise((res) => setImmediate(res));
      if (r.failNext) {
        r.failNext = false;
        throw new Error('the store failed');
      }
      return Buffer.from(data.subarray(start, end));
    },
  };
  return r;
}

async function readAt(src: ReturnType<typeof cachedSource>, offset: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length);
  const n = await src.read(b, offset);
  return b.subarray(0, n);
}

describe('cachedSource', () => {
  let rand: () => number;
  beforeAll(() => {
    rand = rng(7);
  });
  afterAll(() => {});

  it('random reads return the bytes of the object, the end included', async () => {
    const r = reader();
    const src = cachedSource(r);
    for (let i = 0; i < 400; i++) {
      const off = Math.floor(rand() * data.length);
      const len = 1 + Math.floor(rand() * 3 * MiB);
      const got = await readAt(src, off, len);
      expect(got.equals(data.subarray(off, Math.min(off + len, data.length))), `${off}+${len}`).toBe(true);
    }
    expect((await readAt(src, data.length, 10)).length).toBe(0);
    await src.close();
  });

  it('small reads within a block cost one request', async () => {
    const r = reader();
    const src = cachedSource(r, { readAhead: 0 });
    for (const off of [0, 512, 4096, 65536, 1000000]) await readAt(src, off, 512);
    expect(r.requests).toEqual([[0, MiB]]);
    await src.close();
  });

  it('a forward walk is fetched ahead, in a few large requests', async () => {
    const r = reader();
    const src = cachedSource(r);
    const parts: Buffer[] = [];
    for (let off = 0; off < data.length; off += 64 * 1024) parts.push(await readAt(src, off, 64 * 1024));
    expect(Buffer.concat(parts).equals(data)).toBe(true);
    // 38 blocks in requests of up to 8 MiB ahead, not 600 reads.
    expect(r.requests.length).toBeLessThanOrEqual(12);
    for (const [s, e] of r.requests) expect(e - s).toBeLessThanOrEqual(16 * MiB);
    await src.close();
  });

  it('with aheadRequest, a forward walk keeps several requests in flight', async () => {
    let inFlight = 0;
    let most = 0;
    const requests: Array<[number, number]> = [];
    const src = cachedSource(
      {
        size: data.length,
        async fetch(start, end) {
          requests.push([start, end]);
          most = Math.max(most, ++inFlight);
          await new Promise((res) => setTimeout(res, 5));
          inFlight--;
          return Buffer.from(data.subarray(start, end));
        },
      },
      { readAhead: 16 * MiB, aheadRequest: 4 * MiB, cacheBlocks: 8 },
    );
    const parts: Buffer[] = [];
    for (let off = 0; off < data.length; off += 256 * 1024) parts.push(await readAt(src, off, 256 * 1024));
    expect(Buffer.concat(parts).equals(data)).toBe(true);
    expect(most).toBeGreaterThanOrEqual(3);
    for (const [s, e] of requests) expect(e - s).toBeLessThanOrEqual(4 * MiB);
    // Every block fetched once: the window never evicts what it fetched ahead.
    expect(requests.reduce((n, [s, e]) => n + (e - s), 0)).toBe(data.length);
    await src.close();
  });

  it('read-ahead buffers are used again, never while a block of theirs is cached or read', async () => {
    const seen = new Set<ArrayBufferLike>();
    let given = 0;
    const src = cachedSource(
      {
        size: data.length,
        async fetch(start, end, into) {
          // A slow request now and then, so that reads overtake and interleave.
          await new Promise((res) => setTimeout(res, start % (3 * MiB) === 0 ? 4 : 0));
          if (into === undefined) return Buffer.from(data.subarray(start, end));
          given++;
          seen.add(into.buffer);
          into.set(data.subarray(start, end));
          return into;
        },
      },
      { readAhead: 8 * MiB, aheadRequest: 2 * MiB, cacheBlocks: 4 },
    );
    // Forward walks (read-ahead, eviction, reuse) with random reads and concurrent reads mixed in.
    for (let pass = 0; pass < 3; pass++) {
      const walk: Promise<void>[] = [];
      for (let off = 0; off < data.length; off += 768 * 1024) {
        const o = off;
        const len = Math.min(768 * 1024, data.length - o);
        const check = readAt(src, o, len).then((b) => {
          expect(b.equals(data.subarray(o, o + len))).toBe(true);
        });
        walk.push(check);
        if (walk.length % 3 === 0) await Promise.all(walk.splice(0));
        if (rand() < 0.2) {
          const r = Math.floor(rand() * (data.length - 4096));
          expect((await readAt(src, r, 4096)).equals(data.subarray(r, r + 4096))).toBe(true);
        }
      }
      await Promise.all(walk);
    }
    expect(given).toBeGreaterThan(30);
    // Reused: far fewer buffers than requests.
    expect(seen.size).toBeLessThan(given / 3);
    await src.close();
  });

  it("direct: large reads among others in flight are fetched into the caller's buffers", async () => {
    const requests: Array<[number, number]> = [];
    let intoCaller = 0;
    const bufs = new Set<ArrayBufferLike>();
    const src = cachedSource(
      {
        size: data.length,
        async fetch(start, end, into) {
          requests.push([start, end]);
          await new Promise((res) => setTimeout(res, 1));
          if (into === undefined) return Buffer.from(data.subarray(start, end));
          if (bufs.has(into.buffer)) intoCaller++;
          into.set(data.subarray(start, end));
          return into;
        },
      },
      { readAhead: 16 * MiB, aheadRequest: 4 * MiB, cacheBlocks: 8, direct: true },
    );
    // Four workers reading 2 MiB each in turn, as convert's do: after the first read (the cache
    // and its read-ahead), each read is one request of its own range, into its own buffer.
    let next = 0;
    const worker = async () => {
      const b = Buffer.alloc(2 * MiB);
      bufs.add(b.buffer);
      const got: Array<[number, Buffer]> = [];
      while (next < data.length) {
        const off = next;
        next += b.length;
        const n = await src.read(b, off);
        got.push([off, Buffer.from(b.subarray(0, n))]);
      }
      return got;
    };
    const all = (await Promise.all([worker(), worker(), worker(), worker()])).flat();
    all.sort((a, b) => a[0] - b[0]);
    expect(Buffer.concat(all.map(([, b]) => b)).equals(data)).toBe(true);
    expect(intoCaller).toBeGreaterThanOrEqual(8);
    // Nothing fetched twice, and no read-ahead past what was read.
    expect(requests.reduce((n, [s, e]) => n + (e - s), 0)).toBe(data.length);
    // One reader alone goes back to the cache's read-ahead after 8 reads without another in
    // flight: its next reads are served by the window's requests (4 MiB), not one per read.
    const before = requests.length;
    const one = Buffer.alloc(2 * MiB);
    bufs.add(one.buffer);
    const was = intoCaller;
    for (let off = 0; off < 24 * MiB; off += one.length) {
      await src.read(one, off);
      expect(one.equals(data.subarray(off, off + one.length))).toBe(true);
    }
    expect(intoCaller - was).toBeLessThanOrEqual(8);
    expect(requests.slice(before).filter(([s, e]) => e - s === 4 * MiB).length).toBeGreaterThanOrEqual(2);
    await src.close();
  });

  it('a failed request fails its read and is retried by the next one', async () => {
    const r = reader();
    const src = cachedSource(r, { readAhead: 0 });
    r.failNext = true;
    await expect(readAt(src, 5 * MiB, 100)).rejects.toThrow('the store failed');
    expect((await readAt(src, 5 * MiB, 100)).equals(data.subarray(5 * MiB, 5 * MiB + 100))).toBe(true);
    await src.close();
    await expect(readAt(src, 0, 1)).rejects.toThrow('closed');
  });
});
