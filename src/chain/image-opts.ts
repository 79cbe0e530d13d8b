/**
 * --image-opts: an image named by its block options (`driver=luks,key-secret=s0,
 * file.filename=a.luks`) instead of a file name. The flag belongs to one command invocation:
 * the CLI notes qemu-img's `--image-opts` (and convert's `--target-image-opts`) in the
 * command's options, and the command passes `imageOpts: true` to openImage for the names the
 * flag covers (chain/open.ts OpenOptions.imageOpts). There is no process-wide mode.
 */
import { VdiskError } from '../core/errors.js';
import { qdictOrder } from '../core/qdict.js';
import { parseQemuOpts } from '../core/secrets.js';
import { nbdCanonicalName, nbdFromOptions } from '../protocols/nbd-name.js';

/**
 * JSON's null as an option value (`"backing": null` in a json:{…} name), told apart from the
 * string "null" (`backing=null` names a block node): a NUL cannot come from the command line.
 */
export const JSON_NULL = '\u0000null';

export interface ImageOpts {
  driver: string | undefined;
  filename: string;
  /** The remaining options, for the format driver (key-secret, encrypt.key-secret, …). */
  options: Record<string, string>;
  /** qemu's name for such an image: json:{…} of its options. */
  displayName: string;
  /**
   * A protocol's own options (`file.driver=http,file.url=…,file.sslverify=off`): the driver
   * and the other file.* keys, for openProtocol (`filename` is then the URL).
   */
  protocolOptions?: Record<string, string>;
  /** qemu's name for an image over a protocol, given the format that was opened. */
  protocolDisplayName?: (format: string) => string;
}

/** A JSON option value as the string the drivers take (a backing's null as JSON_NULL). */
function optionText(key: string, v: unknown): string {
  if (typeof v === 'string') return v;
  if (v === null && (key === 'backing' || key.endsWith('.backing'))) return JSON_NULL;
  return JSON.stringify(v);
}

/** block/curl.c's runtime options besides `url`. */
const CURL_KEYS = new Set([
  'readahead',
  'sslverify',
  'timeout',
  'cookie',
  'cookie-secret',
  'username',
  'password-secret',
  'proxy-username',
  'proxy-password-secret',
]);
/** The options that change what is read (curl_strong_runtime_opts): they make qemu name the
 * image by json:{…} instead of its URL; readahead and timeout do not. */
const CURL_STRONG = [
  'sslverify',
  'cookie',
  'cookie-secret',
  'username',
  'password-secret',
  'proxy-username',
  'proxy-password-secret',
];

/**
 * An image over http(s) by its options: `pairs` are the keys and values as given (strings from
 * --image-opts, JSON values from json:{…}).
 */
function curlImageOpts(protocol: string, pairs: Array<[string, unknown]>): ImageOpts {
  let driver: string | undefined;
  let url: string | undefined;
  const options: Record<string, string> = {};
  const protocolOptions: Record<string, string> = { driver: protocol };
  const given: Record<string, unknown> = {};
  for (const [k, v] of pairs) {
    const text = optionText(k, v);
    if (k === 'driver') driver = text;
    else if (k === 'file.driver' || k === 'file.filename') continue;
    else if (k === 'file.url') url = text;
    else if (k.startsWith('file.')) {
      const key = k.slice(5);
      if (!CURL_KEYS.has(key)) {
        throw new VdiskError(
          'INVALID_ARGUMENT',
          `Block protocol '${protocol}' doesn't support the option '${key}'`,
        );
      }
      protocolOptions[key] = text;
      given[key] = v;
    } else options[k] = text;
  }
  if (url === undefined)
    throw new VdiskError('INVALID_ARGUMENT', "curl block driver requires an 'url' option");
  const strong = CURL_STRONG.filter((k) => given[k] !== undefined);
  const protocolDisplayName = (format: string): string => {
    // curl_refresh_filename: the URL itself unless an option that changes the bytes was given.
    if (strong.length === 0) return url;
    const file: Record<string, unknown> = { url, driver: protocol };
    for (const k of strong) file[k] = given[k];
    return `json:${compactJson({ driver: driver ?? format, file, ...options })}`;
  };
  return {
    driver,
    filename: url,
    options,
    displayName: protocolDisplayName(driver ?? 'raw'),
    protocolOptions,
    protocolDisplayName,
  };
}

/**
 * A `json:{…}` image name (qemu's block.c parse_json_filename): nested objects flattened to
 * dotted keys. vdisk reads the local file and http(s) protocols from it.
 */
