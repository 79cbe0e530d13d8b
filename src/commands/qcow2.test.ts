/**
 * map, compare, convert, dd and measure on qcow2 images (made by qemu-img and qemu-io:
 * data, zero clusters, discards, compressed clusters, snapshots, subclusters, chains),
 * against qemu-img 7.2.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../test/oracle.js';
import { type ConvertBothOptions, convertBoth as convertBothIn, runBoth, runEach } from '../test/same.js';

let dir: string;
let cleanup: () => void;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-cmds-'));
  const p = (n: string) => join(dir, n);
  qemuImgOk(['create', '-f', 'raw', p('flat.raw'), '32M']);
  qemuIo(
    p('flat.raw'),
    ['write -P 1 0 3M', 'write -P 0 4M 1M', 'write -P 3 9M 100k', 'write -P 4 31M 1M'],
    'raw',
  );
  // Data, zero clusters, a discard, and compressed clusters.
  qemuImgOk(['create', '-f', 'qcow2', p('a.qcow2'), '32M']);
  qemuIo(
    p('a.qcow2'),
    [
      'write -P 1 0 3M',
      'write -z 4M 1M',
      'write -P 3 9M 100k',
      'write -P 4 31M 1M',
      'write -P 9 12M 1M',
      'discard 12M 512k',
    ],
    'qcow2',
  );
  qemuImgOk(['create', '-f', 'qcow2', p('c.qcow2'), '8M']);
  qemuIo(p('c.qcow2'), ['write -c -P 7 0 64k', 'write -c -P 8 1M 128k', 'write -P 2 2M 64k'], 'qcow2');
  // A chain: qcow2 on qcow2 on raw, the top larger than its backing.
  qemuImgOk(['create', '-f', 'qcow2', '-b', 'flat.raw', '-F', 'raw', p('mid.qcow2'), '32M']);
  qemuIo(p('mid.qcow2'), ['write -P 5 2M 2M', 'write -z 31M 512k'], 'qcow2');
  qemuImgOk(['create', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', p('top.qcow2'), '40M']);
  qemuIo(p('top.qcow2'), ['write -P 6 3M 64k', 'write -P 7 36M 1M', 'write -z 0 64k'], 'qcow2');
  // Snapshots, subclusters, small clusters, v2.
  qemuImgOk(['create', '-f', 'qcow2', p('snap.qcow2'), '16M']);
  qemuIo(p('snap.qcow2'), ['write -P 1 0 1M'], 'qcow2');
  qemuImgOk(['snapshot', '-c', 'one', p('snap.qcow2')]);
  qemuIo(p('snap.qcow2'), ['write -P 2 512k 1M', 'write -P 3 8M 64k'], 'qcow2');
  qemuImgOk(['snapshot', '-c', 'two', p('snap.qcow2')]);
  qemuIo(p('snap.qcow2'), ['write -z 0 4M'], 'qcow2');
  qemuImgOk(['create', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', p('sub.qcow2'), '16M']);
  qemuIo(
    p('sub.qcow2'),
    ['write -P 1 0 4k', 'write -P 2 70k 2k', 'write -z 128k 8k', 'write -P 3 1M 64k'],
    'qcow2',
  );
  qemuImgOk(['create', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=4k', p('v2.qcow2'), '16M']);
  qemuIo(p('v2.qcow2'), ['write -P 1 0 100k', 'write -z 1M 64k', 'write -P 2 15M 4k'], 'qcow2');
});
afterAll(() => cleanup());

const images = ['a.qcow2', 'c.qcow2', 'mid.qcow2', 'top.qcow2', 'snap.qcow2', 'sub.qcow2', 'v2.qcow2'];

describe('map on qcow2', () => {
  for (const f of images) {
    for (const out of ['human', 'json']) {
      it(`${out} ${f}`, async () => {
        const { qemu, ours } = await runBoth(['map', `--output=${out}`, f], dir);
        expect(ours).toEqual(qemu);
      });
    }
  }
});

describe('compare on qcow2', () => {
  const cases = [
    ['a.qcow2', 'flat.raw'],
    ['-s', 'a.qcow2', 'a.qcow2'],
    ['-s', 'a.qcow2', 'flat.raw'],
    ['top.qcow2', 'mid.qcow2'],
    ['mid.qcow2', 'top.qcow2'],
    ['-s', 'top.qcow2', 'top.qcow2'],
    ['mid.qcow2', 'flat.raw'],
    ['c.qcow2', 'sub.qcow2'],
    ['sub.qcow2', 'sub.qcow2'],
    ['-p', 'a.qcow2', 'flat.raw'],
    ['-f', 'qcow2', '-F', 'raw', 'a.qcow2', 'flat.raw'],
    ['-f', 'raw', 'a.qcow2', 'a.qcow2'],
  ];
  for (const args of cases) {
    it(args.join(' '), async () => {
      const { qemu, ours } = await runBoth(['compare', ...args], dir);
      expect(ours).toEqual(qemu);
    });
  }
});

let n = 0;
/** Convert with both tools into twin directories; compare exit, output, content, layout and check. */

