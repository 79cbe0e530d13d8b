/**
 * Twofish (B. Schneier, J. Kelsey, D. Whiting, D. Wagner, C. Hall, N. Ferguson, "Twofish: A
 * 128-Bit Block Cipher", 1998), written from the paper: 128-bit blocks, 128/192/256-bit keys,
 * 16 rounds. Bytes load as little-endian words (the paper's convention, which nettle and
 * therefore QEMU follow). The key-dependent S-boxes are folded with the MDS matrix into four
 * 256-entry tables at key setup ("full keying"), so a round is eight lookups.
 */
import type { BlockCipher } from './crypto.js';

// The 4-bit permutations t0..t3 of q0 and q1 (paper, section 4.3.5).
const Q0_T = [
  [0x8, 0x1, 0x7, 0xd, 0x6, 0xf, 0x3, 0x2, 0x0, 0xb, 0x5, 0x9, 0xe, 0xc, 0xa, 0x4],
  [0xe, 0xc, 0xb, 0x8, 0x1, 0x2, 0x3, 0x5, 0xf, 0x4, 0xa, 0x6, 0x7, 0x0, 0x9, 0xd],
  [0xb, 0xa, 0x5, 0xe, 0x6, 0xd, 0x9, 0x0, 0xc, 0x8, 0xf, 0x3, 0x2, 0x4, 0x7, 0x1],
  [0xd, 0x7, 0xf, 0x4, 0x1, 0x2, 0x6, 0xe, 0x9, 0xb, 0x3, 0x0, 0x8, 0x5, 0xc, 0xa],
];
const Q1_T = [
  [0x2, 0x8, 0xb, 0xd, 0xf, 0x7, 0x6, 0xe, 0x3, 0x1, 0x9, 0x4, 0x0, 0xa, 0xc, 0x5],
  [0x1, 0xe, 0x2, 0xb, 0x4, 0xc, 0x3, 0x7, 0x6, 0xd, 0xa, 0x5, 0xf, 0x9, 0x0, 0x8],
  [0x4, 0xc, 0x7, 0x5, 0x1, 0x6, 0x9, 0xa, 0x0, 0xe, 0xd, 0x8, 0x2, 0xb, 0x3, 0xf],
  [0xb, 0x9, 0x5, 0x1, 0xc, 0x3, 0xd, 0xe, 0x6, 0x4, 0x7, 0xf, 0x2, 0x0, 0x8, 0xa],
];

const ror4 = (x: number) => ((x >>> 1) | (x << 3)) & 15;

function makeQ(t: number[][]): Uint8Array {
  const [t0, t1, t2, t3] = t as [number[], number[], number[], number[]];
  const q = new Uint8Array(256);
  for (let x = 0; x < 256; x++) {
    const a0 = x >>> 4;
    const b0 = x & 15;
    const a1 = a0 ^ b0;
    const b1 = a0 ^ ror4(b0) ^ ((8 * a0) & 15);
    const a2 = t0[a1]!;
    const b2 = t1[b1]!;
    const a3 = a2 ^ b2;
    const b3 = a2 ^ ror4(b2) ^ ((8 * a2) & 15);
    q[x] = (t3[b3]! << 4) | t2[a3]!;
  }
  return q;
}

const Q0 = makeQ(Q0_T);
const Q1 = makeQ(Q1_T);

/** Multiplication in GF(2^8) modulo the polynomial `poly` (with its x^8 term). */
function gfMul(a: number, b: number, poly: number): number {
  let r = 0;
  for (; b !== 0; b >>>= 1) {
    if (b & 1) r ^= a;
    a <<= 1;
    if (a & 0x100) a ^= poly;
  }
  return r;
}

/** MDS matrix (section 4.2) over GF(2^8) mod x^8+x^6+x^5+x^3+1, by columns. */
const MDS_POLY = 0x169;
const MDS = [
  [0x01, 0xef, 0x5b, 0x5b],
  [0x5b, 0xef, 0xef, 0x01],
  [0xef, 0x5b, 0x01, 0xef],
  [0xef, 0x01, 0xef, 0x5b],
];
/** MDS_COL[j][y]: column j of the MDS matrix times byte y, as a little-endian word. */
const MDS_COL = [0, 1, 2, 3].map((j) => {
  const col = new Uint32Array(256);
  for (let y = 0; y < 256; y++) {
    let w = 0;
    for (let i = 0; i < 4; i++) w |= gfMul(MDS[i]![j]!, y, MDS_POLY) << (8 * i);
    col[y] = w >>> 0;
  }
  return col;
}) as [Uint32Array, Uint32Array, Uint32Array, Uint32Array];

/** RS matrix (section 4.3) over GF(2^8) mod x^8+x^6+x^3+x^2+1. */
const RS_POLY = 0x14d;
const RS = [
  [0x01, 0xa4, 0x55, 0x87, 0x5a, 0x58, 0xdb, 0x9e],
  [0xa4, 0x56, 0x82, 0xf3, 0x1e, 0xc6, 0x68, 0xe5],
  [0x02, 0xa1, 0xfc, 0xc1, 0x47, 0xae, 0x3d, 0x19],
  [0xa4, 0x55, 0x87, 0x5a, 0x58, 0xdb, 0x9e, 0x03],
];

