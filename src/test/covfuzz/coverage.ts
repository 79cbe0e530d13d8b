/**
 * Coverage signal from V8's own block coverage (the Chrome DevTools protocol's Profiler domain,
 * through node:inspector): Profiler.startPreciseCoverage({ callCount: false, detailed: true }),
 * then Profiler.takePreciseCoverage after an input (or a batch of inputs).
 *
 * What V8 reports (measured here, node 20): in this binary block mode each take returns only the
 * functions run since the previous take and resets the counters. A function's first range is
 * the function (count 1 when it ran); nested ranges are listed only where their count differs
 * from the enclosing one, i.e. the blocks that did NOT run (count 0). So the blocks an input
 * reached are "the function minus its zero ranges". Edge-like keys: scriptId + function start +
 * block range. A function is new the first time it runs; a block is new when a range once
 * reported as not run is no longer inside any zero range.
 *
 * Cost: a take serialises every function run since the last one (~25 KB of JSON for a qcow2
 * open), ~0.6 ms: as much as a qcow2 open itself. So the loop takes coverage once per batch
 * of inputs and replays a batch input by input only when the batch found something new.
 */
import { Session } from 'node:inspector';

interface Range {
  startOffset: number;
  endOffset: number;
  count: number;
}
interface FunctionCoverage {
  functionName: string;
  ranges: Range[];
  isBlockCoverage: boolean;
}
interface ScriptCoverage {
  scriptId: string;
  url: string;
  functions: FunctionCoverage[];
}

function post<T>(session: Session, method: string, params?: object): T {
  let out: T | undefined;
  let error: Error | null = null;
  // Session.post on the main thread's own inspector calls back synchronously.
  session.post(method, params ?? {}, (err, res) => {
    if (err) error = err;
    out = res as T;
  });
  if (error) throw error;
  return out as T;
}

/** Is this script one of vdisk's own (and not the fuzzer)? */
export function ownScript(url: string): boolean {
  if (url.includes('/node_modules/') || url.includes('/covfuzz/')) return false;
  return /\/(src|dist)\//.test(url) && /\.(ts|js)$/.test(url);
}

interface FunctionState {
  /** Ranges once reported as not run: covered (true) or not yet. */
  blocks: Map<string, boolean>;
}

export class Coverage {
  private readonly session = new Session();
  private readonly functions = new Map<string, FunctionState>();
  /** Blocks (function entries and ranges) reached so far. */
  covered = 0;

  constructor(private readonly filter: (url: string) => boolean = ownScript) {
    this.session.connect();
    post(this.session, 'Profiler.enable');
    post(this.session, 'Profiler.startPreciseCoverage', { callCount: false, detailed: true });
  }

  /**
   * Coverage since the last take: the number of new blocks. With commit false nothing is
   * recorded (a batch asks "anything new?" and then replays its inputs one by one).
   */
  take(commit = true): number {
    const { result } = post<{ result: ScriptCoverage[] }>(this.session, 'Profiler.takePreciseCoverage');
    let fresh = 0;
    for (const s of result) {
      if (!this.filter(s.url)) continue;
      for (const f of s.functions) {
        const top = f.ranges[0];
        if (top === undefined || top.count === 0) continue;
        const fkey = `${s.scriptId}:${top.startOffset}`;
        const zeros = f.ranges.filter((r) => r.count === 0);
        let st = this.functions.get(fkey);
        if (st === undefined) {
          fresh++;
          if (!commit) continue;
          st = { blocks: new Map() };
          this.functions.set(fkey, st);
          this.covered++;
        }
        const zeroKeys = new Set(zeros.map((r) => `${r.startOffset}-${r.endOffset}`));
        for (const [key, was] of st.blocks) {
          if (was || zeroKeys.has(key)) continue;
          const [a, b] = key.split('-').map(Number) as [number, number];
          // Still not run when it lies inside a zero range reported now.
          if (zeros.some((z) => z.startOffset <= a && b <= z.endOffset)) continue;
          fresh++;
          if (commit) {
            st.blocks.set(key, true);
            this.covered++;
          }
        }
        if (commit) for (const k of zeroKeys) if (!st.blocks.has(k)) st.blocks.set(k, false);
      }
    }
    return fresh;
  }

  close(): void {
    post(this.session, 'Profiler.stopPreciseCoverage');
    this.session.disconnect();
  }
}
