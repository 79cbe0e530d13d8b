/**
 * The cryptography of LUKS as QEMU implements it (crypto/block-luks.c, crypto/afsplit.c,
 * crypto/ivgen-*.c, crypto/pbkdf.c), on node:crypto (AES, hashes, PBKDF2) and on the TypeScript
 * Twofish, Serpent and CAST5 of this directory: sector ciphers with their IV generators,
 * PBKDF2 (async: it runs on libuv's thread pool, off the main thread) and the anti-forensic
 * split.
 */
import * as nodeCrypto from 'node:crypto';
import { createCipheriv, createDecipheriv, createHash, pbkdf2 } from 'node:crypto';
import { VdiskError } from '../../core/errors.js';
import { Cast5 } from './cast5.js';
import { Serpent } from './serpent.js';
import { Twofish } from './twofish.js';

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

/** The digest length of a hash QEMU knows, or undefined (own keys only: names come from headers). */
export function hashLen(name: string): number | undefined {
  return Object.hasOwn(HASH_LEN, name) ? HASH_LEN[name] : undefined;
}

export type CipherMode = 'ecb' | 'cbc' | 'xts' | 'ctr';
export type IvGen = 'plain' | 'plain64' | 'essiv';

export interface CipherSpec {
  /**
   * QCryptoCipherAlgorithm name: aes-128|192|256 (node:crypto), twofish-128|192|256,
   * serpent-128|192|256, cast5-128 (pure TypeScript).
   */
  alg: string;
  mode: CipherMode;
  ivgen: IvGen;
  /** Hash of the essiv IV generator. */
  ivgenHash?: string | undefined;
}

/**
 * The block-cipher seam: ECB over the whole blocks of [start, end) of `src` into the same
 * positions of `dst` (which may be `src`). Every sector mode below is built on it.
 */
export interface BlockCipher {
  readonly blockSize: number;
  encrypt(src: Uint8Array, dst: Uint8Array, start?: number, end?: number): void;
  decrypt(src: Uint8Array, dst: Uint8Array, start?: number, end?: number): void;
}

/** AES on node:crypto (OpenSSL, AES-NI): one ECB cipher object per call. */
class NodeAes implements BlockCipher {
  readonly blockSize = 16;
  private readonly name: string;
  constructor(
    alg: string,
    private readonly key: Uint8Array,
  ) {
    this.name = `${alg}-ecb`;
  }
  encrypt(src: Uint8Array, dst: Uint8Array, start = 0, end = src.length): void {
    const c = createCipheriv(this.name, this.key, null).setAutoPadding(false);
    dst.set(c.update(src.subarray(start, end)), start);
  }
  decrypt(src: Uint8Array, dst: Uint8Array, start = 0, end = src.length): void {
    const c = createDecipheriv(this.name, this.key, null).setAutoPadding(false);
    dst.set(c.update(src.subarray(start, end)), start);
  }
}

/**
 * The cipher families of QEMU's LUKS name map (crypto/block-luks.c), with their key sizes in
 * bytes, block size, and, for the families qcrypto_block_luks_essiv_cipher can resize, the word
 * its errors use. des, 3des and sm4 are QEMU cipher algorithms too, but LUKS has no name for them.
 */
const FAMILIES: Record<
  string,
  { keys: number[]; block: number; essiv?: string; make: (key: Uint8Array) => BlockCipher }
> = {
  aes: { keys: [16, 24, 32], block: 16, essiv: 'AES', make: (k) => new NodeAes(`aes-${k.length * 8}`, k) },
  twofish: { keys: [16, 24, 32], block: 16, essiv: 'Twofish', make: (k) => new Twofish(k) },
  serpent: { keys: [16, 24, 32], block: 16, essiv: 'Serpent', make: (k) => new Serpent(k) },
  cast5: { keys: [16], block: 8, make: (k) => new Cast5(k) },
};

