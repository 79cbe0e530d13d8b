/**
 * Progress output, as qemu-img's util/qemu-progress.c draws it, plus a JSON form for programs.
 *
 * - `-p`: `    (12.34/100%)\r` redrawn in place, then a newline at the end. qemu-img writes it
 *   to stdout (not stderr) and draws it whether or not stdout is a terminal; so do we.
 *   A line is drawn when the value moved by more than `minSkip` points since the last one
 *   (1 for convert, 2 for compare, as qemu-img), at 0 and at 100; we also draw at most
 *   ~10 times a second, so that a fast copy does not flood a slow terminal.
 * - `--progress=json` (a vdisk extension): one line `{"progress": 12.34}` per drawn update,
 *   on stdout, with the same throttling, and nothing at the end.
 *
 * Commands never print progress themselves: they call an `onProgress(percent)` callback.
 */
import type { Io } from './io.js';

export type ProgressMode = 'off' | 'human' | 'json';

const MIN_INTERVAL_MS = 100;

export class Progress {
  private current = 0;
  private lastPrint = 0;
  private lastTime = 0;
  private drawn = false;

  constructor(
    private readonly io: Io,
    readonly mode: ProgressMode,
    private readonly minSkip: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** The callback commands take: an absolute percentage (0..100). */
  readonly report = (percent: number): void => this.set(percent);

  set(percent: number): void {
    if (this.mode === 'off') return;
    const p = Math.min(100, Math.max(0, percent));
    if (p > this.current) this.current = p;
    const edge = p === 0 || p === 100;
    if (!edge && !(p > this.lastPrint + this.minSkip || p < this.lastPrint - this.minSkip)) return;
    const t = this.now();
    if (!edge && this.drawn && t - this.lastTime < MIN_INTERVAL_MS) return;
    this.lastPrint = this.current;
    this.lastTime = t;
    this.drawn = true;
    this.draw();
  }

  private draw(): void {
    const v = this.current.toFixed(2);
    if (this.mode === 'human') this.io.out(`    (${v}/100%)\r`);
    else this.io.out(`{"progress": ${v}}\n`);
  }

  /** qemu_progress_end(): a newline after the human bar. */
  end(): void {
    if (this.mode === 'human') this.io.out('\n');
  }
}

/** The mode chosen by -p, -q and --progress=…; quiet wins, as in qemu-img. */
export function progressMode(opts: {
  p: boolean;
  quiet: boolean;
  progressArg?: string | undefined;
}): ProgressMode {
  if (opts.quiet) return 'off';
  if (opts.progressArg === 'json') return 'json';
  if (opts.p || opts.progressArg === 'human') return 'human';
  return 'off';
}