/**
 * The byte permutations of h (section 4.3.2) for input byte position j: the q applied first
 * (for k = 4), then at each further stage, ending with the q nearest the MDS matrix.
 */
const Q_ORDER: ReadonlyArray<readonly [Uint8Array, Uint8Array, Uint8Array, Uint8Array]> = [
  [Q1, Q1, Q0, Q0], // y0: q1 (k=4), q1 (k>=3), then q0, q0 and last q1
  [Q0, Q1, Q1, Q0], // y1: q0, q1, then q1, q0, q0
  [Q0, Q0, Q0, Q1], // y2: q0, q0, then q0, q1, q1
  [Q1, Q0, Q1, Q1], // y3: q1, q0, then q1, q1, q0
];
// The last q before the MDS matrix for each byte position.
const Q_LAST = [Q1, Q0, Q1, Q0] as const;

/**
 * The byte chain of h for position j: x through the q's, xoring the bytes of the key words
 * L[k-1] .. L[0] (byte j of each).
 */
function hByte(j: number, x: number, lBytes: number[][]): number {
  const k = lBytes.length;
  const [q4, q3, q2, q1] = Q_ORDER[j]!;
  let y = x;
  if (k === 4) y = q4[y]! ^ lBytes[3]![j]!;
  if (k >= 3) y = q3[y]! ^ lBytes[2]![j]!;
  y = q2[y]! ^ lBytes[1]![j]!;
  y = q1[y]! ^ lBytes[0]![j]!;
  return Q_LAST[j]![y]!;
}

const wordBytes = (w: number) => [w & 255, (w >>> 8) & 255, (w >>> 16) & 255, w >>> 24];

/** h(X, L) for a word X and a list of key words L (section 4.3.2). */
function h(x: number, l: number[]): number {
  const lb = l.map(wordBytes);
  const xb = wordBytes(x);
  let z = 0;
  for (let j = 0; j < 4; j++) z ^= MDS_COL[j]![hByte(j, xb[j]!, lb)]!;
  return z >>> 0;
}

const rol = (x: number, n: number) => ((x << n) | (x >>> (32 - n))) >>> 0;

export class Twofish implements BlockCipher {
  readonly blockSize = 16;
  /** The 40 subkeys: input whitening K0..3, output whitening K4..7, two per round. */
  private readonly k = new Int32Array(40);
  // g(X) = S0[x0] ^ S1[x1] ^ S2[x2] ^ S3[x3], key-dependent.
  private readonly s0 = new Int32Array(256);
  private readonly s1 = new Int32Array(256);
  private readonly s2 = new Int32Array(256);
  private readonly s3 = new Int32Array(256);

  constructor(key: Uint8Array) {
    if (key.length !== 16 && key.length !== 24 && key.length !== 32) {
      throw new RangeError(`Twofish key must be 16, 24 or 32 bytes, not ${key.length}`);
    }
    const kw = key.length / 8; // k in the paper: key length in 64-bit units
    const m: number[] = [];
    for (let i = 0; i < 2 * kw; i++) {
      m.push(
        (key[4 * i]! | (key[4 * i + 1]! << 8) | (key[4 * i + 2]! << 16) | (key[4 * i + 3]! << 24)) >>> 0,
      );
    }
    const me = m.filter((_, i) => i % 2 === 0);
    const mo = m.filter((_, i) => i % 2 === 1);
    // S_i = RS . (m_8i .. m_8i+7); the S list is S_(k-1), ..., S_0.
    const s: number[] = [];
    for (let i = 0; i < kw; i++) {
      let w = 0;
      for (let r = 0; r < 4; r++) {
        let v = 0;
        for (let c = 0; c < 8; c++) v ^= gfMul(RS[r]![c]!, key[8 * i + c]!, RS_POLY);
        w |= v << (8 * r);
      }
      s.unshift(w >>> 0);
    }
    const rho = 0x01010101;
    for (let i = 0; i < 20; i++) {
      const a = h(Math.imul(2 * i, rho) >>> 0, me);
      const b = rol(h(Math.imul(2 * i + 1, rho) >>> 0, mo), 8);
      this.k[2 * i] = (a + b) >>> 0;
      this.k[2 * i + 1] = rol((a + 2 * b) >>> 0, 9);
    }
    const sb = s.map(wordBytes);
    const tables = [this.s0, this.s1, this.s2, this.s3];
    for (let j = 0; j < 4; j++) {
      const t = tables[j]!;
      const col = MDS_COL[j]!;
      for (let x = 0; x < 256; x++) t[x] = col[hByte(j, x, sb)]!;
    }
  }

