/**
 * map, compare and convert over backing chains and non-raw formats, against qemu-img on
 * images qemu-img and qemu-io made (qed carries the backing chains here).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../test/oracle.js';
import { convertBoth as convertBothIn, runBoth, runEach } from '../test/same.js';

let dir: string;
let cleanup: () => void;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-chain-'));
  const p = (n: string) => join(dir, n);
  qemuImgOk(['create', '-f', 'raw', p('base.raw'), '8M']);
  qemuIo(p('base.raw'), ['write -P 1 0 1M', 'write -P 2 6M 1M', 'write -P 9 7864320 4k'], 'raw');
  // A larger overlay: ranges past the backing's end read as zeros.
  qemuImgOk(['create', '-f', 'qed', '-b', 'base.raw', '-F', 'raw', p('mid.qed'), '12M']);
  qemuIo(p('mid.qed'), ['write -P 3 512k 1M', 'write -z 6M 512k', 'write -P 4 10M 64k'], 'qed');
  qemuImgOk(['create', '-f', 'qed', '-b', 'mid.qed', '-F', 'qed', p('top.qed'), '12M']);
  qemuIo(p('top.qed'), ['write -P 5 3M 128k', 'write -z 512k 64k', 'write -P 6 11M 4k'], 'qed');
  // A flat copy of the chain's content, and one that differs in a byte.
  qemuImgOk(['convert', '-O', 'raw', p('top.qed'), p('flat.raw')]);
  qemuImgOk(['convert', '-O', 'qed', p('top.qed'), p('flat.qed')]);
  qemuImgOk(['convert', '-O', 'raw', p('top.qed'), p('diff.raw')]);
  qemuIo(p('diff.raw'), ['write -P 0x77 10485860 1'], 'raw');
  // An overlay on a backing that is missing.
  qemuImgOk(['create', '-f', 'qed', '-u', '-b', 'gone.raw', '-F', 'raw', p('orphan.qed'), '1M']);
  // vpc and vdi made by qemu-img.
  qemuImgOk(['convert', '-O', 'vpc', p('top.qed'), p('top.vhd')]);
  qemuImgOk(['convert', '-O', 'vdi', p('top.qed'), p('top.vdi')]);
});
afterAll(() => cleanup());

describe('map over chains and formats', () => {
  const files = ['top.qed', 'mid.qed', 'base.raw', 'flat.qed', 'top.vhd', 'top.vdi'];
  for (const f of files) {
    for (const out of ['human', 'json']) {
      it(`${out} ${f}`, async () => {
        const { qemu, ours } = await runBoth(['map', `--output=${out}`, f], dir);
        expect(ours).toEqual(qemu);
      });
    }
  }
  it('a window of the chain', async () => {
    const { qemu, ours } = await runBoth(
      ['map', '--output=json', '--start-offset=700k', '--max-length=7M', 'top.qed'],
      dir,
    );
    expect(ours).toEqual(qemu);
  });
  it('a missing backing file', async () => {
    const { qemu, ours } = await runBoth(['map', 'orphan.qed'], dir);
    expect(ours).toEqual(qemu);
  });
});

describe('compare over chains and formats', () => {
  const cases = [
    ['top.qed', 'flat.raw'],
    ['flat.raw', 'top.qed'],
    ['top.qed', 'flat.qed'],
    ['-s', 'top.qed', 'flat.qed'],
    ['-s', 'top.qed', 'top.qed'],
    ['top.qed', 'diff.raw'],
    ['-f', 'qed', '-F', 'raw', 'top.qed', 'diff.raw'],
    ['mid.qed', 'base.raw'],
    ['base.raw', 'mid.qed'],
    ['-s', 'mid.qed', 'base.raw'],
    ['top.vhd', 'top.qed'],
    ['top.vdi', 'flat.raw'],
    ['-p', 'top.qed', 'flat.raw'],
    ['orphan.qed', 'flat.raw'],
  ];
  for (const args of cases) {
    it(args.join(' '), async () => {
      const { qemu, ours } = await runBoth(['compare', ...args], dir);
      expect(ours).toEqual(qemu);
    });
  }
});

let n = 0;
/** Convert with both tools into twin directories; compare exit, output, content and layout. */

