import { fstatSync, writeSync } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import { native } from '../native/index.js';

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

/** The buffer asked for a pipe behind `-`: Linux's default /proc/sys/fs/pipe-max-size. */
const PIPE_BYTES = 1 << 20;

/**
 * Give a pipe behind `-` 1 MiB of buffer instead of Linux's 64 KiB: writer and reader then
 * wake each other far less often. A 4 GiB image through `cat |` on this machine: 8.3 s with
 * 64 KiB, 2.2 s with 1 MiB (docs/benchmarks.md, "Pipes"). 1 MiB is the most an unprivileged
 * process may ask by default; a refusal (a lower limit, not a pipe) leaves the pipe as it is.
 */
const widened = new Set<number>();
function widenPipe(fd: 0 | 1): void {
  if (widened.has(fd)) return;
  widened.add(fd);
  try {
    if (!fstatSync(fd).isFIFO()) return;
  } catch {
    return;
  }
  native?.setPipeSize?.(fd, PIPE_BYTES);
}

/**
 * Text goes to fds 1 and 2 with fs.writeSync: a command that only prints (info, check, map…)
 * then never creates process.stdout/stderr, whose pipe and socket streams load node:net and
 * its dependencies (start-up; docs/benchmarks.md, "Start-up"). Text goes through the stream
 * instead once a command has taken the stream behind `-` (stdoutStream), so that the two keep
 * their order, and after EAGAIN (a non-blocking pipe that is full: the stream waits for it).
 * Other write errors (EPIPE: the reader is gone; ENOSPC; EBADF: fd closed) drop the text, as
 * qemu-img's printf does, where the stream raised an uncaught 'error' (a stack trace, status 1).
 * qemu-img itself dies of SIGPIPE on EPIPE, which Node ignores.
 */
function processIoOf(): Io {
  // Per fd: 'fd' until text has to go through the stream, or 'none' after a write error.
  const how: Record<1 | 2, 'fd' | 'stream' | 'none'> = { 1: 'fd', 2: 'fd' };
  const writer =
    (fd: 1 | 2, stream: () => NodeJS.WriteStream) =>
    (text: string): void => {
      if (how[fd] === 'stream') {
        stream().write(text);
        return;
      }
      if (how[fd] === 'none') return;
      const buf = Buffer.from(text);
      let done = 0;
      try {
        while (done < buf.length) done += writeSync(fd, buf, done);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') {
          how[fd] = 'none';
          return;
        }
        how[fd] = 'stream';
        stream().write(buf.subarray(done));
      }
    };
  return {
    out: writer(1, () => process.stdout),
    err: writer(2, () => process.stderr),
    get isTTY() {
      return process.stderr.isTTY === true;
    },
    get stdinStream() {
      widenPipe(0);
      return process.stdin;
    },
    get stdoutStream() {
      if (how[1] === 'fd') how[1] = 'stream';
      widenPipe(1);
      return process.stdout;
    },
  };
}

export const processIo: Io = processIoOf();

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
