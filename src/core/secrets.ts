/**
 * Secrets: qemu's `--object secret,id=ID,data=…|file=…[,format=raw|base64]` (QCryptoSecret).
 *
 * In QEMU the objects live in the process's QOM tree; in vdisk they live in a `Secrets` store
 * that belongs to one command invocation: the CLI makes one per command and defines objects
 * while it parses the command's options (qemu-img calls user_creatable_process_cmdline from
 * its getopt loop), and the store travels with the open and create options
 * (OpenOptions.secrets, DriverOpenOptions.secrets, CreateRequest.secrets) to the drivers,
 * which look secrets up by id when they open or create an encrypted image (`key-secret=ID`,
 * `encrypt.key-secret=ID`). Two commands in one process (the registry, tests) never see each
 * other's secrets. Encrypted secrets (keyid=, iv=) are refused with a clear message.
 */
import { readFileSync } from 'node:fs';
import { VdiskError } from './errors.js';

export class Secrets {
  private readonly byId = new Map<string, Uint8Array>();

  /** Define a secret by id. A second definition of the same id fails, as in QEMU. */
  define(id: string, data: Uint8Array): this {
    if (this.byId.has(id)) {
      throw new VdiskError(
        'INVALID_ARGUMENT',
        `attempt to add duplicate property '${id}' to object (type 'container')`,
      );
    }
    this.byId.set(id, data);
    return this;
  }

  /** The bytes of a secret; "No secret with id 'ID'" when none was defined. */
  lookup(id: string): Uint8Array {
    const s = this.byId.get(id);
    if (s === undefined) throw new VdiskError('NOT_FOUND', `No secret with id '${id}'`);
    return s;
  }

  /** Define the object an `--object` argument describes (only `secret` objects are known). */
  defineObject(text: string): void {
    const [id, bytes] = parseSecretObject(text);
    this.define(id, bytes);
  }
}

/** A secret by id from `secrets` (none defined when undefined), as lookup() words failures. */
export function lookupSecret(secrets: Secrets | undefined, id: string): Uint8Array {
  return (secrets ?? new Secrets()).lookup(id);
}

/** A secret as a UTF-8 passphrase (qcrypto_secret_lookup_as_utf8). */
export function lookupSecretUtf8(secrets: Secrets | undefined, id: string): Uint8Array {
  const s = lookupSecret(secrets, id);
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(s);
  } catch {
    throw new VdiskError('INVALID_ARGUMENT', `Data from secret ${id} is not valid UTF-8`);
  }
  // QEMU passes the password as a C string: it ends at the first NUL.
  const nul = s.indexOf(0);
  return nul < 0 ? s : s.subarray(0, nul);
}

/**
 * Split a QemuOpts string: `a=b,c=d`, with ",," standing for a literal comma. The first element
 * may be a bare value for the implied key (qom-type for --object, none for --image-opts).
 */
export function parseQemuOpts(text: string, impliedKey?: string): Array<[string, string]> {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === ',') {
      if (text[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      parts.push(cur);
      cur = '';
      continue;
    }
    cur += c;
  }
  parts.push(cur);
  const out: Array<[string, string]> = [];
  parts.forEach((p, i) => {
    if (p === '' && i === parts.length - 1 && i > 0) return;
    const eq = p.indexOf('=');
    if (eq < 0) {
      if (i === 0 && impliedKey !== undefined) out.push([impliedKey, p]);
      else out.push([p, 'on']);
    } else out.push([p.slice(0, eq), p.slice(eq + 1)]);
  });
  return out;
}

const SECRET_KEYS = new Set(['qom-type', 'id', 'data', 'file', 'format', 'keyid', 'iv', 'loaded']);

/** The id and bytes of the secret an `--object` argument describes. */
function parseSecretObject(text: string): [string, Uint8Array] {
  const opts = new Map(parseQemuOpts(text, 'qom-type'));
  const type = opts.get('qom-type');
  if (type === undefined) throw new VdiskError('INVALID_ARGUMENT', "Parameter 'qom-type' is missing");
  if (type !== 'secret') {
    throw new VdiskError('INVALID_ARGUMENT', `Parameter 'qom-type' does not accept value '${type}'`);
  }
  const id = opts.get('id');
  if (id === undefined) throw new VdiskError('INVALID_ARGUMENT', "Parameter 'id' is missing");
  for (const k of opts.keys()) {
    if (!SECRET_KEYS.has(k)) throw new VdiskError('INVALID_ARGUMENT', `Parameter '${k}' is unexpected`);
  }
  const format = opts.get('format') ?? 'raw';
  if (format !== 'raw' && format !== 'base64') {
    throw new VdiskError('INVALID_ARGUMENT', `Parameter 'format' does not accept value '${format}'`);
  }
  const data = opts.get('data');
  const file = opts.get('file');
  if (data !== undefined && file !== undefined) {
    throw new VdiskError('INVALID_ARGUMENT', "'file' and 'data' are mutually exclusive");
  }
  if (data === undefined && file === undefined) {
    throw new VdiskError('INVALID_ARGUMENT', "Either 'file' or 'data' must be provided");
  }
  if (opts.has('keyid') || opts.has('iv')) {
    // QEMU decrypts such a secret with another (AES-256-CBC); vdisk does not implement it.
    throw new VdiskError('UNSUPPORTED', `Secret '${id}': encrypted secrets (keyid, iv) are not supported`);
  }
  let bytes: Uint8Array;
  if (file !== undefined) {
    try {
      bytes = readFileSync(file);
    } catch (err) {
      const reason =
        (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'No such file or directory' : String(err);
      throw new VdiskError('ENOENT', `Unable to read ${file}: Failed to open file “${file}”: ${reason}`);
    }
  } else {
    bytes = new TextEncoder().encode(data);
  }
  if (format === 'base64') {
    const s = new TextDecoder().decode(bytes).trim();
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 === 1) {
      throw new VdiskError('INVALID_ARGUMENT', 'Unable to decode base64 data');
    }
    bytes = Buffer.from(s, 'base64');
  }
  return [id, bytes];
}
