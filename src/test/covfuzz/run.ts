/**
 * `npm run fuzz:cov -- [target…] [--execs N] [--seconds S] [--corpus DIR] [--rng N]
 *  [--slow-ms MS] [--hang-ms MS] [--heap-mb MB] [--replay] [--list]`
 *
 * Coverage-guided fuzzing of each parser on its own (docs/fuzzing.md). For each target, in turn:
 * its seeds are made (qemu-img / qemu-io / the format builders) into <corpus>/<target>/seeds,
 * then a worker thread (worker.ts) runs the loop with a heap limit (resourceLimits: the thread
 * dies, and the input is saved, when a parse allocates beyond it) while this thread watches its
 * progress counter (an input running longer than --hang-ms: the thread is stopped, the input
 * saved, a new thread carries on with the corpus).
 *
 * Findings go to <corpus>/<target>/findings/<hash>.<ext> with <hash>.json (target, problem, the
 * CLI replay). --replay runs the saved findings through the CLI again. Exit status 1 when there
 * were findings. Default corpus: <system temp dir>/vdisk-covfuzz.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { bufferIo } from '../../cli/io.js';
import { main } from '../../cli/main.js';
import { remake } from './mutate.js';
import { nbdTarget } from './nbd-target.js';
import { TARGETS, type Target } from './targets.js';
import type { WorkerConfig, WorkerMessage } from './worker.js';

/** worker.ts's phases and header size (not imported: importing worker.ts would run it). */
const PHASES = ['starting', 'running the target', 'taking coverage', 'mutating', 'saving'];
const HEADER = 32;
/**
 * Before its first input a worker loads the target's modules (compiled by tsx) and makes its
 * seeds' coverage: more than 10 s at load 20 and nice 19 (two empty "hang" findings in the
 * second campaign), so the hang limit is longer until an input has begun.
 */
const START_MS = 60_000;

const ALL: Target[] = [...TARGETS, nbdTarget];

interface Options {
  targets: string[];
  execs: number;
  seconds: number;
  corpus: string;
  rng: number;
  slowMs: number;
  hangMs: number;
  heapMb: number;
  replay: boolean;
  /** Remake every mutant from its recipe and compare (tests: the in-place mutants are right). */
  verifyRecipes?: boolean;
}

export interface TargetResult {
  target: string;
  execs: number;
  seconds: number;
  execsPerSec: number;
  blocksStart: number;
  blocksEnd: number;
  corpus: number;
  findings: Finding[];
  restarts: number;
  /** Every run of this target on this corpus directory so far, this one included (stats.json). */
  total: Totals;
}

/** `<corpus>/<target>/stats.json`: inputs and time summed over the runs on this corpus. */
export interface Totals {
  execs: number;
  seconds: number;
  runs: number;
  findings: number;
}

function readTotals(file: string): Totals {
  try {
    const j = JSON.parse(readFileSync(file, 'utf8')) as Partial<Totals>;
    return { execs: j.execs ?? 0, seconds: j.seconds ?? 0, runs: j.runs ?? 0, findings: j.findings ?? 0 };
  } catch {
    return { execs: 0, seconds: 0, runs: 0, findings: 0 };
  }
}

export interface Finding {
  target: string;
  problem: string;
  file: string;
  /** The CLI on the saved input: command, exit status, first line of stderr. */
  cli?: string[];
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    targets: [],
    execs: Number.POSITIVE_INFINITY,
    seconds: 60,
    corpus: join(tmpdir(), 'vdisk-covfuzz'),
    rng: 1,
    slowMs: 2000,
    hangMs: 10_000,
    heapMb: 512,
    replay: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--execs') o.execs = Number(val());
    else if (a === '--seconds') o.seconds = Number(val());
    else if (a === '--corpus') o.corpus = val();
    else if (a === '--rng') o.rng = Number(val());
    else if (a === '--slow-ms') o.slowMs = Number(val());
    else if (a === '--hang-ms') o.hangMs = Number(val());
    else if (a === '--heap-mb') o.heapMb = Number(val());
    else if (a === '--replay') o.replay = true;
    else if (a === '--list') {
      process.stdout.write(`${ALL.map((t) => t.name).join('\n')}\n`);
      process.exit(0);
    } else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else o.targets.push(a);
  }
  if (o.targets.length === 0) o.targets = ALL.map((t) => t.name);
  for (const t of o.targets) if (!ALL.some((x) => x.name === t)) throw new Error(`unknown target ${t}`);
  return o;
}

/** The saved input through the CLI: each replay command, its exit status and message. */
export async function replayCli(t: Target, file: string): Promise<string[]> {
  const out: string[] = [];
  for (const args of t.replay?.(file) ?? []) {
    const io = bufferIo();
    let line: string;
    try {
      const code = await main(args, io);
      line = `vdisk ${args[0]}: exit ${code}${io.stderr ? `: ${io.stderr.trim().split('\n')[0]}` : ''}`;
    } catch (e) {
      line = `vdisk ${args[0]}: threw ${e instanceof Error ? e.message : String(e)}`;
    }
    out.push(line);
  }
  rmSync(`${file}.out`, { force: true });
  return out;
}

