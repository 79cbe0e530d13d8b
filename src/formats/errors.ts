/** Helpers shared by format drivers. */
import { VdiskError } from '../core/errors.js';

/** qemu-img names the image in front of every error a driver reports while creating it. */
export function prefixError(err: unknown, path: string): unknown {
  if (!(err instanceof VdiskError)) return err;
  return new VdiskError(err.code, `${path}: ${err.message}`, { path, cause: err });
}