  encrypt(src: Uint8Array, dst: Uint8Array, start = 0, end = src.length): void {
    const { k, s0, s1, s2, s3 } = this;
    for (let o = start; o + 16 <= end; o += 16) {
      let r0 = (src[o]! | (src[o + 1]! << 8) | (src[o + 2]! << 16) | (src[o + 3]! << 24)) ^ k[0]!;
      let r1 = (src[o + 4]! | (src[o + 5]! << 8) | (src[o + 6]! << 16) | (src[o + 7]! << 24)) ^ k[1]!;
      let r2 = (src[o + 8]! | (src[o + 9]! << 8) | (src[o + 10]! << 16) | (src[o + 11]! << 24)) ^ k[2]!;
      let r3 = (src[o + 12]! | (src[o + 13]! << 8) | (src[o + 14]! << 16) | (src[o + 15]! << 24)) ^ k[3]!;
      // Two rounds per step, without the swap: (r0, r1) drive (r2, r3), then the other way.
      for (let i = 8; i < 40; i += 4) {
        let t0 = s0[r0 & 255]! ^ s1[(r0 >>> 8) & 255]! ^ s2[(r0 >>> 16) & 255]! ^ s3[r0 >>> 24]!;
        let t1 = s0[r1 >>> 24]! ^ s1[r1 & 255]! ^ s2[(r1 >>> 8) & 255]! ^ s3[(r1 >>> 16) & 255]!;
        r2 ^= (t0 + t1 + k[i]!) | 0;
        r2 = (r2 >>> 1) | (r2 << 31);
        r3 = ((r3 << 1) | (r3 >>> 31)) ^ ((t0 + 2 * t1 + k[i + 1]!) | 0);
        t0 = s0[r2 & 255]! ^ s1[(r2 >>> 8) & 255]! ^ s2[(r2 >>> 16) & 255]! ^ s3[r2 >>> 24]!;
        t1 = s0[r3 >>> 24]! ^ s1[r3 & 255]! ^ s2[(r3 >>> 8) & 255]! ^ s3[(r3 >>> 16) & 255]!;
        r0 ^= (t0 + t1 + k[i + 2]!) | 0;
        r0 = (r0 >>> 1) | (r0 << 31);
        r1 = ((r1 << 1) | (r1 >>> 31)) ^ ((t0 + 2 * t1 + k[i + 3]!) | 0);
      }
      // Undo the last swap: the output is (R2, R3, R0, R1) whitened with K4..7.
      store(dst, o, r2 ^ k[4]!);
      store(dst, o + 4, r3 ^ k[5]!);
      store(dst, o + 8, r0 ^ k[6]!);
      store(dst, o + 12, r1 ^ k[7]!);
    }
  }

  decrypt(src: Uint8Array, dst: Uint8Array, start = 0, end = src.length): void {
    const { k, s0, s1, s2, s3 } = this;
    for (let o = start; o + 16 <= end; o += 16) {
      let r2 = (src[o]! | (src[o + 1]! << 8) | (src[o + 2]! << 16) | (src[o + 3]! << 24)) ^ k[4]!;
      let r3 = (src[o + 4]! | (src[o + 5]! << 8) | (src[o + 6]! << 16) | (src[o + 7]! << 24)) ^ k[5]!;
      let r0 = (src[o + 8]! | (src[o + 9]! << 8) | (src[o + 10]! << 16) | (src[o + 11]! << 24)) ^ k[6]!;
      let r1 = (src[o + 12]! | (src[o + 13]! << 8) | (src[o + 14]! << 16) | (src[o + 15]! << 24)) ^ k[7]!;
      for (let i = 36; i >= 8; i -= 4) {
        let t0 = s0[r2 & 255]! ^ s1[(r2 >>> 8) & 255]! ^ s2[(r2 >>> 16) & 255]! ^ s3[r2 >>> 24]!;
        let t1 = s0[r3 >>> 24]! ^ s1[r3 & 255]! ^ s2[(r3 >>> 8) & 255]! ^ s3[(r3 >>> 16) & 255]!;
        r0 = ((r0 << 1) | (r0 >>> 31)) ^ ((t0 + t1 + k[i + 2]!) | 0);
        r1 ^= (t0 + 2 * t1 + k[i + 3]!) | 0;
        r1 = (r1 >>> 1) | (r1 << 31);
        t0 = s0[r0 & 255]! ^ s1[(r0 >>> 8) & 255]! ^ s2[(r0 >>> 16) & 255]! ^ s3[r0 >>> 24]!;
        t1 = s0[r1 >>> 24]! ^ s1[r1 & 255]! ^ s2[(r1 >>> 8) & 255]! ^ s3[(r1 >>> 16) & 255]!;
        r2 = ((r2 << 1) | (r2 >>> 31)) ^ ((t0 + t1 + k[i]!) | 0);
        r3 ^= (t0 + 2 * t1 + k[i + 1]!) | 0;
        r3 = (r3 >>> 1) | (r3 << 31);
      }
      store(dst, o, r0 ^ k[0]!);
      store(dst, o + 4, r1 ^ k[1]!);
      store(dst, o + 8, r2 ^ k[2]!);
      store(dst, o + 12, r3 ^ k[3]!);
    }
  }
}

function store(dst: Uint8Array, o: number, w: number): void {
  dst[o] = w;
  dst[o + 1] = w >>> 8;
  dst[o + 2] = w >>> 16;
  dst[o + 3] = w >>> 24;
}
