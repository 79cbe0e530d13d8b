/**
 * One error family for the whole engine. Every error a user can meet is a VdiskError with a
 * stable string code (for scripts and the HTTP mapping) and the context that explains it.
 * The CLI prints `vdisk: <message>` and maps the code to an exit status in one place
 * (src/cli/errors.ts); the server maps it to an HTTP status in one place.
 */
import { constants as osConstants } from 'node:os';
export type ErrorCode =
  | 'ENOENT' // a named file does not exist
  | 'EACCES' // permission denied by the host
  | 'EIO' // the host reported an I/O error
  | 'ENOSPC' // out of space on the host
  | 'INVALID_ARGUMENT' // bad option, size, syntax
  | 'UNKNOWN_FORMAT' // no driver for the format name
  | 'FORMAT_MISMATCH' // content does not look like the requested format
  | 'INVALID_IMAGE' // header or tables malformed: the image cannot be opened
  | 'CORRUPT_IMAGE' // the image opened but metadata is inconsistent
  | 'UNSUPPORTED' // a valid feature that vdisk does not handle (yet)
  | 'OUT_OF_RANGE' // a request outside the image
  | 'READ_ONLY' // a write to an image opened read-only
  | 'LOCKED' // another process holds a conflicting lock
  | 'NOT_ALLOWED' // a backing/data/extent file that the caller did not allow
  | 'CHAIN_TOO_DEEP' // backing chain deeper than the limit, or a loop
  | 'TOO_LARGE' // a size or table beyond what vdisk will allocate
  | 'NOT_FOUND' // a snapshot or object by name
  | 'INTERNAL';

export interface ErrorContext {
  path?: string;
  offset?: number;
  op?: string;
  cause?: unknown;
}

export class VdiskError extends Error {
  readonly code: ErrorCode;
  readonly path: string | undefined;
  readonly offset: number | undefined;
  readonly op: string | undefined;

  constructor(code: ErrorCode, message: string, ctx: ErrorContext = {}) {
    super(message, ctx.cause === undefined ? undefined : { cause: ctx.cause });
    this.name = 'VdiskError';
    this.code = code;
    this.path = ctx.path;
    this.offset = ctx.offset;
    this.op = ctx.op;
  }
}

export const isVdiskError = (e: unknown): e is VdiskError => e instanceof VdiskError;

const hostCodes: Record<string, ErrorCode> = {
  ENOENT: 'ENOENT',
  ENOTDIR: 'ENOENT',
  EACCES: 'EACCES',
  EPERM: 'EACCES',
  EROFS: 'READ_ONLY',
  ENOSPC: 'ENOSPC',
  EDQUOT: 'ENOSPC',
  EFBIG: 'TOO_LARGE',
};

const hostText: Record<string, string> = {
  ENOENT: 'No such file or directory',
  ENOTDIR: 'Not a directory',
  EACCES: 'Permission denied',
  EPERM: 'Operation not permitted',
  EROFS: 'Read-only file system',
  ENOSPC: 'No space left on device',
  EDQUOT: 'Disk quota exceeded',
  EFBIG: 'File too large',
  EISDIR: 'Is a directory',
  EIO: 'Input/output error',
  EINVAL: 'Invalid argument',
};

/** The symbolic name of an errno number ("ENOSPC"), or undefined for one the host does not know. */
export function errnoName(errno: number): string | undefined {
  return Object.entries(osConstants.errno).find(([, v]) => v === errno)?.[0];
}

/** Host error text as strerror(3) words it, the way qemu-img prints it. */
export function strerror(err: unknown): string {
  const code = (err as { code?: string } | null)?.code;
  if (code !== undefined && hostText[code] !== undefined) return hostText[code];
  return err instanceof Error ? err.message : String(err);
}

/** Wrap a host (fs) error into a VdiskError, keeping the cause. */
export function fromHostError(err: unknown, ctx: ErrorContext & { message?: string }): VdiskError {
  if (err instanceof VdiskError) return err;
  const code = (err as { code?: string } | null)?.code ?? '';
  const mapped = hostCodes[code] ?? 'EIO';
  const message =
    ctx.message ??
    (ctx.path !== undefined ? `Could not open '${ctx.path}': ${strerror(err)}` : strerror(err));
  return new VdiskError(mapped, message, { ...ctx, cause: err });
}
