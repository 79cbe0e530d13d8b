/**
 * raw's format options (`offset`, `size`: raw-format.c) given with --image-opts, against
 * qemu-img on the same file: info (names and sizes), map, convert's bytes, compare, the
 * refusals' words, and writes that stay inside the window.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
let file: string;

beforeAll(() => {
  ({ dir, cleanup } = tempDir());
  file = join(dir, 'disk.raw');
  // 1 MiB + 300 bytes: data at 0, 64 KiB and near the end, holes between.
  const buf = Buffer.alloc((1 << 20) + 300);
  buf.fill(0xa1, 0, 4096);
  buf.fill(0xb2, 65536, 65536 + 8192);
  buf.fill(0xc3, buf.length - 700);
  writeFileSync(file, buf);
});
afterAll(() => cleanup());

const same = async (args: string[]) => {
  const q = qemuImg(args);
  const v = await vdisk(args);
  expect(v.stdout, args.join(' ')).toBe(q.stdout);
  expect(v.stderr, args.join(' ')).toBe(q.stderr.replaceAll('qemu-img:', 'vdisk:'));
  expect(v.code, args.join(' ')).toBe(q.code);
};

describe('raw offset and size options', () => {
  const opts = (o: string) => `driver=raw,file.filename=${file}${o}`;

  it('info, map and compare as qemu-img', async () => {
    for (const o of [
      '',
      ',offset=4096',
      ',offset=4097',
      ',offset=1k,size=64k',
      ',size=512',
      ',cache.direct=off',
      ',offset=65536,size=8192',
    ]) {
      for (const out of ['human', 'json']) {
        await same(['info', `--output=${out}`, '--image-opts', opts(o)]);
        // qemu-img 7.2's map fails an assertion (get_block_status: `bytes`, exit 134) on an
        // offset that is not a multiple of 512; vdisk maps it (below).
        if (!o.includes('4097')) await same(['map', `--output=${out}`, '--image-opts', opts(o)]);
      }
    }
    expect(qemuImg(['map', '--image-opts', opts(',offset=4097')]).code).not.toBe(0);
    const m = await vdisk(['map', '--output=json', '--image-opts', opts(',offset=4097')]);
    expect(m.code).toBe(0);
    // The file's bytes from 4097 on, then the sectors' tail past its end (zeros).
    const end = (1 << 20) + 300 - 4097;
    expect(
      JSON.parse(m.stdout).map((e: { start: number; length: number; data: boolean; offset: number }) => [
        e.start,
        e.length,
        e.data,
        e.offset,
      ]),
    ).toEqual([
      [0, end, true, 4097],
      [end, (1 << 20) + 512 - 4096 - end, false, 4097 + end],
    ]);
    await same(['compare', '--image-opts', opts(',offset=65536,size=8192'), opts(',offset=65536,size=8192')]);
  });

  it('converts the window qemu-img converts', async () => {
    for (const o of [',offset=4096', ',offset=65536,size=8192', ',offset=3000']) {
      const a = join(dir, 'q.raw');
      const b = join(dir, 'v.raw');
      expect(qemuImg(['convert', '--image-opts', opts(o), '-O', 'raw', a]).code).toBe(0);
      const r = await vdisk(['convert', '--image-opts', opts(o), '-O', 'raw', b]);
      expect(r.stderr).toBe('');
      expect(readFileSync(b).equals(readFileSync(a)), o).toBe(true);
    }
  });

  it('refuses what qemu-img refuses, with its words', async () => {
    for (const o of [
      ',foo=bar',
      ',size=1000',
      ',offset=2000000',
      ',offset=4096,size=1048576',
      ',size=1049088',
      ',offset=abc',
      ',size=-1',
    ])
      await same(['info', '--image-opts', opts(o)]);
  });

  it('writes land inside the window; resize refuses a fixed size', async () => {
    const a = join(dir, 'wa.raw');
    const b = join(dir, 'wb.raw');
    writeFileSync(a, readFileSync(file));
    writeFileSync(b, readFileSync(file));
    const w = (f: string) => `driver=raw,file.filename=${f},offset=65536,size=131072`;
    const io = spawnSync(
      'qemu-io',
      ['--image-opts', '-c', 'write -P 0x77 1000 5000', '-c', 'write -z 70000 4096', w(a)],
      {
        encoding: 'utf8',
      },
    );
    expect(io.status, io.stderr).toBe(0);
    // The same writes through vdisk: dd into the window from a file of the pattern.
    const src = join(dir, 'pattern.raw');
    const pat = Buffer.alloc(131072);
    pat.set(readFileSync(file).subarray(65536, 65536 + 131072));
    pat.fill(0x77, 1000, 6000);
    pat.fill(0, 70000, 74096);
    writeFileSync(src, pat);
    const r = await vdisk(['convert', '-n', '-f', 'raw', src, '--target-image-opts', w(b)]);
    expect(r.stderr).toBe('');
    expect(readFileSync(b).equals(readFileSync(a))).toBe(true);
    await same(['resize', '--image-opts', w(b), '1M']);
  });
});
