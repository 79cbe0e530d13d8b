/**
 * Mutations for the coverage-guided loop: one to four stacked edits of a corpus entry, chosen
 * by a deterministic generator. Edits: bit flips and random bytes; boundary values in 8/16/32/64-bit
 * little- and big-endian fields; small increments of a field; the format's magic numbers and
 * header-field values (the target's dictionary) written at the target's field offsets or
 * anywhere; splices with another corpus entry; truncation and extension; chunk copies.
 */

import { rng } from '../rng.js';

export interface Dictionary {
  /** Byte strings worth writing: magic numbers, signatures, header-field values, keywords. */
  tokens: Buffer[];
  /** Offsets of header fields (from the driver's structs): edits land there more often. */
  offsets: number[];
}

const B8 = [0, 1, 0x7f, 0x80, 0xff];
const B16 = [0, 1, 0x7fff, 0x8000, 0xffff, 0x200, 0x1000];
const B32 = [0, 1, 2, 9, 0x7fffffff, 0x80000000, 0xffffffff, 0x200, 0x1000, 0x10000, 0x100000, 0x1fffff80];
const B64 = [
  0n,
  1n,
  0x7fffffffffffffffn,
  0xffffffffffffffffn,
  1n << 32n,
  1n << 40n,
  1n << 53n,
  1n << 56n,
  0x8000000000000000n,
];

/**
 * Where mutants are made in place: a buffer as large as the largest input, the corpus entry it
 * was last filled from, and the range edits have changed since. The next mutant of the same
 * entry restores only that range instead of copying the whole entry (vhdx seeds are 11 MiB).
 */
export class Scratch {
  base: Buffer | undefined;
  /**
   * The ranges [a, b) (flat pairs) edits have changed since the buffer last held `base` whole:
   * restored one by one, not as one hull (two edits at 100 and at 10 MiB restored 10 MiB).
   */
  touched: number[] = [];
  constructor(readonly buf: Buffer) {}
}

export class Mutator {
  constructor(
    private readonly r: () => number,
    private readonly dict: Dictionary,
    private readonly maxLen: number,
  ) {}

  private int(n: number): number {
    return Math.floor(this.r() * n);
  }

  private sc: Scratch | undefined;

  /** buf (starting at scratch's start) resized to len in scratch, or undefined. */
  private resized(buf: Buffer, len: number): Buffer | undefined {
    const s = this.sc?.buf;
    if (s === undefined || buf.buffer !== s.buffer || buf.byteOffset !== s.byteOffset || len > s.length)
      return undefined;
    return s.subarray(0, len);
  }

  /** Bytes [a, b) of the mutant are (or may be) written: restored from the entry next time. */
  private touch(a: number, b: number): void {
    const s = this.sc;
    if (s === undefined) return;
    s.touched.push(a, b);
  }

