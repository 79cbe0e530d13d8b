/**
 * The upload hashing pipeline (md5 + sha512 in two worker threads over shared 4 MiB blocks):
 * digests equal node:crypto's on the same bytes for every size around the block boundaries,
 * the sink receives exactly the bytes in order, many uploads at once keep their own states,
 * memory stays within BLOCKS blocks per upload however slow the sink, and an aborted upload
 * leaves the workers serving the next ones; the workers end IDLE_MS after the last upload,
 * not while one is paused, and the next upload starts them again.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { native } from '../../native/index.js';
import {
  BLOCK_BYTES,
  BLOCKS,
  copyInto,
  hashWorkersRunning,
  IDLE_MS,
  MINOR_GC_BYTES,
  UploadDigester,
} from './hashing.js';

const hex = (algo: string, b: Uint8Array) => createHash(algo).update(b).digest('hex');

/** Feed `data` in irregular chunks (as sockets deliver them); returns digests and sink bytes. */
async function run(data: Buffer, chunk = (i: number) => 1 + ((i * 7919) % 200_000), sinkDelay = 0) {
  const got: Buffer[] = [];
  const blocks = new Set<ArrayBufferLike>();
  const d = new UploadDigester(async (b) => {
    blocks.add(b.buffer);
    got.push(Buffer.from(b)); // the sink must copy: the block is reused afterwards
    if (sinkDelay > 0) await new Promise((r) => setTimeout(r, sinkDelay));
  });
  let off = 0;
  for (let i = 0; off < data.length; i++) {
    const n = Math.min(chunk(i), data.length - off);
    await d.write(data.subarray(off, off + n));
    off += n;
  }
  const out = await d.end();
  return { out, sunk: Buffer.concat(got), blocks: blocks.size };
}

describe('UploadDigester', () => {
  it('gives node:crypto digests and the same bytes to the sink, around every block boundary', async () => {
    const big = randomBytes(3 * BLOCK_BYTES + 12345);
    for (const size of [
      0,
      1,
      4096,
      BLOCK_BYTES - 1,
      BLOCK_BYTES,
      BLOCK_BYTES + 1,
      2 * BLOCK_BYTES,
      3 * BLOCK_BYTES + 12345,
    ]) {
      const data = big.subarray(0, size);
      const { out, sunk } = await run(data);
      expect(out.md5, `md5 of ${size} bytes`).toBe(hex('md5', data));
      expect(out.sha512, `sha512 of ${size} bytes`).toBe(hex('sha512', data));
      expect(sunk.equals(data), `sink bytes of ${size}`).toBe(true);
    }
  });

  it('keeps many concurrent uploads apart (one worker pair serves all)', async () => {
    const datas = Array.from({ length: 6 }, (_, i) => randomBytes(BLOCK_BYTES * (1 + (i % 3)) + i * 1000));
    const results = await Promise.all(
      datas.map((d, i) => run(d, (j) => 1000 + ((j * (i + 3) * 104729) % (1 << 20)), i % 2)),
    );
    results.forEach((r, i) => {
      expect(r.out.md5).toBe(hex('md5', datas[i]!));
      expect(r.out.sha512).toBe(hex('sha512', datas[i]!));
      expect(r.sunk.equals(datas[i]!)).toBe(true);
    });
  });

  it('holds at most BLOCKS blocks per upload, however slow the sink (backpressure)', async () => {
    const data = randomBytes(10 * BLOCK_BYTES);
    const { out, blocks } = await run(data, () => 1 << 20, 5);
    expect(out.md5).toBe(hex('md5', data));
    expect(blocks).toBeLessThanOrEqual(BLOCKS);
  });

  it('an aborted upload does not disturb the next ones', async () => {
    const d = new UploadDigester(async () => {});
    await d.write(randomBytes(2 * BLOCK_BYTES + 5));
    await d.abort();
    const data = randomBytes(BLOCK_BYTES + 99);
    const { out } = await run(data);
    expect(out.md5).toBe(hex('md5', data));
    expect(out.sha512).toBe(hex('sha512', data));
  });

  it('a failing sink fails the upload (at a later write or at the end)', async () => {
    const d = new UploadDigester(async () => {
      throw new Error('disk full');
    });
    await expect(
      (async () => {
        await d.write(randomBytes(BLOCK_BYTES + 1));
        await d.end();
      })(),
    ).rejects.toThrow('disk full');
    await d.abort();
    // However much more is written, the failure comes back (within BLOCKS blocks).
    const e = new UploadDigester(async () => {
      throw new Error('disk full');
    });
    await expect(
      (async () => {
        for (let i = 0; i < BLOCKS + 2; i++) await e.write(randomBytes(BLOCK_BYTES));
      })(),
    ).rejects.toThrow('disk full');
    await e.abort();
  });

  it('writes one block at a time, in order, while the next block fills', async () => {
    let active = 0;
    let maxActive = 0;
    const order: number[] = [];
    let release: () => void = () => {};
    let gate = new Promise<void>((r) => {
      release = r;
    });
    const d = new UploadDigester(async (b) => {
      active++;
      maxActive = Math.max(maxActive, active);
      order.push(b[0]!);
      await gate;
      active--;
    });
    const data = Buffer.alloc(3 * BLOCK_BYTES);
    for (let i = 0; i < 3; i++) data.fill(i + 1, i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES);
    // Two full blocks go in while the store still holds the first: the receive loop does not
    // wait for the store's write (only for a free block).
    await d.write(data.subarray(0, 2 * BLOCK_BYTES));
    expect(order).toEqual([1]);
    release();
    gate = Promise.resolve();
    await d.write(data.subarray(2 * BLOCK_BYTES));
    const out = await d.end();
    expect(order).toEqual([1, 2, 3]);
    expect(maxActive).toBe(1);
    expect(out.md5).toBe(hex('md5', data));
  });

  it('abort waits for the write in progress and sends nothing more to the store', async () => {
    let calls = 0;
    let finished = 0;
    const d = new UploadDigester(async () => {
      calls++;
      await new Promise((r) => setTimeout(r, 30));
      finished++;
    });
    await d.write(randomBytes(2 * BLOCK_BYTES + 7));
    await d.abort();
    expect(finished).toBe(calls);
    await new Promise((r) => setTimeout(r, 60));
    expect(calls).toBe(1);
  });
});

