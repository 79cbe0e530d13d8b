/** The one place where errors become `vdisk: …` lines and exit statuses. */
import { isVdiskError } from '../core/errors.js';
import type { Io } from './io.js';

export const PROGRAM = 'vdisk';

/**
 * Print an error as one `vdisk: …` line (never a stack trace) and return the exit status:
 * qemu-img exits 1 on errors. VDISK_DEBUG=1 adds the stack for developers.
 */
export function reportError(io: Io, err: unknown, exitCode = 1): number {
  const msg = isVdiskError(err)
    ? err.message
    : err instanceof Error
      ? `internal error: ${err.message}`
      : String(err);
  io.err(`${PROGRAM}: ${msg}\n`);
  if (process.env['VDISK_DEBUG'] === '1' && err instanceof Error && err.stack) io.err(`${err.stack}\n`);
  return exitCode;
}
