/**
 * Export: an opened image (a whole chain flattened, or its top layer over a named backing
 * file) written in any format vdisk writes, as a stream of bytes in order. Formats with a
 * sequential writer (FormatDriver.createSequential: raw, qcow2, qed, qcow, vmdk
 * monolithicSparse and streamOptimized, vdi, vhd) stream without a temporary copy; the
 * others (vhdx, compressed qcow2/qcow) are converted into a temporary file first, which is
 * then streamed and removed. The registry's `GET /v2/images/{id}/export` and its flatten
 * action are built on this; so will be `convert … -` (standard output).
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CreateOptions } from '../core/driver.js';
import { VdiskError } from '../core/errors.js';
import { getDriver } from '../core/formats.js';
import type { Image } from '../core/image.js';
import { diffSeqSource, imageSeqSource, padSource, type SeqOutput } from '../core/seq.js';
import { registerBuiltinFormats } from '../formats/index.js';
import { convertCommand } from './convert.js';

export interface ExportOptions {
  /** The opened image (its chain attached); the caller closes it after the stream ends. */
  image: Image;
  /** The engine's output format. */
  format: string;
  /** Creation options of the output (-o), e.g. subformat. */
  options?: CreateOptions;
  /** The whole chain as one image (true), or the top layer alone over `backing`. */
  flatten: boolean;
  /** The backing file the output names when not flattening an image that has one. */
  backing?: { filename: string; format: string } | undefined;
  /** Turn all-zero data blocks into holes (raw layers: block status cannot tell). */
  scanZeros?: boolean;
  /** Compressed clusters (qcow2, qcow; vmdk streamOptimized always compresses). */
  compressed?: boolean;
  /** Round the virtual size up to a multiple of this many bytes. */
  alignSize?: number;
  /** Where a format without a sequential writer is converted first (default: the OS's). */
  tmpDir?: string;
}

export interface ExportStream extends SeqOutput {
  /** Went through a temporary file (no sequential writer for this format and options). */
  readonly spilled: boolean;
  /** Release what the export holds (a temporary file) if the stream was not read to its end. */
  close(): Promise<void>;
}

export async function exportImage(o: ExportOptions): Promise<ExportStream> {
  registerBuiltinFormats();
  const driver = await getDriver(o.format);
  if (driver.create === undefined)
    throw new VdiskError('UNSUPPORTED', `Format driver '${o.format}' does not support image creation`);
  const options = o.options ?? {};
  const layered = !o.flatten && o.image.backing !== null;
  if (layered && driver.supportsBacking !== true)
    throw new VdiskError('UNSUPPORTED', `Backing file not supported for file format '${o.format}'`);
  const compressed =
    o.compressed === true && !(o.format === 'vmdk' && options['subformat'] === 'streamOptimized');
  if (compressed && driver.compressedWrites !== true)
    throw new VdiskError('UNSUPPORTED', 'Compression not supported for this file format');
  let source = imageSeqSource(o.image, {
    flatten: o.flatten,
    backing: layered ? o.backing : undefined,
    scanZeros: o.scanZeros === true,
  });
  if (o.alignSize !== undefined && o.alignSize > 1)
    source = padSource(source, Math.ceil(source.size / o.alignSize) * o.alignSize);
  if (driver.createSequential !== undefined && !compressed) {
    const out = await driver.createSequential(source, options);
    return { length: out.length, chunks: () => out.chunks(), spilled: false, close: async () => {} };
  }
  if (layered)
    throw new VdiskError(
      'UNSUPPORTED',
      `A layered export (flatten=false) in ${o.format}${compressed ? ' with compression' : ''} is not supported; export it flattened`,
    );
  if (source.size !== o.image.size)
    throw new VdiskError('UNSUPPORTED', `Size alignment is not supported for ${o.format} exports`);
  // No sequential writer: convert into a temporary file, then stream that.
  const dir = await mkdtemp(join(o.tmpDir ?? tmpdir(), 'vdisk-export-'));
  const path = join(dir, `export.${o.format}`);
  let removed = false;
  const remove = async () => {
    if (removed) return;
    removed = true;
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await convertCommand({
      sources: [o.image.path],
      sourceImages: [o.image],
      output: path,
      outputFormat: o.format,
      options,
      compressed,
    });
  } catch (err) {
    await remove();
    throw err;
  }
  const length = (await stat(path)).size;
  return {
    length,
    spilled: true,
    close: remove,
    async *chunks() {
      try {
        for await (const chunk of createReadStream(path, { highWaterMark: 2 << 20 })) yield chunk as Buffer;
      } finally {
        await remove();
      }
    },
  };
}

/**
 * Export the difference between `image` and `base` as an overlay of `base` named
 * `backing` (the registry's flatten onto another master: qemu-img rebase semantics, written
 * fresh). Only formats with a sequential writer that name a backing file (qcow2, qed).
 */
export async function exportDiff(o: {
  image: Image;
  base: Image;
  backing: { filename: string; format: string };
  format: string;
  options?: CreateOptions;
}): Promise<ExportStream> {
  registerBuiltinFormats();
  const driver = await getDriver(o.format);
  if (driver.supportsBacking !== true || driver.createSequential === undefined)
    throw new VdiskError('UNSUPPORTED', `Backing file not supported for file format '${o.format}'`);
  const out = await driver.createSequential(diffSeqSource(o.image, o.base, o.backing), o.options ?? {});
  return { length: out.length, chunks: () => out.chunks(), spilled: false, close: async () => {} };
}