describe('young-generation collections during an upload', () => {
  it('one per MINOR_GC_BYTES pushed, so that the dropped chunks never pile up into a full GC', async () => {
    const kinds: number[] = [];
    const obs = new PerformanceObserver((list) => {
      for (const e of list.getEntries())
        kinds.push((e as unknown as { detail: { kind: number } }).detail.kind);
    });
    obs.observe({ entryTypes: ['gc'] });
    const d = new UploadDigester(async () => {});
    const n = 8;
    // Fresh 64 KiB chunks, as node:http delivers them: almost no JavaScript heap each, so
    // nothing else would make V8 scavenge n times here.
    for (let i = 0; i < (n * MINOR_GC_BYTES) / 65536; i++) await d.write(Buffer.alloc(65536, i));
    await d.end();
    await new Promise((r) => setTimeout(r, 50)); // the observer's entries are delivered later
    obs.disconnect();
    const minor = kinds.filter((k) => k === constants.NODE_PERFORMANCE_GC_MINOR).length;
    expect(minor).toBeGreaterThanOrEqual(n);
    expect(kinds.filter((k) => k === constants.NODE_PERFORMANCE_GC_MAJOR).length).toBeLessThan(n);
    // The flag that gave the collector its handle is cleared again: no global `gc` appears.
    expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
  });
});

describe('copyInto', () => {
  it('copies any range into shared memory and plain buffers', () => {
    const src = randomBytes(70_000);
    for (const dst of [Buffer.from(new SharedArrayBuffer(100_000)), Buffer.alloc(100_000)]) {
      for (const [dOff, sOff, n] of [
        [0, 0, 70_000],
        [5, 3, 1],
        [30_000, 69_999, 1],
        [99_000, 1000, 1000],
        [17, 0, 0],
      ] as const) {
        dst.fill(0xaa);
        copyInto(dst, dOff, src, sOff, n);
        expect(dst.subarray(dOff, dOff + n).equals(src.subarray(sOff, sOff + n))).toBe(true);
        // Nothing outside the range is touched.
        expect(dst.subarray(0, dOff).every((x) => x === 0xaa)).toBe(true);
        expect(dst.subarray(dOff + n).every((x) => x === 0xaa)).toBe(true);
      }
    }
  });
});

describe('the hash workers when idle', () => {
  it('end IDLE_MS after the last upload, stay for a paused one, and start again', async () => {
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    const data = randomBytes(2 * BLOCK_BYTES + 1000);
    const a = await run(data);
    expect(a.out.sha512).toBe(hex('sha512', data));
    expect(hashWorkersRunning()).toBe(true);
    // An upload that pauses longer than IDLE_MS between its blocks keeps them (its hash
    // states are in them).
    const d = new UploadDigester(async () => {});
    await d.write(data.subarray(0, BLOCK_BYTES + 10));
    await sleep(IDLE_MS + 1000);
    expect(hashWorkersRunning()).toBe(true);
    await d.write(data.subarray(BLOCK_BYTES + 10));
    expect(await d.end()).toEqual({ md5: hex('md5', data), sha512: hex('sha512', data) });
    await sleep(IDLE_MS + 1000);
    expect(hashWorkersRunning()).toBe(false);
    // and glibc's free pages were given back after them (the addon's malloc_trim: 0 or 1).
    expect([0, 1]).toContain(native?.mallocTrim?.());
    // The next upload starts a new pair.
    const b = await run(data);
    expect(b.out).toEqual({ md5: hex('md5', data), sha512: hex('sha512', data) });
    expect(hashWorkersRunning()).toBe(true);
  }, 30000);
});
