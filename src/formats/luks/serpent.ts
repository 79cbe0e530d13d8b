/**
 * Serpent (R. Anderson, E. Biham, L. Knudsen, "Serpent: A Proposal for the Advanced Encryption
 * Standard", 1998), written from the AES submission in its bitslice form: the block is four
 * 32-bit words X0..X3, each S-box is applied to the 32 nibbles (bit i of X0..X3) at once, then
 * the linear transformation mixes the words. 32 rounds, keys of 128/192/256 bits (shorter keys
 * are padded with a 1 bit, then zeros).
 *
 * Byte order: block and key bytes load as little-endian words (X0 = bytes 0..3), as nettle
 * (QEMU's cipher library), Linux and libgcrypt do. The submission's own test vector files print
 * blocks and keys as 128/256-bit numbers, most significant digit first: the same bytes in
 * reverse order.
 *
 * The S-box functions below are each output bit's algebraic normal form (XOR of ANDs of the
 * input bits), printed by scripts/serpent-sboxes.py from the submission's tables; serpent.test.ts
 * checks them against the tables.
 */
import type { BlockCipher } from './crypto.js';

export const SBOX = [
  [3, 8, 15, 1, 10, 6, 5, 11, 14, 13, 4, 2, 7, 0, 9, 12],
  [15, 12, 2, 7, 9, 0, 5, 10, 1, 11, 14, 8, 6, 13, 3, 4],
  [8, 6, 7, 9, 3, 12, 10, 15, 13, 1, 14, 4, 0, 11, 5, 2],
  [0, 15, 11, 8, 12, 9, 6, 3, 13, 1, 2, 4, 10, 7, 5, 14],
  [1, 15, 8, 3, 12, 0, 11, 6, 2, 5, 4, 10, 9, 14, 7, 13],
  [15, 5, 2, 11, 4, 10, 9, 12, 0, 3, 14, 8, 13, 6, 7, 1],
  [7, 2, 12, 5, 8, 4, 6, 11, 14, 9, 1, 15, 13, 3, 10, 0],
  [1, 13, 15, 0, 14, 8, 2, 11, 7, 4, 12, 10, 9, 3, 5, 6],
];

type SboxFn = (a: number, b: number, c: number, d: number, o: Int32Array) => void;

export function s0(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const abc = ab & c;
  const acd = ac & d;
  const bcd = bc & d;
  o[0] = ~(a ^ ab ^ c ^ ac ^ bc ^ abc ^ d ^ acd ^ bcd);
  o[1] = ~(a ^ ac ^ bc ^ abc ^ bd ^ acd ^ bcd);
  o[2] = b ^ ab ^ ac ^ abc ^ d ^ bd ^ bcd;
  o[3] = a ^ b ^ c ^ d ^ ad;
}

export function s1(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abd = ab & d;
  const acd = ac & d;
  const bcd = bc & d;
  o[0] = ~(a ^ b ^ bc ^ ad ^ cd ^ acd ^ bcd);
  o[1] = ~(a ^ ab ^ c ^ ac ^ d ^ bd ^ abd ^ acd ^ bcd);
  o[2] = ~(b ^ ab ^ c ^ d);
  o[3] = ~(b ^ ac ^ d ^ ad ^ abd ^ acd ^ bcd);
}

export function s2(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abc = ab & c;
  const abd = ab & d;
  const acd = ac & d;
  o[0] = b ^ c ^ ac ^ d;
  o[1] = a ^ b ^ c ^ bc ^ abc ^ ad ^ abd ^ cd ^ acd;
  o[2] = a ^ b ^ bc ^ d ^ bd ^ abd ^ cd ^ acd;
  o[3] = ~(a ^ b ^ c ^ abc ^ bd);
}

export function s3(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abc = ab & c;
  const abd = ab & d;
  const acd = ac & d;
  const bcd = bc & d;
  o[0] = a ^ b ^ bc ^ d ^ ad ^ cd ^ acd ^ bcd;
  o[1] = a ^ b ^ ac ^ ad ^ abd ^ cd ^ acd;
  o[2] = a ^ ab ^ c ^ abc ^ d ^ bd ^ abd;
  o[3] = a ^ b ^ ab ^ c ^ ac ^ abc ^ d ^ cd ^ acd;
}

