/**
 * The fuzz loop of one target, in a worker thread (started by run.ts). Coverage is V8's block
 * coverage of this thread's isolate (coverage.ts), started before the target's code is loaded.
 *
 * Loop: pick a corpus entry, mutate it, run the target on it. Every BATCH inputs, one coverage
 * take; when it shows new blocks, the batch's inputs are replayed one by one, each followed by a
 * take, and those that reach new blocks join the corpus (and the corpus directory).
 *
 * Before each input, its bytes go into a SharedArrayBuffer the parent watches (with a counter):
 * when the counter stops for longer than the time limit, or the thread dies (out of memory under
 * its resourceLimits, a crash), the parent saves the input from there.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parentPort, workerData } from 'node:worker_threads';
import { rng } from '../rng.js';
import { Coverage } from './coverage.js';
import type { Recipe } from './mutate.js';

export interface WorkerConfig {
  target: string;
  /** Seeds (files) and the corpus directory of this target. */
  seedDir: string;
  corpusDir: string;
  execs: number;
  seconds: number;
  rngSeed: number;
  /**
   * Int32 [0]: inputs started, [1]: length of the current input, [2]: phase, [3]: 1 when the
   * input is a mutant given by its recipe in [4] parent, [5] corpus size, [6] seed (remade by the
   * parent from the corpus files `entry` messages name), else 0: its bytes from HEADER on.
   */
  shared: SharedArrayBuffer;
  slowMs: number;
  /** External (ArrayBuffer) memory allowed after one input, bytes. */
  maxExternal: number;
  /** Remake each mutant from its recipe and compare with the one made in place. */
  verifyRecipes: boolean;
}

export type WorkerMessage =
  | { type: 'start'; corpus: number; blocks: number }
  /** Corpus entry `index` is the file `path` (the parent remakes a recipe from these). */
  | { type: 'entry'; index: number; path: string }
  | { type: 'stats'; execs: number; corpus: number; blocks: number }
  | { type: 'finding'; problem: string; input: Uint8Array }
  | { type: 'done'; execs: number; corpus: number; blocks: number; ms: number };

const BATCH = 32;
const STINT = 16;
const HEADER = 32;
// counter[2]: what the thread is doing (run.ts PHASES), for the parent's report of a hang.

const cfg = workerData as WorkerConfig;
const counter = new Int32Array(cfg.shared, 0, 8);
const phase = (p: number) => Atomics.store(counter, 2, p);
const bytes = new Uint8Array(cfg.shared, HEADER);
const post = (m: WorkerMessage) => parentPort!.postMessage(m);

// Coverage first, then the target's code (scripts compiled later carry block counters).
const { TARGETS, selfTestTarget } = await import('./targets.js');
const { nbdTarget } = await import('./nbd-target.js');
const target = [...TARGETS, nbdTarget, selfTestTarget].find((t) => t.name === cfg.target)!;
const cov = new Coverage(
  (url) =>
    !url.includes('/node_modules/') &&
    !url.includes('/covfuzz/') &&
    target.scripts.some((s) => url.includes(s)),
);
const { Scratch, remake } = await import('./mutate.js');

/**
 * The mutation buffer, private memory. The parent is given a mutant's recipe, not its bytes:
 * mutants were once made in the shared buffer itself, then mirrored into it, but V8 copies into
 * and within a SharedArrayBuffer with relaxed atomic byte copies (copyWithin of 8 MiB: 5 ms,
 * against 0.23 ms in private memory), and the copy of what a vhdx mutant (11 MiB) wrote was 39%
 * of the run.
 */
const scratch = new Scratch(Buffer.alloc(cfg.shared.byteLength - HEADER));

function announce(input: Buffer, rec?: Recipe): void {
  const n = Math.min(input.length, bytes.length);
  if (rec !== undefined) {
    Atomics.store(counter, 4, rec.parent);
    Atomics.store(counter, 5, rec.n);
    Atomics.store(counter, 6, rec.seed | 0);
    Atomics.store(counter, 3, 1);
  } else {
    bytes.set(input.subarray(0, n));
    Atomics.store(counter, 3, 0);
  }
  Atomics.store(counter, 1, n);
  Atomics.add(counter, 0, 1);
}

// A full collection on demand: buffers of earlier inputs must not count against this one.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const external = () => getHeapStatistics().external_memory;

/** External memory after the last full collection: what the corpus and the batch hold. */
let settled = 0;

/** Run one input; a problem (text) or null. */
async function runOne(input: Buffer, rec?: Recipe): Promise<string | null> {
  announce(input, rec);
  // A full collection when earlier inputs have left garbage, not whenever external memory is
  // large: with multi-MiB images (vdi, vpc, vhdx) the corpus and the batch alone hold more than
  // the threshold, and a collection per input took 80% of the time.
  if (external() > settled + cfg.maxExternal / 4) {
    gc();
    settled = external();
  }
  const before = external();
  const t0 = performance.now();
  phase(1);
  try {
    await target.run(input);
  } catch (e) {
    if (!target.expected(e))
      return `internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`;
  }
  const ms = performance.now() - t0;
  // Not while seeding: a target's first inputs load (and compile) its modules.
  if (ms > cfg.slowMs && !seeding) return `slow: ${ms.toFixed(0)} ms (limit ${cfg.slowMs} ms)`;
  phase(0);
  const grown = external() - before;
  if (grown > cfg.maxExternal)
    return `allocation: ${(grown / 2 ** 20).toFixed(0)} MiB of buffers allocated by one input`;
  return null;
}

