/**
 * The LUKS1 header (cryptsetup's on-disk format 1.2.1, as crypto/block-luks.c reads and writes
 * it): 592 big-endian bytes, then key material areas, then the payload. Parsing validates
 * every field the way QEMU 7.2's qcrypto_block_luks_check_header does (same words), so hostile
 * offsets are refused before anything is read or allocated.
 */
import { VdiskError } from '../../core/errors.js';
import { type CipherMode, type CipherSpec, hashLen, type IvGen, SECTOR } from './crypto.js';

export const MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
export const HEADER_SIZE = 592;
export const NUM_SLOTS = 8;
export const STRIPES = 4000;
export const KEY_SLOT_OFFSET = 4096;
export const SLOT_ENABLED = 0x00ac71f3;
export const SLOT_DISABLED = 0x0000dead;
export const DIGEST_LEN = 20;
export const SALT_LEN = 32;
/** QEMU's floors on the iteration counts it writes. */
export const MIN_ITERS = 1000;
/**
 * The most PBKDF2 iterations vdisk runs for one key slot or the master key digest. QEMU has no
 * bound below 2^32 (hours of CPU for a hostile header); a header made with a 2 s iter-time on
 * a fast machine has a few million, so 64 Mi keeps every real image and refuses the rest fast.
 */
export const MAX_ITERS = 64 * 1024 * 1024;

export interface KeySlot {
  active: number;
  iterations: number;
  salt: Buffer;
  keyOffset: number; // in sectors
  stripes: number;
}

export interface LuksHeader {
  version: number;
  cipherName: string;
  cipherMode: string;
  hashSpec: string;
  payloadOffset: number; // in sectors
  keyBytes: number;
  mkDigest: Buffer;
  mkDigestSalt: Buffer;
  mkDigestIter: number;
  uuid: string;
  slots: KeySlot[];
}

export interface ParsedLuks {
  header: LuksHeader;
  spec: CipherSpec;
  hash: string;
}

const invalid = (msg: string) => new VdiskError('INVALID_IMAGE', msg);

function cstr(buf: Buffer, what: string): string {
  const nul = buf.indexOf(0);
  if (nul < 0) throw invalid(`LUKS header ${what} is not NUL terminated`);
  return buf.subarray(0, nul).toString('latin1');
}

/** Sectors of one key slot's material, aligned as QEMU and cryptsetup lay it out. */
export function splitKeySectors(keyBytes: number, stripes: number): number {
  const sectors = Math.ceil((keyBytes * stripes) / SECTOR);
  const headerSectors = KEY_SLOT_OFFSET / SECTOR;
  return Math.ceil(sectors / headerSectors) * headerSectors;
}

export function parseHeader(buf: Uint8Array): ParsedLuks {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  if (b.length < HEADER_SIZE || !b.subarray(0, 6).equals(MAGIC))
    throw invalid('Volume is not in LUKS format');
  const version = b.readUInt16BE(6);
  if (version !== 1) {
    throw new VdiskError('UNSUPPORTED', `LUKS version ${version} is not supported`);
  }
  const cipherName = cstr(b.subarray(8, 40), 'cipher name');
  const cipherModeStr = cstr(b.subarray(40, 72), 'cipher mode');
  const hashSpec = cstr(b.subarray(72, 104), 'hash spec');
  const header: LuksHeader = {
    version,
    cipherName,
    cipherMode: cipherModeStr,
    hashSpec,
    payloadOffset: b.readUInt32BE(104),
    keyBytes: b.readUInt32BE(108),
    mkDigest: Buffer.from(b.subarray(112, 132)),
    mkDigestSalt: Buffer.from(b.subarray(132, 164)),
    mkDigestIter: b.readUInt32BE(164),
    uuid: b.subarray(168, 208).toString('latin1').replace(/\0.*$/s, ''),
    slots: [],
  };
  for (let i = 0; i < NUM_SLOTS; i++) {
    const o = 208 + i * 48;
    header.slots.push({
      active: b.readUInt32BE(o),
      iterations: b.readUInt32BE(o + 4),
      salt: Buffer.from(b.subarray(o + 8, o + 40)),
      keyOffset: b.readUInt32BE(o + 40),
      stripes: b.readUInt32BE(o + 44),
    });
  }
  const headerSectors = KEY_SLOT_OFFSET / SECTOR;
  if (header.payloadOffset < headerSectors) throw invalid('LUKS payload is overlapping with the header');
  if (header.mkDigestIter === 0) throw invalid('LUKS key iteration count is zero');
  for (let i = 0; i < NUM_SLOTS; i++) {
    const s1 = header.slots[i]!;
    if (s1.stripes !== STRIPES)
      throw invalid(`Keyslot ${i} is corrupted (stripes ${s1.stripes} != ${STRIPES})`);
    if (s1.active !== SLOT_DISABLED && s1.active !== SLOT_ENABLED) {
      throw invalid(`Keyslot ${i} state (active/disable) is corrupted`);
    }
    if (s1.active === SLOT_ENABLED && s1.iterations === 0)
      throw invalid(`Keyslot ${i} iteration count is zero`);
    if (s1.keyOffset < headerSectors) throw invalid(`Keyslot ${i} is overlapping with the LUKS header`);
    const len1 = splitKeySectors(header.keyBytes, s1.stripes);
    if (s1.keyOffset + len1 > header.payloadOffset) {
      throw invalid(`Keyslot ${i} is overlapping with the encrypted payload`);
    }
    for (let j = i + 1; j < NUM_SLOTS; j++) {
      const s2 = header.slots[j]!;
      const len2 = splitKeySectors(header.keyBytes, s2.stripes);
      if (s1.keyOffset + len1 > s2.keyOffset && s2.keyOffset + len2 > s1.keyOffset) {
        throw invalid(`Keyslots ${i} and ${j} are overlapping in the header`);
      }
    }
  }
  // Then the algorithms (qcrypto_block_luks_parse_header).
  const spec = parseCipher(header);
  const hash = header.hashSpec;
  if (hashLen(hash) === undefined)
    throw new VdiskError('UNSUPPORTED', `Hash algorithm '${hash}' not supported`);
  return { header, spec, hash };
}

