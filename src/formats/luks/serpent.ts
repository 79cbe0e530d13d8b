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
 * Speed: the rounds of encrypt and decrypt are printed by scripts/serpent-sboxes.py, each S-box
 * as its output bits' algebraic normal form (XOR of ANDs of the input bits) computed from the
 * tables below, inline on local variables. The key schedule applies the tables directly.
 */
import type { BlockCipher } from './crypto.js';

const SBOX = [
  [3, 8, 15, 1, 10, 6, 5, 11, 14, 13, 4, 2, 7, 0, 9, 12],
  [15, 12, 2, 7, 9, 0, 5, 10, 1, 11, 14, 8, 6, 13, 3, 4],
  [8, 6, 7, 9, 3, 12, 10, 15, 13, 1, 14, 4, 0, 11, 5, 2],
  [0, 15, 11, 8, 12, 9, 6, 3, 13, 1, 2, 4, 10, 7, 5, 14],
  [1, 15, 8, 3, 12, 0, 11, 6, 2, 5, 4, 10, 9, 14, 7, 13],
  [15, 5, 2, 11, 4, 10, 9, 12, 0, 3, 14, 8, 13, 6, 7, 1],
  [7, 2, 12, 5, 8, 4, 6, 11, 14, 9, 1, 15, 13, 3, 10, 0],
  [1, 13, 15, 0, 14, 8, 2, 11, 7, 4, 12, 10, 9, 3, 5, 6],
];

/** Apply S-box `s` to the 32 nibbles of (a, b, c, d): bit i of a is bit 0 of nibble i. */
function applySbox(s: readonly number[], w: Int32Array, at: number): void {
  const a = w[at]!;
  const b = w[at + 1]!;
  const c = w[at + 2]!;
  const d = w[at + 3]!;
  let y0 = 0;
  let y1 = 0;
  let y2 = 0;
  let y3 = 0;
  for (let i = 0; i < 32; i++) {
    const v = s[((a >>> i) & 1) | (((b >>> i) & 1) << 1) | (((c >>> i) & 1) << 2) | (((d >>> i) & 1) << 3)]!;
    y0 |= (v & 1) << i;
    y1 |= ((v >>> 1) & 1) << i;
    y2 |= ((v >>> 2) & 1) << i;
    y3 |= ((v >>> 3) & 1) << i;
  }
  w[at] = y0;
  w[at + 1] = y1;
  w[at + 2] = y2;
  w[at + 3] = y3;
}

const PHI = 0x9e3779b9;

