/**
 * `convert` with `-` for a name: the target written to a stream (standard output) and/or the
 * source read from one (standard input). qemu-img cannot do either (it seeks in its output and
 * truncates it); vdisk can because some of its writers lay an image out front to back
 * (src/core/seq.ts).
 *
 * - To a stream: the source is opened as for any convert, and the format's sequential writer
 *   (FormatDriver.createSequential: raw, qcow2, qed, qcow, vmdk monolithicSparse and
 *   streamOptimized, vdi, vpc) produces the image in order; the bytes go to the stream with its
 *   back-pressure respected, so memory stays bounded whatever the size. A format without such
 *   a writer (or -c where the writer cannot compress) is refused before any byte is written.
 * - From a raw stream to a raw file (no options that need the engine's copy): the stream is
 *   written to the target as it comes, blocks of zeros left as holes; no temporary file.
 * - From a stream otherwise: the input is copied into a temporary file (a "spill") in tmpDir, sparse
 *   (blocks of zeros are left as holes, so a large sparse raw stream costs no disk), then
 *   converted from there. The spill is bounded (spillLimit, and the free space of tmpDir) and
 *   removed at the end, on error, and (by the CLI, through onTemp) on a signal. Memory: one
 *   read chunk at a time. An input that ends early (the image's tables point past its end)
 *   is refused.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { openLayers } from '../chain/layers.js';
import { openContext, openImage } from '../chain/open.js';
import { isAllZero } from '../core/device.js';
import { strerror, VdiskError } from '../core/errors.js';
import { formatNames, getDriver, PROBE_BYTES, probeBytes } from '../core/formats.js';
import { HostFile } from '../core/host-file.js';
import { Image } from '../core/image.js';
import { imageSeqSource, type SeqSource } from '../core/seq.js';
import { StreamSource } from '../core/stream-source.js';
import { registerBuiltinFormats } from '../formats/index.js';
import { RawStreamImage } from '../formats/raw/stream-read.js';
import { protocolOf } from '../protocols/index.js';
import { type ConvertOptions, convertCommand } from './convert.js';
import { createTarget, prepareCreate } from './create.js';

/** node:fs/promises, loaded by the pipe paths only (it costs a command ~3.5 ms of start-up). */
const fsPromises = () => import('node:fs/promises');

/** The name that stands for standard input or output. */
export const STDIO_NAME = '-';

export interface ConvertPipeOptions extends ConvertOptions {
  /** Read the source from this stream (the source is named `-`). */
  input?: Readable | undefined;
  /** Write the target to this stream (the target is named `-`) instead of to `output`. */
  outputStream?: Writable | undefined;
  /** Where the input is spilled (default: the OS's temporary directory). */
  tmpDir?: string | undefined;
  /** Most bytes a spill may store (default: the free space of tmpDir less 1 GiB). */
  spillLimit?: number | undefined;
  /** A one-line note for the user (the input is being spilled). */
  onNote?: ((line: string) => void) | undefined;
  /** The temporary directory in use (to remove on a signal), then null once removed. */
  onTemp?: ((dir: string | null) => void) | undefined;
  /**
   * A raw stream into a target that can be resized: the provisional size to create it at, in
   * place of the format's (FormatDriver.streamTargetSize). For tests of a stream longer than it.
   */
  provisionalSize?: number | undefined;
}

/**
 * Formats read straight from the stream, in order (their headers and tables come first and
 * the copy walks them in guest order): qcow2 (a layout that does not allow it spills what it
 * skips), vdi, and dynamic vpc (its footer has a copy at offset 0); and streamOptimized vmdk,
 * decoded grain by grain as its markers come (src/formats/vmdk/stream-read.ts). The others
 * (raw, whose length is unknown until the end; other vmdk subformats; fixed vpc, whose footer
 * is at the end) are spilled whole.
 */
const IN_ORDER = new Set(['qcow2', 'vdi', 'vpc']);
/** The file size drivers see for a stream read in order (an upper bound; its end is found by reading). */
const STREAM_FILE_SIZE = 2 ** 50;