const MODES: readonly string[] = ['ecb', 'cbc', 'xts', 'ctr'];
/**
 * qcrypto_block_luks_cipher_name_map: the LUKS cipher names QEMU knows and their key sizes in
 * bytes; the QEMU algorithm is `<name>-<bits>` (aes-256, twofish-128, cast5-128, ...).
 */
const LUKS_CIPHERS = new Map<string, readonly number[]>([
  ['aes', [16, 24, 32]],
  ['cast5', [16]],
  ['serpent', [16, 24, 32]],
  ['twofish', [16, 24, 32]],
]);
const IVGENS: readonly string[] = ['plain', 'plain64', 'essiv'];

/** "<mode>-<ivgen>[:<hash>]" and the cipher name with the key size (qcrypto_block_luks_parse_header). */
function parseCipher(h: LuksHeader): CipherSpec {
  const dash = h.cipherMode.indexOf('-');
  if (dash < 0) throw invalid(`Unexpected cipher mode string format '${h.cipherMode}'`);
  const mode = h.cipherMode.slice(0, dash);
  let ivgen = h.cipherMode.slice(dash + 1);
  let ivgenHash: string | undefined;
  const colon = ivgen.indexOf(':');
  if (colon >= 0) {
    ivgenHash = ivgen.slice(colon + 1);
    ivgen = ivgen.slice(0, colon);
    if (hashLen(ivgenHash) === undefined) {
      throw new VdiskError('UNSUPPORTED', `Hash algorithm '${ivgenHash}' not supported`);
    }
  }
  if (!MODES.includes(mode)) throw new VdiskError('UNSUPPORTED', `Cipher mode '${mode}' not supported`);
  let keyBytes = h.keyBytes;
  if (mode === 'xts') keyBytes = Math.floor(keyBytes / 2);
  const sizes = LUKS_CIPHERS.get(h.cipherName);
  const alg = sizes?.includes(keyBytes) ? `${h.cipherName}-${keyBytes * 8}` : undefined;
  if (alg === undefined) {
    throw new VdiskError(
      'UNSUPPORTED',
      `Algorithm '${h.cipherName}' with key size ${keyBytes} bytes not supported`,
    );
  }
  if (!IVGENS.includes(ivgen)) throw new VdiskError('UNSUPPORTED', `IV generator '${ivgen}' not supported`);
  if (ivgen === 'essiv' && ivgenHash === undefined) throw invalid('Missing IV generator hash specification');
  return { alg, mode: mode as CipherMode, ivgen: ivgen as IvGen, ivgenHash };
}

export function serializeHeader(h: LuksHeader): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(b, 0);
  b.writeUInt16BE(h.version, 6);
  b.write(h.cipherName, 8, 31, 'latin1');
  b.write(h.cipherMode, 40, 31, 'latin1');
  b.write(h.hashSpec, 72, 31, 'latin1');
  b.writeUInt32BE(h.payloadOffset, 104);
  b.writeUInt32BE(h.keyBytes, 108);
  h.mkDigest.copy(b, 112);
  h.mkDigestSalt.copy(b, 132);
  b.writeUInt32BE(h.mkDigestIter, 164);
  b.write(h.uuid, 168, 39, 'latin1');
  h.slots.forEach((s, i) => {
    const o = 208 + i * 48;
    b.writeUInt32BE(s.active, o);
    b.writeUInt32BE(s.iterations, o + 4);
    s.salt.copy(b, o + 8);
    b.writeUInt32BE(s.keyOffset, o + 40);
    b.writeUInt32BE(s.stripes, o + 44);
  });
  return b;
}
