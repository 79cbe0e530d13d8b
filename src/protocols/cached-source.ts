/**
 * Random access over an object store that reads by ranges (S3's ranged GetObject): the
 * engine opens a blob as a read-only file (HostFile.fromSource) and reads headers, tables and
 * data from it without downloading the object first.
 *
 * Reads go through a small cache of aligned blocks (1 MiB): the drivers' many small metadata
 * reads (a header, an L2 table) cost one request per block, not one each. Consecutive misses
 * in one read are fetched with one request. When reads walk forward (an export, a flatten),
 * the next blocks are fetched ahead of need, one request of `readAhead` bytes in flight, so
 * the store's latency hides behind the consumer's work. With `aheadRequest` smaller than
 * `readAhead`, the read-ahead window is fetched in several requests in flight at once (HTTP
 * sources: one keep-alive connection each), and refilled one request's worth at a time, so that
 * a fast consumer never waits on one request's latency. Memory per open blob: the cache
 * (`cacheBlocks` blocks, at least twice the read-ahead) plus the read-ahead in flight.
 *
 * Read-ahead requests are of one size, and their buffers are used again once no cached block,
 * read or request refers to them any more (`into`: a reader that fills the buffer it is given
 * saves an allocation and the page faults of fresh memory per request, about a sixth of the
 * CPU time of a sequential read over loopback HTTP).
 *
 * It lives with the protocols because both the engine's remote sources (http.ts) and the
 * registry's S3 store (src/server/store/s3.ts) read through it.
 */
import type { ReadSource } from '../core/host-file.js';

export interface RangeReader {
  readonly size: number;
  /**
   * Bytes [start, end) of the object (end ≤ size), exactly; into `into` (end - start bytes)
   * when given and the reader can (it may return another buffer).
   */
  fetch(start: number, end: number, into?: Buffer): Promise<Buffer>;
  close?(): Promise<void>;
}

export interface CachedSourceOptions {
  block?: number;
  /** Blocks kept (least recently used go first). */
  cacheBlocks?: number;
  /** Bytes fetched ahead when reads walk forward (0: none). */
  readAhead?: number;
  /** Largest single request. */
  maxRequest?: number;
  /** Largest read-ahead request (default: `readAhead`, one request in flight). */
  aheadRequest?: number;
  /**
   * While the caller keeps several reads in flight (convert's workers), a read of at least a
   * block that the cache does not hold whole is fetched straight into the caller's buffer
   * (`into`), around the cache, and nothing is read ahead: such a caller fetches ahead by
   * itself, and the bytes are not copied out of a cache block.
   */
  direct?: boolean;
}

const MiB = 1 << 20;

/** One request's buffer and how many cached blocks, reads and the request itself hold it. */
interface Req {
  buf: Buffer | null;
  refs: number;
}

interface Entry {
  p: Promise<Buffer>;
  req: Req;
}

