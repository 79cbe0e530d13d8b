/** `create`: make a new image of a format, optionally on a backing file. */
import { type OpenContext, openImage, resolveRelative } from '../chain/open.js';
import type { CreateOptionSpec, CreateRequest, FormatDriver } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';
import { getDriver } from '../core/formats.js';
import { parseBoolOption } from '../core/options.js';
import { parseImageSize, parseSize, sizeParameterError } from '../core/size.js';
import { registerBuiltinFormats } from '../formats/index.js';
import { protocolOf } from '../protocols/index.js';

export interface CreateCommandOptions extends OpenContext {
  filename: string;
  format: string;
  /** Virtual size in bytes; defaults to the backing file's. */
  size?: number | undefined;
  /** -o options (size, backing_file and backing_fmt may come here too). */
  options: Record<string, string>;
  backingFile?: string | undefined;
  backingFormat?: string | undefined;
  /** -u: do not open the backing file. */
  unsafe?: boolean;
  /**
   * Called with the "Formatting …" line once the request is checked, before the image is
   * written: qemu-img prints it first, then any error the format driver reports.
   */
  onFormatting?: (line: string) => void;
  /**
   * How a bad -o option is worded: `create` names the image in front (bdrv_img_create's
   * error_prepend), `convert` does not (it parses the options itself first). Default: named.
   */
  optionErrors?: 'named' | 'bare';
}

export interface CreateCommandResult {
  /** qemu-img's "Formatting '…', fmt=… …" line, without the newline. */
  formatLine: string;
  size: number;
}

/** A create request checked and ready: what convert and dd reuse before creating a target. */
export interface PreparedCreate {
  driver: FormatDriver;
  request: CreateRequest;
  /** qemu-img's "Formatting '…', fmt=… …" line, without the newline. */
  formatLine: string;
  size: number;
}

export async function createCommand(o: CreateCommandOptions): Promise<CreateCommandResult> {
  const protocol = protocolOf(o.filename);
  if (protocol === 'http' || protocol === 'https' || protocol === 's3') {
    // bdrv_img_create names the image in front, as for the format driver's errors.
    throw new VdiskError(
      'UNSUPPORTED',
      `${o.filename}: Protocol driver '${protocol}' does not support image creation`,
    );
  }
  const { driver, request, formatLine, size } = await prepareCreate(o);
  o.onFormatting?.(formatLine);
  try {
    await driver.create!(request);
  } catch (err) {
    // qemu-img names the image in front of every error of the format driver; drivers never do.
    if (err instanceof VdiskError) {
      throw new VdiskError(err.code, `${o.filename}: ${err.message}`, { path: o.filename, cause: err });
    }
    throw err;
  }
  return { formatLine, size };
}