const seen = new Set<string>();
function report(problem: string, input: Buffer): void {
  // One report per problem and place: the message's first line and the first stack frame in vdisk.
  const lines = problem.split('\n');
  const frame = lines.find((l) => l.includes('/src/') && !l.includes('/covfuzz/')) ?? '';
  const key = `${lines[0]!.replace(/\d+/g, 'N')}|${frame.replace(/:\d+:\d+/, '')}`;
  if (seen.has(key)) return;
  seen.add(key);
  post({ type: 'finding', problem, input: new Uint8Array(input) });
}

const corpus: Buffer[] = [];
/** The file of each corpus entry. */
const paths: string[] = [];
const hash = (b: Buffer) => createHash('sha1').update(b).digest('hex').slice(0, 16);
mkdirSync(cfg.corpusDir, { recursive: true });

/** Run an input and keep it when it reached new blocks; `from`: the file it was read from. */
async function keepIfNew(input: Buffer, from?: string): Promise<void> {
  const problem = await runOne(input);
  if (problem !== null) report(problem, input);
  phase(2);
  const fresh = cov.take(true);
  phase(4);
  if (fresh > 0 || corpus.length === 0) {
    corpus.push(input);
    const path = from ?? join(cfg.corpusDir, hash(input));
    if (from === undefined) writeFileSync(path, input);
    paths.push(path);
    post({ type: 'entry', index: corpus.length - 1, path });
  }
}

// Seeds, then what earlier runs kept.
let seeding = true;
cov.take(false);
for (const dir of [cfg.seedDir, cfg.corpusDir]) {
  for (const f of readdirSync(dir).sort()) await keepIfNew(readFileSync(join(dir, f)), join(dir, f));
}
seeding = false;
post({ type: 'start', corpus: corpus.length, blocks: cov.covered });

const r = rng(cfg.rngSeed);
const dict = target.dict();
/**
 * A mutant is remade from its recipe (parent, corpus size then, generator seed) rather than
 * kept: a batch of 32 multi-MiB images held 100+ MiB, and each mutant was a fresh allocation.
 */
const make = (rec: Recipe, into?: InstanceType<typeof Scratch>): Buffer =>
  remake(rec, (i) => corpus[i], dict, target.maxLen, into);
/** The recipe as the parent would remake it: from the corpus files (verifyRecipes). */
const onDisk = new Map<number, Buffer>();
const fromFiles = (rec: Recipe): Buffer =>
  remake(
    rec,
    (i) => {
      const p = paths[i];
      if (p === undefined) return undefined;
      let b = onDisk.get(i);
      if (b === undefined) {
        b = readFileSync(p);
        onDisk.set(i, b);
      }
      return b;
    },
    dict,
    target.maxLen,
  );
// Image targets read their input through a HostFile (copies out of it); the text targets may
// decode it (TextDecoder refuses shared memory), so they get a private copy.
const inPlace = target.sharedInputOk === true;
const t0 = performance.now();
const deadline = t0 + cfg.seconds * 1000;
let execs = 0;
let lastStats = t0;
const batch: Recipe[] = [];
const pickEntry = () => {
  // Newer entries (found later, deeper) a little more often.
  const n = corpus.length;
  const i = r() < 0.5 ? n - 1 - Math.floor(r() * Math.min(n, 16)) : Math.floor(r() * n);
  return Math.max(0, i);
};
let parent = 0;
while (execs < cfg.execs && performance.now() < deadline) {
  phase(3);
  // STINT mutants of one entry in a row (the choice of entry is as random as before): the
  // scratch buffer then restores only the bytes the last mutant changed.
  if (execs % STINT === 0) parent = pickEntry();
  const rec = { parent, n: corpus.length, seed: Math.floor(r() * 2 ** 32) };
  const input = make(rec, inPlace ? scratch : undefined);
  if (cfg.verifyRecipes && !input.equals(make(rec)))
    report(`internal error: mutant ${execs} differs from its recipe (harness)`, input);
  const problem = await runOne(input, rec);
  // What the parent would save is the input itself.
  if (cfg.verifyRecipes && !input.equals(fromFiles(rec)))
    report(`internal error: mutant ${execs} remade from the corpus files differs (harness)`, input);
  execs++;
  if (problem !== null) report(problem, input);
  batch.push(rec);
  if (batch.length === BATCH || execs === cfg.execs) {
    phase(2);
    if (cov.take(false) > 0) for (const b of batch) await keepIfNew(make(b));
    batch.length = 0;
  }
  const now = performance.now();
  if (now - lastStats > 2000) {
    lastStats = now;
    post({ type: 'stats', execs, corpus: corpus.length, blocks: cov.covered });
  }
}
if (batch.length > 0 && cov.take(false) > 0) for (const b of batch) await keepIfNew(make(b));
post({ type: 'done', execs, corpus: corpus.length, blocks: cov.covered, ms: performance.now() - t0 });
cov.close();
// Servers a target started (nbd) would keep the thread alive.
process.exit(0);