/** Blocks of this size that are all zeros are left as holes in a spill. */
const SPILL_BLOCK = 64 << 10;
const SPILL_MARGIN = 1 << 30;

export async function convertPipe(o: ConvertPipeOptions): Promise<void> {
  registerBuiltinFormats();
  if (o.input === undefined && o.outputStream === undefined) return convertCommand(o);
  const closers: Array<() => Promise<void>> = [];
  let spillPath: string | null = null;
  try {
    let sourceImages: Image[] | undefined = o.sourceImages;
    if (o.input !== undefined) {
      if (o.sources.length !== 1 || o.sources[0] !== STDIO_NAME)
        throw new VdiskError(
          'UNSUPPORTED',
          'Standard input (-) cannot be concatenated with other source images',
        );
      if (o.snapshot !== undefined)
        throw new VdiskError('UNSUPPORTED', 'Cannot load a snapshot from standard input');
      if (rawToRaw(o)) {
        await streamRawInto(o, o.input);
        return;
      }
      const { head, stream: input } = await peek(o.input, PROBE_BYTES);
      const format = o.sourceFormat ?? probeBytes(head, STDIO_NAME);
      const provisional = format === 'raw' ? await streamTargetSize(o) : undefined;
      if (provisional !== undefined) {
        // Raw, in order, into a target created at a provisional size and then set to the
        // stream's length: no temporary file.
        const source = new RawStreamImage(input, provisional);
        const image = new Image(source, STDIO_NAME);
        closers.push(() => image.close());
        const finalSize = async () => {
          if (await source.longer())
            throw new VdiskError(
              'TOO_LARGE',
              `standard input is longer than the ${provisional} bytes a ${o.outputFormat ?? 'raw'} target read from a stream can hold; convert from a file instead`,
            );
          return Math.ceil((source.length ?? 0) / 512) * 512;
        };
        let created = false;
        try {
          await convertCommand({
            ...o,
            sourceImages: [image],
            onProgress: undefined,
            finalSize,
            onCreated: () => {
              created = true;
            },
          });
        } catch (err) {
          // A target this copy made, at a size that is not the image's, is not left behind half
          // written (as a spill that fails leaves no target). One it did not make yet (an
          // option refused first) is not touched.
          if (created) await (await fsPromises()).rm(o.output, { force: true }).catch(() => {});
          throw err;
        }
        return;
      }
      const base = o.tmpDir ?? tmpdir();
      const dir = await (await fsPromises()).mkdtemp(join(base, 'vdisk-stdin-')).catch((err: unknown) => {
        throw new VdiskError(
          'EIO',
          `cannot make a temporary directory in ${base} for standard input: ${strerror(err)} (set TMPDIR)`,
          { cause: err },
        );
      });
      o.onTemp?.(dir);
      closers.push(async () => {
        await (await fsPromises()).rm(dir, { recursive: true, force: true });
        o.onTemp?.(null);
      });
      const limit = o.spillLimit ?? (await freeSpace(dir)) - SPILL_MARGIN;
      const where = `${base} (at most ${Math.max(limit, 0)} bytes stored)`;
      const dynamicVpc = head.subarray(0, 8).toString('latin1') === 'conectix';
      const { isStreamOptimizedHead, openVmdkStream } = await import('../formats/vmdk/stream-read.js');
      const streamVmdk = format === 'vmdk' && isStreamOptimizedHead(head);
      if (
        o.outputStream === undefined &&
        (streamVmdk || (IN_ORDER.has(format) && (format !== 'vpc' || dynamicVpc)))
      ) {
        // In order: straight from the stream, one request at a time.
        const stream = new StreamSource(input, {
          size: STREAM_FILE_SIZE,
          spillDir: dir,
          spillLimit: limit,
          onSpill: () =>
            o.onNote?.(
              `standard input is not in order: keeping what was skipped in a temporary file in ${where}`,
            ),
        });
        const file = HostFile.fromSource(STDIO_NAME, stream);
        let image: Image;
        if (streamVmdk) {
          const driver = await openVmdkStream(file).catch(async (err: unknown) => {
            await file.close();
            throw err instanceof VdiskError
              ? new VdiskError(err.code, `Could not open '${STDIO_NAME}': ${err.message}`, { cause: err })
              : err;
          });
          image = new Image(driver, STDIO_NAME);
        } else {
          image = await openLayers([{ file, format, name: STDIO_NAME }]);
        }
        closers.push(() => image.close());
        if (image.driver.backing !== undefined)
          throw new VdiskError(
            'UNSUPPORTED',
            `Could not open '${STDIO_NAME}': an image read from standard input cannot have a backing file`,
          );
        // Progress would first walk the whole image's block status (its tables, all ahead of
        // the data): not over a stream.
        await convertCommand({ ...o, sourceImages: [image], coroutines: 1, onProgress: undefined });
        // A vmdk stream ends with its end-of-stream marker: without it, it was cut short.
        if (streamVmdk) await (image.driver as { finish?: () => Promise<void> }).finish?.();
        // Read to the end: the writer of the pipe must not be cut off.
        await stream.drain();
        return;
      }
      o.onNote?.(`reading standard input into a temporary file in ${where}`);
      const path = join(dir, 'stdin');
      spillPath = path;
      const length = await spill(input, path, limit);
      // The spill file by its name (not as --image-opts options), with this command's secrets.
      const image = await openImage(path, {
        format,
        backing: 'refuse',
        forceShare: true,
        secrets: o.secrets,
      });
      closers.push(() => image.close());
      await checkComplete(image, length);
      sourceImages = [image];
    }
    if (o.outputStream === undefined) {
      await convertCommand({ ...o, sourceImages });
      return;
    }
    await convertToStream(o, o.outputStream, sourceImages, closers);
  } catch (err) {
    throw spillPath === null ? err : renamed(err, spillPath);
  } finally {
    for (const c of closers.reverse()) await c().catch(() => {});
  }
}