/** Check a create request (format, options, backing, size) without creating anything. */
export async function prepareCreate(o: CreateCommandOptions): Promise<PreparedCreate> {
  registerBuiltinFormats();
  // Read-only protocols (qemu's curl driver has no create; s3 is vdisk's own, read-only).
  const protocol = protocolOf(o.filename);
  if (protocol === 'http' || protocol === 'https' || protocol === 's3') {
    throw new VdiskError('UNSUPPORTED', `Protocol driver '${protocol}' does not support image creation`);
  }
  const driver = await getDriver(o.format);
  if (driver.create === undefined) {
    throw new VdiskError('UNSUPPORTED', `Format driver '${o.format}' does not support image creation`);
  }
  // On an NBD export only raw and qcow2 write themselves over it (src/protocols/index.ts
  // createFile); the others would create a local file named like the URI.
  if (protocol !== null && o.format !== 'raw' && o.format !== 'qcow2') {
    throw new VdiskError(
      'UNSUPPORTED',
      `${o.filename}: vdisk cannot create ${o.format} images on '${protocol}'`,
    );
  }
  const options = { ...o.options };
  const specs = driver.createOptions ?? [];
  const known = new Set(specs.map((s) => s.name));
  const optionError = (message: string, cause?: unknown) =>
    new VdiskError('INVALID_ARGUMENT', o.optionErrors === 'bare' ? message : `${o.filename}: ${message}`, {
      cause,
    });
  for (const k of Object.keys(options)) {
    if (!known.has(k)) throw optionError(`Invalid parameter '${k}'`);
  }
  // Typed options are checked (and sizes and booleans normalized) before anything is
  // printed, as QemuOpts parsing does.
  for (const spec of specs) {
    const v = options[spec.name];
    if (v === undefined || spec.name === 'size') continue;
    if (spec.type === 'bool') {
      try {
        options[spec.name] = parseBoolOption(spec.name, v) ? 'on' : 'off';
      } catch (e) {
        throw optionError((e as Error).message, e);
      }
    } else if (spec.type === 'size') {
      const n = parseSize(v);
      if (n === null) throw optionError(sizeParameterError(spec.name));
      options[spec.name] = String(n);
    } else if (spec.type === 'number' && !/^\s*\d+\s*$/.test(v)) {
      throw optionError(`Parameter '${spec.name}' expects a number`);
    }
  }
  const backingFile = o.backingFile ?? options['backing_file'];
  const backingFormat = o.backingFormat ?? options['backing_fmt'];
  if (backingFile !== undefined && !known.has('backing_file')) {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `${o.filename}: Backing file not supported for file format '${o.format}'`,
    );
  }
  let size = o.size ?? (options['size'] !== undefined ? parseImageSize(options['size']) : undefined);
  if (backingFile !== undefined) {
    if (backingFormat === undefined) {
      throw new VdiskError(
        'INVALID_ARGUMENT',
        `${o.filename}: Backing file specified without backing format`,
      );
    }
    if (!o.unsafe) {
      // Open the backing chain read-only to check it and take its size, as qemu-img does.
      const path = resolveRelative(o.filename, backingFile);
      // A file name even under convert --image-opts: bdrv_img_create opens it by name.
      const backing = await openImage(path, {
        format: backingFormat,
        backing: 'follow',
        forceShare: true,
        allowDataFile: true,
        secrets: o.secrets,
      }).catch((err: unknown) => {
        throw new VdiskError(
          (err as VdiskError).code ?? 'ENOENT',
          `${o.filename}: ${(err as Error).message}\nCould not open backing image.`,
          { cause: err },
        );
      });
      try {
        size ??= backing.size;
      } finally {
        await backing.close();
      }
    }
    options['backing_file'] = backingFile;
    options['backing_fmt'] = backingFormat;
  }
  if (size === undefined)
    throw new VdiskError('INVALID_ARGUMENT', `${o.filename}: Image creation needs a size parameter`);
  options['size'] = String(size);
  const formatLine = `Formatting '${o.filename}', fmt=${o.format}${formatOptions(specs, options)}`;
  const request: CreateRequest = {
    path: o.filename,
    size,
    options: withoutGeneric(options),
    secrets: o.secrets,
    // What a driver opens while it creates (vmdk's parent) is opened by name, as qemu's
    // drivers open it (blk_co_new_open), never as --image-opts.
    openImage: (path) => openImage(path, { backing: 'ignore', forceShare: true, secrets: o.secrets }),
  };
  if (backingFile !== undefined) request.backing = { filename: backingFile, format: backingFormat };
  return { driver, request, formatLine, size };
}

function withoutGeneric(options: Record<string, string>): Record<string, string> {
  const { size: _s, backing_file: _b, backing_fmt: _f, ...rest } = options;
  return rest;
}

/** " name=value" for each option that is set or has a default, in the driver's print order. */
function formatOptions(specs: readonly CreateOptionSpec[], options: Record<string, string>): string {
  let s = '';
  for (const spec of specs) {
    let v = options[spec.name] ?? spec.default;
    // QEMU prints size-typed options as byte counts, whatever suffix they were given with.
    if (v !== undefined && spec.type === 'size') v = String(parseSize(v) ?? v);
    if (v !== undefined) s += ` ${spec.name}=${v}`;
  }
  return s;
}

/**
 * Create the image `prepared` describes for a command that writes into it (convert, dd):
 * a failure reads as qemu-img words it, `OUTPUT: error while WHAT: reason` (a driver that
 * names the file itself has that prefix dropped).
 */
export async function createTarget(prepared: PreparedCreate, output: string, what: string): Promise<void> {
  try {
    await prepared.driver.create!(prepared.request);
  } catch (err) {
    let msg = err instanceof Error ? err.message : String(err);
    if (msg.startsWith(`${output}: `)) msg = msg.slice(output.length + 2);
    throw new VdiskError(
      err instanceof VdiskError ? err.code : 'EIO',
      `${output}: error while ${what}: ${msg}`,
      {
        path: output,
        cause: err,
      },
    );
  }
}