export function cachedSource(r: RangeReader, opts: CachedSourceOptions = {}): ReadSource {
  const block = opts.block ?? MiB;
  const readAhead = opts.readAhead ?? 8 * MiB;
  const ahead = Math.ceil(readAhead / block);
  // Room for the window ahead and as much behind it, so that read-ahead never evicts itself.
  const capacity = Math.max(4, opts.cacheBlocks ?? 16, 2 * ahead + 2);
  const maxRequest = opts.maxRequest ?? 16 * MiB;
  const aheadBlocks = Math.max(1, Math.min(ahead, Math.floor((opts.aheadRequest ?? readAhead) / block)));
  /** Refill the window when this many blocks of it are not requested yet. */
  const refill = Math.max(1, Math.min(aheadBlocks, Math.ceil(ahead / 2)));
  const size = r.size;
  const blocks = Math.ceil(size / block);
  /** Block index → its bytes (insertion order is the LRU order). */
  const cache = new Map<number, Entry>();
  let nextExpected = -1;
  let closed = false;
  /** Reads in progress. */
  let reading = 0;
  /** Reads of at least a block so far, and the count at the last one made while another ran. */
  let large = 0;
  let lastOverlap = Number.NEGATIVE_INFINITY;
  /**
   * `direct` applies while the caller keeps several reads in flight: one of the last 8 large
   * reads began while another ran. A caller with workers that wait on their writes may find
   * no read running at a given moment; one reading alone goes back to the cache's read-ahead.
   */
  const parallelCaller = () => opts.direct === true && large - lastOverlap <= 8;
  /** Free buffers of read-ahead requests (`pooled` bytes each). */
  const pooled = aheadBlocks * block;
  const free: Buffer[] = [];
  const maxFree = Math.ceil(capacity / aheadBlocks) + 2;

  const release = (req: Req) => {
    req.refs--;
    if (req.refs === 0 && req.buf !== null && !closed && free.length < maxFree) free.push(req.buf);
  };
  const drop = (i: number) => {
    const e = cache.get(i);
    if (e === undefined) return;
    cache.delete(i);
    release(e.req);
  };
  const touch = (i: number): Entry | undefined => {
    const e = cache.get(i);
    if (e !== undefined) {
      cache.delete(i);
      cache.set(i, e);
    }
    return e;
  };
  const evict = () => {
    while (cache.size > capacity) drop(cache.keys().next().value as number);
  };
  /** One request for blocks [first, last], each block's promise cached; returns them. */
  const load = (first: number, last: number): Entry[] => {
    const start = first * block;
    const end = Math.min(size, (last + 1) * block);
    const req: Req = {
      buf: end - start === pooled ? (free.pop() ?? Buffer.allocUnsafe(pooled)) : null,
      refs: 1,
    };
    const all = req.buf !== null ? r.fetch(start, end, req.buf) : r.fetch(start, end);
    // The request's own hold, given back when it is over (its buffer is written until then).
    all.then(
      () => release(req),
      () => release(req),
    );
    const out: Entry[] = [];
    for (let i = first; i <= last; i++) {
      const off = (i - first) * block;
      const e: Entry = { p: all.then((b) => b.subarray(off, Math.min(off + block, b.length))), req };
      // One hold for the cache, one for the caller (who releases it).
      req.refs += 2;
      // A failed request is forgotten, so that a later read tries again.
      e.p.catch(() => {
        if (cache.get(i) === e) drop(i);
      });
      cache.set(i, e);
      out.push(e);
    }
    evict();
    return out;
  };
  /**
   * The blocks [first, last], in order: cached ones (made most recent), the missing ones
   * fetched with one request per run of consecutive misses. The promises are held here, so
   * that loading a later run cannot evict an earlier one before it is read, and each entry is
   * held (its buffer not used again) until the caller releases it.
   */
  const blocksOf = (
    first: number,
    last: number,
    maxBlocks = Math.max(1, Math.floor(maxRequest / block)),
  ): Entry[] => {
    const out: Entry[] = [];
    let i = first;
    while (i <= last) {
      const hit = touch(i);
      if (hit !== undefined) {
        hit.req.refs++;
        out.push(hit);
        i++;
        continue;
      }
      let j = i;
      while (j + 1 <= last && !cache.has(j + 1) && j + 1 - i < maxBlocks) j++;
      out.push(...load(i, j));
      i = j + 1;
    }
    return out;
  };

  return {
    size,
    async read(buf: Uint8Array, offset: number): Promise<number> {
      if (closed) throw new Error('read from a closed blob');
      if (offset >= size || buf.length === 0) return 0;
      const n = Math.min(buf.length, size - offset);
      const first = Math.floor(offset / block);
      const last = Math.floor((offset + n - 1) / block);
      const sequential = first === nextExpected || first === nextExpected - 1;
      nextExpected = last + 1;
      // A read larger than half the cache goes to the store directly, around the cache, and so
      // does a large one among others in flight (`direct`) that no cached block overlaps.
      if (n >= block) {
        large++;
        if (reading > 0) lastOverlap = large;
      }
      let around = last - first + 1 > capacity / 2;
      if (!around && n >= block && parallelCaller()) {
        // Unless the cache has (or is fetching) all of it: reads that do not start on a block
        // share their first and last blocks with their neighbours, which would otherwise keep
        // every read in the cache.
        for (let i = first; i <= last && !around; i++) around = !cache.has(i);
      }
      if (around) {
        const into = Buffer.from(buf.buffer, buf.byteOffset, n);
        reading++;
        try {
          const b = await r.fetch(offset, offset + n, into);
          if (b !== into) into.set(b.subarray(0, n), 0);
        } finally {
          reading--;
        }
        return n;
      }
      const parts = blocksOf(first, last);
      // Walking forward: when `refill` blocks or more of the window [last+1, last+ahead] are not
      // requested yet (or only the object's tail is left), request them, `aheadBlocks` a request.
      // A caller with reads in flight (`direct`) does not read ahead: the window would stay
      // ahead of its reads for good, and their bytes would all be copied out of the cache.
      if (sequential && ahead > 0 && last + 1 < blocks && !parallelCaller()) {
        const to = Math.min(blocks - 1, last + ahead);
        let from = last + 1;
        while (from <= to && cache.has(from)) from++;
        if (from <= to && (to - from + 1 >= refill || to === blocks - 1))
          for (const e of blocksOf(from, to, aheadBlocks)) release(e.req);
      }
      reading++;
      try {
        let done = 0;
        for (let k = 0; k < parts.length; k++) {
          const b = await parts[k]!.p;
          const blockStart = (first + k) * block;
          const from = Math.max(offset, blockStart) - blockStart;
          const to = Math.min(offset + n, blockStart + b.length) - blockStart;
          buf.set(b.subarray(from, to), done);
          done += to - from;
        }
        return done;
      } finally {
        reading--;
        for (const e of parts) release(e.req);
      }
    },
    async close() {
      closed = true;
      const pending = [...cache.values()].map((e) => e.p);
      cache.clear();
      free.length = 0;
      await Promise.allSettled(pending);
      await r.close?.();
    },
  };
}
