/**
 * The cryptography of LUKS as QEMU implements it (crypto/block-luks.c, crypto/afsplit.c,
 * crypto/ivgen-*.c, crypto/pbkdf.c), on node:crypto: sector ciphers with their IV generators,
 * PBKDF2 (async: it runs on libuv's thread pool, off the main thread) and the anti-forensic
 * split.
 */
import { createCipheriv, createDecipheriv, createHash, pbkdf2 } from 'node:crypto';
import { VdiskError } from '../../core/errors.js';

export const SECTOR = 512;

/** QCryptoHashAlgorithm names (qapi/crypto.json) and their digest lengths. */
export const HASH_LEN: Record<string, number> = {
  md5: 16,
  sha1: 20,
  sha224: 28,
  sha256: 32,
  sha384: 48,
  sha512: 64,
  ripemd160: 20,
};

export type CipherMode = 'ecb' | 'cbc' | 'xts' | 'ctr';
export type IvGen = 'plain' | 'plain64' | 'essiv';

export interface CipherSpec {
  /** QCryptoCipherAlgorithm name: aes-128, aes-192, aes-256 (the ones vdisk implements). */
  alg: string;
  mode: CipherMode;
  ivgen: IvGen;
  /** Hash of the essiv IV generator. */
  ivgenHash?: string | undefined;
}

/** Key length in bytes of a cipher algorithm (one half of an xts key). */
export function cipherKeyLen(alg: string): number {
  const m = /^aes-(128|192|256)$/.exec(alg);
  if (m === null) throw new VdiskError('UNSUPPORTED', `Cipher algorithm '${alg}' is not supported by vdisk`);
  return Number(m[1]) / 8;
}

/** The master key length of a spec: the cipher's key, doubled for xts. */
export function masterKeyLen(spec: CipherSpec): number {
  return cipherKeyLen(spec.alg) * (spec.mode === 'xts' ? 2 : 1);
}

function nodeCipherName(alg: string, mode: CipherMode): string {
  // XTS is built on ECB below (OpenSSL has no AES-192-XTS; QEMU's nettle has it).
  return mode === 'xts' ? `${alg}-ecb` : `${alg}-${mode}`;
}

/** The XTS path below views bytes as little-endian 32-bit words. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** qcrypto_block_luks_essiv_cipher: the essiv cipher takes its key size from the hash. */
export function essivCipher(alg: string, hash: string): string {
  const digest = HASH_LEN[hash];
  if (digest === undefined) throw new VdiskError('UNSUPPORTED', `Hash algorithm ${hash} not supported`);
  if (digest === cipherKeyLen(alg)) return alg;
  if (digest === 16 || digest === 24 || digest === 32) return `aes-${digest * 8}`;
  throw new VdiskError('UNSUPPORTED', `No AES cipher with key size ${digest} available`);
}

/**
 * Encrypts and decrypts whole 512-byte sectors with one key, the IV of each sector generated
 * from its number (relative to the start of the encrypted area, as QEMU counts).
 */
export class SectorCipher {
  private readonly name: string;
  private readonly essivKey: Buffer | undefined;
  private readonly essivName: string | undefined;

  constructor(
    readonly spec: CipherSpec,
    private readonly key: Buffer,
  ) {
    this.name = nodeCipherName(spec.alg, spec.mode);
    if (spec.mode === 'xts' && !LITTLE_ENDIAN) {
      throw new VdiskError('UNSUPPORTED', 'XTS needs a little-endian host in vdisk');
    }
    if (spec.ivgen === 'essiv') {
      const hash = spec.ivgenHash;
      if (hash === undefined)
        throw new VdiskError('INVALID_IMAGE', 'Missing IV generator hash specification');
      const alg = essivCipher(spec.alg, hash);
      this.essivName = `${alg}-ecb`;
      this.essivKey = createHash(hash).update(key).digest();
    }
  }