const convertBoth = (args: string[], out: string, fmt: string, opts: ConvertBothOptions = {}) =>
  convertBothIn(dir, args, out, fmt, { offsets: false, ...opts });

describe('convert with qcow2', () => {
  it('raw → qcow2', () => convertBoth(['-O', 'qcow2', 'flat.raw', 'OUT'], 'o.qcow2', 'qcow2'));
  it('raw → qcow2 -S 0', () =>
    convertBoth(['-S', '0', '-O', 'qcow2', 'flat.raw', 'OUT'], 'o.qcow2', 'qcow2'));
  it('raw → qcow2, 4k clusters, v2', () =>
    convertBoth(['-O', 'qcow2', '-o', 'cluster_size=4k,compat=0.10', 'flat.raw', 'OUT'], 'o.qcow2', 'qcow2'));
  it('raw → qcow2 with subclusters', () =>
    convertBoth(['-O', 'qcow2', '-o', 'extended_l2=on', 'flat.raw', 'OUT'], 'o.qcow2', 'qcow2'));
  it('raw → qcow2 preallocation=metadata', () =>
    convertBoth(['-O', 'qcow2', '-o', 'preallocation=metadata', 'flat.raw', 'OUT'], 'o.qcow2', 'qcow2'));
  it('qcow2 → raw', () => convertBoth(['a.qcow2', 'OUT'], 'o.raw', 'raw'));
  it('compressed qcow2 → raw', () => convertBoth(['c.qcow2', 'OUT'], 'o.raw', 'raw'));
  it('a qcow2 chain → qcow2', () => convertBoth(['-O', 'qcow2', 'top.qcow2', 'OUT'], 'o.qcow2', 'qcow2'));
  it('subclusters → qcow2', () => convertBoth(['-O', 'qcow2', 'sub.qcow2', 'OUT'], 'o.qcow2', 'qcow2'));
  it('v2 → raw', () => convertBoth(['v2.qcow2', 'OUT'], 'o.raw', 'raw'));
  it('-c (deflate)', () => convertBoth(['-c', '-O', 'qcow2', 'flat.raw', 'OUT'], 'o.qcow2', 'qcow2'));
  it('-c (zstd)', () =>
    convertBoth(['-c', '-O', 'qcow2', '-o', 'compression_type=zstd', 'a.qcow2', 'OUT'], 'o.qcow2', 'qcow2'));
  it('-c of a chain, 4k clusters', () =>
    convertBoth(['-c', '-O', 'qcow2', '-o', 'cluster_size=4k', 'top.qcow2', 'OUT'], 'o.qcow2', 'qcow2'));
  it('-c with preallocation', () =>
    convertBoth(['-c', '-O', 'qcow2', '-o', 'preallocation=full', 'a.qcow2', 'OUT'], 'o.qcow2', 'qcow2'));
  it('-B: only the top layer', () =>
    convertBoth(
      ['-O', 'qcow2', '-B', join(dir, 'mid.qcow2'), '-F', 'qcow2', 'top.qcow2', 'OUT'],
      'o.qcow2',
      'qcow2',
    ));
  it('-B onto a smaller backing', () =>
    convertBoth(
      ['-O', 'qcow2', '-B', join(dir, 'flat.raw'), '-F', 'raw', 'top.qcow2', 'OUT'],
      'o.qcow2',
      'qcow2',
    ));
  it('-B from a flat image', () =>
    convertBoth(
      ['-O', 'qcow2', '-B', join(dir, 'flat.raw'), '-F', 'raw', 'a.qcow2', 'OUT'],
      'o.qcow2',
      'qcow2',
    ));
  it('-B -c', () =>
    convertBoth(
      ['-c', '-O', 'qcow2', '-B', join(dir, 'mid.qcow2'), '-F', 'qcow2', 'top.qcow2', 'OUT'],
      'o.qcow2',
      'qcow2',
    ));
  it('-c over several sources (a cluster spans two of them)', async () => {
    const odd = join(dir, 'odd1000.raw');
    if (!existsSync(odd)) {
      qemuImgOk(['create', '-f', 'raw', odd, '1k']);
      qemuIo(odd, ['write -P 0x31 0 1k'], 'raw');
    }
    await convertBoth(
      ['-c', '-p', '-O', 'qcow2', 'odd1000.raw', 'c.qcow2', 'odd1000.raw', 'flat.raw', 'OUT'],
      'o.qcow2',
      'qcow2',
    );
  });
  it('-c -n into an empty qcow2', async () => {
    n++;
    const q = join(dir, `q${n}`);
    const v = join(dir, `v${n}`);
    for (const d of [q, v]) {
      mkdirSync(d);
      qemuImgOk(['create', '-f', 'qcow2', join(d, 'o.qcow2'), '48M']);
    }
    const { qemu, ours } = await runEach(
      ['convert', '-c', '-n', '-O', 'qcow2', 'a.qcow2', join(q, 'o.qcow2')],
      ['convert', '-c', '-n', '-O', 'qcow2', 'a.qcow2', join(v, 'o.qcow2')],
      dir,
    );
    expect(ours).toEqual(qemu);
    expect(qemuImg(['compare', join(v, 'o.qcow2'), join(q, 'o.qcow2')], dir).stdout).toBe(
      'Images are identical.\n',
    );
    expect(qemuImg(['check', join(v, 'o.qcow2')]).code).toBe(0);
  });
  it('-l by name', () => convertBoth(['-l', 'one', 'snap.qcow2', 'OUT'], 'o.raw', 'raw'));
  it('-l by id', () => convertBoth(['-O', 'qcow2', '-l', '2', 'snap.qcow2', 'OUT'], 'o.qcow2', 'qcow2'));
  it('-l snapshot.name=', () =>
    convertBoth(['-l', 'snapshot.name=two', 'snap.qcow2', 'OUT'], 'o.raw', 'raw'));
  it('-l snapshot.id= and name that do not match', () =>
    convertBoth(['-l', 'snapshot.id=1,snapshot.name=two', 'snap.qcow2', 'OUT'], 'o.raw', 'raw'));
  it('-l a missing snapshot', () => convertBoth(['-l', 'three', 'snap.qcow2', 'OUT'], 'o.raw', 'raw'));
  it('-O qcow2 -o help', async () => {
    const { qemu, ours } = await runBoth(['convert', '-O', 'qcow2', '-o', 'help'], dir);
    expect(ours).toEqual(qemu);
  });
  it('-n into an existing qcow2 with data', async () => {
    n++;
    const q = join(dir, `q${n}`);
    const v = join(dir, `v${n}`);
    for (const d of [q, v]) {
      mkdirSync(d);
      qemuImgOk(['create', '-f', 'qcow2', join(d, 'o.qcow2'), '32M']);
      qemuIo(join(d, 'o.qcow2'), ['write -P 0xee 0 32M'], 'qcow2');
    }
    const { qemu, ours } = await runEach(
      ['convert', '-n', '-O', 'qcow2', 'a.qcow2', join(q, 'o.qcow2')],
      ['convert', '-n', '-O', 'qcow2', 'a.qcow2', join(v, 'o.qcow2')],
      dir,
    );
    expect(ours).toEqual(qemu);
    expect(qemuImg(['compare', join(v, 'o.qcow2'), 'a.qcow2'], dir).stdout).toBe('Images are identical.\n');
    expect(qemuImg(['check', join(v, 'o.qcow2')]).code).toBe(0);
    const strip = (s: string) => s.replace(/, "offset": \d+/g, '');
    expect(strip(qemuImgOk(['map', '--output=json', join(v, 'o.qcow2')]))).toBe(
      strip(qemuImgOk(['map', '--output=json', join(q, 'o.qcow2')])),
    );
  });
});

