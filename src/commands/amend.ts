/**
 * `amend`: change format-specific options of an existing image (qemu-img amend). The -o
 * string is parsed against the format's amend options as QemuOpts parses it (the first bad
 * option wins; an option that only `create` knows gets qemu-img's hint), then the driver
 * applies them.
 */
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import type { AmendValues, CreateOptionSpec } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';
import { getDriver } from '../core/formats.js';
import { parseOptionString } from '../core/options.js';
import { parseSize } from '../core/size.js';
import { registerBuiltinFormats } from '../formats/index.js';

export interface AmendCommandOptions extends OpenContext {
  filename: string;
  format?: string | undefined;
  /** The -o strings joined with ',' (qemu-img's accumulate_options). */
  options: string;
  /** Progress in percent (qemu-img's amend_status_cb). */
  onProgress?: (percent: number) => void;
  /** Warnings printed while opening (a probed raw image opened for writing). */
  onWarning?: (message: string) => void;
  /** `-o help` on an image whose format was probed: called with the format's name. */
  onHelp?: (format: string) => Promise<void>;
}

/** Does an option list ask for help (QEMU's has_help_option)? */
export function hasHelpOption(options: string): boolean {
  return parseOptionString(options).some(([k]) => k === 'help' || k === '?');
}

/** The amend options of a format, or qemu-img's error when it has none. */
export async function amendOptionsOf(format: string): Promise<readonly CreateOptionSpec[]> {
  registerBuiltinFormats();
  const driver = await getDriver(format);
  if (driver.amendOptions === undefined) {
    throw new VdiskError('UNSUPPORTED', `Format driver '${format}' does not support option amendment`);
  }
  return driver.amendOptions;
}

/** qemu_strtou64 with base 0: decimal, 0x-hex or 0-octal, the whole string. */
function parseU64(text: string): number | null {
  const t = text.trim();
  if (/^0[xX][0-9a-fA-F]+$/.test(t)) return parseInt(t.slice(2), 16);
  if (/^0[0-7]*$/.test(t)) return parseInt(t, 8) || 0;
  if (/^[1-9]\d*$/.test(t)) return Number(t);
  return null;
}

function parseValue(spec: CreateOptionSpec, value: string): string | number | boolean {
  switch (spec.type) {
    case 'bool':
      // qapi_bool_parse
      if (['on', 'yes', 'true', 'y'].includes(value)) return true;
      if (['off', 'no', 'false', 'n'].includes(value)) return false;
      throw new VdiskError('INVALID_ARGUMENT', `Parameter '${spec.name}' expects 'on' or 'off'`);
    case 'number': {
      const n = parseU64(value);
      if (n === null) throw new VdiskError('INVALID_ARGUMENT', `Parameter '${spec.name}' expects a number`);
      return n;
    }
    case 'size': {
      const n = parseSize(value);
      if (n === null) {
        throw new VdiskError(
          'INVALID_ARGUMENT',
          `Parameter '${spec.name}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.`,
        );
      }
      return n;
    }
    default:
      return value;
  }
}

/** QemuOpts parsing of the -o string against `specs`: values typed, the first error thrown. */
function parseAgainst(options: string, specs: readonly CreateOptionSpec[]): AmendValues {
  const out: AmendValues = {};
  for (const [name, value] of parseOptionString(options)) {
    const spec = specs.find((s) => s.name === name);
    if (spec === undefined) throw new VdiskError('INVALID_ARGUMENT', `Invalid parameter '${name}'`);
    out[name] = parseValue(spec, value);
  }
  return out;
}

/** Parse the -o string as qemu-img amend does (with its hint for creation-only options). */
export async function parseAmendOptions(format: string, options: string): Promise<AmendValues> {
  const specs = await amendOptionsOf(format);
  try {
    return parseAgainst(options, specs);
  } catch (err) {
    const driver = await getDriver(format);
    const create = (driver.createOptions ?? []).filter((o) => o.protocol !== true);
    let createOnly = false;
    try {
      parseAgainst(options, [...specs, ...create]);
      createOnly = true;
    } catch {}
    if (createOnly && err instanceof VdiskError) {
      throw new VdiskError(err.code, `${err.message}\nThis option is only supported for image creation`);
    }
    throw err;
  }
}

export async function amendCommand(o: AmendCommandOptions): Promise<void> {
  const image = await openImage(o.filename, {
    ...openContext(o),
    format: o.format,
    writable: true,
    backing: 'follow',
    allowDataFile: true,
    ...(o.onWarning ? { onWarning: o.onWarning } : {}),
  });
  try {
    if (hasHelpOption(o.options)) {
      await amendOptionsOf(image.format);
      await o.onHelp?.(image.format);
      return;
    }
    // A format without amend has no amend options: parseAmendOptions refuses it first, in the
    // words Image.amend would use.
    const values = await parseAmendOptions(image.format, o.options);
    // In case the driver reports nothing (qemu-img prints 0 and 100 around the call).
    o.onProgress?.(0);
    try {
      await image.amend(values, (done, total) => o.onProgress?.((100 * done) / total));
    } finally {
      o.onProgress?.(100);
    }
    await image.flush();
  } finally {
    await image.close();
  }
}