async function saveFinding(t: Target, dir: string, problem: string, input: Uint8Array): Promise<Finding> {
  const fdir = join(dir, 'findings');
  mkdirSync(fdir, { recursive: true });
  const h = createHash('sha1').update(input).digest('hex').slice(0, 16);
  const file = join(fdir, `${h}.${t.ext}`);
  writeFileSync(file, input);
  const f: Finding = { target: t.name, problem, file };
  f.cli = await replayCli(t, file);
  writeFileSync(join(fdir, `${h}.json`), `${JSON.stringify(f, null, 2)}\n`);
  return f;
}

/** Fuzz one target for the budget given; findings saved under the corpus directory. */
export async function fuzzTarget(
  t: Target,
  o: Omit<Options, 'targets' | 'replay'>,
  log: (line: string) => void = () => {},
): Promise<TargetResult> {
  const dir = join(o.corpus, t.name);
  const seedDir = join(dir, 'seeds');
  const corpusDir = join(dir, 'queue');
  if (!existsSync(seedDir) || readdirSync(seedDir).length === 0) {
    const scratch = join(dir, 'scratch');
    mkdirSync(scratch, { recursive: true });
    mkdirSync(seedDir, { recursive: true });
    for (const [i, b] of t.seeds(scratch).entries()) writeFileSync(join(seedDir, `seed-${i}`), b);
    rmSync(scratch, { recursive: true, force: true });
  }
  const res: TargetResult = {
    target: t.name,
    execs: 0,
    seconds: 0,
    execsPerSec: 0,
    blocksStart: -1,
    blocksEnd: 0,
    corpus: 0,
    findings: [],
    restarts: 0,
    total: { execs: 0, seconds: 0, runs: 0, findings: 0 },
  };
  const t0 = performance.now();
  // Updated as the run goes (every stats message), so a run stopped midway still counts.
  const statsFile = join(dir, 'stats.json');
  const before = readTotals(statsFile);
  const saveTotals = () => {
    res.total = {
      execs: before.execs + res.execs,
      seconds: Math.round(before.seconds + (performance.now() - t0) / 1000),
      runs: before.runs + 1,
      findings: before.findings + res.findings.length,
    };
    writeFileSync(statsFile, `${JSON.stringify(res.total)}\n`);
  };
  const self = new URL(`./worker.${import.meta.url.endsWith('.ts') ? 'ts' : 'js'}`, import.meta.url);
  let rngSeed = o.rng;
  // A worker ends its budget, or dies on an input (hang, heap, crash): a new one goes on.
  while (res.execs < o.execs && performance.now() - t0 < o.seconds * 1000) {
    const shared = new SharedArrayBuffer(HEADER + t.maxLen);
    const counter = new Int32Array(shared, 0, 8);
    /** The worker's corpus files, by index ('entry' messages): a mutant's recipe refers to them. */
    const paths: string[] = [];
    const cfg: WorkerConfig = {
      target: t.name,
      seedDir,
      corpusDir,
      execs: o.execs - res.execs,
      seconds: Math.max(1, o.seconds - (performance.now() - t0) / 1000),
      rngSeed: rngSeed++,
      shared,
      slowMs: o.slowMs,
      maxExternal: 256 << 20,
      verifyRecipes: o.verifyRecipes === true,
    };
    // Under tsx (the sources run as they are), the thread registers tsx before loading worker.ts.
    const boot = self.pathname.endsWith('.ts')
      ? `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(self.href)}); })`
      : `import(${JSON.stringify(self.href)})`;
    const w = new Worker(boot, {
      eval: true,
      workerData: cfg,
      resourceLimits: { maxOldGenerationSizeMb: o.heapMb },
    });
    let started = false;
    let done = false;
    let execsBefore = res.execs;
    const pending: Promise<void>[] = [];
    /** The input the thread was running: its bytes, or a mutant remade from its recipe. */
    const current = (): Buffer => {
      const len = Atomics.load(counter, 1);
      if (Atomics.load(counter, 3) !== 1) return Buffer.from(new Uint8Array(shared, HEADER, len));
      const rec = {
        parent: Atomics.load(counter, 4),
        n: Atomics.load(counter, 5),
        seed: Atomics.load(counter, 6) >>> 0,
      };
      const files = new Map<number, Buffer>();
      const entry = (i: number) => {
        const p = paths[i];
        if (p === undefined) return undefined;
        let b = files.get(i);
        if (b === undefined) {
          b = readFileSync(p);
          files.set(i, b);
        }
        return b;
      };
      try {
        return remake(rec, entry, t.dict(), t.maxLen);
      } catch (e) {
        log(`${t.name}: could not remake the input (${(e as Error).message}): saved empty`);
        return Buffer.alloc(0);
      }
    };
    await new Promise<void>((resolve) => {
      let last = -1;
      let since = performance.now();
      const watch = setInterval(() => {
        const n = Atomics.load(counter, 0);
        if (n !== last) {
          last = n;
          since = performance.now();
        } else if (!done && performance.now() - since > (n === 0 ? Math.max(o.hangMs, START_MS) : o.hangMs)) {
          clearInterval(watch);
          pending.push(
            saveFinding(
              t,
              dir,
              `hang: no progress for ${o.hangMs} ms (${PHASES[Atomics.load(counter, 2)] ?? '?'})`,
              current(),
            ).then((f) => {
              res.findings.push(f);
            }),
          );
          void w.terminate();
        }
      }, 250);
      w.on('message', (m: WorkerMessage) => {
        if (m.type === 'start') {
          started = true;
          if (res.blocksStart < 0) res.blocksStart = m.blocks;
          log(`${t.name}: start: ${m.corpus} corpus entries, ${m.blocks} blocks`);
        } else if (m.type === 'entry') {
          paths[m.index] = m.path;
        } else if (m.type === 'stats') {
          res.execs = execsBefore + m.execs;
          res.blocksEnd = m.blocks;
          res.corpus = m.corpus;
          saveTotals();
          log(`${t.name}: ${res.execs} execs, ${m.corpus} corpus, ${m.blocks} blocks`);
        } else if (m.type === 'finding') {
          pending.push(
            saveFinding(t, dir, m.problem, m.input).then((f) => {
              res.findings.push(f);
              log(`${t.name}: FINDING ${f.file}: ${m.problem.split('\n')[0]}`);
            }),
          );
        } else if (m.type === 'done') {
          done = true;
          void w.terminate();
          res.execs = execsBefore + m.execs;
          res.blocksEnd = m.blocks;
          res.corpus = m.corpus;
        }
      });
      w.on('error', (e) => {
        if (!started) {
          // Not a finding: the worker could not load its target or its seeds.
          log(`${t.name}: the worker failed before fuzzing: ${(e as Error).stack ?? String(e)}`);
          res.restarts = -1;
          return;
        }
        pending.push(
          saveFinding(t, dir, `worker died: ${(e as Error).message}`, current()).then((f) => {
            res.findings.push(f);
          }),
        );
      });
      w.on('exit', () => {
        clearInterval(watch);
        resolve();
      });
    });
    await Promise.all(pending);
    if (done) break;
    if (res.restarts < 0) throw new Error(`${t.name}: the fuzz worker failed to start`);
    res.restarts++;
    // The worker's last stats undercount what it ran: count the inputs it started.
    res.execs = Math.max(res.execs, execsBefore + Atomics.load(counter, 0));
    execsBefore = res.execs;
  }
  res.seconds = (performance.now() - t0) / 1000;
  res.execsPerSec = res.execs / res.seconds;
  saveTotals();
  return res;
}