export function s4(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abc = ab & c;
  const abd = ab & d;
  const acd = ac & d;
  const bcd = bc & d;
  o[0] = ~(b ^ ab ^ c ^ d ^ ad ^ bd);
  o[1] = a ^ ac ^ bc ^ d ^ bd ^ cd ^ acd ^ bcd;
  o[2] = a ^ ab ^ c ^ bc ^ abc ^ bd ^ abd ^ cd ^ bcd;
  o[3] = a ^ b ^ c ^ bc ^ ad ^ bd ^ abd;
}

export function s5(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abc = ab & c;
  const abd = ab & d;
  const acd = ac & d;
  const bcd = bc & d;
  o[0] = ~(b ^ ab ^ c ^ d ^ ad ^ bd);
  o[1] = ~(a ^ ab ^ c ^ d ^ bd ^ abd ^ cd);
  o[2] = ~(b ^ ac ^ d ^ abd ^ cd ^ acd ^ bcd);
  o[3] = ~(a ^ b ^ c ^ abc ^ d ^ ad ^ acd);
}

export function s6(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abc = ab & c;
  const abd = ab & d;
  const bcd = bc & d;
  o[0] = ~(a ^ b ^ c ^ ac ^ bc ^ abc ^ d ^ abd ^ bcd);
  o[1] = ~(b ^ c ^ ad);
  o[2] = ~(a ^ ab ^ c ^ bc ^ abc ^ bd ^ abd ^ cd ^ bcd);
  o[3] = b ^ ab ^ c ^ ac ^ abc ^ d ^ cd ^ bcd;
}

export function s7(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abc = ab & c;
  const abd = ab & d;
  const acd = ac & d;
  const bcd = bc & d;
  o[0] = ~(ab ^ c ^ ad ^ bd ^ cd ^ acd ^ bcd);
  o[1] = b ^ ab ^ c ^ ac ^ bc ^ d ^ ad ^ abd ^ acd;
  o[2] = a ^ b ^ c ^ abc ^ d ^ ad ^ bd ^ abd ^ bcd;
  o[3] = a ^ b ^ c ^ ac ^ abc ^ ad;
}

export function si0(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abd = ab & d;
  const acd = ac & d;
  const bcd = bc & d;
  o[0] = ~(ab ^ c ^ bc ^ ad ^ bd ^ abd ^ cd ^ acd ^ bcd);
  o[1] = a ^ b ^ c ^ ac ^ bd ^ acd ^ bcd;
  o[2] = ~(a ^ b ^ ab ^ c ^ d);
  o[3] = ~(a ^ bc ^ d ^ abd ^ cd ^ acd ^ bcd);
}

export function si1(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const abc = ab & c;
  const acd = ac & d;
  const bcd = bc & d;
  o[0] = ~(a ^ b ^ ab ^ abc ^ bd ^ acd ^ bcd);
  o[1] = b ^ c ^ abc ^ d ^ ad ^ bd ^ acd ^ bcd;
  o[2] = ~(a ^ b ^ ac ^ bc ^ abc ^ d ^ acd);
  o[3] = a ^ c ^ d ^ bd;
}

export function si2(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abc = ab & c;
  const abd = ab & d;
  const acd = ac & d;
  o[0] = a ^ b ^ c ^ bc ^ bd;
  o[1] = b ^ ab ^ c ^ ad ^ abd ^ cd ^ acd;
  o[2] = ~(a ^ ab ^ c ^ d ^ ad ^ bd ^ abd ^ acd);
  o[3] = ~(ab ^ bc ^ abc ^ d ^ acd);
}

export function si3(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abc = ab & c;
  const abd = ab & d;
  const acd = ac & d;
  const bcd = bc & d;
  o[0] = a ^ c ^ bc ^ d ^ ad ^ bd ^ bcd;
  o[1] = b ^ c ^ bc ^ abc ^ d ^ ad ^ acd ^ bcd;
  o[2] = ab ^ ac ^ bc ^ ad ^ bd ^ abd ^ cd ^ acd;
  o[3] = a ^ b ^ c ^ ac ^ abc ^ ad ^ abd ^ cd;
}

