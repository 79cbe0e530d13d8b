import type { Readable, Writable } from 'node:stream';

/** Where a command writes. Tests pass their own; the CLI passes the process streams. */
export interface Io {
  out(text: string): void;
  err(text: string): void;
  /** stderr is a terminal (progress bars are drawn only there). */
  readonly isTTY: boolean;
  /** The byte streams behind `-` (convert … -): absent where there are none (in-process tests). */
  readonly stdinStream?: Readable & { isTTY?: boolean };
  readonly stdoutStream?: Writable & { isTTY?: boolean };
}

export const processIo: Io = {
  out: (t) => {
    process.stdout.write(t);
  },
  err: (t) => {
    process.stderr.write(t);
  },
  get isTTY() {
    return process.stderr.isTTY === true;
  },
  get stdinStream() {
    return process.stdin;
  },
  get stdoutStream() {
    return process.stdout;
  },
};

/** An Io that collects what is written (for tests). */
export function bufferIo(): Io & { stdout: string; stderr: string } {
  const io = {
    stdout: '',
    stderr: '',
    isTTY: false,
    out(t: string) {
      io.stdout += t;
    },
    err(t: string) {
      io.stderr += t;
    },
  };
  return io;
}
