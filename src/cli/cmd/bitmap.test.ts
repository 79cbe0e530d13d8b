/**
 * `vdisk bitmap` against `qemu-img bitmap` on copies of the same images: messages, exit
 * codes, the resulting bitmap directory (qemu-img info) and contents (qemu-nbd -B, nbdinfo
 * --map=qemu:dirty-bitmap:NAME), and qemu-img check clean afterwards. QEMU names the image
 * by its block node name (#blockNNN, which changes from run to run) in two messages; vdisk
 * names the file there, and the comparison masks both.
 */
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuBitmapMap } from '../../test/bitmap-helpers.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
let base: string;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-cli-bitmap-'));
  base = join(dir, 'base.qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', base, '64M']);
  qemuImgOk(['bitmap', '--add', base, 'b0']);
  qemuImgOk(['bitmap', '--add', '-g', '512', base, 'fine']);
  qemuIo(base, ['write -P 1 0 64k', 'write -P 2 5M 4k', 'write -P 3 33M 1M']);
  qemuImgOk(['bitmap', '--add', '-g', '1M', '--disable', base, 'off']);
  qemuIo(base, ['write -P 4 40M 512']);
});
afterAll(() => cleanup());

function names(path: string): string[] {
  const info = JSON.parse(qemuImgOk(['info', '--output=json', path])) as {
    'format-specific': { data: { bitmaps?: Array<{ name: string; flags: string[] }> } };
  };
  // qemu-nbd -B refuses in-use (inconsistent) bitmaps: only the others have contents to compare.
  return (info['format-specific'].data.bitmaps ?? [])
    .filter((b) => !b.flags.includes('in-use'))
    .map((b) => b.name);
}