function splitAlg(alg: string): { family: string; keyLen: number } {
  const m = /^(aes|twofish|serpent|cast5)-(\d+)$/.exec(alg);
  const f = m === null ? undefined : FAMILIES[m[1]!];
  const keyLen = m === null ? 0 : Number(m[2]) / 8;
  if (m === null || f === undefined || !f.keys.includes(keyLen)) {
    throw new VdiskError('UNSUPPORTED', `Cipher algorithm '${alg}' is not supported by vdisk`);
  }
  return { family: m[1]!, keyLen };
}

/** Key length in bytes of a cipher algorithm (one half of an xts key). */
export function cipherKeyLen(alg: string): number {
  return splitAlg(alg).keyLen;
}

/** Block length in bytes of a cipher algorithm: the IV length of cbc, ctr and xts. */
export function cipherBlockLen(alg: string): number {
  return FAMILIES[splitAlg(alg).family]!.block;
}

/** The master key length of a spec: the cipher's key, doubled for xts. */
export function masterKeyLen(spec: CipherSpec): number {
  return cipherKeyLen(spec.alg) * (spec.mode === 'xts' ? 2 : 1);
}

/** A block cipher for `alg` with `key` (its whole key length). */
export function blockCipher(alg: string, key: Uint8Array): BlockCipher {
  return FAMILIES[splitAlg(alg).family]!.make(key);
}

/** The XTS path below views bytes as little-endian 32-bit words. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * qcrypto_block_luks_essiv_cipher: the essiv cipher is the payload cipher when its key length
 * is the hash's digest length, else the member of the same family whose key length is (AES,
 * Serpent and Twofish have 16, 24 and 32 bytes; cast5 has essiv with md5 only).
 */
export function essivCipher(alg: string, hash: string): string {
  const digest = hashLen(hash);
  if (digest === undefined) throw new VdiskError('UNSUPPORTED', `Hash algorithm '${hash}' not supported`);
  if (digest === cipherKeyLen(alg)) return alg;
  const { family } = splitAlg(alg);
  const word = FAMILIES[family]!.essiv;
  if (word === undefined) throw new VdiskError('UNSUPPORTED', `Cipher ${alg} not supported with essiv`);
  if (digest === 16 || digest === 24 || digest === 32) return `${family}-${digest * 8}`;
  throw new VdiskError('UNSUPPORTED', `No ${word} cipher with key size ${digest} available`);
}

/**
 * Encrypts and decrypts whole 512-byte sectors with one key, the IV of each sector generated
 * from its number (relative to the start of the encrypted area, as QEMU counts). AES runs on
 * node:crypto (cipher objects per call, as OpenSSL likes); the other ciphers are TypeScript
 * objects keyed once here.
 */
export class SectorCipher {
  /** AES in a mode node:crypto has (cbc encryption and ctr go through OpenSSL per sector). */
  private readonly name: string | undefined;
  /** The data cipher (the first half of the key for xts). */
  private readonly main: BlockCipher;
  /** xts: the tweak cipher (second half of the key). */
  private readonly tweak: BlockCipher | undefined;
  private readonly essiv: BlockCipher | undefined;
  /** Bytes of IV per sector: the cipher's block length (qcrypto_cipher_get_iv_len), 0 for ecb. */
  private readonly ivLen: number;
  private readonly block: number;

