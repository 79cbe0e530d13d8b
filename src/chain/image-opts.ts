/**
 * --image-opts: an image named by its block options (`driver=luks,key-secret=s0,
 * file.filename=a.luks`) instead of a file name. The CLI turns the mode on while parsing a
 * command's options (qemu-img's `--image-opts` flag); openImage then reads the names the
 * command opens as options, unless the call says otherwise.
 */
import { qdictOrder } from '../cli/json.js';
import { VdiskError } from '../core/errors.js';
import { parseQemuOpts } from '../core/secrets.js';
import { nbdCanonicalName, nbdFromOptions } from '../protocols/nbd.js';

let imageOptsMode = false;
let targetImageOptsMode = false;

export function setImageOptsMode(on: boolean): void {
  imageOptsMode = on;
}
export function isImageOptsMode(): boolean {
  return imageOptsMode;
}
/** convert's --target-image-opts. */
export function setTargetImageOptsMode(on: boolean): void {
  targetImageOptsMode = on;
}
export function isTargetImageOptsMode(): boolean {
  return targetImageOptsMode;
}

export interface ImageOpts {
  driver: string | undefined;
  filename: string;
  /** The remaining options, for the format driver (key-secret, encrypt.key-secret, …). */
  options: Record<string, string>;
  /** qemu's name for such an image: json:{…} of its options. */
  displayName: string;
}

export function parseImageOpts(text: string): ImageOpts {
  let driver: string | undefined;
  let filename: string | undefined;
  const options: Record<string, string> = {};
  // A bare value is `file=` (qemu's "source" options imply that key), and `file` names a block
  // node, of which qemu-img has none: QEMU refuses it so (bdrv_open_child's lookup).
  const pairs = parseQemuOpts(text, 'file');
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
  const dict: Record<string, unknown> = {
    ...(driver !== undefined ? { driver } : {}),
    file: { driver: 'file', filename },
    ...options,
  };
  return { driver, filename, options, displayName: `json:${compactJson(dict)}` };
}

/** qobject_to_json (not pretty): QDict order, ", " and ": " separators. */
function compactJson(v: unknown): string {
  if (typeof v !== 'object' || v === null) return JSON.stringify(v);
  const o = v as Record<string, unknown>;
  return `{${qdictOrder(Object.keys(o))
    .map((k) => `${JSON.stringify(k)}: ${compactJson(o[k])}`)
    .join(', ')}}`;
}