export function si4(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abc = ab & c;
  const abd = ab & d;
  const acd = ac & d;
  o[0] = ~(a ^ b ^ c ^ d ^ ad ^ abd ^ cd ^ acd);
  o[1] = ab ^ c ^ ac ^ d ^ ad ^ acd;
  o[2] = ~(a ^ b ^ ab ^ c ^ ac ^ abc ^ d ^ bd ^ abd);
  o[3] = b ^ ab ^ c ^ ad ^ abd ^ cd;
}

export function si5(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const abc = ab & c;
  const abd = ab & d;
  const acd = ac & d;
  o[0] = a ^ bc ^ d ^ abd;
  o[1] = a ^ b ^ ac ^ bc ^ abc ^ d ^ ad ^ abd;
  o[2] = a ^ ab ^ c ^ bd ^ abd ^ acd;
  o[3] = ~(b ^ ab ^ c ^ abc ^ ad);
}

export function si6(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abc = ab & c;
  const abd = ab & d;
  const bcd = bc & d;
  o[0] = ~(a ^ ab ^ ac ^ bc ^ abc ^ d ^ abd ^ bcd);
  o[1] = ~(b ^ c ^ ac ^ d);
  o[2] = ~(a ^ b ^ bc ^ bd ^ abd ^ cd ^ bcd);
  o[3] = ~(b ^ ab ^ c ^ bc ^ abc ^ d ^ ad ^ abd ^ cd ^ bcd);
}

export function si7(a: number, b: number, c: number, d: number, o: Int32Array): void {
  const ab = a & b;
  const ac = a & c;
  const bc = b & c;
  const ad = a & d;
  const bd = b & d;
  const cd = c & d;
  const abc = ab & c;
  const abd = ab & d;
  const acd = ac & d;
  const bcd = bc & d;
  o[0] = ~(a ^ b ^ bc ^ bd ^ abd ^ cd ^ bcd);
  o[1] = ~(a ^ c ^ bc ^ d ^ ad ^ bd ^ acd ^ bcd);
  o[2] = b ^ ac ^ d ^ abd ^ cd ^ acd;
  o[3] = ab ^ c ^ abc ^ ad ^ bd ^ abd;
}

/** S_0..S_7 and their inverses as functions of the four words (bit i of a is bit 0 of nibble i). */
export const SBOX_FNS: readonly SboxFn[] = [s0, s1, s2, s3, s4, s5, s6, s7];
export const SBOX_INV_FNS: readonly SboxFn[] = [si0, si1, si2, si3, si4, si5, si6, si7];

const PHI = 0x9e3779b9;

export class Serpent implements BlockCipher {
  readonly blockSize = 16;
  /** The 33 round keys K0..K32, four words each. */
  private readonly k = new Int32Array(132);
  private readonly o = new Int32Array(4);

  constructor(key: Uint8Array) {
    if (key.length !== 16 && key.length !== 24 && key.length !== 32) {
      throw new RangeError(`Serpent key must be 16, 24 or 32 bytes, not ${key.length}`);
    }
    const padded = new Uint8Array(32);
    padded.set(key);
    if (key.length < 32) padded[key.length] = 1;
    // w[-8..-1] is the padded key; w[i] = (w[i-8] ^ w[i-5] ^ w[i-3] ^ w[i-1] ^ phi ^ i) <<< 11.
    const w = new Int32Array(140);
    const dv = new DataView(padded.buffer);
    for (let i = 0; i < 8; i++) w[i] = dv.getInt32(4 * i, true);
    for (let i = 8; i < 140; i++) {
      const t = w[i - 8]! ^ w[i - 5]! ^ w[i - 3]! ^ w[i - 1]! ^ PHI ^ (i - 8);
      w[i] = (t << 11) | (t >>> 21);
    }
    // K_i = S_((3 - i) mod 8)(w[4i .. 4i+3]).
    const o = this.o;
    for (let i = 0; i < 33; i++) {
      const f = SBOX_FNS[(3 - i + 32) % 8]!;
      f(w[8 + 4 * i]!, w[9 + 4 * i]!, w[10 + 4 * i]!, w[11 + 4 * i]!, o);
      this.k.set(o, 4 * i);
    }
  }

