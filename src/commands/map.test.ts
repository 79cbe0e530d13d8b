import { truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgOk, qemuIo, tempDir } from '../test/oracle.js';
import { runBoth } from '../test/same.js';

let dir: string;
let cleanup: () => void;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-map-'));
  // Data, zeros written as data, explicit zero writes (holes), discards, data at the very end.
  qemuImgOk(['create', '-f', 'raw', join(dir, 'r.img'), '16M']);
  qemuIo(
    join(dir, 'r.img'),
    [
      'write -P 0xab 1M 64k',
      'write -P 0 4M 64k',
      'write -P 0xcd 8M 1M',
      'write -z 8448k 64k',
      'write -P 0x11 16320k 64k',
    ],
    'raw',
  );
  // A sparse vhdx with data and a zero block: QEMU 7.2's vhdx has no block status.
  qemuImgOk(['create', '-f', 'vhdx', join(dir, 's.vhdx'), '64M']);
  qemuIo(join(dir, 's.vhdx'), ['write -P 0x5a 0 1M', 'write -z 16M 8M'], 'vhdx');
  // An odd-sized file: qemu rounds its size up to whole sectors.
  writeFileSync(join(dir, 'odd.img'), Buffer.alloc(1000, 7));
  writeFileSync(join(dir, 'empty.img'), Buffer.alloc(0));
  // A fully sparse 1 TiB file.
  writeFileSync(join(dir, 'huge.img'), Buffer.alloc(0));
  truncateSync(join(dir, 'huge.img'), 2 ** 40);
});
afterAll(() => cleanup());

const cases: string[][] = [
  ['map', '--output=json', 's.vhdx'],
  ['map', 's.vhdx'],
  ['measure', '-O', 'qcow2', 's.vhdx'],
  ['map', 'r.img'],
  ['map', '--output=json', 'r.img'],
  ['map', '--output', 'human', '-f', 'raw', 'r.img'],
  ['map', '--output=json', '--start-offset=1M', '--max-length=100000', 'r.img'],
  ['map', '--output=json', '-s', '1.5k', '-l', '2k', 'r.img'],
  ['map', '--output=json', '--start-offset=0x100000', '--max-length=8M', 'r.img'],
  ['map', '--start-offset=8M', 'r.img'],
  ['map', '--output=json', '--start-offset=100M', 'r.img'],
  ['map', '--output=json', '--max-length=0', 'r.img'],
  ['map', '--output=json', 'odd.img'],
  ['map', 'odd.img'],
  ['map', '--output=json', 'empty.img'],
  ['map', 'empty.img'],
  ['map', '--output=json', '-U', 'huge.img'],
  ['map', '--force-share', 'huge.img'],
  ['map', '--outp=json', '--max-len', '3M', 'r.img'],
  // errors
  ['map', 'missing.img'],
  ['map'],
  ['map', 'r.img', 'odd.img'],
  ['map', '--output=xml', 'r.img'],
  ['map', '--start-offset=abc', 'r.img'],
  ['map', '--max-length=-5', 'r.img'],
  ['map', '--max-length=99999999999E', 'r.img'],
  ['map', '--start-offset=1.5', 'r.img'],
  ['map', '-x', 'r.img'],
  ['map', '-Ux', 'r.img'],
  ['map', '-xU', 'r.img'],
  ['map', '--bogus', 'r.img'],
  ['map', '--force-share=yes', 'r.img'],
  ['map', 'r.img', '-f'],
  ['map', '-f', 'nosuchfmt', 'r.img'],
];

describe('map against qemu-img (raw)', () => {
  for (const args of cases) {
    it(args.slice(1).join(' ') || '(no arguments)', async () => {
      const { qemu, ours } = await runBoth(args, dir);
      expect(ours).toEqual(qemu);
    });
  }
});

// qemu_strtosz through --start-offset: the JSON names the parsed value (or the error).
const numbers = [
  '1.5k',
  '0x10',
  '0X1f',
  '1.k',
  '.5k',
  '1.0',
  '1e3',
  '0x1k',
  '0x1.5',
  ' 12',
  '12 ',
  '+5',
  '1b',
  '1B',
  '0x',
  '3.999999999999999999k',
  '1.00000001G',
  '2E',
  '7E',
  '8E',
  '16E',
  '0.5',
  'k',
  '',
  '1.5e3k',
  '18446744073709551615',
  '18446744073709551616',
  '9223372036854775807',
  '9223372036854775808',
  '0.0001k',
];

describe('size arguments parse as qemu_strtosz does', () => {
  for (const n of numbers) {
    it(JSON.stringify(n), async () => {
      const { qemu, ours } = await runBoth(
        ['map', '--output=json', `--start-offset=${n}`, '--max-length=0', 'r.img'],
        dir,
      );
      expect(ours).toEqual(qemu);
    });
  }
});