  /** IVs for `count` sectors from `first` (16 bytes each), or undefined for ecb. */
  private ivs(first: number, count: number): Buffer | undefined {
    if (this.spec.mode === 'ecb') return undefined;
    const out = Buffer.alloc(16 * count);
    for (let i = 0; i < count; i++) {
      const s = BigInt(first + i);
      if (this.spec.ivgen === 'plain') out.writeUInt32LE(Number(s & 0xffffffffn), i * 16);
      else out.writeBigUInt64LE(s, i * 16);
    }
    if (this.essivName !== undefined) {
      const c = createCipheriv(this.essivName, this.essivKey!, null).setAutoPadding(false);
      return Buffer.concat([c.update(out), c.final()]);
    }
    return out;
  }

  /** Encrypt (or decrypt) `src` (whole sectors) into `dst`, the first being sector `first`. */
  run(encrypt: boolean, src: Uint8Array, dst: Uint8Array, first: number): void {
    const count = src.length / SECTOR;
    if (!Number.isInteger(count)) throw new VdiskError('INTERNAL', 'Encrypted I/O must be whole sectors');
    // Large requests in steps of 1 MiB: bounded scratch memory.
    const step = 2048;
    if (count > step) {
      for (let i = 0; i < count; i += step) {
        const n = Math.min(step, count - i) * SECTOR;
        this.run(
          encrypt,
          src.subarray(i * SECTOR, i * SECTOR + n),
          dst.subarray(i * SECTOR, i * SECTOR + n),
          first + i,
        );
      }
      return;
    }
    const ivs = this.ivs(first, count);
    const out = Buffer.from(dst.buffer, dst.byteOffset, dst.length);
    if (ivs === undefined) {
      const c = encrypt
        ? createCipheriv(this.name, this.key, null).setAutoPadding(false)
        : createDecipheriv(this.name, this.key, null).setAutoPadding(false);
      out.set(c.update(src));
      c.final();
      return;
    }
    if (this.spec.mode === 'xts') {
      this.xts(encrypt, src, out, ivs, count);
      return;
    }
    if (this.spec.mode === 'cbc' && !encrypt) {
      this.cbcDecrypt(src, out, ivs, count);
      return;
    }
    for (let i = 0; i < count; i++) {
      const iv = ivs.subarray(i * 16, i * 16 + 16);
      const c = encrypt
        ? createCipheriv(this.name, this.key, iv).setAutoPadding(false)
        : createDecipheriv(this.name, this.key, iv).setAutoPadding(false);
      out.set(c.update(src.subarray(i * SECTOR, (i + 1) * SECTOR)), i * SECTOR);
      c.final();
    }
  }

  /**
   * XTS (IEEE 1619) over whole sectors with two ECB passes instead of one cipher object per
   * sector: the first tweak of each sector is E_K2(IV); each next block's tweak is the previous
   * times x in GF(2^128) (little-endian, reduction 0x87). C = E_K1(P xor T) xor T.
   */
  private xts(encrypt: boolean, src: Uint8Array, out: Buffer, ivs: Buffer, count: number): void {
    const half = this.key.length / 2;
    const ecb = `${this.spec.alg}-ecb`;
    const t0 = createCipheriv(ecb, this.key.subarray(half), null).setAutoPadding(false).update(ivs);
    const n = count * SECTOR;
    const tweaks = new Uint32Array(n / 4);
    const first = new Uint32Array(count * 4);
    new Uint8Array(first.buffer).set(t0);
    for (let s = 0; s < count; s++) {
      let w0 = first[s * 4]!;
      let w1 = first[s * 4 + 1]!;
      let w2 = first[s * 4 + 2]!;
      let w3 = first[s * 4 + 3]!;
      for (let j = 0, at = s * (SECTOR / 4); j < SECTOR / 16; j++, at += 4) {
        tweaks[at] = w0;
        tweaks[at + 1] = w1;
        tweaks[at + 2] = w2;
        tweaks[at + 3] = w3;
        const carry = w3 >>> 31;
        w3 = ((w3 << 1) | (w2 >>> 31)) >>> 0;
        w2 = ((w2 << 1) | (w1 >>> 31)) >>> 0;
        w1 = ((w1 << 1) | (w0 >>> 31)) >>> 0;
        w0 = ((w0 << 1) ^ (carry * 0x87)) >>> 0;
      }
    }
    const work = new Uint32Array(n / 4);
    const bytes = new Uint8Array(work.buffer);
    bytes.set(src);
    for (let i = 0; i < work.length; i++) work[i]! ^= tweaks[i]!;
    const k1 = this.key.subarray(0, half);
    const c = encrypt
      ? createCipheriv(ecb, k1, null).setAutoPadding(false)
      : createDecipheriv(ecb, k1, null).setAutoPadding(false);
    bytes.set(c.update(bytes));
    for (let i = 0; i < work.length; i++) work[i]! ^= tweaks[i]!;
    out.set(bytes);
  }

