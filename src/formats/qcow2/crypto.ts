/**
 * qcow2 encryption (encrypt.format=luks, crypt_method 2): a LUKS1 header and its key material
 * in clusters that the crypto header extension (0x0537be77: offset, length) points to; data
 * clusters encrypted per 512-byte sector with the sector number of the *host* offset as IV
 * (QEMU sets crypt_physical_offset for LUKS; only legacy AES used the guest offset).
 */
import type { DriverOpenOptions } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import type { Secrets } from '../../core/secrets.js';
import { createLuks, type LuksCreateOptions, type LuksVolume, luksInfo, openLuks } from '../luks/block.js';
import { SECTOR } from '../luks/crypto.js';
import { EXT_CRYPTO, getU64, type HeaderExtension, type Qcow2Header, setU64 } from './header.js';

export const CRYPT_LUKS = 2;

export interface CryptoHeaderRef {
  offset: number;
  length: number;
}

/** The crypto header extension, checked as qcow2_read_extensions does (same words). */
export function cryptoHeaderRef(h: Qcow2Header, path: string): CryptoHeaderRef | undefined {
  const ext = h.extensions.find((e) => e.type === EXT_CRYPTO);
  const bad = (msg: string) => new VdiskError('INVALID_IMAGE', msg, { path });
  if (ext === undefined) return undefined;
  if (h.cryptMethod !== CRYPT_LUKS)
    throw bad('CRYPTO header extension only expected with LUKS encryption method');
  if (ext.data.length !== 16) {
    throw bad(`CRYPTO header extension size ${ext.data.length}, but expected size 16`);
  }
  const v = new DataView(ext.data.buffer, ext.data.byteOffset, 16);
  const offset = getU64(v, 0);
  const length = getU64(v, 8);
  const cs = 2 ** h.clusterBits;
  if (offset % cs !== 0)
    throw bad(`Encryption header offset '${offset}' is not a multiple of cluster size '${cs}'`);
  return { offset, length };
}

/** Open the LUKS volume of an encrypted qcow2 (undefined for an unencrypted image). */
export async function openQcow2Luks(
  file: HostFile,
  h: Qcow2Header,
  opts: DriverOpenOptions,
): Promise<{ vol: LuksVolume; ref: CryptoHeaderRef } | undefined> {
  if (h.cryptMethod !== CRYPT_LUKS) return undefined;
  const ref = cryptoHeaderRef(h, file.path);
  if (ref === undefined) {
    throw new VdiskError('INVALID_IMAGE', `Missing CRYPTO header for crypt method ${h.cryptMethod}`, {
      path: file.path,
    });
  }
  const vol = await openLuks(
    async (buf, off) => {
      if (off + buf.length > ref.length) {
        throw new VdiskError('INVALID_IMAGE', 'Request for data outside of extension header');
      }
      await file.read(buf, ref.offset + off);
    },
    opts.options?.['encrypt.key-secret'],
    { noIo: opts.noIo === true, prefix: 'encrypt.', secrets: opts.secrets },
  );
  return { vol, ref };
}

/** Decrypt data read from host offset `host` (in place). */
export function decryptAt(vol: LuksVolume, buf: Uint8Array, host: number): void {
  vol.cipher!.run(false, buf, buf, host / SECTOR);
}

/** Encrypted copies of buffers to be written contiguously from host offset `host`. */
export function encryptAt(vol: LuksVolume, bufs: Uint8Array[], host: number): Uint8Array[] {
  let pos = host;
  return bufs.map((b) => {
    const out = new Uint8Array(b.length);
    vol.cipher!.run(true, b, out, pos / SECTOR);
    pos += b.length;
    return out;
  });
}

/** The qcow2 `encrypt` section of qemu-img info: the LUKS info with format 'luks'. */
export function qcow2EncryptInfo(vol: LuksVolume): Record<string, unknown> {
  return { format: 'luks', ...luksInfo(vol.parsed) };
}

/** The create options (encrypt.*) of a qcow2 LUKS image. */
export function luksCreateOptions(o: Record<string, string>): LuksCreateOptions {
  return {
    keySecret: o['encrypt.key-secret'],
    cipherAlg: o['encrypt.cipher-alg'],
    cipherMode: o['encrypt.cipher-mode'],
    ivgenAlg: o['encrypt.ivgen-alg'],
    ivgenHashAlg: o['encrypt.ivgen-hash-alg'],
    hashAlg: o['encrypt.hash-alg'],
    iterTime: o['encrypt.iter-time'] === undefined ? undefined : Number(o['encrypt.iter-time']),
  };
}

/**
 * Set up encryption in a new image, as qcow2_set_up_encryption: the LUKS header goes into
 * freshly allocated clusters (zeroed first), and the extension that points to it is returned
 * for the header.
 */
export async function createQcow2Luks(
  file: HostFile,
  options: Record<string, string>,
  clusterSize: number,
  alloc: (clusters: number) => Promise<number>,
  secrets: Secrets | undefined,
): Promise<HeaderExtension> {
  let base = -1;
  let length = 0;
  await createLuks(
    { ...luksCreateOptions(options), secrets },
    'encrypt.',
    async (payloadOffset) => {
      const clusters = Math.ceil(payloadOffset / clusterSize);
      base = await alloc(clusters);
      length = payloadOffset;
      const zero = new Uint8Array(Math.min(clusters * clusterSize, 4 << 20));
      for (let p = 0; p < clusters * clusterSize; p += zero.length) {
        await file.write(zero.subarray(0, Math.min(zero.length, clusters * clusterSize - p)), base + p);
      }
    },
    (buf, off) => file.write(buf, base + off),
  );
  const data = new Uint8Array(16);
  const v = new DataView(data.buffer);
  setU64(v, 0, base);
  setU64(v, 8, length);
  return { type: EXT_CRYPTO, data };
}