  private pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }

  /** An offset in buf: a header field, near non-zero metadata, or anywhere. */
  private offset(buf: Buffer, width = 1): number {
    const limit = Math.max(1, buf.length - width + 1);
    const k = this.r();
    if (k < 0.45 && this.dict.offsets.length > 0) {
      const o = this.pick(this.dict.offsets);
      if (o < limit) return o;
    }
    if (k < 0.75) return this.int(Math.min(limit, 4096));
    return this.int(limit);
  }

  /**
   * One mutant of `input`. With `scratch`, the mutant is made in its buffer, edits that change
   * the length included (unless it would outgrow it): no allocation for multi-MiB images, whose
   * per-input allocations made V8 collect every few inputs. The result is then valid until the
   * next call. The bytes are the same with or without scratch.
   */
  mutate(input: Buffer, other: () => Buffer | undefined, scratch?: Scratch): Buffer {
    let buf: Buffer;
    this.sc = undefined;
    if (scratch !== undefined && input.length <= scratch.buf.length) {
      const sb = scratch.buf;
      if (scratch.base === input) {
        const t = scratch.touched;
        for (let i = 0; i < t.length; i += 2) {
          const lo = t[i]!;
          const hi = Math.min(t[i + 1]!, input.length);
          if (lo >= hi) continue;
          sb.set(input.subarray(lo, hi), lo);
        }
      } else {
        sb.set(input);
      }
      scratch.base = input;
      scratch.touched = [];
      this.sc = scratch;
      buf = sb.subarray(0, input.length);
    } else buf = Buffer.from(input);
    const edits = 1 + this.int(4);
    for (let e = 0; e < edits; e++) buf = this.edit(buf, other);
    if (buf.length > this.maxLen) buf = buf.subarray(0, this.maxLen);
    return buf;
  }

  private edit(buf: Buffer, other: () => Buffer | undefined): Buffer {
    if (buf.length === 0) return Buffer.from(this.dict.tokens.length > 0 ? this.pick(this.dict.tokens) : [0]);
    const kind = this.int(13);
    switch (kind) {
      case 0: {
        const at = this.offset(buf);
        this.touch(at, at + 1);
        buf[at] = buf[at]! ^ (1 << this.int(8));
        return buf;
      }
      case 1: {
        const at = this.offset(buf);
        this.touch(at, at + 1);
        buf[at] = this.r() < 0.5 ? this.int(256) : this.pick(B8);
        return buf;
      }
      case 2: {
        if (buf.length < 2) return buf;
        const at = this.offset(buf, 2);
        this.touch(at, at + 2);
        const v = this.pick(B16);
        if (this.r() < 0.5) buf.writeUInt16LE(v, at);
        else buf.writeUInt16BE(v, at);
        return buf;
      }
      case 3:
      case 4: {
        if (buf.length < 4) return buf;
        const at = this.offset(buf, 4);
        this.touch(at, at + 4);
        const v = this.pick(B32);
        if (this.r() < 0.5) buf.writeUInt32LE(v >>> 0, at);
        else buf.writeUInt32BE(v >>> 0, at);
        return buf;
      }
      case 5: {
        if (buf.length < 8) return buf;
        const at = this.offset(buf, 8);
        this.touch(at, at + 8);
        const v = this.pick(B64);
        if (this.r() < 0.5) buf.writeBigUInt64LE(v, at);
        else buf.writeBigUInt64BE(v, at);
        return buf;
      }
      case 6: {
        // A field nudged: +-1..16 on a 32-bit value of either order.
        if (buf.length < 4) return buf;
        const at = this.offset(buf, 4);
        this.touch(at, at + 4);
        const d = (1 + this.int(16)) * (this.r() < 0.5 ? -1 : 1);
        if (this.r() < 0.5) buf.writeUInt32LE((buf.readUInt32LE(at) + d) >>> 0, at);
        else buf.writeUInt32BE((buf.readUInt32BE(at) + d) >>> 0, at);
        return buf;
      }
      case 7:
      case 8: {
        if (this.dict.tokens.length === 0) return buf;
        const t = this.pick(this.dict.tokens);
        const at = this.offset(buf, Math.min(t.length, buf.length));
        if (this.r() < 0.2) {
          const into = this.resized(buf, buf.length + t.length);
          if (into === undefined) return Buffer.concat([buf.subarray(0, at), t, buf.subarray(at)]);
          this.touch(at, into.length);
          into.copyWithin(at + t.length, at, buf.length);
          t.copy(into, at);
          return into;
        }
        this.touch(at, at + t.length);
        t.copy(buf, at, 0, Math.min(t.length, buf.length - at));
        return buf;
      }
      case 9: {
        // Splice: this entry's head and another's tail, or a chunk of another copied in.
        const o = other();
        if (o === undefined || o.length === 0) return buf;
        if (this.r() < 0.5) {
          const cut = this.int(Math.min(buf.length, o.length) + 1);
          const into = this.resized(buf, Math.max(cut, o.length));
          if (into === undefined) return Buffer.concat([buf.subarray(0, cut), o.subarray(cut)]);
          this.touch(cut, into.length);
          o.copy(into, cut, cut);
          return into;
        }
        const len = 1 + this.int(Math.min(512, o.length));
        const from = this.int(o.length - len + 1);
        const at = this.offset(buf);
        this.touch(at, at + len);
        o.copy(buf, at, from, Math.min(from + len, from + buf.length - at));
        return buf;
      }
      case 10: {
        // Truncate (anywhere, or at a sector/cluster boundary) or extend.
        if (this.r() < 0.6) {
          const cut = this.r() < 0.5 ? this.int(buf.length) : this.int(buf.length / 512 + 1) * 512;
          return buf.subarray(0, Math.min(cut, buf.length));
        }
        const more = this.pick([1, 7, 512, 4096, 65536]);
        const fill = this.r() < 0.5 ? 0 : 0xff;
        const into = this.resized(buf, buf.length + more);
        if (into === undefined) return Buffer.concat([buf, Buffer.alloc(more, fill)]);
        this.touch(buf.length, into.length);
        return into.fill(fill, buf.length);
      }
      case 11: {
        // Copy a chunk of the entry over another place of it.
        const len = 1 + this.int(Math.min(64, buf.length));
        const from = this.int(buf.length - len + 1);
        const to = this.offset(buf, len);
        this.touch(to, to + len);
        buf.copy(buf, to, from, from + len);
        return buf;
      }
      default: {
        // Delete a short range (shifts what follows: text formats, streams).
        const at = this.offset(buf);
        const len = 1 + this.int(16);
        const end = Math.min(buf.length, at + len);
        const into = this.resized(buf, buf.length - (end - at));
        if (into === undefined) return Buffer.concat([buf.subarray(0, at), buf.subarray(end)]);
        this.touch(at, buf.length);
        buf.copyWithin(at, end);
        return into;
      }
    }
  }
}

/** What a mutant is made from: the corpus entry, the corpus size then, the generator's seed. */
export interface Recipe {
  parent: number;
  n: number;
  seed: number;
}

/**
 * The mutant of a recipe, from the corpus entries `entry` gives: the worker's (into its scratch
 * buffer), and the parent's when it saves the input of a thread that hung or died.
 */
export function remake(
  rec: Recipe,
  entry: (i: number) => Buffer | undefined,
  dict: Dictionary,
  maxLen: number,
  into?: Scratch,
): Buffer {
  const mr = rng(rec.seed);
  const parent = entry(rec.parent);
  if (parent === undefined) throw new Error(`no corpus entry ${rec.parent}`);
  return new Mutator(mr, dict, maxLen).mutate(parent, () => entry(Math.floor(mr() * rec.n)), into);
}