  constructor(
    readonly spec: CipherSpec,
    private readonly key: Buffer,
  ) {
    const { family } = splitAlg(spec.alg);
    this.block = cipherBlockLen(spec.alg);
    this.ivLen = spec.mode === 'ecb' ? 0 : this.block;
    // qcrypto_cipher_validate_key_length, in its words: a header's key_bytes picks the
    // algorithm by halving (xts) and rounding down, so an odd length gets this far.
    const want = cipherKeyLen(spec.alg) * (spec.mode === 'xts' ? 2 : 1);
    if (spec.mode === 'xts' && key.length % 2 !== 0)
      throw new VdiskError('INVALID_IMAGE', 'XTS cipher key length should be a multiple of 2');
    if (key.length !== want)
      throw new VdiskError('INVALID_IMAGE', `Cipher key length ${key.length} should be ${want}`);
    if (spec.mode === 'xts') {
      if (!LITTLE_ENDIAN) throw new VdiskError('UNSUPPORTED', 'XTS needs a little-endian host in vdisk');
      // QEMU's XTS is for 16-byte blocks only (cipher-nettle.c.inc has no CAST5 XTS).
      if (this.block !== 16) throw new VdiskError('UNSUPPORTED', 'Unsupported cipher mode xts');
      const half = key.length / 2;
      this.main = blockCipher(spec.alg, key.subarray(0, half));
      this.tweak = blockCipher(spec.alg, key.subarray(half));
    } else {
      this.main = blockCipher(spec.alg, key);
    }
    this.name = family === 'aes' && spec.mode !== 'xts' ? `${spec.alg}-${spec.mode}` : undefined;
    if (spec.ivgen === 'essiv') {
      const hash = spec.ivgenHash;
      if (hash === undefined)
        throw new VdiskError('INVALID_IMAGE', 'Missing IV generator hash specification');
      const alg = essivCipher(spec.alg, hash);
      // qcrypto_ivgen_essiv_init: the digest, cut to the essiv cipher's key length.
      const digest = createHash(hash).update(key).digest();
      this.essiv = blockCipher(alg, digest.subarray(0, Math.min(digest.length, cipherKeyLen(alg))));
    }
  }

  /**
   * IVs for `count` sectors from `first` (ivLen bytes each): plain is the sector number's low
   * 32 bits, plain64 all 64 (little-endian, zero-padded to ivLen); essiv encrypts the 64-bit
   * number, zero-padded to the essiv cipher's block (the same family: the same block length).
   */
  private ivs(first: number, count: number): Buffer {
    const n = this.ivLen;
    const out = Buffer.alloc(n * count);
    for (let i = 0; i < count; i++) {
      const s = first + i;
      out.writeUInt32LE(s % 2 ** 32, i * n);
      if (this.spec.ivgen !== 'plain') out.writeUInt32LE(Math.floor(s / 2 ** 32), i * n + 4);
    }
    this.essiv?.encrypt(out, out);
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
    if (this.spec.mode === 'ecb') {
      if (encrypt) this.main.encrypt(src, dst);
      else this.main.decrypt(src, dst);
      return;
    }
    const ivs = this.ivs(first, count);
    if (this.spec.mode === 'xts') {
      this.xts(encrypt, src, dst, ivs, count);
      return;
    }
    if (this.spec.mode === 'cbc' && !encrypt) {
      this.cbcDecrypt(src, dst, ivs, count);
      return;
    }
    if (this.name !== undefined) {
      // AES cbc encryption and ctr: OpenSSL, one cipher object per sector.
      const out = Buffer.from(dst.buffer, dst.byteOffset, dst.length);
      for (let i = 0; i < count; i++) {
        const iv = ivs.subarray(i * 16, i * 16 + 16);
        const c = encrypt
          ? createCipheriv(this.name, this.key, iv).setAutoPadding(false)
          : createDecipheriv(this.name, this.key, iv).setAutoPadding(false);
        out.set(c.update(src.subarray(i * SECTOR, (i + 1) * SECTOR)), i * SECTOR);
        c.final();
      }
      return;
    }
    if (this.spec.mode === 'cbc') this.cbcEncrypt(src, dst, ivs, count);
    else this.ctr(src, dst, ivs, count);
  }

  /**
   * XTS (IEEE 1619) over whole sectors with two ECB passes instead of one cipher object per
   * sector: the first tweak of each sector is E_K2(IV); each next block's tweak is the previous
   * times x in GF(2^128) (little-endian, reduction 0x87). C = E_K1(P xor T) xor T.
   */
  private xts(encrypt: boolean, src: Uint8Array, out: Uint8Array, ivs: Buffer, count: number): void {
    const first = new Uint32Array(count * 4);
    const t0 = new Uint8Array(first.buffer);
    this.tweak!.encrypt(ivs, t0);
    const n = count * SECTOR;
    const tweaks = new Uint32Array(n / 4);
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
    if (encrypt) this.main.encrypt(bytes, bytes);
    else this.main.decrypt(bytes, bytes);
    for (let i = 0; i < work.length; i++) work[i]! ^= tweaks[i]!;
    out.set(bytes);
  }