/**
 * Whether the input (named raw with -f) goes to a raw file as it is: a plain copy, which needs
 * neither the input's size first nor the engine's convert (no -n, -c, -B, -o, -S 0, --bitmaps,
 * --target-image-opts).
 */
function rawToRaw(o: ConvertPipeOptions): boolean {
  const minSparse = o.minSparse ?? 4096;
  return (
    o.sourceFormat === 'raw' &&
    (o.outputFormat ?? 'raw') === 'raw' &&
    o.outputStream === undefined &&
    o.skipCreate !== true &&
    o.compressed !== true &&
    o.backingFile === undefined &&
    o.bitmaps !== true &&
    Object.keys(o.options ?? {}).length === 0 &&
    minSparse > 0 &&
    minSparse % 512 === 0 &&
    minSparse <= RAW_WRITE &&
    o.targetImageOpts !== true
  );
}

/**
 * The provisional size of a target that a raw stream goes into without a spill
 * (FormatDriver.streamTargetSize), or undefined where the options need the source's size up
 * front or its content twice: -n, -B, -S 0 (every zero written), --bitmaps, --target-image-opts,
 * preallocation, and formats that cannot be resized down (those are spilled), and a target
 * that is not a local file.
 */
async function streamTargetSize(o: ConvertPipeOptions): Promise<number | undefined> {
  const options = o.options ?? {};
  if (
    o.outputStream !== undefined ||
    o.skipCreate === true ||
    o.backingFile !== undefined ||
    options['backing_file'] !== undefined ||
    o.bitmaps === true ||
    o.targetImageOpts === true ||
    (o.minSparse ?? 4096) === 0 ||
    // A local file (it is removed if the copy fails), not an export or json:{…}.
    protocolOf(o.output) !== null ||
    o.output.startsWith('json:')
  )
    return undefined;
  const driver = await getDriver(o.outputFormat ?? 'raw').catch(() => undefined);
  const size = driver?.streamTargetSize?.(options);
  return size === undefined ? undefined : (o.provisionalSize ?? size);
}