  encrypt(src: Uint8Array, dst: Uint8Array, start = 0, end = src.length): void {
    const { k, o } = this;
    for (let p = start; p + 16 <= end; p += 16) {
      let x0 = src[p]! | (src[p + 1]! << 8) | (src[p + 2]! << 16) | (src[p + 3]! << 24);
      let x1 = src[p + 4]! | (src[p + 5]! << 8) | (src[p + 6]! << 16) | (src[p + 7]! << 24);
      let x2 = src[p + 8]! | (src[p + 9]! << 8) | (src[p + 10]! << 16) | (src[p + 11]! << 24);
      let x3 = src[p + 12]! | (src[p + 13]! << 8) | (src[p + 14]! << 16) | (src[p + 15]! << 24);
      for (let r = 0; r < 32; r++) {
        const kr = 4 * r;
        SBOX_FNS[r & 7]!(x0 ^ k[kr]!, x1 ^ k[kr + 1]!, x2 ^ k[kr + 2]!, x3 ^ k[kr + 3]!, o);
        x0 = o[0]!;
        x1 = o[1]!;
        x2 = o[2]!;
        x3 = o[3]!;
        if (r === 31) break;
        // The linear transformation.
        x0 = (x0 << 13) | (x0 >>> 19);
        x2 = (x2 << 3) | (x2 >>> 29);
        x1 ^= x0 ^ x2;
        x3 ^= x2 ^ (x0 << 3);
        x1 = (x1 << 1) | (x1 >>> 31);
        x3 = (x3 << 7) | (x3 >>> 25);
        x0 ^= x1 ^ x3;
        x2 ^= x3 ^ (x1 << 7);
        x0 = (x0 << 5) | (x0 >>> 27);
        x2 = (x2 << 22) | (x2 >>> 10);
      }
      store(dst, p, x0 ^ k[128]!);
      store(dst, p + 4, x1 ^ k[129]!);
      store(dst, p + 8, x2 ^ k[130]!);
      store(dst, p + 12, x3 ^ k[131]!);
    }
  }

  decrypt(src: Uint8Array, dst: Uint8Array, start = 0, end = src.length): void {
    const { k, o } = this;
    for (let p = start; p + 16 <= end; p += 16) {
      let x0 = (src[p]! | (src[p + 1]! << 8) | (src[p + 2]! << 16) | (src[p + 3]! << 24)) ^ k[128]!;
      let x1 = (src[p + 4]! | (src[p + 5]! << 8) | (src[p + 6]! << 16) | (src[p + 7]! << 24)) ^ k[129]!;
      let x2 = (src[p + 8]! | (src[p + 9]! << 8) | (src[p + 10]! << 16) | (src[p + 11]! << 24)) ^ k[130]!;
      let x3 = (src[p + 12]! | (src[p + 13]! << 8) | (src[p + 14]! << 16) | (src[p + 15]! << 24)) ^ k[131]!;
      for (let r = 31; r >= 0; r--) {
        if (r !== 31) {
          // The inverse linear transformation.
          x2 = (x2 >>> 22) | (x2 << 10);
          x0 = (x0 >>> 5) | (x0 << 27);
          x2 ^= x3 ^ (x1 << 7);
          x0 ^= x1 ^ x3;
          x3 = (x3 >>> 7) | (x3 << 25);
          x1 = (x1 >>> 1) | (x1 << 31);
          x3 ^= x2 ^ (x0 << 3);
          x1 ^= x0 ^ x2;
          x2 = (x2 >>> 3) | (x2 << 29);
          x0 = (x0 >>> 13) | (x0 << 19);
        }
        SBOX_INV_FNS[r & 7]!(x0, x1, x2, x3, o);
        const kr = 4 * r;
        x0 = o[0]! ^ k[kr]!;
        x1 = o[1]! ^ k[kr + 1]!;
        x2 = o[2]! ^ k[kr + 2]!;
        x3 = o[3]! ^ k[kr + 3]!;
      }
      store(dst, p, x0);
      store(dst, p + 4, x1);
      store(dst, p + 8, x2);
      store(dst, p + 12, x3);
    }
  }
}

function store(dst: Uint8Array, o: number, w: number): void {
  dst[o] = w;
  dst[o + 1] = w >>> 8;
  dst[o + 2] = w >>> 16;
  dst[o + 3] = w >>> 24;
}
