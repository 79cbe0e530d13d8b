/**
 * Numbers on qemu-img's command line: qemu_strtosz() (util/cutils.c) and qemu-img's
 * cvtnum_full(). Decimal or 0x-hex integers, an optional decimal fraction when a suffix
 * larger than bytes follows ("1.5k"), suffixes b/k/M/G/T/P/E (1024-based), rounding the
 * fraction half up, and the exact error wording. Computed in BigInt so that values up to
 * 2^64 are judged exactly; callers receive a bigint and clamp as they need.
 */
import { VdiskError } from '../core/errors.js';

const SUFFIX: Record<string, bigint> = {
  b: 1n,
  k: 1n << 10n,
  m: 1n << 20n,
  g: 1n << 30n,
  t: 1n << 40n,
  p: 1n << 50n,
  e: 1n << 60n,
};

const U64_MAX = (1n << 64n) - 1n;
export const INT64_MAX = (1n << 63n) - 1n;
export const INT_MAX = 2147483647n;

type StrtoszResult = { ok: true; value: bigint; warning?: string } | { ok: false; range: boolean };

/** qemu_strtosz(text, NULL, &res) with bytes as the default unit. */
export function qemuStrtosz(text: string): StrtoszResult {
  const invalid = { ok: false, range: false } as const;
  const range = { ok: false, range: true } as const;
  // strtoull: leading white space, an optional sign, then digits.
  const m = /^[ \t\n\v\f\r]*([+-]?)(\d+)/.exec(text);
  if (m === null) return invalid;
  if (m[1] === '-') return invalid;
  let pos = m[0].length;
  let val = BigInt(m[2]!);
  if (val > U64_MAX) return range;
  let valf = 0n; // 64-bit fixed-point fraction
  let warning: string | undefined;
  const next = text[pos];
  if (val === 0n && (next === 'x' || next === 'X')) {
    const h = /^[0-9a-fA-F]+/.exec(text.slice(pos + 1));
    if (h === null) {
      // strtoull("0x") parses "0" and stops before the x: the x is then trailing junk.
      return invalid;
    }
    val = BigInt(`0x${h[0]}`);
    if (val > U64_MAX) return range;
    pos += 1 + h[0].length;
    if (text[pos] === '.') return invalid;
    const c = text[pos];
    // qemu 7.2 still accepts a suffix after hex digits, with a deprecation warning.
    if (c !== undefined && SUFFIX[c.toLowerCase()] !== undefined)
      warning = `Using a multiplier suffix on hex numbers is deprecated: ${text}`;
  } else if (next === '.') {
    const f = /^\.(\d*)([eE][+-]?\d+)?/.exec(text.slice(pos))!;
    if (f[1] === '' && f[2] === undefined) {
      // strtod fails on a bare '.': qemu skips the dot and goes on ("1.k" is 1 KiB).
      pos += 1;
    } else {
      if (f[2] !== undefined) return invalid; // an exponent makes the whole input invalid
      const digits = f[1]!;
      // fraction * 2^64, truncated, as (uint64_t)(fraction * 0x1p64) in double precision.
      // A fraction that rounds to 1.0 overflows the cast; x86-64 then yields 0, as seen from
      // qemu-img ("3.999999999999999999k" is 3072).
      const fixed = Math.floor(Number(`0.${digits}`) * 2 ** 64);
      valf = fixed >= 2 ** 64 ? 0n : BigInt(fixed);
      pos += f[0].length;
    }
  }
  let mul = 1n;
  const c = text[pos];
  if (c !== undefined && SUFFIX[c.toLowerCase()] !== undefined) {
    mul = SUFFIX[c.toLowerCase()]!;
    pos++;
  }
  if (pos !== text.length) return invalid;
  if (mul === 1n) {
    if (valf !== 0n) return invalid; // a fraction needs a scale
    return warning === undefined ? { ok: true, value: val } : { ok: true, value: val, warning };
  }
  const frac = valf * mul; // 64.64 fixed point times an integer
  let result = val * mul + (frac >> 64n);
  if ((frac & U64_MAX) >> 63n === 1n) result += 1n; // round half up
  if (result > U64_MAX) return range;
  return warning === undefined ? { ok: true, value: result } : { ok: true, value: result, warning };
}

/**
 * qemu-img's cvtnum_full(name, value, min, max): the value, or a VdiskError worded as
 * qemu-img words it ("Invalid <name> specified. …"). Warnings (hex with a suffix) go to `warn`.
 */
export function cvtnum(
  name: string,
  text: string,
  min = 0n,
  max = INT64_MAX,
  warn?: (message: string) => void,
): bigint {
  const r = qemuStrtosz(text);
  if (r.ok && r.warning !== undefined) warn?.(r.warning);
  if (!r.ok && !r.range) {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for\n` +
        'vdisk: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.',
    );
  }
  if (!r.ok || r.value > max || r.value < min) {
    throw new VdiskError('INVALID_ARGUMENT', `Invalid ${name} specified. Must be between ${min} and ${max}.`);
  }
  return r.value;
}

/** A bigint as a JS number, saturating at Number.MAX_SAFE_INTEGER (beyond any image vdisk opens). */
export function clampToSafe(v: bigint): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

/** A `warn` for cvtnum that prints as qemu's warn_report does. */
export function warnTo(io: { err(text: string): void }): (message: string) => void {
  return (m) => io.err(`vdisk: warning: ${m}\n`);
}