/** The most bytes written to a raw target at once. */
const RAW_WRITE = 1 << 20;

/**
 * Standard input straight into a raw target, in order: the target is created as convert
 * creates it (empty, same errors), then each run of non-zero `minSparse` blocks is written at
 * its offset and zero blocks are left as holes (the file is new, so they read as zeros); the
 * file is cut to the input's length at the end. Memory: one chunk of the stream and at most
 * RAW_WRITE bytes held.
 */
async function streamRawInto(o: ConvertPipeOptions, input: Readable): Promise<void> {
  const prepared = await prepareCreate({
    optionErrors: 'bare',
    filename: o.output,
    format: 'raw',
    size: 0,
    options: {},
    backingFile: undefined,
    backingFormat: undefined,
    unsafe: true,
  });
  await createTarget(prepared, o.output, 'converting raw');
  const grain = o.minSparse ?? 4096;
  const fh = await (await fsPromises()).open(o.output, 'r+');
  let length = 0;
  /** Bytes not yet making a whole write (RAW_WRITE, a multiple of grain). */
  const pending = Buffer.allocUnsafe(RAW_WRITE);
  let fill = 0;
  const write = async (b: Buffer, at: number) => {
    try {
      await fh.write(b, 0, b.length, at);
    } catch (err) {
      throw new VdiskError('EIO', `error while writing at byte ${at}: ${strerror(err)}`, { cause: err });
    }
  };
  /** pending[0, n) at `at`: its runs of non-zero grains written, zero ones skipped. */
  const flush = async (n: number, at: number) => {
    let run = -1;
    for (let p = 0; p < n; p += grain) {
      const zero = isAllZero(pending.subarray(p, Math.min(p + grain, n)));
      if (!zero && run < 0) run = p;
      if (zero && run >= 0) {
        await write(pending.subarray(run, p), at + run);
        run = -1;
      }
    }
    if (run >= 0) await write(pending.subarray(run, n), at + run);
  };
  try {
    try {
      for await (const chunk of input) {
        const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
        let pos = 0;
        while (pos < buf.length) {
          const n = Math.min(buf.length - pos, RAW_WRITE - fill);
          buf.copy(pending, fill, pos, pos + n);
          fill += n;
          pos += n;
          if (fill === RAW_WRITE) {
            await flush(fill, length);
            length += fill;
            fill = 0;
          }
        }
      }
    } catch (err) {
      if (err instanceof VdiskError) throw err;
      throw new VdiskError('EIO', `error while reading standard input: ${strerror(err)}`, { cause: err });
    }
    await flush(fill, length);
    length += fill;
    await fh.truncate(length);
  } finally {
    await fh.close();
  }
}

/** Name the spill file `-` in messages (qemu-img names the image as it was given). */
function renamed(err: unknown, path: string): unknown {
  if (!(err instanceof VdiskError) || !err.message.includes(path)) return err;
  return new VdiskError(err.code, err.message.split(path).join(STDIO_NAME), { path: STDIO_NAME, cause: err });
}

/**
 * The first n bytes of a stream (fewer if it is shorter), and a stream of all its bytes (those
 * first ones included) to read from instead.
 */
async function peek(input: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  const it = input[Symbol.asyncIterator]() as AsyncIterator<Buffer | string>;
  const parts: Buffer[] = [];
  let length = 0;
  let done = false;
  try {
    while (length < n) {
      const r = await it.next();
      if (r.done === true) {
        done = true;
        break;
      }
      const b = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
      parts.push(b);
      length += b.length;
    }
  } catch (err) {
    throw new VdiskError('EIO', `error while reading standard input: ${strerror(err)}`, { cause: err });
  }
  const first = Buffer.concat(parts);
  async function* all(): AsyncGenerator<Buffer> {
    if (first.length > 0) yield first;
    if (done) return;
    for (;;) {
      const r = await it.next();
      if (r.done === true) return;
      yield typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    }
  }
  // node:stream on demand, as node:fs/promises (standard input is a stream already: loaded).
  const { Readable } = await import('node:stream');
  return { head: first.subarray(0, n), stream: Readable.from(all(), { objectMode: false }) };
}