export function parseJsonName(name: string): ImageOpts {
  let v: unknown;
  try {
    v = JSON.parse(name.slice(5));
  } catch {
    throw new VdiskError('INVALID_ARGUMENT', 'Could not parse the JSON options');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new VdiskError('INVALID_ARGUMENT', 'Invalid JSON object given');
  }
  const pairs: Array<[string, unknown]> = [];
  const flatten = (o: Record<string, unknown>, prefix: string) => {
    for (const [k, x] of Object.entries(o)) {
      if (typeof x === 'object' && x !== null && !Array.isArray(x))
        flatten(x as Record<string, unknown>, `${prefix}${k}.`);
      else pairs.push([`${prefix}${k}`, x]);
    }
  };
  flatten(v as Record<string, unknown>, '');
  const protocol = pairs.find(([k]) => k === 'file.driver')?.[1];
  if (protocol === 'http' || protocol === 'https') return curlImageOpts(protocol, pairs);
  const io = imageOptsOf(pairs.map(([k, x]) => [k, optionText(k, x)]));
  // qemu names a plain file opened by json:{…} by its file name.
  return { ...io, displayName: io.filename };
}

export function parseImageOpts(text: string): ImageOpts {
  // A bare value is `file=` (qemu's "source" options imply that key), and `file` names a block
  // node, of which qemu-img has none: QEMU refuses it so (imageOptsOf).
  const pairs = parseQemuOpts(text, 'file');
  const protocol = pairs.find(([k]) => k === 'file.driver')?.[1];
  if (protocol === 'http' || protocol === 'https') return curlImageOpts(protocol, pairs);
  return imageOptsOf(pairs);
}

function imageOptsOf(pairs: Array<[string, string]>): ImageOpts {
  let driver: string | undefined;
  let filename: string | undefined;
  const options: Record<string, string> = {};
  if (pairs.some(([k, v]) => k === 'file.driver' && v === 'nbd')) {
    // An image on an NBD server: the file.* options name it; qemu then calls it by its
    // canonical URI (nbd_refresh_filename), which is what openImage opens.
    const nbd = new Map<string, string>();
    for (const [k, v] of pairs) {
      if (k === 'driver') driver = v;
      else if (k.startsWith('file.')) {
        if (k !== 'file.driver') nbd.set(k, v);
      } else options[k] = v;
    }
    const name = nbdCanonicalName(nbdFromOptions(nbd));
    return { driver, filename: name, options, displayName: name };
  }
  for (const [k, v] of pairs) {
    if (k === 'driver') driver = v;
    else if (k === 'file') {
      throw new VdiskError('NOT_FOUND', `Cannot find device='${v}' nor node-name='${v}'`);
    } else if (k === 'file.filename' || k === 'filename') filename = v;
    else if (k === 'file.driver') {
      if (v !== 'file') throw new VdiskError('UNSUPPORTED', `Protocol driver '${v}' is not supported`);
    } else options[k] = v;
  }
  if (filename === undefined) {
    throw new VdiskError('INVALID_ARGUMENT', 'A block device must be specified for "file"');
  }
  // bdrv_refresh_filename: the file's own name unless a "strong" option (one that changes what
  // the image reads as) was given; the json:{…} name then holds only those.
  const strongKeys = driver === undefined ? ANY_STRONG : (STRONG_OPTIONS[driver] ?? []);
  const strong = Object.entries(options).filter(([k]) => strongKeys.includes(k));
  if (strong.length === 0) return { driver, filename, options, displayName: filename };
  const dict: Record<string, unknown> = {
    ...(driver !== undefined ? { driver } : {}),
    file: { driver: 'file', filename },
    ...Object.fromEntries(strong),
  };
  return { driver, filename, options, displayName: `json:${compactJson(dict)}` };
}

/**
 * QEMU 7.2's strong_runtime_opts of each format driver: the options that make a json:{…} name
 * (raw's offset and size, the encryption secrets). Others (cache.*, lazy-refcounts, the L2
 * cache sizes…) leave the plain file name, as `qemu-img info --image-opts` shows.
 */
const STRONG_OPTIONS: Record<string, string[]> = {
  raw: ['offset', 'size'],
  qcow2: ['encrypt.key-secret'],
  qcow: ['encrypt.key-secret'],
  luks: ['key-secret'],
};
const ANY_STRONG = [...new Set(Object.values(STRONG_OPTIONS).flat())];

/** qobject_to_json (not pretty): QDict order, ", " and ": " separators. */
function compactJson(v: unknown): string {
  if (typeof v !== 'object' || v === null) return JSON.stringify(v);
  const o = v as Record<string, unknown>;
  return `{${qdictOrder(Object.keys(o))
    .map((k) => `${JSON.stringify(k)}: ${compactJson(o[k])}`)
    .join(', ')}}`;
}
