/** The one place where errors become `vdisk: …` lines and exit statuses. */
import { isVdiskError } from '../core/errors.js';
import type { Io } from './io.js';

export const PROGRAM = 'vdisk';

/**
 * Messages quote what images contain (descriptor lines, snapshot and file names): control
 * characters, which could move the cursor or recolour the user's terminal, are shown as \xNN.
 * Line feeds stay: some of qemu-img's messages have a second line.
 */
export function printable(msg: string): string {
  return msg.replace(
    /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  );
}

/**
 * Print an error as one `vdisk: …` line (never a stack trace) and return the exit status:
 * qemu-img exits 1 on errors. VDISK_DEBUG=1 adds the stack for developers.
 */
export function reportError(io: Io, err: unknown, exitCode = 1): number {
  const msg = isVdiskError(err)
    ? err.message
    : isAllocationFailure(err)
      ? `Cannot allocate memory (${err.message}): raise the process's memory limit or use smaller buffers`
      : err instanceof Error
        ? `internal error: ${err.message}`
        : String(err);
  io.err(`${PROGRAM}: ${printable(msg)}\n`);
  if (process.env['VDISK_DEBUG'] === '1' && err instanceof Error && err.stack) io.err(`${err.stack}\n`);
  return exitCode;
}

/**
 * An allocation the host refused (a `prlimit --as` reached, a buffer beyond what V8 allows):
 * qemu-img reports ENOMEM as any other error, so does vdisk, in strerror's words.
 */
function isAllocationFailure(err: unknown): err is RangeError {
  return (
    err instanceof RangeError &&
    /allocation failed|out of memory|cannot allocate|Invalid typed array length|Array buffer allocation/i.test(
      err.message,
    )
  );
}
