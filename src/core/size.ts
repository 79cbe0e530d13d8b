/** Sizes as qemu-img reads them (qemu_strtosz): 1024-based suffixes k/K, M, G, T, P, E; 'b' ignored. */
import { VdiskError } from './errors.js';

const UNITS: Record<string, number> = {
  b: 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
  p: 2 ** 50,
  e: 2 ** 60,
};

/** Largest size vdisk handles: JS numbers are exact up to 2^53. */
export const MAX_SIZE = Number.MAX_SAFE_INTEGER;

/**
 * Parse "10G", "1.5M", "512" (bytes by default, or `defaultUnit`). Returns null when the
 * text is not a size; callers word the error as their qemu-img counterpart does.
 */
export function parseSize(text: string, defaultUnit = 'b'): number | null {
  const m = /^\s*(\d+(?:\.\d*)?|\.\d+)\s*([bkmgtpeBKMGTPE]?)\s*$/.exec(text);
  if (m === null) return null;
  const num = Number(m[1]);
  const unit = UNITS[(m[2] || defaultUnit).toLowerCase()];
  if (unit === undefined) return null;
  // qemu_strtosz accepts a fraction only with a suffix larger than bytes.
  if (m[1]!.includes('.') && unit === 1) return null;
  const v = Math.floor(num * unit);
  if (!Number.isFinite(v) || v < 0) return null;
  return v;
}

/** QEMU's words for an option of size type that does not parse (qemu_opt_parse's). */
export function sizeParameterError(name: string): string {
  return `Parameter '${name}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.`;
}

/** Parse a size given on the command line, with qemu-img's error wording. */
export function parseImageSize(text: string): number {
  const v = parseSize(text);
  if (v === null) {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      'Invalid image size specified. You may use k, M, G, T, P or E suffixes for\nvdisk: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.',
    );
  }
  if (v >= 2 ** 63) throw new VdiskError('INVALID_ARGUMENT', 'Image size must be less than 8 EiB!');
  if (v > MAX_SIZE)
    throw new VdiskError('TOO_LARGE', `Image size ${text} is beyond what vdisk supports (8 PiB)`);
  return v;
}