async function freeSpace(dir: string): Promise<number> {
  const s = await (await fsPromises()).statfs(dir);
  return s.bavail * s.bsize;
}

/**
 * Copy `input` into a new file at `path`, leaving all-zero blocks as holes; at most `limit`
 * bytes stored. Answers the input's length.
 */
export async function spill(input: Readable, path: string, limit: number): Promise<number> {
  const fh = await (await fsPromises()).open(path, 'wx', 0o600);
  let length = 0;
  let stored = 0;
  // Bytes not yet making a whole block (kept so that zero detection sees whole blocks).
  let pending = Buffer.alloc(0);
  const flush = async (block: Buffer, at: number) => {
    if (isAllZero(block)) return;
    stored += block.length;
    if (stored > limit)
      throw new VdiskError(
        'ENOSPC',
        `standard input needs more than ${Math.max(limit, 0)} bytes of temporary space`,
      );
    await fh.write(block, 0, block.length, at);
  };
  try {
    for await (const chunk of input) {
      let buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
      if (pending.length > 0) {
        buf = Buffer.concat([pending, buf]);
        pending = Buffer.alloc(0);
      }
      let pos = 0;
      while (buf.length - pos >= SPILL_BLOCK) {
        await flush(buf.subarray(pos, pos + SPILL_BLOCK), length);
        pos += SPILL_BLOCK;
        length += SPILL_BLOCK;
      }
      if (pos < buf.length) pending = Buffer.from(buf.subarray(pos));
    }
    if (pending.length > 0) await flush(pending, length);
    length += pending.length;
    await fh.truncate(length);
  } catch (err) {
    if (err instanceof VdiskError) throw err;
    throw new VdiskError('EIO', `error while reading standard input: ${strerror(err)}`, { cause: err });
  } finally {
    await fh.close();
  }
  return length;
}

/**
 * An image whose tables point past the end of what was read has been cut short: refuse it
 * rather than convert the missing part as zeros.
 */
async function checkComplete(image: Image, length: number): Promise<void> {
  let pos = 0;
  while (pos < image.size) {
    const e = await image.blockStatus(pos, image.size - pos);
    if (e.hostOffset !== undefined && e.data && (e.depth ?? 0) === 0 && e.hostOffset + e.length > length)
      throw new VdiskError(
        'INVALID_IMAGE',
        `Could not open '${STDIO_NAME}': standard input ended at byte ${length}, before the image's data at ${e.hostOffset}`,
      );
    pos += e.length;
  }
}

/** The formats whose images can be written in order, for messages. */
async function sequentialFormats(): Promise<string[]> {
  const names: string[] = [];
  for (const name of formatNames()) {
    const d = await getDriver(name).catch(() => undefined);
    if (d?.createSequential !== undefined) names.push(name);
  }
  return names;
}

