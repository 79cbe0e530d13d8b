/**
 * One conformance suite for every sequential writer (FormatDriver.createSequential): the same
 * sources, made by the real qemu-img and qemu-io, are written front to back by vdisk into a
 * file, and the real qemu-img must find the result consistent (`check`) and identical to the
 * source (`compare`), the stream's length must be the one announced, and a layered output
 * (the top layer alone over a named backing file) must read as the source chain does.
 *
 * A format's test file calls `runSeqConformance({ format: 'qcow2', … })` in a few lines.
 */
import { createWriteStream, existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../chain/open.js';
import { VdiskError } from '../core/errors.js';
import { getDriver } from '../core/formats.js';
import { imageSeqSource, type SeqOutput, type SeqSource } from '../core/seq.js';
import { registerBuiltinFormats } from '../formats/index.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from './oracle.js';

export interface SeqCase {
  /** The engine's format name of the output. */
  format: string;
  /** -o options for the output (subformat…); one run per entry. */
  variants: Record<string, string>[];
  /** The format can name a backing file (layered outputs are tested). */
  backing: boolean;
  /** The stream's length is announced before the first byte for these variants. */
  knownLength: (options: Record<string, string>) => boolean;
  /** qemu-img check knows the format (it prints "No errors were found"). */
  checkable: boolean;
  /**
   * The output's virtual size may be larger than the source's (vhd rounds to its geometry);
   * qemu-img compare then checks the extra part reads as zeros.
   */
  sizeMayGrow?: boolean;
  /**
   * Requests qemu-img create refuses for this format (-o options, a virtual size; 1 MiB and no
   * options by default): the writer must refuse each in qemu-img's words, before reading or
   * mapping the source.
   */
  refused?: Array<{ options?: Record<string, string>; size?: number }>;
  /**
   * Options qemu-img create takes but a stream cannot honour (preallocation, encryption…):
   * the writer must refuse each with this code, in one line, before reading or mapping the
   * source.
   */
  unsupported?: Array<{ options: Record<string, string>; code: 'UNSUPPORTED' | 'INVALID_ARGUMENT' }>;
  /**
   * Bound on the length of the layered output for these options (default 8 MiB: the top layer
   * holds a few MiB); large clusters need more for their metadata clusters alone.
   */
  layerLimit?: (options: Record<string, string>) => number;
  /**
   * With `backing: false`, the words that refuse the suite's layered source (its backing file
   * is qcow2): by default qemu-img's for a format without backing files; a format whose
   * backing file can only be of its own format (vmdk) says that instead.
   */
  layeredRefusal?: string;
}

/** Write a sequential output to a file; returns the bytes written (and the largest buffer, in `stats`). */
export async function writeSeq(out: SeqOutput, path: string, stats?: { largest: number }): Promise<number> {
  let n = 0;
  await pipeline(
    (async function* () {
      for await (const c of out.chunks()) {
        n += c.length;
        if (stats !== undefined) stats.largest = Math.max(stats.largest, c.length);
        yield c;
      }
    })(),
    createWriteStream(path),
  );
  return n;
}

/**
 * Write the image at `path` (its chain flattened, unless a backing name is given) sequentially
 * in `format` to `out`; returns the output as announced, the bytes written and the largest
 * buffer the writer yielded.
 */
export async function writeImageSeq(
  source: { path: string; fmt: string },
  format: string,
  options: Record<string, string>,
  out: string,
  opts: { backing?: { filename: string; format: string }; scanZeros?: boolean } = {},
): Promise<{ seq: SeqOutput; written: number; largest: number }> {
  const image = await openImage(source.path, { format: source.fmt, backing: 'follow' });
  try {
    const src = imageSeqSource(image, {
      flatten: opts.backing === undefined,
      scanZeros: opts.scanZeros ?? false,
      backing: opts.backing,
    });
    const seq = await (await getDriver(format)).createSequential!(src, options);
    const stats = { largest: 0 };
    const written = await writeSeq(seq, out, stats);
    return { seq, written, largest: stats.largest };
  } finally {
    await image.close();
  }
}

const MiB = 1 << 20;

/** Sources: [name, what to build]. Sizes are chosen to cross table and block boundaries. */
type SourceName = 'sparse' | 'empty' | 'full' | 'chain';

function buildSources(dir: string): Record<SourceName, { path: string; fmt: string }> {
  const p = (n: string) => join(dir, n);
  // A sparse qcow2 with data in several places, a zeroed range and a tail not block-aligned.
  qemuImgOk(['create', '-f', 'qcow2', p('sparse.qcow2'), `${64 * MiB + 7 * 512}`]);
  qemuIo(
    p('sparse.qcow2'),
    [
      'write -P 0x11 0 64k',
      'write -P 0x22 1m 3m',
      'write -P 0x33 8388096 1024', // across the 8 MiB boundary
      'write -z 2m 1m',
      `write -P 0x44 ${64 * MiB} ${7 * 512}`, // the short tail
    ],
    'qcow2',
  );
  // Empty.
  qemuImgOk(['create', '-f', 'qcow2', p('empty.qcow2'), `${16 * MiB}`]);
  // Full of data, raw.
  qemuImgOk(['create', '-f', 'raw', p('full.raw'), `${6 * MiB}`]);
  qemuIo(p('full.raw'), ['write -P 0x5a 0 6m'], 'raw');
  // A chain: master (qcow2) ← overlay ← overlay of the overlay, with zeros hiding master data.
  qemuImgOk(['create', '-f', 'qcow2', p('master.qcow2'), `${32 * MiB}`]);
  qemuIo(p('master.qcow2'), ['write -P 0x61 0 8m', 'write -P 0x62 16m 4m'], 'qcow2');
  qemuImgOk(['create', '-f', 'qcow2', '-b', 'master.qcow2', '-F', 'qcow2', p('ov1.qcow2')]);
  qemuIo(p('ov1.qcow2'), ['write -P 0x71 1m 1m', 'write -z 4m 2m', 'write -P 0x72 30m 100k'], 'qcow2');
  qemuImgOk(['create', '-f', 'qcow2', '-b', 'ov1.qcow2', '-F', 'qcow2', p('ov2.qcow2'), `${40 * MiB}`]);
  qemuIo(p('ov2.qcow2'), ['write -P 0x81 1536k 64k', 'write -z 17m 512k', 'write -P 0x82 36m 1m'], 'qcow2');
  return {
    sparse: { path: p('sparse.qcow2'), fmt: 'qcow2' },
    empty: { path: p('empty.qcow2'), fmt: 'qcow2' },
    full: { path: p('full.raw'), fmt: 'raw' },
    chain: { path: p('ov2.qcow2'), fmt: 'qcow2' },
  };
}

/** A source that fails the test when read or mapped: refusals come before either. */
const untouchable = (size: number): SeqSource => ({
  size,
  read: () => Promise.reject(new Error('the source was read')),
  map: () => Promise.reject(new Error('the source was mapped')),
});

export function runSeqConformance(c: SeqCase): void {
  describe(`sequential ${c.format} writer (qemu-img check and compare)`, () => {
    let dir: string;
    let cleanup: () => void;
    let sources: ReturnType<typeof buildSources>;
    beforeAll(() => {
      registerBuiltinFormats();
      ({ dir, cleanup } = tempDir('vdisk-seq-'));
      sources = buildSources(dir);
    });
    afterAll(() => cleanup());

    const write = async (
      name: SourceName,
      options: Record<string, string>,
      flatten: boolean,
      scanZeros: boolean,
      out: string,
    ) => {
      const { seq, written: n } = await writeImageSeq(sources[name], c.format, options, out, {
        scanZeros,
        ...(flatten ? {} : { backing: { filename: 'ov1.qcow2', format: 'qcow2' } }),
      });
      if (c.knownLength(options)) expect(seq.length).toBe(n);
      expect((await stat(out)).size).toBe(n);
      return n;
    };

    const verify = (source: { path: string; fmt: string }, out: string) => {
      if (c.checkable) {
        const r = qemuImg(['check', '-f', c.format, out]);
        expect(r.stderr).toBe('');
        expect(r.code, r.stdout).toBe(0);
      }
      // Same virtual size, unless the format rounds the size up (compare then wants zeros past
      // the source's end). Not `compare -s`: that also wants the same allocation.
      const vsize = (p: string, f: string) =>
        JSON.parse(qemuImgOk(['info', '--output=json', '-f', f, p]))['virtual-size'] as number;
      const a = vsize(source.path, source.fmt);
      const b = vsize(out, c.format);
      if (c.sizeMayGrow) expect(b).toBeGreaterThanOrEqual(a);
      else expect(b).toBe(a);
      const cmp = qemuImg(['compare', '-f', source.fmt, '-F', c.format, source.path, out]);
      expect(cmp.stdout + cmp.stderr, `compare ${source.path} ${out}`).toMatch(/Images are identical/);
      expect(cmp.code).toBe(0);
    };

    for (const [n, { options = {}, size = MiB }] of (c.refused ?? []).entries()) {
      const o = Object.entries(options).map(([k, v]) => `${k}=${v}`);
      it(`refuses what qemu-img create refuses: size ${size}${o.length > 0 ? `, ${o}` : ''}`, async () => {
        const path = join(dir, `refused-${n}.${c.format}`);
        const r = qemuImg([
          'create',
          '-f',
          c.format,
          ...(o.length > 0 ? ['-o', o.join(',')] : []),
          path,
          `${size}`,
        ]);
        expect(r.code).toBe(1);
        const message = r.stderr.slice(`qemu-img: ${path}: `.length).trim();
        expect(message).not.toBe('');
        const driver = await getDriver(c.format);
        await expect(driver.createSequential!(untouchable(size), options)).rejects.toThrow(message);
      });
    }

    for (const { options, code } of c.unsupported ?? []) {
      const o = Object.entries(options).map(([k, v]) => `${k}=${v}`);
      it(`refuses what a stream cannot honour: ${o}`, async () => {
        const driver = await getDriver(c.format);
        const err = await driver.createSequential!(untouchable(MiB), options).then(
          () => null,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(VdiskError);
        expect((err as VdiskError).code).toBe(code);
        expect((err as VdiskError).message).not.toContain('\n');
      });
    }

    for (const options of c.variants) {
      const label = Object.entries(options)
        .map(([k, v]) => `${k}=${v}`)
        .join(',');
      for (const name of ['sparse', 'empty', 'full', 'chain'] as const) {
        it(`${name}${label ? ` (${label})` : ''}: flattened`, async () => {
          const out = join(dir, `${name}-${c.format}-${label}.out`);
          await write(name, options, true, name === 'full', out);
          verify(sources[name], out);
        });
      }
      if (c.backing) {
        it(`chain${label ? ` (${label})` : ''}: the top layer alone over its backing`, async () => {
          const out = join(dir, `layer-${c.format}-${label}.out`);
          const n = await write('chain', options, false, false, out);
          // The layer is small: only what ov2 holds (a few MiB), not the 40 MiB chain.
          expect(n).toBeLessThan(c.layerLimit?.(options) ?? 8 * MiB);
          const info = JSON.parse(qemuImgOk(['info', '--output=json', '-f', c.format, out]));
          expect(info['backing-filename']).toBe('ov1.qcow2');
          expect(info['virtual-size']).toBe(40 * MiB);
          if (c.checkable) {
            const r = qemuImg(['check', '-f', c.format, out]);
            expect(r.code, r.stdout + r.stderr).toBe(0);
          }
          // Read through the chain it names (ov1.qcow2 → master.qcow2, in the same directory).
          const cmp = qemuImg(['compare', '-f', c.format, '-F', 'qcow2', out, sources.chain.path]);
          expect(cmp.stdout + cmp.stderr).toMatch(/Images are identical/);
        });
      } else {
        it(`chain${label ? ` (${label})` : ''}: a layered source is refused, before any byte`, async () => {
          const out = join(dir, `layer-${c.format}-${label}.out`);
          // qemu-img create -b's words for a format without backing files.
          await expect(write('chain', options, false, false, out)).rejects.toThrow(
            c.layeredRefusal ?? `Backing file not supported for file format '${c.format}'`,
          );
          expect(existsSync(out)).toBe(false);
        });
      }
    }
  });
}
