/**
 * A short run of `npm run fuzz:cov` in the test suite: every target for a few hundred inputs
 * (about two seconds each), so that the coverage-guided fuzzer keeps working, its coverage
 * signal keeps growing the corpus, and the findings it once made stay fixed. The campaign
 * itself is `npm run fuzz:cov` (docs/fuzzing.md).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { rng } from '../rng.js';
import { Coverage } from './coverage.js';
import { Mutator, Scratch } from './mutate.js';
import { nbdTarget } from './nbd-target.js';
import { type Finding, fuzzTarget } from './run.js';
import { selfTestTarget, TARGETS } from './targets.js';

const corpus = mkdtempSync(join(tmpdir(), 'vdisk-covfuzz-test-'));
afterAll(() => rmSync(corpus, { recursive: true, force: true }));

describe('coverage-guided fuzzing', () => {
  it('sees a new block only once, and a new branch of a function it has seen', () => {
    const cov = new Coverage((url) => url.includes('/covfuzz/coverage.test-fn'));
    // A function compiled after coverage started, from a URL the filter keeps.
    const f = new Function(
      'x',
      'if (x > 0) { return 1; } else { return 2; }\n//# sourceURL=/src/covfuzz/coverage.test-fn.js',
    ) as (x: number) => number;
    cov.take();
    f(1);
    expect(cov.take()).toBeGreaterThan(0);
    f(1);
    expect(cov.take()).toBe(0);
    f(-1);
    expect(cov.take()).toBe(1);
    f(-1);
    f(1);
    expect(cov.take()).toBe(0);
    cov.close();
  });

  it('makes the same mutants in the scratch buffer as without it (a batch is remade from its recipes)', () => {
    const dict = { tokens: [Buffer.from('KDMV'), Buffer.from('conectix')], offsets: [4, 8, 64] };
    const entries = [Buffer.alloc(3000, 7), Buffer.from('a short text entry'), Buffer.alloc(9000, 0xa5)];
    entries[0]!.writeUInt32LE(0xdeadbeef, 100);
    const maxLen = 12_000;
    const scratch = new Scratch(Buffer.alloc(maxLen));
    let inScratch = 0;
    for (let seed = 0; seed < 3000; seed++) {
      const make = (into?: Scratch) => {
        const r = rng(seed);
        // Runs of mutants of one entry: restored from what the last one changed.
        const parent = entries[Math.floor(seed / 10) % entries.length]!;
        return new Mutator(r, dict, maxLen).mutate(parent, () => entries[Math.floor(r() * 3)], into);
      };
      const a = make(scratch);
      if (a.buffer === scratch.buf.buffer) inScratch++;
      expect(Buffer.compare(a, make()), `seed ${seed}`).toBe(0);
    }
    // Every kind of edit but a grow past maxLen (or of an emptied input) stays in the scratch buffer.
    expect(inScratch).toBeGreaterThan(2800);
  });

  it('catches each kind of finding: internal error, slow input, hang, heap exhaustion, large buffers', async () => {
    // A hang or a heap exhaustion ends a worker's run, and which kind a run meets first is luck
    // of the draw: runs with other generator seeds until every kind has been met (one run
    // usually, three at most).
    const all = ['internal', 'slow', 'hang', 'worker', 'allocation'];
    const findings: Finding[] = [];
    const kinds = new Set<string>();
    for (let rng = 3; rng < 6 && !all.every((k) => kinds.has(k)); rng++) {
      const r = await fuzzTarget(selfTestTarget, {
        execs: 5000,
        seconds: 8,
        corpus,
        rng,
        slowMs: 200,
        hangMs: 2000,
        heapMb: 64,
      });
      findings.push(...r.findings);
      for (const f of r.findings) kinds.add(f.problem.split(/[: ]/)[0]!);
    }
    for (const k of all) expect(kinds, [...kinds].join()).toContain(k);
    // Each finding's input is saved and names its misdeed.
    const byKind = (k: string) => findings.find((f) => f.problem.startsWith(k))!;
    expect(readFileSync(byKind('hang').file)[0]).toBe('H'.charCodeAt(0));
    expect(readFileSync(byKind('internal').file)[0]).toBe('E'.charCodeAt(0));
    expect(readFileSync(byKind('allocation').file)[0]).toBe('B'.charCodeAt(0));
  }, 90_000);

  for (const t of [...TARGETS, nbdTarget]) {
    it(`${t.name}: finds no internal error, hang or unbounded allocation`, async () => {
      const r = await fuzzTarget(t, {
        execs: t.name === 'nbd' ? 100 : 200,
        seconds: 1.5,
        corpus,
        rng: 7,
        slowMs: 5000,
        hangMs: 20_000,
        heapMb: 512,
        verifyRecipes: true,
      });
      expect(r.findings.map((f) => `${f.problem}\n${f.file}`)).toEqual([]);
      expect(r.execs).toBeGreaterThan(0);
      // The signal works: mutants reach blocks the seeds did not.
      expect(r.blocksEnd).toBeGreaterThanOrEqual(r.blocksStart);
      expect(r.blocksStart).toBeGreaterThan(0);
    }, 60_000);
  }
});