const convertBoth = (args: string[], out: string, fmt: string) =>
  convertBothIn(dir, args, out, fmt, { info: true });

describe('convert over chains and formats', () => {
  it('a chain to raw', () => convertBoth(['top.qed', 'OUT'], 'o.raw', 'raw'));
  it('a chain to qed', () => convertBoth(['-O', 'qed', 'top.qed', 'OUT'], 'o.qed', 'qed'));
  it('a chain to vdi', () => convertBoth(['-O', 'vdi', 'top.qed', 'OUT'], 'o.vdi', 'vdi'));
  it('a chain to vpc', () => convertBoth(['-O', 'vpc', 'top.qed', 'OUT'], 'o.vhd', 'vpc'));
  it('raw to qed, -S 0', () => convertBoth(['-S', '0', '-O', 'qed', 'flat.raw', 'OUT'], 'o.qed', 'qed'));
  it('qed to qed with -o', () =>
    convertBoth(['-O', 'qed', '-o', 'cluster_size=4k', 'top.qed', 'OUT'], 'o.qed', 'qed'));
  it('-B keeps only the top layer', () =>
    convertBoth(['-O', 'qed', '-B', join(dir, 'mid.qed'), '-F', 'qed', 'top.qed', 'OUT'], 'o.qed', 'qed'));
  it('-B with -o backing_fmt', () =>
    convertBoth(
      ['-O', 'qed', '-o', `backing_file=${join(dir, 'base.raw')},backing_fmt=raw`, 'mid.qed', 'OUT'],
      'o.qed',
      'qed',
    ));
  it('-B onto a backing that is smaller than the source', () =>
    convertBoth(['-O', 'qed', '-B', join(dir, 'base.raw'), '-F', 'raw', 'top.qed', 'OUT'], 'o.qed', 'qed'));
  // Two new clusters get 4 KiB of data followed by zeros: qemu-img writes the 4 KiB alone,
  // vdisk writes the whole cluster and then punches the zero run out of it. The same content
  // and map; 2 × 60 KiB of host blocks differ.
  it('-B on a flat source writes what differs', () =>
    convertBothIn(
      dir,
      ['-O', 'qed', '-B', join(dir, 'base.raw'), '-F', 'raw', 'flat.qed', 'OUT'],
      'o.qed',
      'qed',
      { info: true, actualSlack: 2 * 61440 },
    ));
  it('-B without -F', () =>
    convertBoth(['-O', 'qed', '-B', join(dir, 'base.raw'), 'top.qed', 'OUT'], 'o.qed', 'qed'));
  it('-B with a missing backing', () =>
    convertBoth(['-O', 'qed', '-B', join(dir, 'nope.raw'), '-F', 'raw', 'top.qed', 'OUT'], 'o.qed', 'qed'));
  it('a source with a missing backing', () => convertBoth(['orphan.qed', 'OUT'], 'o.raw', 'raw'));
  it('-n into an existing chain', async () => {
    n++;
    const mk = (d: string) => {
      mkdirSync(d);
      qemuImgOk(['create', '-f', 'qed', '-b', join(dir, 'base.raw'), '-F', 'raw', join(d, 'o.qed'), '12M']);
    };
    mk(join(dir, `q${n}`));
    mk(join(dir, `v${n}`));
    n--;
    const q = join(dir, `q${n + 1}`);
    const v = join(dir, `v${n + 1}`);
    const { qemu, ours } = await runEach(
      ['convert', '-n', '-O', 'qed', 'top.qed', join(q, 'o.qed')],
      ['convert', '-n', '-O', 'qed', 'top.qed', join(v, 'o.qed')],
      dir,
    );
    expect(ours).toEqual(qemu);
    expect(qemuImg(['compare', join(v, 'o.qed'), 'top.qed'], dir).stdout).toBe('Images are identical.\n');
    expect(qemuImgOk(['map', '--output=json', join(v, 'o.qed')])).toBe(
      qemuImgOk(['map', '--output=json', join(q, 'o.qed')]).replaceAll(q, v),
    );
    expect(qemuImg(['check', join(v, 'o.qed')]).code).toBe(0);
    n++;
  });
});
