/**
 * The VMDK text descriptor ("# Disk DescriptorFile"): header keys (version, CID, parentCID,
 * createType, parentFileNameHint), extent lines and the disk database (ddb.*).
 *
 * Parsed strictly: every line must be a comment, a `key=value` header line, an extent line
 * or a `ddb.key = "value"` line; numbers must be numbers; quotes must close. QEMU is looser
 * (it scans with strstr/sscanf and skips what it cannot read); where QEMU refuses, the same
 * words are used.
 */
import { VdiskError } from '../../core/errors.js';

export type ExtentAccess = 'RW' | 'RDONLY' | 'NOACCESS';

export interface ExtentLine {
  access: ExtentAccess;
  sectors: number;
  type: string;
  /** The file name as written (undefined for types without a file, like ZERO). */
  filename: string | undefined;
  /** Start sector inside the file (FLAT extents). */
  offset: number | undefined;
  /** The line as written (for messages). */
  text: string;
}

export interface Descriptor {
  /** Header keys with their unquoted values, in order of appearance. */
  keys: Map<string, string>;
  extents: ExtentLine[];
  ddb: Map<string, string>;
}

/** Largest descriptor vdisk reads (QEMU reads at most 1 MiB - 1 of a descriptor file). */
export const MAX_DESCRIPTOR_BYTES = (1 << 20) - 1;
/** Most extents one descriptor may name (a 2 TiB disk in 2 GiB pieces needs 1024). */
export const MAX_EXTENTS = 8192;

const EXTENT_RE =
  /^(RW|RDONLY|NOACCESS)[ \t]+(\d+)[ \t]+([A-Za-z]+)(?:[ \t]+"([^"\r\n]*)"(?:[ \t]+(\d+))?)?[ \t]*$/;
const DDB_RE = /^(ddb\.[A-Za-z0-9_.:-]+)[ \t]*=[ \t]*"([^"\r\n]*)"[ \t]*$/;
const KEY_RE = /^([A-Za-z][A-Za-z0-9_.]*)[ \t]*=[ \t]*(.*?)[ \t]*$/;

function invalid(msg: string): VdiskError {
  return new VdiskError('INVALID_IMAGE', msg);
}

/** Text up to the first NUL (embedded descriptors are padded with zeros). */
export function descriptorText(buf: Uint8Array): string {
  const nul = buf.indexOf(0);
  return Buffer.from(buf.buffer, buf.byteOffset, nul < 0 ? buf.length : nul).toString('latin1');
}

export function parseDescriptor(text: string): Descriptor {
  const keys = new Map<string, string>();
  const extents: ExtentLine[] = [];
  const ddb = new Map<string, string>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    const t = line.trim();
    if (t === '' || t.startsWith('#')) continue;
    const where = `line ${i + 1}`;
    let m = EXTENT_RE.exec(t);
    if (m !== null) {
      if (extents.length >= MAX_EXTENTS)
        throw invalid(`VMDK descriptor names more than ${MAX_EXTENTS} extents`);
      const sectors = Number(m[2]);
      const offset = m[5] === undefined ? undefined : Number(m[5]);
      if (!Number.isSafeInteger(sectors) || sectors * 512 > Number.MAX_SAFE_INTEGER)
        throw invalid(`Invalid extent line: ${line}`);
      if (offset !== undefined && (!Number.isSafeInteger(offset) || offset * 512 > Number.MAX_SAFE_INTEGER))
        throw invalid(`Invalid extent line: ${line}`);
      extents.push({
        access: m[1] as ExtentAccess,
        sectors,
        type: m[3]!,
        filename: m[4],
        offset,
        text: line,
      });
      continue;
    }
    if (/^(RW|RDONLY|NOACCESS)\b/.test(t)) throw invalid(`Invalid extent line: ${line}`);
    m = DDB_RE.exec(t);
    if (m !== null) {
      ddb.set(m[1]!, m[2]!);
      continue;
    }
    if (t.startsWith('ddb.')) throw invalid(`Invalid VMDK descriptor (${where}): ${line}`);
    m = KEY_RE.exec(t);
    if (m === null) throw invalid(`Invalid VMDK descriptor (${where}): ${line}`);
    let value = m[2]!;
    if (value.startsWith('"')) {
      if (value.length < 2 || !value.endsWith('"') || value.slice(1, -1).includes('"'))
        throw invalid(`Invalid VMDK descriptor (${where}): ${line}`);
      value = value.slice(1, -1);
    }
    keys.set(m[1]!, value);
  }
  return { keys, extents, ddb };
}

/** createType, checked as QEMU's vmdk_parse_description does (its message when missing). */
export function createTypeOf(d: Descriptor): string {
  const ct = d.keys.get('createType');
  if (ct === undefined) throw invalid('invalid VMDK image descriptor');
  return ct;
}

/**
 * CID / parentCID, read as QEMU's vmdk_read_cid does: sscanf("%x") into a uint32, so leading
 * hex digits count and whatever follows them is ignored (`fffffffz` is 0xfffffff); more than
 * eight digits keep the low 32 bits (strtoul's value truncated), more than sixteen saturate.
 * QEMU fails the open when the key is missing or starts with no digit (-EINVAL, with its own
 * doubled "Could not open" message).
 */
export function cidOf(d: Descriptor, key: 'CID' | 'parentCID', path: string): number {
  const m = /^\s*(?:0[xX])?([0-9a-fA-F]+)/.exec(d.keys.get(key) ?? '');
  if (m === null) throw new VdiskError('INVALID_IMAGE', `Could not open '${path}': Invalid argument`);
  const digits = m[1]!.replace(/^0+(?=.)/, '');
  if (digits.length > 16) return 0xffffffff;
  return Number.parseInt(digits.slice(-8), 16);
}

/** The descriptor text with its CID replaced (the rest kept byte for byte). */
export function replaceCid(text: string, cid: number): string {
  return text.replace(/^([ \t]*CID[ \t]*=[ \t]*)[0-9a-fA-Fx]+/m, `$1${cid.toString(16)}`);
}

export interface NewDescriptor {
  cid: number;
  parentCid: number;
  createType: string;
  parentFileNameHint?: string | undefined;
  extentLines: string[];
  hwVersion: string;
  cylinders: number;
  heads: number;
  adapterType: string;
  toolsVersion: string;
}

/** The descriptor QEMU's vmdk_co_do_create writes, byte for byte. */
export function formatDescriptor(d: NewDescriptor): string {
  // QEMU's template puts the parentFileNameHint line in place of the blank line that
  // otherwise precedes "# Extent description" (its line has no newline of its own).
  return (
    '# Disk DescriptorFile\n' +
    'version=1\n' +
    `CID=${d.cid.toString(16)}\n` +
    `parentCID=${d.parentCid.toString(16)}\n` +
    `createType="${d.createType}"\n` +
    (d.parentFileNameHint !== undefined ? `parentFileNameHint="${d.parentFileNameHint}"` : '') +
    '\n' +
    '# Extent description\n' +
    d.extentLines.map((l) => `${l}\n`).join('') +
    '\n' +
    '# The Disk Data Base\n' +
    '#DDB\n' +
    '\n' +
    `ddb.virtualHWVersion = "${d.hwVersion}"\n` +
    `ddb.geometry.cylinders = "${d.cylinders}"\n` +
    `ddb.geometry.heads = "${d.heads}"\n` +
    'ddb.geometry.sectors = "63"\n' +
    `ddb.adapterType = "${d.adapterType}"\n` +
    `ddb.toolsVersion = "${d.toolsVersion}"\n`
  );
}