  /** CBC decryption is parallel: P_i = D(C_i) xor C_(i-1), C_(-1) being the sector's IV. */
  private cbcDecrypt(src: Uint8Array, out: Buffer, ivs: Buffer, count: number): void {
    const ecb = `${this.spec.alg}-ecb`;
    const plain = createDecipheriv(ecb, this.key, null).setAutoPadding(false).update(src);
    for (let s = 0; s < count; s++) {
      const base = s * SECTOR;
      for (let i = 0; i < SECTOR; i++) {
        const prev = i < 16 ? ivs[s * 16 + i]! : src[base + i - 16]!;
        plain[base + i] = plain[base + i]! ^ prev;
      }
    }
    out.set(plain);
  }
}

export function pbkdf2Async(
  password: Uint8Array,
  salt: Uint8Array,
  iterations: number,
  keyLen: number,
  hash: string,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    pbkdf2(password, salt, iterations, keyLen, hash, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/**
 * Iterations of PBKDF2 per second on this machine (qcrypto_pbkdf2_count_iters). QEMU times
 * at least 500 ms; we time about 100 ms, which gives the same rate within noise.
 */
export async function pbkdf2IterationsPerSecond(
  hash: string,
  password: Uint8Array,
  salt: Uint8Array,
  keyLen: number,
): Promise<number> {
  let iterations = 1 << 12;
  for (;;) {
    const start = process.hrtime.bigint();
    await pbkdf2Async(password, salt, iterations, keyLen, hash);
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    if (ms >= 100) return Math.floor((iterations * 1000) / ms);
    iterations = ms < 10 ? iterations * 10 : Math.ceil((iterations * 120) / ms);
  }
}

/** AF diffusion (crypto/afsplit.c qcrypto_afsplit_hash): hash the block in digest-sized pieces. */
function diffuse(hash: string, block: Buffer): void {
  const d = HASH_LEN[hash]!;
  const n = Math.ceil(block.length / d);
  const iv = Buffer.alloc(4);
  for (let i = 0; i < n; i++) {
    const len = Math.min(d, block.length - i * d);
    iv.writeUInt32BE(i);
    const h = createHash(hash)
      .update(iv)
      .update(block.subarray(i * d, i * d + len))
      .digest();
    h.copy(block, i * d, 0, len);
  }
}

function xorInto(dst: Buffer, a: Uint8Array, b: Uint8Array): void {
  for (let i = 0; i < dst.length; i++) dst[i] = a[i]! ^ b[i]!;
}

/** Anti-forensic split: `stripes` blocks whose merge is `key`; all but the last are random. */
export function afSplit(hash: string, key: Uint8Array, stripes: number, random: Buffer): Buffer {
  const len = key.length;
  const out = Buffer.alloc(len * stripes);
  random.copy(out, 0, 0, len * (stripes - 1));
  const block = Buffer.alloc(len);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(block, block, out.subarray(i * len, (i + 1) * len));
    diffuse(hash, block);
  }
  xorInto(out.subarray((stripes - 1) * len), block, key);
  return out;
}

/** Anti-forensic merge (qcrypto_afsplit_decode). */
export function afMerge(hash: string, split: Uint8Array, len: number, stripes: number): Buffer {
  const block = Buffer.alloc(len);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(block, block, split.subarray(i * len, (i + 1) * len));
    diffuse(hash, block);
  }
  const key = Buffer.alloc(len);
  xorInto(key, block, split.subarray((stripes - 1) * len, stripes * len));
  return key;
}
