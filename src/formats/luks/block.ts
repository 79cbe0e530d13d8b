/**
 * A LUKS1 volume inside something else (QEMU's QCryptoBlock): the raw `luks` format keeps it
 * at the start of the file, qcow2 (encrypt.format=luks) in clusters its crypto header
 * extension points to. The container gives read and write functions relative to the start
 * of the LUKS header; this module unlocks, creates and describes it.
 */
import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { VdiskError } from '../../core/errors.js';
import { lookupSecretUtf8, type Secrets } from '../../core/secrets.js';
import {
  afMerge,
  afSplit,
  type CipherMode,
  type CipherSpec,
  cipherBlockLen,
  essivCipher,
  HASH_LEN,
  type IvGen,
  masterKeyLen,
  pbkdf2Async,
  pbkdf2IterationsPerSecond,
  SECTOR,
  SectorCipher,
} from './crypto.js';
import {
  DIGEST_LEN,
  HEADER_SIZE,
  KEY_SLOT_OFFSET,
  type LuksHeader,
  MAX_ITERS,
  MIN_ITERS,
  NUM_SLOTS,
  type ParsedLuks,
  parseHeader,
  SALT_LEN,
  SLOT_DISABLED,
  SLOT_ENABLED,
  STRIPES,
  serializeHeader,
  splitKeySectors,
} from './header.js';

export type ReadFn = (buf: Uint8Array, offset: number) => Promise<void>;
export type WriteFn = (buf: Uint8Array, offset: number) => Promise<void>;

export interface LuksVolume {
  parsed: ParsedLuks;
  /** Bytes from the start of the header to the payload. */
  payloadOffset: number;
  /** The payload cipher; undefined when opened without I/O (info). */
  cipher: SectorCipher | undefined;
}

function checkIters(n: number, what: string): void {
  if (n > MAX_ITERS) {
    throw new VdiskError(
      'TOO_LARGE',
      `LUKS ${what} asks for ${n} PBKDF2 iterations, more than the ${MAX_ITERS} vdisk accepts`,
    );
  }
}

/**
 * Open a LUKS volume. `keySecret` names the secret holding the passphrase; `prefix` is how the
 * option is named in messages ('' for luks, 'encrypt.' for qcow2). With noIo (qemu-img info's
 * BDRV_O_NO_IO) the header is parsed and nothing is unlocked.
 */
export async function openLuks(
  read: ReadFn,
  keySecret: string | undefined,
  opts: { noIo: boolean; prefix: string; secrets: Secrets | undefined },
): Promise<LuksVolume> {
  let password: Uint8Array | undefined;
  if (!opts.noIo) {
    if (keySecret === undefined) {
      throw new VdiskError('INVALID_ARGUMENT', `Parameter '${opts.prefix}key-secret' is required for cipher`);
    }
    password = lookupSecretUtf8(opts.secrets, keySecret);
  }
  const head = new Uint8Array(HEADER_SIZE);
  await read(head, 0);
  const parsed = parseHeader(head);
  const payloadOffset = parsed.header.payloadOffset * SECTOR;
  if (password === undefined) return { parsed, payloadOffset, cipher: undefined };
  const key = await findKey(read, parsed, password);
  return { parsed, payloadOffset, cipher: new SectorCipher(parsed.spec, key) };
}

async function findKey(read: ReadFn, p: ParsedLuks, password: Uint8Array): Promise<Buffer> {
  const h = p.header;
  const len = h.keyBytes;
  checkIters(h.mkDigestIter, 'master key digest');
  for (const slot of h.slots) {
    if (slot.active !== SLOT_ENABLED) continue;
    checkIters(slot.iterations, 'key slot');
    const slotKey = await pbkdf2Async(password, slot.salt, slot.iterations, len, p.hash);
    // The material fills whole sectors on disk (cryptsetup pads a 24-byte key's 96000 bytes).
    const split = new Uint8Array(Math.ceil((len * slot.stripes) / SECTOR) * SECTOR);
    await read(split, slot.keyOffset * SECTOR);
    new SectorCipher(p.spec, slotKey).run(false, split, split, 0);
    const candidate = afMerge(p.hash, split, len, slot.stripes);
    const digest = await pbkdf2Async(candidate, h.mkDigestSalt, h.mkDigestIter, DIGEST_LEN, p.hash);
    if (timingSafeEqual(digest, h.mkDigest)) return candidate;
  }
  throw new VdiskError('EACCES', 'Invalid password, cannot unlock any keyslot');
}