export class Serpent implements BlockCipher {
  readonly blockSize = 16;
  /** The 33 round keys K0..K32, four words each. */
  private readonly k = new Int32Array(132);

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
    const k = w.subarray(8);
    for (let i = 0; i < 33; i++) applySbox(SBOX[(35 - i) % 8]!, k, 4 * i);
    this.k.set(k);
  }

  // Eight rounds per step, S0..S7 in turn; round r mixes in K_r (k[4r .. 4r+3]).
  encrypt(src: Uint8Array, dst: Uint8Array, start = 0, end = src.length): void {
    const k = this.k;
    for (let p = start; p + 16 <= end; p += 16) {
      let x0 = src[p]! | (src[p + 1]! << 8) | (src[p + 2]! << 16) | (src[p + 3]! << 24);
      let x1 = src[p + 4]! | (src[p + 5]! << 8) | (src[p + 6]! << 16) | (src[p + 7]! << 24);
      let x2 = src[p + 8]! | (src[p + 9]! << 8) | (src[p + 10]! << 16) | (src[p + 11]! << 24);
      let x3 = src[p + 12]! | (src[p + 13]! << 8) | (src[p + 14]! << 16) | (src[p + 15]! << 24);
      for (let kr = 0; kr < 128; kr += 32) {
        // ---- printed by scripts/serpent-sboxes.py encrypt ----
        // Round kr/4 + 0: K, S0, then the linear transformation.
        {
          const a = x0 ^ k[kr]!;
          const b = x1 ^ k[kr + 1]!;
          const c = x2 ^ k[kr + 2]!;
          const d = x3 ^ k[kr + 3]!;
          const ab = a & b;
          const ac = a & c;
          const bc = b & c;
          const ad = a & d;
          const bd = b & d;
          const abc = ab & c;
          const acd = ac & d;
          const bcd = bc & d;
          x0 = ~(a ^ ab ^ c ^ ac ^ bc ^ abc ^ d ^ acd ^ bcd);
          x1 = ~(a ^ ac ^ bc ^ abc ^ bd ^ acd ^ bcd);
          x2 = b ^ ab ^ ac ^ abc ^ d ^ bd ^ bcd;
          x3 = a ^ b ^ c ^ d ^ ad;
        }
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
        // Round kr/4 + 1: K, S1, then the linear transformation.
        {
          const a = x0 ^ k[kr + 4]!;
          const b = x1 ^ k[kr + 5]!;
          const c = x2 ^ k[kr + 6]!;
          const d = x3 ^ k[kr + 7]!;
          const ab = a & b;
          const ac = a & c;
          const bc = b & c;
          const ad = a & d;
          const bd = b & d;
          const cd = c & d;
          const abd = ab & d;
          const acd = ac & d;
          const bcd = bc & d;
          x0 = ~(a ^ b ^ bc ^ ad ^ cd ^ acd ^ bcd);
          x1 = ~(a ^ ab ^ c ^ ac ^ d ^ bd ^ abd ^ acd ^ bcd);
          x2 = ~(b ^ ab ^ c ^ d);
          x3 = ~(b ^ ac ^ d ^ ad ^ abd ^ acd ^ bcd);
        }
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
        // Round kr/4 + 2: K, S2, then the linear transformation.
        {
          const a = x0 ^ k[kr + 8]!;
          const b = x1 ^ k[kr + 9]!;
          const c = x2 ^ k[kr + 10]!;
          const d = x3 ^ k[kr + 11]!;
          const ab = a & b;
          const ac = a & c;
          const bc = b & c;
          const ad = a & d;
          const bd = b & d;
          const cd = c & d;
          const abc = ab & c;
          const abd = ab & d;
          const acd = ac & d;
          x0 = b ^ c ^ ac ^ d;
          x1 = a ^ b ^ c ^ bc ^ abc ^ ad ^ abd ^ cd ^ acd;
          x2 = a ^ b ^ bc ^ d ^ bd ^ abd ^ cd ^ acd;
          x3 = ~(a ^ b ^ c ^ abc ^ bd);
        }
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
        // Round kr/4 + 3: K, S3, then the linear transformation.
        {
          const a = x0 ^ k[kr + 12]!;
          const b = x1 ^ k[kr + 13]!;
          const c = x2 ^ k[kr + 14]!;
          const d = x3 ^ k[kr + 15]!;
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
          x0 = a ^ b ^ bc ^ d ^ ad ^ cd ^ acd ^ bcd;
          x1 = a ^ b ^ ac ^ ad ^ abd ^ cd ^ acd;
          x2 = a ^ ab ^ c ^ abc ^ d ^ bd ^ abd;
          x3 = a ^ b ^ ab ^ c ^ ac ^ abc ^ d ^ cd ^ acd;
        }
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
        // Round kr/4 + 4: K, S4, then the linear transformation.
        {
          const a = x0 ^ k[kr + 16]!;
          const b = x1 ^ k[kr + 17]!;
          const c = x2 ^ k[kr + 18]!;
          const d = x3 ^ k[kr + 19]!;
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
          x0 = ~(b ^ ab ^ c ^ d ^ ad ^ bd);
          x1 = a ^ ac ^ bc ^ d ^ bd ^ cd ^ acd ^ bcd;
          x2 = a ^ ab ^ c ^ bc ^ abc ^ bd ^ abd ^ cd ^ bcd;
          x3 = a ^ b ^ c ^ bc ^ ad ^ bd ^ abd;
        }
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
        // Round kr/4 + 5: K, S5, then the linear transformation.
        {
          const a = x0 ^ k[kr + 20]!;
          const b = x1 ^ k[kr + 21]!;
          const c = x2 ^ k[kr + 22]!;
          const d = x3 ^ k[kr + 23]!;
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
          x0 = ~(b ^ ab ^ c ^ d ^ ad ^ bd);
          x1 = ~(a ^ ab ^ c ^ d ^ bd ^ abd ^ cd);
          x2 = ~(b ^ ac ^ d ^ abd ^ cd ^ acd ^ bcd);
          x3 = ~(a ^ b ^ c ^ abc ^ d ^ ad ^ acd);
        }
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
        // Round kr/4 + 6: K, S6, then the linear transformation.
        {
          const a = x0 ^ k[kr + 24]!;
          const b = x1 ^ k[kr + 25]!;
          const c = x2 ^ k[kr + 26]!;
          const d = x3 ^ k[kr + 27]!;
          const ab = a & b;
          const ac = a & c;
          const bc = b & c;
          const ad = a & d;
          const bd = b & d;
          const cd = c & d;
          const abc = ab & c;
          const abd = ab & d;
          const bcd = bc & d;
          x0 = ~(a ^ b ^ c ^ ac ^ bc ^ abc ^ d ^ abd ^ bcd);
          x1 = ~(b ^ c ^ ad);
          x2 = ~(a ^ ab ^ c ^ bc ^ abc ^ bd ^ abd ^ cd ^ bcd);
          x3 = b ^ ab ^ c ^ ac ^ abc ^ d ^ cd ^ bcd;
        }
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
        // Round kr/4 + 7: K, S7, then the linear transformation.
        {
          const a = x0 ^ k[kr + 28]!;
          const b = x1 ^ k[kr + 29]!;
          const c = x2 ^ k[kr + 30]!;
          const d = x3 ^ k[kr + 31]!;
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
          x0 = ~(ab ^ c ^ ad ^ bd ^ cd ^ acd ^ bcd);
          x1 = b ^ ab ^ c ^ ac ^ bc ^ d ^ ad ^ abd ^ acd;
          x2 = a ^ b ^ c ^ abc ^ d ^ ad ^ bd ^ abd ^ bcd;
          x3 = a ^ b ^ c ^ ac ^ abc ^ ad;
        }
        if (kr === 96) break; // the last round has K32 instead
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
        // ---- end of printed code ----
      }
      store(dst, p, x0 ^ k[128]!);
      store(dst, p + 4, x1 ^ k[129]!);
      store(dst, p + 8, x2 ^ k[130]!);
      store(dst, p + 12, x3 ^ k[131]!);
    }
  }

  decrypt(src: Uint8Array, dst: Uint8Array, start = 0, end = src.length): void {
    const k = this.k;
    for (let p = start; p + 16 <= end; p += 16) {
      let x0 = (src[p]! | (src[p + 1]! << 8) | (src[p + 2]! << 16) | (src[p + 3]! << 24)) ^ k[128]!;
      let x1 = (src[p + 4]! | (src[p + 5]! << 8) | (src[p + 6]! << 16) | (src[p + 7]! << 24)) ^ k[129]!;
      let x2 = (src[p + 8]! | (src[p + 9]! << 8) | (src[p + 10]! << 16) | (src[p + 11]! << 24)) ^ k[130]!;
      let x3 = (src[p + 12]! | (src[p + 13]! << 8) | (src[p + 14]! << 16) | (src[p + 15]! << 24)) ^ k[131]!;
      for (let kr = 96; kr >= 0; kr -= 32) {
        // ---- printed by scripts/serpent-sboxes.py decrypt ----
        if (kr !== 96) {
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
        // Inverse S7, then K of round kr/4 + 7.
        {
          const a = x0;
          const b = x1;
          const c = x2;
          const d = x3;
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
          x0 = ~(a ^ b ^ bc ^ bd ^ abd ^ cd ^ bcd);
          x1 = ~(a ^ c ^ bc ^ d ^ ad ^ bd ^ acd ^ bcd);
          x2 = b ^ ac ^ d ^ abd ^ cd ^ acd;
          x3 = ab ^ c ^ abc ^ ad ^ bd ^ abd;
          x0 ^= k[kr + 28]!;
          x1 ^= k[kr + 29]!;
          x2 ^= k[kr + 30]!;
          x3 ^= k[kr + 31]!;
        }
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
        // Inverse S6, then K of round kr/4 + 6.
        {
          const a = x0;
          const b = x1;
          const c = x2;
          const d = x3;
          const ab = a & b;
          const ac = a & c;
          const bc = b & c;
          const ad = a & d;
          const bd = b & d;
          const cd = c & d;
          const abc = ab & c;
          const abd = ab & d;
          const bcd = bc & d;
          x0 = ~(a ^ ab ^ ac ^ bc ^ abc ^ d ^ abd ^ bcd);
          x1 = ~(b ^ c ^ ac ^ d);
          x2 = ~(a ^ b ^ bc ^ bd ^ abd ^ cd ^ bcd);
          x3 = ~(b ^ ab ^ c ^ bc ^ abc ^ d ^ ad ^ abd ^ cd ^ bcd);
          x0 ^= k[kr + 24]!;
          x1 ^= k[kr + 25]!;
          x2 ^= k[kr + 26]!;
          x3 ^= k[kr + 27]!;
        }
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
        // Inverse S5, then K of round kr/4 + 5.
        {
          const a = x0;
          const b = x1;
          const c = x2;
          const d = x3;
          const ab = a & b;
          const ac = a & c;
          const bc = b & c;
          const ad = a & d;
          const bd = b & d;
          const abc = ab & c;
          const abd = ab & d;
          const acd = ac & d;
          x0 = a ^ bc ^ d ^ abd;
          x1 = a ^ b ^ ac ^ bc ^ abc ^ d ^ ad ^ abd;
          x2 = a ^ ab ^ c ^ bd ^ abd ^ acd;
          x3 = ~(b ^ ab ^ c ^ abc ^ ad);
          x0 ^= k[kr + 20]!;
          x1 ^= k[kr + 21]!;
          x2 ^= k[kr + 22]!;
          x3 ^= k[kr + 23]!;
        }
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
        // Inverse S4, then K of round kr/4 + 4.
        {
          const a = x0;
          const b = x1;
          const c = x2;
          const d = x3;
          const ab = a & b;
          const ac = a & c;
          const ad = a & d;
          const bd = b & d;
          const cd = c & d;
          const abc = ab & c;
          const abd = ab & d;
          const acd = ac & d;
          x0 = ~(a ^ b ^ c ^ d ^ ad ^ abd ^ cd ^ acd);
          x1 = ab ^ c ^ ac ^ d ^ ad ^ acd;
          x2 = ~(a ^ b ^ ab ^ c ^ ac ^ abc ^ d ^ bd ^ abd);
          x3 = b ^ ab ^ c ^ ad ^ abd ^ cd;
          x0 ^= k[kr + 16]!;
          x1 ^= k[kr + 17]!;
          x2 ^= k[kr + 18]!;
          x3 ^= k[kr + 19]!;
        }
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
        // Inverse S3, then K of round kr/4 + 3.
        {
          const a = x0;
          const b = x1;
          const c = x2;
          const d = x3;
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
          x0 = a ^ c ^ bc ^ d ^ ad ^ bd ^ bcd;
          x1 = b ^ c ^ bc ^ abc ^ d ^ ad ^ acd ^ bcd;
          x2 = ab ^ ac ^ bc ^ ad ^ bd ^ abd ^ cd ^ acd;
          x3 = a ^ b ^ c ^ ac ^ abc ^ ad ^ abd ^ cd;
          x0 ^= k[kr + 12]!;
          x1 ^= k[kr + 13]!;
          x2 ^= k[kr + 14]!;
          x3 ^= k[kr + 15]!;
        }
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
        // Inverse S2, then K of round kr/4 + 2.
        {
          const a = x0;
          const b = x1;
          const c = x2;
          const d = x3;
          const ab = a & b;
          const ac = a & c;
          const bc = b & c;
          const ad = a & d;
          const bd = b & d;
          const cd = c & d;
          const abc = ab & c;
          const abd = ab & d;
          const acd = ac & d;
          x0 = a ^ b ^ c ^ bc ^ bd;
          x1 = b ^ ab ^ c ^ ad ^ abd ^ cd ^ acd;
          x2 = ~(a ^ ab ^ c ^ d ^ ad ^ bd ^ abd ^ acd);
          x3 = ~(ab ^ bc ^ abc ^ d ^ acd);
          x0 ^= k[kr + 8]!;
          x1 ^= k[kr + 9]!;
          x2 ^= k[kr + 10]!;
          x3 ^= k[kr + 11]!;
        }
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
        // Inverse S1, then K of round kr/4 + 1.
        {
          const a = x0;
          const b = x1;
          const c = x2;
          const d = x3;
          const ab = a & b;
          const ac = a & c;
          const bc = b & c;
          const ad = a & d;
          const bd = b & d;
          const abc = ab & c;
          const acd = ac & d;
          const bcd = bc & d;
          x0 = ~(a ^ b ^ ab ^ abc ^ bd ^ acd ^ bcd);
          x1 = b ^ c ^ abc ^ d ^ ad ^ bd ^ acd ^ bcd;
          x2 = ~(a ^ b ^ ac ^ bc ^ abc ^ d ^ acd);
          x3 = a ^ c ^ d ^ bd;
          x0 ^= k[kr + 4]!;
          x1 ^= k[kr + 5]!;
          x2 ^= k[kr + 6]!;
          x3 ^= k[kr + 7]!;
        }
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
        // Inverse S0, then K of round kr/4 + 0.
        {
          const a = x0;
          const b = x1;
          const c = x2;
          const d = x3;
          const ab = a & b;
          const ac = a & c;
          const bc = b & c;
          const ad = a & d;
          const bd = b & d;
          const cd = c & d;
          const abd = ab & d;
          const acd = ac & d;
          const bcd = bc & d;
          x0 = ~(ab ^ c ^ bc ^ ad ^ bd ^ abd ^ cd ^ acd ^ bcd);
          x1 = a ^ b ^ c ^ ac ^ bd ^ acd ^ bcd;
          x2 = ~(a ^ b ^ ab ^ c ^ d);
          x3 = ~(a ^ bc ^ d ^ abd ^ cd ^ acd ^ bcd);
          x0 ^= k[kr]!;
          x1 ^= k[kr + 1]!;
          x2 ^= k[kr + 2]!;
          x3 ^= k[kr + 3]!;
        }
        // ---- end of printed code ----
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
