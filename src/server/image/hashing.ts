/**
 * md5 (`checksum`) and sha512 (`os_hash_value`) of an upload, computed off the main thread.
 *
 * On one thread the two hashes together run at ~390 MiB/s here, and the main thread also has
 * the socket, the inspection and the store to serve; in two worker threads (one per hash, each
 * hash is sequential by nature) they run side by side. The incoming chunks are coalesced into
 * 4 MiB blocks of shared memory (SharedArrayBuffer: the workers read the very bytes the store
 * is given, nothing is copied to them); each full block goes to both workers and to the
 * store's writer (which writes from it in place, one block at a time, while the next fills),
 * and comes back to the upload's free list when both workers have hashed it and the store has
 * written it. An upload holds at most BLOCKS blocks: when all are in flight, `push` returns a
 * promise for the oldest and the caller pauses the socket until it settles (backpressure to
 * the client, bounded memory per upload). Otherwise `push` copies the chunk and returns at
 * once: the receive loop needs no promise per chunk, and a socket chunk (a 64 KiB external
 * buffer node:http allocates per read) is garbage as soon as its 'data' event returns. Those
 * buffers still make V8 run full collections on a busy machine ("external memory pressure",
 * docs/benchmarks-registry.md); that part is node:http's, not this pipeline's.
 *
 * One pair of workers serves every upload of the process (each keeps one hash state per
 * upload id). They are started on the first upload larger than a block, are unref'd while
 * idle (they never keep the process alive), and are replaced after a failure. They end, and
 * the spare blocks are dropped, IDLE_MS after the last upload that used them: together
 * ~35–45 MiB that an idle server otherwise keeps resident (docs/decisions.md, "Embedded
 * database memory"); the next upload starts a new pair (~30–60 ms). An upload that
 * ends within its first block is hashed inline: two worker round trips would cost more than
 * hashing a few KiB.
 *
 * The worker's code is a short script evaluated by the worker (`eval: true`), so that the same
 * module runs from dist/ and from the TypeScript sources under vitest.
 */
import { createHash } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { native } from '../../native/index.js';

