/**
 * Protocols: image names that are not local files. qemu-img opens `nbd://…`, `http(s)://…` and
 * `json:{"file.driver": …}` names through its protocol drivers; vdisk opens them here, as a
 * HostFile over a remote source, so that format drivers never know where their bytes come from.
 *
 * openProtocol answers null for a plain file name: the caller then opens it with HostFile.open.
 * Each protocol lives in its own module, imported only when a name needs it (start-up stays lean).
 */
import { VdiskError } from '../core/errors.js';
import { HostFile, type HostOpenOptions } from '../core/host-file.js';
import type { Secrets } from '../core/secrets.js';

/** The protocol a name uses, or null for a local file. */
export function protocolOf(name: string): string | null {
  const m = /^([a-z][a-z0-9+.-]*):/i.exec(name);
  if (m === null) return null;
  const scheme = m[1]!.toLowerCase();
  if (scheme === 'nbd' || scheme.startsWith('nbd+')) return 'nbd';
  // json:{"file.driver": "nbd", …} or json:{"file": {"driver": "nbd", …}}
  if (scheme === 'json' && /"(?:file\.)?driver"\s*:\s*"nbd"/.test(name)) return 'nbd';
  if (scheme === 'http' || scheme === 'https') return scheme;
  if (scheme === 's3') return 's3';
  return null;
}

/**
 * Open a protocol name as a HostFile, or answer null when `name` is a local file's.
 * `protocolOptions` are the options of an image named by them (json:{…}, --image-opts): the
 * protocol's driver (`driver`, which then decides over the name's scheme) and its own keys;
 * `secrets` holds the secrets they name by id (http's password-secret, cookie-secret).
 */
export async function openProtocol(
  name: string,
  opts: HostOpenOptions = {},
  protocolOptions?: Readonly<Record<string, string>>,
  secrets?: Secrets | undefined,
): Promise<HostFile | null> {
  const protocol = protocolOptions?.driver ?? protocolOf(name);
  if (protocol === null) return null;
  if (protocol === 'nbd') return (await import('./nbd.js')).openNbd(name, opts);
  if (protocol === 'http' || protocol === 'https') {
    // qemu's curl driver is read-only (bdrv_apply_auto_read_only).
    if (opts.writable === true || opts.create === true) {
      throw new VdiskError('READ_ONLY', 'curl driver does not support writes');
    }
    const { openHttpSource, httpOptions } = await import('./http.js');
    const source = await openHttpSource(name, httpOptions(protocolOptions ?? {}, secrets), protocol);
    return HostFile.fromSource(name, source);
  }
  if (protocol === 's3') {
    // vdisk's own: qemu-img has no S3 driver.
    if (opts.writable === true || opts.create === true) {
      throw new VdiskError('READ_ONLY', 's3 driver does not support writes');
    }
    const { openS3Source } = await import('./s3.js');
    return HostFile.fromSource(name, await openS3Source(name));
  }
  throw new VdiskError('UNSUPPORTED', `Protocol driver '${protocol}' is not supported`);
}

/**
 * The file a format driver's create writes its new image into: a new local file, or an
 * existing protocol file (an NBD export), as qemu's bdrv_co_create_opts_simple opens it.
 */
export async function createFile(name: string): Promise<HostFile> {
  const file = await openProtocol(name, { writable: true, create: true, lock: 'none' });
  if (file !== null) return file;
  const { HostFile: H } = await import('../core/host-file.js');
  return H.open(name, { create: true });
}
