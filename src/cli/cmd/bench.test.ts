/**
 * `vdisk bench` against `qemu-img bench`: the same lines (but the run time), messages and exit
 * status for the same options, writes that really land (read back with qemu-io), and
 * `vdisk --help` listing every command qemu-img 7.2 lists.
 */
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-bench-'));
  qemuImgOk(['create', '-q', '-f', 'qcow2', join(dir, 'a.qcow2'), '16M']);
  qemuImgOk(['create', '-q', '-f', 'raw', join(dir, 'a.raw'), '1M']);
  writeFileSync(join(dir, 'not-vmdk.img'), Buffer.alloc(4096));
});
afterAll(() => cleanup());

const timing = /^Run completed in \d+\.\d{3} seconds\.$/m;

async function both(args: string[]) {
  // Writes change the image: each tool gets its own copy.
  const name = args[args.length - 1]!;
  const src = join(dir, name);
  if (name !== 'missing') copyFileSync(src, join(dir, `v-${name}`));
  if (name !== 'missing') copyFileSync(src, join(dir, `q-${name}`));
  const qr = qemuImg(['bench', ...args.slice(0, -1), name === 'missing' ? 'missing' : `q-${name}`], dir);
  const vr = await vdisk(['bench', ...args.slice(0, -1), name === 'missing' ? 'missing' : `v-${name}`], dir);
  return { qr, vr };
}

const cases: string[][] = [
  ['-c', '100', 'a.qcow2'],
  ['-c', '10', '-d', '2', '-w', '--pattern=0xab', '-S', '8192', '-o', '4096', '-f', 'qcow2', 'a.qcow2'],
  ['-c', '200', '-w', '--flush-interval=64', 'a.qcow2'],
  ['-c', '100', '-d', '4', '-w', '--flush-interval=8', '--no-drain', '-q', 'a.qcow2'],
  ['-c', '50', '-s', '64k', '-S', '1M', 'a.qcow2'],
  ['-c', '3', '-s', '0', 'a.qcow2'],
  ['-c', '300', '-s', '8k', 'a.raw'],
  ['-c', '5', '-t', 'unsafe', '-w', '-f', 'raw', 'a.raw'],
  ['-c', '5', '-i', 'threads', '-t', 'writeback', 'a.qcow2'],
  ['-c', '5', '-i', 'io_uring', '-U', 'a.qcow2'],
  ['-c', '3', '-o', '16M', 'a.qcow2'],
  ['-c', '3', '-o', '16380k', '-s', '8k', 'a.qcow2'],
  ['--flush-interval=8', 'a.qcow2'],
  ['-c', '10', '-w', '--flush-interval=8', 'a.qcow2'],
  ['-c', 'x', 'a.qcow2'],
  ['-c', '-1', 'a.qcow2'],
  ['-d', '3000000000', 'a.qcow2'],
  ['--pattern=256', 'a.qcow2'],
  ['-t', 'bogus', 'a.qcow2'],
  ['-i', 'bogus', 'a.qcow2'],
  ['-c', '2', '-n', 'a.qcow2'],
  ['-c', '2', '-i', 'native', 'a.qcow2'],
  ['-s', 'x', 'a.qcow2'],
  ['-o', '-1', 'a.qcow2'],
  ['-c', '1', '-U', '-w', 'a.qcow2'],
  ['-c', '1', '-f', 'vmdk', 'not-vmdk.img'],
  ['-c', '3', 'missing'],
];

describe('bench against qemu-img bench', () => {
  for (const args of cases) {
    it(args.join(' '), async () => {
      const { qr, vr } = await both(args);
      const strip = (s: string) => s.replace(timing, 'Run completed in X seconds.');
      expect(strip(vr.stdout).replaceAll('v-', 'q-')).toBe(strip(qr.stdout));
      expect(vr.stderr.replaceAll('vdisk', 'qemu-img').replaceAll('v-', 'q-')).toBe(qr.stderr);
      expect(vr.code).toBe(qr.code);
      if (qr.code === 0) expect(vr.stdout).toMatch(timing);
    });
  }

  it('the usage errors', async () => {
    for (const args of [[], ['a.qcow2', 'b.qcow2']]) {
      const qr = qemuImg(['bench', ...args], dir);
      const vr = await vdisk(['bench', ...args], dir);
      expect(vr.stderr.replaceAll('vdisk', 'qemu-img')).toBe(qr.stderr);
      expect(vr.code).toBe(qr.code);
    }
  });

  it('-d 0: qemu-img 7.2 waits forever for requests it never sends; vdisk refuses the depth', async () => {
    const vr = await vdisk(['bench', '-d', '0', join(dir, 'a.qcow2')]);
    expect(vr).toEqual({ code: 1, stdout: '', stderr: 'vdisk: Invalid queue depth specified\n' });
  });

  it('-w writes the pattern where the requests go, and nothing elsewhere', async () => {
    const p = join(dir, 'w.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', p, '4M']);
    // 10 requests of 8 KiB, 16 KiB apart from 4 KiB: [4k, 12k), [20k, 28k), … [148k, 156k).
    const r = await vdisk([
      'bench',
      '-w',
      '-c',
      '10',
      '-d',
      '3',
      '-s',
      '8k',
      '-S',
      '16k',
      '-o',
      '4k',
      '--pattern=0x5a',
      p,
    ]);
    expect(r.code).toBe(0);
    const reads = ['read -P 0 0 4k'];
    for (let i = 0; i < 10; i++) {
      const at = 4096 + i * 16384;
      reads.push(`read -P 0x5a ${at} 8k`, `read -P 0 ${at + 8192} 8k`);
    }
    reads.push('read -P 0 164k 3932k');
    qemuIo(p, reads, 'qcow2');
    expect(qemuImg(['check', p]).code).toBe(0);
  });

  it('-w wraps at the end of the image as qemu-img does', async () => {
    const q = join(dir, 'wrap-q.raw');
    const v = join(dir, 'wrap-v.raw');
    qemuImgOk(['create', '-q', '-f', 'raw', q, '64k']);
    qemuImgOk(['create', '-q', '-f', 'raw', v, '64k']);
    const args = ['-w', '-f', 'raw', '-c', '20', '-d', '1', '-s', '4k', '-S', '12k', '--pattern=7'];
    expect(qemuImg(['bench', ...args, q]).code).toBe(0);
    expect((await vdisk(['bench', ...args, v])).code).toBe(0);
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'raw', q, v]).stdout).toBe('Images are identical.\n');
  });
});

describe('--help lists the commands qemu-img lists', () => {
  it('every command of qemu-img 7.2 but bitmap (added elsewhere)', async () => {
    const names = (text: string) =>
      text
        .slice(text.indexOf('Command syntax:'))
        .split('\n')
        .slice(1)
        .filter((l) => /^ {2}[a-z]/.test(l))
        .map((l) => l.trim().split(' ')[0]!);
    const qemu = names(qemuImgOk(['--help'])).filter((n) => n !== 'bitmap');
    const ours = names((await vdisk(['--help'])).stdout);
    expect(qemu.length).toBeGreaterThan(10);
    expect(qemu.filter((n) => !ours.includes(n))).toEqual([]);
  });
});
