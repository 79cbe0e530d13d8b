/**
 * RawStreamImage: a raw stream read front to back at a provisional size, and the raw → qcow2
 * conversion built on it (convertPipe), in process, on streams that end early, late or badly.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertPipe } from '../../commands/convert-pipe.js';
import { VdiskError } from '../../core/errors.js';
import { qemuImg, qemuImgOk, tempDir } from '../../test/oracle.js';
import { RawStreamImage } from './stream-read.js';

const KiB = 1024;
const MiB = 1 << 20;

/** Bytes i*7+seed, as a stream of `chunk`-sized pieces. */
function pattern(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
}
function streamOf(data: Buffer, chunk = 64 * KiB): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < data.length; i += chunk) parts.push(data.subarray(i, i + chunk));
  return Readable.from(parts);
}
/** A stream that hands out `data`, then fails. */
function failing(data: Buffer): Readable {
  return new Readable({
    read() {
      if (data.length > 0) {
        this.push(data);
        data = Buffer.alloc(0);
      } else this.destroy(Object.assign(new Error('boom'), { code: 'EIO' }));
    },
  });
}

describe('RawStreamImage', () => {
  it('reads issued out of order are served in order; block status turns to zeros at the end', async () => {
    const data = pattern(3 * MiB + 1000);
    const img = new RawStreamImage(streamOf(data), 16 * MiB);
    expect(await img.blockStatus(0, 16 * MiB)).toMatchObject({ length: 16 * MiB, data: true, zero: false });
    const bufs = [0, 1, 2, 3].map(() => Buffer.alloc(MiB));
    // The later ones first: each waits for the one before it.
    const reads = [3, 2, 1, 0].map((i) => img.read(bufs[i]!, i * MiB));
    await Promise.all(reads);
    expect(Buffer.concat(bufs).subarray(0, data.length).equals(data)).toBe(true);
    expect(bufs[3]!.subarray(1000).every((b) => b === 0)).toBe(true);
    expect(img.length).toBe(data.length);
    expect(await img.blockStatus(2 * MiB, 14 * MiB)).toMatchObject({ length: MiB + 1000, data: true });
    expect(await img.blockStatus(3 * MiB + 1000, 100)).toMatchObject({
      length: 100,
      data: false,
      zero: true,
    });
    // Past the end: zeros at once.
    const late = Buffer.alloc(512, 9);
    await img.read(late, 8 * MiB);
    expect(late.every((b) => b === 0)).toBe(true);
    expect(await img.longer()).toBe(false);
  });

  it('bytes asked for again after they went by: one clear error', async () => {
    const img = new RawStreamImage(streamOf(pattern(2 * MiB)), 4 * MiB);
    await img.read(Buffer.alloc(MiB), 0);
    await expect(img.read(Buffer.alloc(512), 512)).rejects.toThrow(
      'standard input: bytes at 512 were needed again after they went by; convert from a file instead',
    );
  });

  it('longer(): a stream that goes on past the provisional size', async () => {
    const data = pattern(MiB + 512);
    const img = new RawStreamImage(streamOf(data, 1000), MiB);
    const buf = Buffer.alloc(MiB);
    await img.read(buf, 0);
    expect(buf.equals(data.subarray(0, MiB))).toBe(true);
    expect(img.length).toBeNull();
    expect(await img.longer()).toBe(true);
    // Exactly at its size: not longer.
    const exact = new RawStreamImage(streamOf(pattern(MiB)), MiB);
    await exact.read(Buffer.alloc(MiB), 0);
    expect(await exact.longer()).toBe(false);
    expect(exact.length).toBe(MiB);
  });

  it('a stream that fails: the read and those waiting behind it fail with one message', async () => {
    const img = new RawStreamImage(failing(pattern(100 * KiB)), 4 * MiB);
    const first = img.read(Buffer.alloc(MiB), 0);
    const second = img.read(Buffer.alloc(MiB), MiB);
    await expect(first).rejects.toThrow('error while reading standard input: ');
    await expect(second).rejects.toBeInstanceOf(VdiskError);
  });
});

describe('convertPipe: a raw stream into qcow2 without a temporary file', () => {
  let dir: string;
  let cleanup: () => void;
  const p = (n: string) => join(dir, n);
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('vdisk-rawstream-'));
  });
  afterAll(() => cleanup?.());

  it('matches qemu-img convert of the same bytes from a file', async () => {
    const data = Buffer.concat([pattern(300 * KiB), Buffer.alloc(2 * MiB), pattern(5 * KiB + 17, 3)]);
    writeFileSync(p('in.raw'), data);
    await convertPipe({
      sources: ['-'],
      input: streamOf(data, 4096),
      sourceFormat: 'raw',
      output: p('out.qcow2'),
      outputFormat: 'qcow2',
      tmpDir: p('missing'),
    });
    qemuImgOk(['convert', '-f', 'raw', '-O', 'qcow2', p('in.raw'), p('q.qcow2')]);
    const cmp = qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', p('in.raw'), p('out.qcow2')]);
    expect(cmp.stdout).toBe('Images are identical.\n');
    const map = (f: string) => qemuImgOk(['map', '--output=json', p(f)]);
    expect(map('out.qcow2')).toBe(map('q.qcow2'));
    expect(qemuImg(['check', p('out.qcow2')]).code).toBe(0);
  });

  it('a stream longer than the provisional size: one line, nothing past it read as the image', async () => {
    const err = await convertPipe({
      sources: ['-'],
      input: streamOf(pattern(3 * MiB)),
      sourceFormat: 'raw',
      output: p('long.qcow2'),
      outputFormat: 'qcow2',
      provisionalSize: MiB,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VdiskError);
    expect((err as VdiskError).message).toBe(
      'standard input is longer than the 1048576 bytes a qcow2 target read from a stream can hold; convert from a file instead',
    );
  });

  it('an option refused before the target is made: an existing file is left alone', async () => {
    writeFileSync(p('keep.qcow2'), "the user's own file");
    const err = await convertPipe({
      sources: ['-'],
      input: streamOf(pattern(MiB)),
      sourceFormat: 'raw',
      output: p('keep.qcow2'),
      outputFormat: 'qcow2',
      options: { foo: '1' },
    }).catch((e: unknown) => e);
    expect((err as VdiskError).message).toBe("Invalid parameter 'foo'");
    expect(readFileSync(p('keep.qcow2'), 'utf8')).toBe("the user's own file");
  });

  it('a stream that fails half way: one line, and no half image left behind', async () => {
    const err = await convertPipe({
      sources: ['-'],
      input: failing(pattern(3 * MiB)),
      sourceFormat: 'raw',
      output: p('broken.qcow2'),
      outputFormat: 'qcow2',
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VdiskError);
    expect((err as VdiskError).message).toMatch(/^error while reading at byte \d+: /);
    expect(existsSync(p('broken.qcow2'))).toBe(false);
  });
});