  /** CBC decryption is parallel: P_i = D(C_i) xor C_(i-1), C_(-1) being the sector's IV. */
  private cbcDecrypt(src: Uint8Array, out: Uint8Array, ivs: Buffer, count: number): void {
    const b = this.block;
    const plain = new Uint8Array(src.length);
    this.main.decrypt(src, plain);
    for (let s = 0; s < count; s++) {
      const base = s * SECTOR;
      for (let i = 0; i < SECTOR; i++) {
        const prev = i < b ? ivs[s * b + i]! : src[base + i - b]!;
        plain[base + i] = plain[base + i]! ^ prev;
      }
    }
    out.set(plain);
  }

  /** CBC encryption, block after block: C_i = E(P_i xor C_(i-1)). */
  private cbcEncrypt(src: Uint8Array, out: Uint8Array, ivs: Buffer, count: number): void {
    const b = this.block;
    if (out !== src) out.set(src);
    for (let s = 0; s < count; s++) {
      const base = s * SECTOR;
      for (let i = 0; i < b; i++) out[base + i]! ^= ivs[s * b + i]!;
      this.main.encrypt(out, out, base, base + b);
      for (let at = base + b; at < base + SECTOR; at += b) {
        for (let i = 0; i < b; i++) out[at + i]! ^= out[at + i - b]!;
        this.main.encrypt(out, out, at, at + b);
      }
    }
  }

  /**
   * CTR as nettle's ctr_crypt: the keystream is E(IV), E(IV + 1), ..., the counter being the
   * whole block as a big-endian number; the IV is set again at each sector.
   */
  private ctr(src: Uint8Array, out: Uint8Array, ivs: Buffer, count: number): void {
    const b = this.block;
    const stream = new Uint8Array(src.length);
    for (let s = 0; s < count; s++) {
      let at = s * SECTOR;
      stream.set(ivs.subarray(s * b, s * b + b), at);
      for (at += b; at < (s + 1) * SECTOR; at += b) {
        stream.copyWithin(at, at - b, at);
        for (let i = at + b - 1; i >= at; i--) {
          stream[i] = (stream[i]! + 1) & 255;
          if (stream[i] !== 0) break;
        }
      }
    }
    this.main.encrypt(stream, stream);
    for (let i = 0; i < src.length; i++) out[i] = src[i]! ^ stream[i]!;
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

// crypto.hash exists from Node 20.12 (package.json allows 20.0): read off the namespace, since a
// named import of a missing export would fail to link the module.
const oneShotHash = (nodeCrypto as { hash?: (alg: string, data: Uint8Array, enc: 'buffer') => Buffer }).hash;
const digestOf = (hash: string, data: Uint8Array): Buffer =>
  oneShotHash !== undefined ? oneShotHash(hash, data, 'buffer') : createHash(hash).update(data).digest();

/**
 * AF diffusion (crypto/afsplit.c qcrypto_afsplit_hash): hash the block in digest-sized pieces,
 * each prefixed with its index (big-endian 32 bits). One-shot hashing of one reused buffer: a
 * merge of 4000 stripes hashes 8000 pieces, and a Hash object per piece cost a third more.
 */
function diffuse(hash: string, block: Buffer): void {
  const d = HASH_LEN[hash]!;
  const n = Math.ceil(block.length / d);
  const piece = Buffer.alloc(4 + d);
  for (let i = 0; i < n; i++) {
    const len = Math.min(d, block.length - i * d);
    piece.writeUInt32BE(i, 0);
    block.copy(piece, 4, i * d, i * d + len);
    digestOf(hash, piece.subarray(0, 4 + len)).copy(block, i * d, 0, len);
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