const mask = (text: string, file: string) =>
  text
    .replaceAll(file, 'IMG')
    .replace(/#block\d+/g, 'IMG')
    .replace(/^vdisk:/gm, 'qemu-img:')
    .replaceAll("'vdisk --help'", "'qemu-img --help'");

/** Run the same bitmap commands with both tools on copies of `src`; compare everything. */
async function same(label: string, runs: string[][], src = base): Promise<void> {
  const q = join(dir, `${label}.q.qcow2`);
  const v = join(dir, `${label}.v.qcow2`);
  copyFileSync(src, q);
  copyFileSync(src, v);
  for (const args of runs) {
    const at = (p: string) => args.map((a) => (a === 'IMG' ? p : a));
    const qr = qemuImg(['bitmap', ...at(q)]);
    const vr = await vdisk(['bitmap', ...at(v)]);
    expect(mask(vr.stderr, v), args.join(' ')).toBe(mask(qr.stderr, q));
    expect(vr.stdout).toBe(qr.stdout);
    expect(vr.code, args.join(' ')).toBe(qr.code);
  }
  const infoOf = (p: string) =>
    qemuImgOk(['info', p])
      .replaceAll(p, 'IMG')
      .replace(/disk size: .*\n/, '');
  expect(infoOf(v)).toBe(infoOf(q));
  expect((await vdisk(['info', v])).stdout.replace(/disk size: .*\n/, '').replaceAll(v, 'IMG')).toBe(
    infoOf(q),
  );
  const check = qemuImg(['check', v]);
  expect(check.stdout).toContain('No errors were found');
  expect(check.code).toBe(0);
  for (const name of names(q)) {
    expect(await qemuBitmapMap(dir, v, name), name).toBe(await qemuBitmapMap(dir, q, name));
  }
}

describe('vdisk bitmap against qemu-img bitmap', () => {
  it('adds bitmaps (default and given granularity, disabled) in command-line order', async () => {
    await same('add', [
      ['--add', 'IMG', 'n1'],
      ['--add', '-g', '128k', '--disable', 'IMG', 'n2'],
      ['--add', '--disable', '--enable', 'IMG', 'n3'],
      ['--add', '--granularity=4096', 'IMG', 'n4'],
    ]);
  });

  it('removes, clears, enables and disables', async () => {
    await same('ops', [
      ['--remove', 'IMG', 'b0'],
      ['--clear', 'IMG', 'fine'],
      ['--enable', 'IMG', 'off'],
      ['--disable', 'IMG', 'fine'],
    ]);
  });

  it('merges bitmaps of other granularities, from the image and from another file (-b, -F)', async () => {
    const other = join(dir, 'other.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', other, '64M']);
    qemuImgOk(['bitmap', '--add', '-g', '2M', other, 'o']);
    qemuIo(other, ['write 50M 4k']);
    await same('merge', [
      ['--add', '-g', '4k', '--merge', 'fine', 'IMG', 'm1'],
      ['--merge', 'b0', 'IMG', 'm1'],
      ['--add', '-g', '2M', '--merge', 'b0', 'IMG', 'm2'],
      ['--merge', 'o', '-b', other, '-F', 'qcow2', 'IMG', 'off'],
      ['--merge', 'off', '--clear', '--merge', 'fine', 'IMG', 'b0'],
    ]);
  });

  it('fails as qemu-img does: duplicates, missing bitmaps, bad names and granularities, bad usage', async () => {
    await same('errors', [
      ['--add', 'IMG', 'b0'],
      ['--remove', 'IMG', 'nope'],
      ['--clear', 'IMG', 'nope'],
      ['--enable', 'IMG', 'nope'],
      ['--merge', 'nope', 'IMG', 'b0'],
      ['--merge', 'b0', 'IMG', 'nope'],
      ['--add', 'IMG', ''],
      ['--add', 'IMG', 'x'.repeat(1024)],
      ['--add', '-g', '100', 'IMG', 'g'],
      ['--add', '-g', '4G', 'IMG', 'g'],
      ['--add', '-g', '1x', 'IMG', 'g'],
      ['--add', '-g', '4T', 'IMG', 'g'],
      ['--clear', '-g', '1M', 'IMG', 'b0'],
      ['-b', 'IMG', '--add', 'IMG', 'b0'],
      ['-F', 'qcow2', '--merge', 'b0', 'IMG', 'b0'],
      ['IMG', 'b0'],
      ['--add', 'IMG'],
      ['--add', 'IMG', 'a', 'b'],
      ['--bogus', 'IMG', 'a'],
      ['--merge'],
      // The first failure stops the rest; what ran before it stays.
      ['--add', '--merge', 'nope', '--remove', 'IMG', 'half'],
    ]);
  });

  it('works on in-use (inconsistent) bitmaps only by removing them', async () => {
    const inUse = join(dir, 'inuse.qcow2');
    copyFileSync(base, inUse);
    // A process that died with the image open leaves its bitmaps in use: qemu-io -c abort.
    qemuImg(['bitmap', '--add', inUse, 'x']);
    const r = qemuImg(['info', inUse]);
    expect(r.code).toBe(0);
    const { spawnSync } = await import('node:child_process');
    spawnSync('qemu-io', ['-c', 'write 0 512', '-c', 'abort', inUse]);
    expect(qemuImgOk(['info', inUse])).toContain('in-use');
    await same(
      'inuse',
      [
        ['--clear', 'IMG', 'b0'],
        ['--enable', 'IMG', 'b0'],
        ['--merge', 'b0', 'IMG', 'x'],
        ['--merge', 'x', 'IMG', 'b0'],
        ['--remove', 'IMG', 'b0'],
      ],
      inUse,
    );
  });

  it('refuses other formats and qcow2 v2 as qemu-img does', async () => {
    const raw = join(dir, 'r.raw');
    qemuImgOk(['create', '-q', '-f', 'raw', raw, '1M']);
    const v2 = join(dir, 'v2.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', v2, '1M']);
    await same('v2', [['--add', 'IMG', 'x']], v2);
    const vmdk = join(dir, 'v.vmdk');
    qemuImgOk(['create', '-q', '-f', 'vmdk', vmdk, '1M']);
    for (const [p, fmt] of [
      [raw, 'raw'],
      [vmdk, 'vmdk'],
    ] as const) {
      for (const op of [['--add'], ['--remove'], ['--merge', 'a']]) {
        const q = qemuImg(['bitmap', '-f', fmt, ...op, p, 'x']);
        const v = await vdisk(['bitmap', '-f', fmt, ...op, p, 'x']);
        expect(mask(v.stderr, p)).toBe(mask(q.stderr, p));
        expect(v.code).toBe(q.code);
      }
    }
  });

  it('default granularity follows the cluster size within [4 KiB, 64 KiB]', async () => {
    for (const cs of ['512', '8k', '2M']) {
      const p = join(dir, `cs-${cs}.qcow2`);
      qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs}`, p, '8M']);
      await same(`cs-${cs}`, [['--add', 'IMG', 'd']], p);
    }
  });

  it('is listed by vdisk --help and has its own --help', async () => {
    const help = await vdisk(['--help']);
    const qemuLine = qemuImg(['--help'])
      .stdout.split('\n')
      .find((l) => l.startsWith('  bitmap '));
    expect(help.stdout.split('\n')).toContain(qemuLine);
    const own = await vdisk(['bitmap', '--help']);
    expect(own.code).toBe(0);
    expect(own.stdout).toContain('usage: vdisk bitmap (--merge SOURCE');
  });
});