describe('dd and measure with qcow2', () => {
  it('dd a chain into qcow2', async () => {
    n++;
    const q = join(dir, `q${n}`);
    const v = join(dir, `v${n}`);
    mkdirSync(q);
    mkdirSync(v);
    const args = (d: string) => [
      'dd',
      '-O',
      'qcow2',
      'bs=1M',
      'count=38',
      'skip=1',
      'if=top.qcow2',
      `of=${join(d, 'o.qcow2')}`,
    ];
    const { qemu, ours } = await runEach(args(q), args(v), dir);
    expect(ours).toEqual(qemu);
    expect(qemuImg(['compare', join(q, 'o.qcow2'), join(v, 'o.qcow2')]).stdout).toBe(
      'Images are identical.\n',
    );
    expect(qemuImg(['check', join(v, 'o.qcow2')]).code).toBe(0);
  });
  const measures = [
    ['-O', 'qcow2', '--size', '1G'],
    ['-O', 'qcow2', '--size', '1G', '--output=json'],
    ['-O', 'qcow2', '--size', '1G', '-o', 'cluster_size=4k,preallocation=metadata'],
    ['-O', 'qcow2', 'flat.raw'],
    ['-O', 'qcow2', 'a.qcow2'],
    ['-O', 'qcow2', '--output=json', 'top.qcow2'],
    ['-O', 'raw', 'top.qcow2'],
    ['-O', 'qcow2', '-l', 'one', 'snap.qcow2'],
    ['-O', 'qcow2', '-l', 'nope', 'snap.qcow2'],
    ['-O', 'qcow2', '-o', 'extended_l2=on', 'sub.qcow2'],
    ['-O', 'qcow2', '-o', 'compat=0.10', 'c.qcow2'],
  ];
  for (const args of measures) {
    it(`measure ${args.join(' ')}`, async () => {
      const { qemu, ours } = await runBoth(['measure', ...args], dir);
      expect(ours).toEqual(qemu);
    });
  }
});