/** The create options of a LUKS volume, with QEMU's defaults. */
export interface LuksCreateOptions {
  keySecret?: string | undefined;
  /** Where keySecret is defined (the command's --object secrets). */
  secrets?: Secrets | undefined;
  cipherAlg?: string | undefined;
  cipherMode?: string | undefined;
  ivgenAlg?: string | undefined;
  ivgenHashAlg?: string | undefined;
  hashAlg?: string | undefined;
  iterTime?: number | undefined;
}

const CIPHER_ALGS = [
  'aes-128',
  'aes-192',
  'aes-256',
  'des',
  '3des',
  'cast5-128',
  'serpent-128',
  'serpent-192',
  'serpent-256',
  'twofish-128',
  'twofish-192',
  'twofish-256',
];
// sm4 is in QEMU's list only when built with CONFIG_CRYPTO_SM4 (Debian's 7.2 is not).

/**
 * The QEMU cipher algorithms LUKS has a name for (qcrypto_block_luks_cipher_alg_lookup): des
 * and 3des are refused with QEMU's words; the others are all implemented.
 */
function luksCipherAlg(alg: string): string {
  if (alg === 'des' || alg === '3des')
    throw new VdiskError('UNSUPPORTED', `Algorithm '${alg}' not supported`);
  return alg;
}
const MODES = ['ecb', 'cbc', 'xts', 'ctr'];
const IVGENS = ['plain', 'plain64', 'essiv'];

function enumOpt(prefix: string, name: string, value: string, allowed: readonly string[]): string {
  if (!allowed.includes(value)) {
    throw new VdiskError('INVALID_ARGUMENT', `Parameter '${prefix}${name}' does not accept value '${value}'`);
  }
  return value;
}

/**
 * The checked create options: QEMU's defaults, its enum words, the secret, then the cipher
 * checks of qcrypto_block_luks_create (LUKS name, essiv cipher, a cipher object for the mode).
 */
function createSpec(
  o: LuksCreateOptions,
  prefix: string,
): { spec: CipherSpec; hash: string; password: Uint8Array } {
  const cipherAlg = enumOpt(prefix, 'cipher-alg', o.cipherAlg ?? 'aes-256', CIPHER_ALGS);
  const mode = enumOpt(prefix, 'cipher-mode', o.cipherMode ?? 'xts', MODES) as CipherMode;
  const ivgen = enumOpt(prefix, 'ivgen-alg', o.ivgenAlg ?? 'plain64', IVGENS) as IvGen;
  const hashes = Object.keys(HASH_LEN);
  const hash = enumOpt(prefix, 'hash-alg', o.hashAlg ?? 'sha256', hashes);
  let ivgenHash =
    o.ivgenHashAlg === undefined ? undefined : enumOpt(prefix, 'ivgen-hash-alg', o.ivgenHashAlg, hashes);
  if (ivgen === 'essiv' && ivgenHash === undefined) ivgenHash = 'sha256';
  if (o.keySecret === undefined) {
    throw new VdiskError('INVALID_ARGUMENT', `Parameter '${prefix}key-secret' is required for cipher`);
  }
  const password = lookupSecretUtf8(o.secrets, o.keySecret);
  luksCipherAlg(cipherAlg);
  if (ivgen === 'essiv') essivCipher(cipherAlg, ivgenHash!);
  // QEMU's XTS is for 128-bit blocks: cast5 has none (cipher-nettle.c.inc).
  if (mode === 'xts' && cipherBlockLen(cipherAlg) !== 16) {
    throw new VdiskError('UNSUPPORTED', 'Unsupported cipher mode xts');
  }
  return { spec: { alg: cipherAlg, mode, ivgen, ivgenHash }, hash, password };
}

/**
 * Create a LUKS1 volume as qcrypto_block_luks_create does: key slot 0 holds the key, the
 * others are disabled at QEMU's offsets. `init(payloadOffset)` reserves the header space
 * (the container sizes itself), then header and key material are written.
 */
