import { copyFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../chain/open.js';
import { qemuImgOk, qemuIo, tempDir } from '../test/oracle.js';
import { runBoth } from '../test/same.js';
import { compareImages } from './compare.js';

let dir: string;
let cleanup: () => void;

function raw(name: string, size: string, writes: string[]): void {
  qemuImgOk(['create', '-f', 'raw', join(dir, name), size]);
  if (writes.length > 0) qemuIo(join(dir, name), writes, 'raw');
}

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-compare-'));
  const base = ['write -P 0xab 1M 64k', 'write -P 0xcd 8M 3M', 'write -P 0x11 15M 1M'];
  raw('a.img', '16M', base);
  copyFileSync(join(dir, 'a.img'), join(dir, 'a-copy.img'));
  // Same content, different layout: zeros written as data where a.img has holes.
  raw('layout.img', '16M', [...base, 'write -P 0 4M 1M', 'write -P 0 12M 512k']);
  // One byte differs in the middle of a sector.
  raw('byte.img', '16M', [...base, 'write -P 0x12 9437884 1']);
  // Data where a.img has a hole (one side allocated, the other a hole).
  raw('extra.img', '16M', [...base, 'write -P 0x01 5M 4k']);
  // A hole where a.img has data.
  raw('hole.img', '16M', ['write -P 0xab 1M 64k', 'write -P 0xcd 8M 3M']);
  // Larger: zeros past the end (identical with a warning), or data past the end.
  raw('bigger-zero.img', '20M', [...base, 'write -P 0 17M 1M']);
  raw('bigger-data.img', '20M', [...base, 'write -P 0x22 18M 7k']);
  raw('smaller.img', '12M', ['write -P 0xab 1M 64k', 'write -P 0xcd 8M 3M']);
  writeFileSync(join(dir, 'empty.img'), Buffer.alloc(0));
  writeFileSync(join(dir, 'empty2.img'), Buffer.alloc(0));
  // Sparse 1 TiB twins.
  for (const n of ['huge1.img', 'huge2.img']) {
    writeFileSync(join(dir, n), Buffer.alloc(0));
    truncateSync(join(dir, n), 2 ** 40);
  }
  qemuIo(join(dir, 'huge2.img'), ['write -P 0x33 600G 64k'], 'raw');
});
afterAll(() => cleanup());

const cases: string[][] = [
  ['a.img', 'a-copy.img'],
  ['a.img', 'layout.img'],
  ['-s', 'a.img', 'layout.img'],
  ['-s', 'a.img', 'a-copy.img'],
  ['a.img', 'byte.img'],
  ['byte.img', 'a.img'],
  ['a.img', 'extra.img'],
  ['extra.img', 'a.img'],
  ['a.img', 'hole.img'],
  ['hole.img', 'a.img'],
  ['a.img', 'bigger-zero.img'],
  ['bigger-zero.img', 'a.img'],
  ['a.img', 'bigger-data.img'],
  ['bigger-data.img', 'a.img'],
  ['-s', 'a.img', 'bigger-zero.img'],
  ['a.img', 'smaller.img'],
  ['smaller.img', 'a.img'],
  ['empty.img', 'empty2.img'],
  ['empty.img', 'a.img'],
  ['-q', 'a.img', 'byte.img'],
  ['-q', 'a.img', 'a-copy.img'],
  ['-f', 'raw', '-F', 'raw', '-U', 'a.img', 'layout.img'],
  ['-T', 'none', 'a.img', 'a-copy.img'],
  ['-p', 'a.img', 'a-copy.img'],
  ['-p', 'a.img', 'byte.img'],
  ['-p', 'a.img', 'bigger-data.img'],
  ['-p', 'empty.img', 'empty2.img'],
  ['-p', '-q', 'a.img', 'byte.img'],
  ['-U', 'huge1.img', 'huge2.img'],
  ['-p', 'huge1.img', 'huge1.img'],
  // errors
  ['a.img'],
  ['a.img', 'b.img', 'c.img'],
  ['a.img', 'missing.img'],
  ['missing.img', 'a.img'],
  ['-p', 'missing.img', 'a.img'],
  ['-T', 'bogus', 'a.img', 'a-copy.img'],
  ['-p', '-T', 'bogus', 'a.img', 'a-copy.img'],
  ['-f', 'nosuch', 'a.img', 'a-copy.img'],
  ['-x', 'a.img', 'a-copy.img'],
  ['a.img', 'a-copy.img', '-F'],
];

describe('compare against qemu-img (raw)', () => {
  for (const args of cases) {
    it(args.join(' '), async () => {
      const { qemu, ours } = await runBoth(['compare', ...args], dir);
      expect(ours).toEqual(qemu);
    });
  }
});

describe('the walk', () => {
  it('asks for each run of block status once, not once per 2 MiB chunk', async () => {
    // A 40 MiB run of data in a qcow2 and its raw copy, with one byte changed near the end
    // of the run: the walk goes through 20 chunks of the run before it finds it.
    const q = join(dir, 'run.qcow2');
    const r = join(dir, 'run.img');
    qemuImgOk(['create', '-f', 'qcow2', q, '64M']);
    qemuIo(q, ['write -P 0x5a 8M 40M'], 'qcow2');
    qemuImgOk(['convert', '-f', 'qcow2', '-O', 'raw', q, r]);
    qemuIo(r, ['write -P 0x5b 47M 1'], 'raw');
    const a = await openImage(q);
    const b = await openImage(r);
    const calls: number[] = [];
    for (const img of [a, b]) {
      const own = img.blockStatus.bind(img);
      calls.push(0);
      const i = calls.length - 1;
      img.blockStatus = (offset, length) => {
        calls[i]!++;
        return own(offset, length);
      };
    }
    try {
      const res = await compareImages(a, b, { filename1: q, filename2: r });
      expect(res.outcome).toEqual({ identical: false, reason: 'content', offset: 47 * 2 ** 20 });
      // One question per run of each map (qcow2: hole, data, the hole after it, which the
      // walk reaches while the reads ahead of it are compared; raw: the same, with the first
      // 4 KiB as data, as a file qemu-img made starts). Asked again per chunk, the 40 MiB run
      // alone took 20.
      expect(calls).toEqual([3, 4]);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