async function cli(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  if (o.replay) {
    let n = 0;
    for (const name of o.targets) {
      const t = ALL.find((x) => x.name === name)!;
      const fdir = join(o.corpus, name, 'findings');
      if (!existsSync(fdir)) continue;
      for (const f of readdirSync(fdir).filter((x) => !x.endsWith('.json'))) {
        const file = join(fdir, f);
        const input = readFileSync(file);
        let problem = 'ok';
        // The parser on its own again, then the CLI.
        const t0 = performance.now();
        try {
          await t.run(input);
        } catch (e) {
          problem = t.expected(e)
            ? `refused: ${(e as Error).message}`
            : `internal error: ${(e as Error).stack}`;
        }
        problem += ` (${(performance.now() - t0).toFixed(0)} ms)`;
        n++;
        process.stdout.write(`${name} ${file}\n  parser: ${problem.split('\n').slice(0, 3).join(' | ')}\n`);
        for (const l of await replayCli(t, file)) process.stdout.write(`  ${l}\n`);
      }
    }
    process.stdout.write(`${n} findings replayed\n`);
    // The nbd target's server keeps the event loop alive.
    process.exit(0);
  }
  let findings = 0;
  const rows: string[] = [];
  for (const name of o.targets) {
    const t = ALL.find((x) => x.name === name)!;
    const r = await fuzzTarget(t, o, (l) => process.stderr.write(`${l}\n`));
    findings += r.findings.length;
    for (const f of r.findings) process.stdout.write(`${JSON.stringify(f)}\n`);
    rows.push(
      `${name.padEnd(16)} ${String(r.execs).padStart(9)} execs ${r.execsPerSec.toFixed(0).padStart(6)}/s  blocks ${r.blocksStart} -> ${r.blocksEnd}  corpus ${r.corpus}  findings ${r.findings.length}${r.restarts ? `  restarts ${r.restarts}` : ''}  (all runs: ${r.total.execs} execs in ${r.total.seconds} s, ${r.total.runs} runs)`,
    );
  }
  process.stderr.write(`${rows.join('\n')}\n`);
  return findings === 0 ? 0 : 1;
}

if (
  process.argv[1] !== undefined &&
  import.meta.url.endsWith(process.argv[1].replace(/.*\/src\//, '/src/'))
) {
  process.exitCode = await cli();
}
