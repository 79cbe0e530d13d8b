/**
 * Legacy qcow/qcow2 AES encryption (crypt_method 1, QEMU's crypto/block-qcow.c): AES-128-CBC
 * per 512-byte sector, IV plain64 of the *guest* sector, and a key that is the passphrase
 * itself, zero-padded or cut to 16 bytes (no key derivation: weak, which is why QEMU
 * deprecated it). vdisk reads such images; it does not write or create them.
 */
import { VdiskError } from '../../core/errors.js';
import { lookupSecretUtf8, type Secrets } from '../../core/secrets.js';
import { SectorCipher } from './crypto.js';

/**
 * The cipher of a legacy AES image, or undefined when opened without I/O (qemu-img info).
 * `prefix` names the option in messages as QEMU does ('encrypt.').
 */
export function openLegacyAes(
  keySecret: string | undefined,
  opts: { noIo: boolean; prefix: string; secrets: Secrets | undefined },
): SectorCipher | undefined {
  if (opts.noIo) return undefined;
  if (keySecret === undefined) {
    throw new VdiskError('INVALID_ARGUMENT', `Parameter '${opts.prefix}key-secret' is required for cipher`);
  }
  const password = lookupSecretUtf8(opts.secrets, keySecret);
  const key = Buffer.alloc(16);
  key.set(password.subarray(0, 16));
  return new SectorCipher({ alg: 'aes-128', mode: 'cbc', ivgen: 'plain64' }, key);
}

/** Refuse writes to a legacy AES image (vdisk reads them only). */
export function legacyAesReadOnly(path: string): VdiskError {
  return new VdiskError('UNSUPPORTED', `'${path}': vdisk opens AES-encrypted (legacy) images read-only`, {
    path,
  });
}
