/**
 * The admin password's start marker: lets a start with the same configured admin password
 * skip re-hashing it (scrypt, ~100 ms of CPU on every `vdisk serve` otherwise).
 *
 * `DATA_DIR/admin-password.mark` (mode 0600) holds the scrypt hash the users table had after
 * the last start, a random key, and HMAC-SHA256(key, password + NUL + that hash). A start whose
 * configured password gives the same MAC, and whose users table still holds that very hash,
 * leaves the row alone; anything else (another password, a hash changed through the API or by
 * another node, a missing or damaged marker) hashes and stores the password as before and
 * writes a new marker. The plain password is never stored. The MAC is fast to compute, so
 * whoever can read the marker can test guesses faster than against scrypt: it is readable by
 * the server's user only, who holds the plain password already (the command line, the
 * environment or the configuration file it came from).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const FILE = 'admin-password.mark';

const mac = (key: Buffer, password: string, hash: string): Buffer =>
  createHmac('sha256', key).update(password).update('\0').update(hash).digest();

/** The stored hash the marker vouches for when `password` matches it; null otherwise. */
export async function readAdminMarker(dataDir: string, password: string): Promise<string | null> {
  try {
    const m = JSON.parse(await readFile(join(dataDir, FILE), 'utf8')) as unknown;
    if (typeof m !== 'object' || m === null) return null;
    const { v, key, mac: want, hash } = m as Record<string, unknown>;
    if (v !== 1 || typeof key !== 'string' || typeof want !== 'string' || typeof hash !== 'string')
      return null;
    const got = mac(Buffer.from(key, 'base64'), password, hash);
    const w = Buffer.from(want, 'base64');
    return w.length === got.length && timingSafeEqual(w, got) ? hash : null;
  } catch {
    return null;
  }
}

/** Record that `password` is the one `hash` (the users table's) was made from. */
export async function writeAdminMarker(dataDir: string, password: string, hash: string): Promise<void> {
  const key = randomBytes(32);
  const text = JSON.stringify({
    v: 1,
    key: key.toString('base64'),
    mac: mac(key, password, hash).toString('base64'),
    hash,
  });
  const path = join(dataDir, FILE);
  await writeFile(`${path}.tmp`, `${text}\n`, { mode: 0o600 });
  await rename(`${path}.tmp`, path);
}