async function convertToStream(
  o: ConvertPipeOptions,
  stream: Writable,
  given: Image[] | undefined,
  closers: Array<() => Promise<void>>,
): Promise<void> {
  const outFmt = o.outputFormat ?? 'raw';
  const options = o.options ?? {};
  const refuse = (what: string): never => {
    throw new VdiskError('UNSUPPORTED', `${what} cannot be used when writing to standard output`);
  };
  if (o.skipCreate === true) refuse('-n');
  if (o.backingFile !== undefined || options['backing_file'] !== undefined) refuse('A backing file');
  if (o.outOfOrder === true) refuse('-W');
  const driver = await getDriver(outFmt);
  if (driver.create === undefined)
    throw new VdiskError('UNSUPPORTED', `Format driver '${outFmt}' does not support image creation`);
  const known = new Set((driver.createOptions ?? []).map((s) => s.name));
  for (const k of Object.keys(options))
    if (!known.has(k)) throw new VdiskError('INVALID_ARGUMENT', `Invalid parameter '${k}'`);
  const streamVmdk = outFmt === 'vmdk' && options['subformat'] === 'streamOptimized';
  if (o.compressed === true && !streamVmdk) {
    if (driver.compressedWrites !== true)
      throw new VdiskError('UNSUPPORTED', 'Compression not supported for this file format');
    throw new VdiskError(
      'UNSUPPORTED',
      `A compressed ${outFmt} image cannot be written in order to standard output (vmdk with subformat=streamOptimized can)`,
    );
  }
  if (driver.createSequential === undefined)
    throw new VdiskError(
      'UNSUPPORTED',
      `A ${outFmt} image cannot be written in order to standard output; formats that can: ${(await sequentialFormats()).join(', ')}`,
    );
  const minSparse = o.minSparse ?? 4096;
  let image: Image;
  if (given !== undefined) {
    if (given.length !== 1)
      throw new VdiskError('UNSUPPORTED', 'Concatenated sources cannot be written to standard output');
    image = given[0]!;
  } else {
    if (o.sources.length !== 1)
      throw new VdiskError(
        o.sources.length === 0 ? 'INVALID_ARGUMENT' : 'UNSUPPORTED',
        o.sources.length === 0
          ? 'Must specify image file name'
          : 'Concatenated sources cannot be written to standard output',
      );
    if (o.snapshot !== undefined) refuse('-l');
    const opened = await openImage(o.sources[0]!, {
      ...openContext(o),
      format: o.sourceFormat,
      forceShare: o.forceShare === true,
      backing: 'follow',
      allowDataFile: true,
    });
    closers.push(() => opened.close());
    image = opened;
  }
  const inner = imageSeqSource(image, { flatten: true, scanZeros: minSparse > 0 });
  // Progress: how far into the guest the writer has read (it reads data in guest order).
  let reached = 0;
  const total = image.size;
  const source: SeqSource = {
    size: inner.size,
    map: (g) => inner.map(g),
    async read(buf, offset) {
      await inner.read(buf, offset);
      if (offset + buf.length > reached) {
        reached = offset + buf.length;
        o.onProgress?.(reached, total);
      }
    },
  };
  const out = await driver.createSequential(source, options);
  await writeAll(out.chunks(), stream);
  if (total > 0) o.onProgress?.(total, total);
}

/** Write the chunks in order, waiting for the stream to drain; a write error ends the copy. */
async function writeAll(chunks: AsyncIterable<Uint8Array>, stream: Writable): Promise<void> {
  let failure: Error | null = null;
  let wake: (() => void) | null = null;
  const onError = (err: Error) => {
    failure ??= err;
    wake?.();
  };
  const onDrain = () => wake?.();
  stream.on('error', onError);
  stream.on('drain', onDrain);
  let pos = 0;
  const check = () => {
    if (failure !== null) {
      const code = (failure as { code?: string }).code;
      throw new VdiskError(
        'EIO',
        `error while writing at byte ${pos}: ${code === 'EPIPE' ? 'Broken pipe' : strerror(failure)}`,
        { cause: failure },
      );
    }
  };
  try {
    for await (const chunk of chunks) {
      check();
      const ok = stream.write(chunk);
      pos += chunk.length;
      if (!ok) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          if (failure !== null || !stream.writableNeedDrain) resolve();
        });
        wake = null;
      }
      check();
    }
    // Everything written has been handed to the system (or failed).
    await new Promise<void>((resolve) => {
      wake = resolve;
      stream.write(Buffer.alloc(0), () => resolve());
    });
    wake = null;
    check();
  } finally {
    stream.off('drain', onDrain);
    // A late error (the reader went away after the last byte) must not become an uncaught one.
    stream.off('error', onError);
    stream.on('error', () => {});
  }
}