export const BLOCK_BYTES = 4 << 20;
/** Blocks in flight per upload (filling, hashing, being written). */
export const BLOCKS = 3;

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const algo = workerData.algo;
const states = new Map();
parentPort.on('message', (m) => {
  try {
    if (m.t === 'u') {
      let h = states.get(m.id);
      if (h === undefined) { h = createHash(algo); states.set(m.id, h); }
      h.update(new Uint8Array(m.buf, 0, m.len));
      parentPort.postMessage({ t: 'a', id: m.id });
    } else if (m.t === 'e') {
      const h = states.get(m.id) ?? createHash(algo);
      states.delete(m.id);
      parentPort.postMessage({ t: 'd', id: m.id, hex: h.digest('hex') });
    } else if (m.t === 'x') {
      states.delete(m.id);
    }
  } catch (err) {
    parentPort.postMessage({ t: 'f', id: m.id, error: String(err && err.message || err) });
  }
});
`;

type Waiter = { resolve: (hex: string) => void; reject: (e: Error) => void };

/** One worker computing one hash algorithm for many uploads. */
class HashWorker {
  private readonly worker: Worker;
  /** Per upload: resolvers of its outstanding messages, in the order sent (acks come back in order). */
  private readonly waiting = new Map<number, Waiter[]>();
  private busy = 0;
  dead = false;

  constructor(
    readonly algo: string,
    onDead: () => void,
  ) {
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { algo } });
    this.worker.on('message', (m: { t: string; id: number; hex?: string; error?: string }) => {
      const q = this.waiting.get(m.id);
      const w = q?.shift();
      if (q !== undefined && q.length === 0) this.waiting.delete(m.id);
      if (w === undefined) return;
      this.idle();
      if (m.t === 'f') w.reject(new Error(`${this.algo} worker: ${m.error}`));
      else w.resolve(m.hex ?? '');
    });
    const die = (err: Error) => {
      if (this.dead) return;
      this.dead = true;
      onDead();
      for (const q of this.waiting.values()) for (const w of q) w.reject(err);
      this.waiting.clear();
    };
    this.worker.on('error', die);
    this.worker.on('exit', (code) => die(new Error(`${this.algo} worker exited (${code})`)));
    this.worker.unref();
  }

  private send(id: number, msg: object): Promise<string> {
    if (this.dead) return Promise.reject(new Error(`${this.algo} worker is gone`));
    if (this.busy++ === 0) this.worker.ref();
    return new Promise((resolve, reject) => {
      const q = this.waiting.get(id);
      if (q === undefined) this.waiting.set(id, [{ resolve, reject }]);
      else q.push({ resolve, reject });
      this.worker.postMessage(msg);
    });
  }

  private idle(): void {
    if (--this.busy === 0) this.worker.unref();
  }

  update(id: number, buf: SharedArrayBuffer, len: number): Promise<string> {
    return this.send(id, { t: 'u', id, buf, len });
  }

  digest(id: number): Promise<string> {
    return this.send(id, { t: 'e', id });
  }

  drop(id: number): void {
    if (!this.dead) this.worker.postMessage({ t: 'x', id });
  }

  /** End the thread (nothing waits on it: the pool is idle); resolves once it has ended. */
  async retire(): Promise<void> {
    this.dead = true;
    await this.worker.terminate();
  }
}

let pool: { md5: HashWorker; sha512: HashWorker } | null = null;
let nextUpload = 1;

/** Uploads between their first block given to the workers and their end (or abort). */
let using = 0;
let idleTimer: NodeJS.Timeout | null = null;
/** How long the workers and the spare blocks outlive the last upload. */
export const IDLE_MS = 5000;

function workers(): { md5: HashWorker; sha512: HashWorker } {
  if (pool === null || pool.md5.dead || pool.sha512.dead) {
    const reset = () => {
      pool = null;
    };
    pool = { md5: new HashWorker('md5', reset), sha512: new HashWorker('sha512', reset) };
  }
  return pool;
}

function useWorkers(): void {
  using++;
  if (idleTimer !== null) clearTimeout(idleTimer);
  idleTimer = null;
}

function doneWithWorkers(): void {
  if (--using > 0) return;
  idleTimer = setTimeout(() => {
    idleTimer = null;
    if (using > 0) return;
    const p = pool;
    pool = null;
    spare.length = 0;
    if (p === null) return;
    // The threads' memory (their heaps, glibc's arena pages they freed) back to the system.
    void Promise.all([p.md5.retire(), p.sha512.retire()]).then(() => native?.mallocTrim?.());
  }, IDLE_MS);
  idleTimer.unref();
}

/** Test hook: whether the hash workers are running. */
export function hashWorkersRunning(): boolean {
  return pool !== null;
}

/** Free blocks kept for later uploads (bounded: the rest is left to the garbage collector). */
const spare: SharedArrayBuffer[] = [];
const MAX_SPARE = 8;

/**
 * A young-generation collection (V8's scavenge) every MINOR_GC_BYTES of upload. node:http hands
 * each body chunk over in a new 64 KiB Buffer (its parser copies it out of the socket's read
 * buffer), which push() copies into a block and drops. Those Buffers are external memory:
 * only ~300 bytes of JavaScript objects each, so even a 1 MiB young generation (bin/vdisk's
 * `--max-semi-space-size=1` until issue 16; V8 grows it up to 16 MiB) fills only every ~200 MiB
 * of chunks, and V8's external-memory
 * limit (64 MiB above the level after the last full collection) is reached first: a full
 * mark-compact of the whole heap every ~30–60 MiB of upload, 40 per GiB, ~1 s of CPU per GiB
 * (perf: 15 % of the upload's CPU; `--trace-gc`: "finalize incremental marking", the heap
 * 17.5 → 17.1 MB each time). A scavenge frees the dead chunks for ~0.5 ms, and the external
 * memory never reaches the limit. `gc` is V8's, taken once from a context made while
 * `--expose-gc` is set (the flag is cleared again: no global `gc` appears elsewhere).
 */
export const MINOR_GC_BYTES = 4 << 20;
let minorGc: (() => void) | null | undefined;
export function collectYoung(): void {
  if (minorGc === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      const gc = runInNewContext('gc') as (o: object) => void;
      minorGc = () => gc({ type: 'minor' });
    } catch {
      minorGc = null;
    } finally {
      setFlagsFromString('--no-expose-gc');
    }
  }
  minorGc?.();
}

/** A block given to the workers and the store; `ready` once both hashes and the write are done. */
interface InFlight {
  buf: SharedArrayBuffer;
  done: Promise<unknown>;
  ready: boolean;
}

export interface Digests {
  md5: string;
  sha512: string;
}

/**
 * The hashing pipeline of one upload: `write` every chunk in order (awaiting each), then
 * `end` for the digests; `sink` receives the same data in blocks of BLOCK_BYTES (the last
 * one shorter) and may keep no reference to a block after its promise resolves.
 */
export class UploadDigester {
  private readonly id = nextUpload++;
  private block: SharedArrayBuffer | null = null;
  /** A Buffer over `block`. */
  private view: Buffer | null = null;
  private used = 0;
  /** The store's writes, one after the other (a block is written while the next one fills). */
  private writing: Promise<void> = Promise.resolve();
  private started = false;
  /** Blocks given to the workers, oldest first, with the promise of both hashes done. */
  private readonly inflight: InFlight[] = [];
  private readonly free: SharedArrayBuffer[] = [];
  private allocated = 0;
  private failed: Error | null = null;
  /** Bytes pushed since the last collectYoung(). */
  private sinceGc = 0;

  constructor(private readonly sink: (block: Buffer) => Promise<void>) {}

  /**
   * Take a chunk. Normally it is copied into the current block before this returns
   * (undefined): the caller may drop or reuse it at once, and a receive loop need not wait.
   * When every block is still being hashed or written, the rest of the chunk waits for the
   * oldest: a promise is returned (the caller pauses its source until it settles, and keeps
   * the chunk unchanged meanwhile). Throws (or rejects) once a worker or the store failed.
   */
  push(chunk: Buffer): Promise<void> | undefined {
    if (this.failed !== null) throw this.failed;
    this.sinceGc += chunk.length;
    if (this.sinceGc >= MINOR_GC_BYTES) {
      this.sinceGc = 0;
      collectYoung();
    }
    let off = 0;
    while (off < chunk.length) {
      if (this.block === null) {
        const b = this.tryTakeBlock();
        if (b === null) return this.pushLater(chunk, off);
        this.block = b;
        this.view = Buffer.from(b);
      }
      const n = Math.min(chunk.length - off, BLOCK_BYTES - this.used);
      copyInto(this.view!, this.used, chunk, off, n);
      this.used += n;
      off += n;
      if (this.used === BLOCK_BYTES) this.submit();
    }
    return undefined;
  }

  /** `push`, awaited. */
  async write(chunk: Buffer): Promise<void> {
    await this.push(chunk);
  }

  private async pushLater(chunk: Buffer, off: number): Promise<void> {
    const oldest = this.inflight.shift()!;
    await oldest.done;
    if (this.failed !== null) throw this.failed;
    this.block = oldest.buf;
    this.view = Buffer.from(oldest.buf);
    await this.push(chunk.subarray(off));
  }

  /** Flush the last block; the hex digests of everything written. */
  async end(): Promise<Digests> {
    if (!this.started) {
      // Within one block: inline (and the workers need not exist at all).
      const data = this.block === null ? Buffer.alloc(0) : Buffer.from(this.block, 0, this.used);
      const out = {
        md5: createHash('md5').update(data).digest('hex'),
        sha512: createHash('sha512').update(data).digest('hex'),
      };
      if (this.used > 0) await this.sink(data);
      this.release();
      return out;
    }
    try {
      if (this.used > 0) this.submit();
      await Promise.all(this.inflight.map((b) => b.done));
      await this.writing;
      if (this.failed !== null) throw this.failed;
      // Every block is hashed and written: all may serve the next upload.
      for (const b of this.inflight) this.free.push(b.buf);
      this.inflight.length = 0;
      const w = workers();
      const [md5, sha512] = await Promise.all([w.md5.digest(this.id), w.sha512.digest(this.id)]);
      this.release();
      return { md5, sha512 };
    } finally {
      this.finish();
    }
  }

  /**
   * Forget the upload (after a failure): the workers drop its state, blocks go back, no
   * further block goes to the store. Resolves when the store's write in progress (if any) has
   * finished, so that the caller may then abort the store's writer.
   */
  async abort(): Promise<void> {
    this.failed ??= new Error('upload aborted');
    if (this.started && pool !== null) {
      pool.md5.drop(this.id);
      pool.sha512.drop(this.id);
    }
    this.finish();
    // Blocks still being hashed or written are not reused: they are left to the garbage collector.
    this.inflight.length = 0;
    this.release();
    await this.writing;
  }

  private finished = false;

  /** The workers are no longer needed by this upload (once, on end or abort). */
  private finish(): void {
    if (!this.started || this.finished) return;
    this.finished = true;
    doneWithWorkers();
  }

  private release(): void {
    if (this.block !== null) this.free.push(this.block);
    this.block = null;
    this.view = null;
    this.used = 0;
    for (const b of this.free) if (spare.length < MAX_SPARE) spare.push(b);
    this.free.length = 0;
  }

  /** A free block now, or null when the caller must wait for the oldest in flight. */
  private tryTakeBlock(): SharedArrayBuffer | null {
    const f = this.free.pop();
    if (f !== undefined) return f;
    if (this.allocated < BLOCKS) {
      this.allocated++;
      return spare.pop() ?? new SharedArrayBuffer(BLOCK_BYTES);
    }
    const oldest = this.inflight[0];
    if (oldest?.ready !== true) return null;
    this.inflight.shift();
    return oldest.buf;
  }

  private submit(): void {
    const buf = this.block!;
    const view = this.view!;
    const len = this.used;
    this.block = null;
    this.view = null;
    this.used = 0;
    if (!this.started) useWorkers();
    this.started = true;
    const w = workers();
    const fail = (err: Error) => {
      this.failed ??= err;
    };
    const hashed = Promise.all([w.md5.update(this.id, buf, len), w.sha512.update(this.id, buf, len)]);
    // The store writes straight from the shared block (no copy), in order, while the next
    // block fills; the block comes back when it is hashed and written.
    const written = this.writing.then(() =>
      this.failed === null ? this.sink(view.subarray(0, len)) : undefined,
    );
    this.writing = written.catch(fail);
    const entry: InFlight = { buf, done: Promise.resolve(), ready: false };
    entry.done = Promise.all([hashed, written]).then(() => {
      entry.ready = this.failed === null;
    }, fail);
    this.inflight.push(entry);
  }
}

/**
 * Copy n bytes of src (from sOff) into dst at dOff. Buffer#copy and TypedArray#set copy into
 * shared memory with V8's relaxed-atomic byte loop (for SharedArrayBuffer semantics), ~2×
 * the cost of memcpy on cold data (perf: 5–6 % of the upload's CPU). Buffer#fill with a
 * Buffer value of the fill's length is one native memcpy; it has no such concern (nothing
 * reads the block while it is being filled: it is handed to the workers only when full).
 */
export function copyInto(dst: Buffer, dOff: number, src: Buffer, sOff: number, n: number): void {
  if (n <= 0) return;
  const part = sOff === 0 && n === src.length ? src : src.subarray(sOff, sOff + n);
  dst.fill(part, dOff, dOff + n);
}