export async function createLuks(
  o: LuksCreateOptions,
  prefix: string,
  init: (payloadOffset: number) => Promise<void>,
  write: WriteFn,
): Promise<{ cipher: SectorCipher; payloadOffset: number }> {
  const iterTime = o.iterTime ?? 2000;
  const { spec, hash, password } = createSpec(o, prefix);
  const keyBytes = masterKeyLen(spec);
  if ((keyBytes * STRIPES) % SECTOR !== 0) {
    // QEMU 7.2 aborts on this (an assertion in do_qcrypto_block_cipher_encdec): refuse it.
    throw new VdiskError(
      'UNSUPPORTED',
      `Cipher ${spec.alg} in ${spec.mode} mode gives key material of ${keyBytes * STRIPES} bytes, not whole sectors: QEMU cannot create it`,
    );
  }
  const masterKey = randomBytes(keyBytes);
  const cipher = new SectorCipher(spec, masterKey);

  const mkSalt = randomBytes(SALT_LEN);
  const mkRate = await pbkdf2IterationsPerSecond(hash, masterKey, mkSalt, DIGEST_LEN);
  const mkIters = Math.max(Math.floor(Math.floor((mkRate * iterTime) / 1000) / 8), MIN_ITERS);
  if (mkIters > 0xffffffff) {
    throw new VdiskError('INVALID_ARGUMENT', `PBKDF iterations ${mkIters} larger than ${0xffffffff}`);
  }
  const mkDigest = await pbkdf2Async(masterKey, mkSalt, mkIters, DIGEST_LEN, hash);

  const headerSectors = KEY_SLOT_OFFSET / SECTOR;
  const slotSectors = splitKeySectors(keyBytes, STRIPES);
  const slotSalt = randomBytes(SALT_LEN);
  const slotRate = await pbkdf2IterationsPerSecond(hash, password, slotSalt, keyBytes);
  const slotIters = Math.max(Math.floor((slotRate * iterTime) / 1000), MIN_ITERS);
  if (slotIters > 0xffffffff) {
    throw new VdiskError('INVALID_ARGUMENT', `PBKDF iterations ${slotIters} larger than ${0xffffffff}`);
  }
  const header: LuksHeader = {
    version: 1,
    cipherName: spec.alg.replace(/-\d+$/, ''),
    cipherMode:
      spec.ivgenHash !== undefined
        ? `${spec.mode}-${spec.ivgen}:${spec.ivgenHash}`
        : `${spec.mode}-${spec.ivgen}`,
    hashSpec: hash,
    payloadOffset: headerSectors + slotSectors * NUM_SLOTS,
    keyBytes,
    mkDigest,
    mkDigestSalt: mkSalt,
    mkDigestIter: mkIters,
    uuid: randomUUID(),
    slots: [],
  };
  for (let i = 0; i < NUM_SLOTS; i++) {
    header.slots.push({
      active: i === 0 ? SLOT_ENABLED : SLOT_DISABLED,
      iterations: i === 0 ? slotIters : 0,
      salt: i === 0 ? slotSalt : Buffer.alloc(SALT_LEN),
      keyOffset: headerSectors + slotSectors * i,
      stripes: STRIPES,
    });
  }
  const slotKey = await pbkdf2Async(password, slotSalt, slotIters, keyBytes, hash);
  const split = afSplit(hash, masterKey, STRIPES, randomBytes(keyBytes * (STRIPES - 1)));
  new SectorCipher(spec, slotKey).run(true, split, split, 0);
  const payloadOffset = header.payloadOffset * SECTOR;
  await init(payloadOffset);
  await write(serializeHeader(header), 0);
  await write(split, header.slots[0]!.keyOffset * SECTOR);
  return { cipher, payloadOffset };
}

/** qemu-img info's LUKS section (qcrypto_block_luks_get_info), keyed as QAPI's QCryptoBlockInfoLUKS. */
export function luksInfo(p: ParsedLuks): Record<string, unknown> {
  const h: LuksHeader = p.header;
  return {
    'cipher-alg': p.spec.alg,
    'cipher-mode': p.spec.mode,
    'ivgen-alg': p.spec.ivgen,
    ...(p.spec.ivgen === 'essiv' ? { 'ivgen-hash-alg': p.spec.ivgenHash } : {}),
    'hash-alg': p.hash,
    'payload-offset': h.payloadOffset * SECTOR,
    'master-key-iters': h.mkDigestIter,
    uuid: h.uuid,
    slots: h.slots.map((s) =>
      s.active === SLOT_ENABLED
        ? { active: true, iters: s.iterations, 'key-offset': s.keyOffset * SECTOR, stripes: s.stripes }
        : { active: false, 'key-offset': s.keyOffset * SECTOR },
    ),
  };
}

/**
 * The payload offset a LUKS volume created with these options would have (qemu-img measure:
 * qcrypto_block_calculate_payload_offset). QEMU finds it by a dry-run create, so it wants the
 * secret too; we check the same things without running PBKDF2.
 */
export function luksPayloadOffset(o: LuksCreateOptions, prefix: string): number {
  const keyBytes = masterKeyLen(createSpec(o, prefix).spec);
  return (KEY_SLOT_OFFSET / SECTOR + splitKeySectors(keyBytes, STRIPES) * NUM_SLOTS) * SECTOR;
}
