/**
 * Progress output, as qemu-img's util/qemu-progress.c draws it, plus a JSON form for programs.
 *
 * - `-p`: `    (12.34/100%)\r` redrawn in place, then a newline at the end. qemu-img writes it
 *   to stdout (not stderr) and draws it whether or not stdout is a terminal; so do we.
 *   A line is drawn when the value moved by more than `minSkip` points since the last one
 *   (1 for convert, 2 for compare, as qemu-img), and at 0 and 100. That bounds a whole run to
 *   about 100/minSkip lines, so no timer is needed: a time-based limit (say 10 a second) would
 *   only make the output differ from qemu-img's on fast runs.
 * - `--progress=json` (a vdisk extension): one line `{"progress": 12.34}` per drawn update,
 *   on stdout, with the same rule, and nothing at the end.
 *
 * qemu keeps the value in a C float; we round through Math.fround at the same steps so that
 * the printed digits are the same.
 *
 * When the total is not known ahead (a download without Content-Length), `bytes(done)` draws
 * the amount instead (`    (  12.3 MiB)\r`, `{"bytes": N}`), redrawn when the printed size
 * changes: three significant digits bound a run to a few hundred lines per power of ten.
 *
 * Commands never print progress themselves: they call an `onProgress(done, total)` callback.
 */
import { sizeToStr } from './format.js';
import type { Io } from './io.js';

export type ProgressMode = 'off' | 'human' | 'json';

const f = Math.fround;

export class Progress {
  private current = 0;
  private lastPrint = 0;
  private lastBytes = '';

  constructor(
    private readonly io: Io,
    readonly mode: ProgressMode,
    private readonly minSkip: number,
  ) {}

  /** qemu_progress_print(percent, 0): an absolute value. */
  set(percent: number): void {
    this.update(f(percent));
  }

  /** qemu_progress_print(((float) done / total) * 100, 100): a step of `done` out of `total`. */
  step(done: number, total: number): void {
    const delta = done === 0 ? 0 : f(f(f(done) / f(total)) * 100);
    this.update(f(this.current + f(f(delta / 100) * 100)));
  }

  private update(value: number): void {
    if (this.mode === 'off') return;
    const current = Math.min(value, 100);
    this.current = current;
    if (
      current > this.lastPrint + this.minSkip ||
      current < this.lastPrint - this.minSkip ||
      current === 100 ||
      current === 0
    ) {
      this.lastPrint = current;
      const v = fixed2(current);
      if (this.mode === 'human') this.io.out(`    (${v}/100%)\r`);
      else this.io.out(`{"progress": ${v}}\n`);
    }
  }

  /** An amount done out of an unknown total (vdisk's own form; see above). */
  bytes(done: number): void {
    if (this.mode === 'off') return;
    const text = sizeToStr(done);
    if (text === this.lastBytes) return;
    this.lastBytes = text;
    // Padded so that a shorter text ("1 MiB" after "1020 KiB") overwrites the longer one.
    if (this.mode === 'human') this.io.out(`    (${text.padStart(8)})\r`);
    else this.io.out(`{"bytes": ${done}}\n`);
  }

  /** qemu_progress_end(): a newline after the human bar. */
  end(): void {
    if (this.mode === 'human') this.io.out('\n');
  }
}

/** printf("%.2f"): like toFixed(2), but an exact tie rounds to even as glibc does. */
export function fixed2(x: number): string {
  const y = x * 100;
  if (!Number.isInteger(y) && Number.isInteger(y * 2)) {
    const down = Math.floor(y);
    const n = down % 2 === 0 ? down : down + 1;
    return (n / 100).toFixed(2);
  }
  return x.toFixed(2);
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
