/**
 * Crash safety of amend, rebase and resize: `vdisk amend` (refcount_bits change, compat
 * downgrade with zero clusters to expand), `vdisk rebase` (safe mode on a qcow2 chain) and
 * `vdisk resize --preallocation=metadata|full` (growing) run as child
 * processes and are killed with SIGKILL at random moments. Then qemu-img check finds no
 * corruption (leaked clusters allowed), the image reads exactly as before, and its header is
 * the before or the after state. Running the same command again completes it.
 */
import { spawn } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLI_ENTRY,
  qemuImg,
  qemuImgOk,
  qemuIo,
  qemuRawDigest,
  TSX_LOADER,
  tempDir,
  vdisk,
} from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
let script: string;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-amend-crash-'));
  // The CLI as a child; "ready" once everything is loaded, so the kill lands in the work.
  script = join(dir, 'run.mts');
  writeFileSync(
    script,
    `const { main } = await import(${JSON.stringify(CLI_ENTRY.replace(/bin\.ts$/, 'main.ts'))});\n` +
      `await import(${JSON.stringify(CLI_ENTRY.replace(/cli[/\\]bin\.ts$/, 'formats/qcow2/amend.ts'))});\n` +
      `process.stdout.write('ready\\n');\nprocess.exitCode = await main(process.argv.slice(2));\n`,
  );
});
afterAll(() => cleanup());

/**
 * Run the CLI with args; SIGKILL it `delayMs` after it is ready. True if it finished first.
 * (Measured here: refcount_bits 60-280 ms of work, the downgrade ~430 ms, the rebase ~510 ms;
 * the delays are drawn below those, so most runs are cut somewhere inside the work.)
 */
function runAndKill(args: string[], delayMs: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', TSX_LOADER, script, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: dir,
    });
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.stdout.once('data', () => {
      setTimeout(() => child.kill('SIGKILL'), delayMs);
    });
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL') resolve(false);
      else if (code === 0) resolve(true);
      else reject(new Error(`vdisk ${args.join(' ')} failed (${code}): ${err}`));
    });
  });
}

let seed = 12345;
const rand = () => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31;
};

function formatSpecific(f: string): Record<string, unknown> {
  const j = JSON.parse(qemuImgOk(['info', '--output=json', '-U', f])) as {
    'format-specific': { data: Record<string, unknown> };
  };
  return j['format-specific'].data;
}

function expectConsistent(f: string, digest: string): void {
  const r = qemuImg(['check', f]);
  expect(r.stdout + r.stderr).not.toMatch(/ERROR|\d+ errors were found/);
  expect([0, 3]).toContain(r.code);
  expect(qemuRawDigest(f)).toBe(digest);
}

describe('SIGKILL during amend, rebase and resize', () => {
  it('resize --preallocation (metadata, full): old or new size, content unchanged, zeros after', async () => {
    const orig = join(dir, 'rs-orig.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', orig, '64M']);
    qemuIo(orig, ['write -P 0x5a 0 16M', 'write -z 20M 4M', 'write -P 0x6b 40M 8M'], 'qcow2');
    const oldDigest = qemuRawDigest(orig);
    const sizes = { metadata: 2 * 2 ** 30, full: 512 * 2 ** 20 };
    // The digest of the grown image: the old content, then zeros.
    const grownDigest: Record<string, string> = {};
    for (const [mode, size] of Object.entries(sizes)) {
      const f = join(dir, `rs-${mode}-ref.qcow2`);
      copyFileSync(orig, f);
      qemuImgOk(['resize', '-q', `--preallocation=${mode}`, f, String(size)]);
      grownDigest[mode] = qemuRawDigest(f);
    }
    let killed = 0;
    for (let round = 0; round < 6; round++) {
      const mode = round % 2 === 0 ? 'metadata' : 'full';
      const size = sizes[mode];
      const f = join(dir, `rs-${round}.qcow2`);
      copyFileSync(orig, f);
      const args = ['resize', `--preallocation=${mode}`, f, String(size)];
      // Measured here: metadata to 2 GiB with 4 KiB clusters ~350 ms of work, full to 512 MiB ~450 ms.
      const done = await runAndKill(args, Math.floor(rand() * 350));
      if (!done) killed++;
      const virtual = (
        JSON.parse(qemuImgOk(['info', '--output=json', '-U', f])) as { 'virtual-size': number }
      )['virtual-size'];
      expect([64 << 20, size]).toContain(virtual);
      expectConsistent(f, virtual === size ? grownDigest[mode]! : oldDigest);
      // Running it again (on whichever size it has) leaves the grown image.
      if (virtual !== size) expect((await vdisk(args)).code).toBe(0);
      expectConsistent(f, grownDigest[mode]!);
    }
    expect(killed).toBeGreaterThan(0);
  });

  it('amend -o refcount_bits: old or new refcount width, content unchanged', async () => {
    const orig = join(dir, 'rc-orig.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', orig, '64M']);
    qemuIo(orig, ['write -P 0x5a 0 24M', 'write -z 30M 4M', 'write -P 0x6b 40M 8M'], 'qcow2');
    const digest = qemuRawDigest(orig);
    let killed = 0;
    for (let round = 0; round < 6; round++) {
      const f = join(dir, `rc-${round}.qcow2`);
      copyFileSync(orig, f);
      const bits = [1, 4, 64][round % 3]!;
      const done = await runAndKill(['amend', '-o', `refcount_bits=${bits}`, f], Math.floor(rand() * 200));
      if (!done) killed++;
      expectConsistent(f, digest);
      expect([16, bits]).toContain(formatSpecific(f)['refcount-bits']);
      // Running it again finishes the job.
      expect((await vdisk(['amend', '-o', `refcount_bits=${bits}`, f])).code).toBe(0);
      expect(formatSpecific(f)['refcount-bits']).toBe(bits);
      expect(qemuImg(['check', f]).code).toBeLessThanOrEqual(3);
      expect(qemuRawDigest(f)).toBe(digest);
    }
    expect(killed).toBeGreaterThan(0);
  });

  it('amend -o compat=0.10 (zero clusters expanded over a backing file): v3 or v2, content unchanged', async () => {
    const base = join(dir, 'base.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', base, '32M']);
    qemuIo(base, ['write -P 0x11 0 32M'], 'qcow2');
    const orig = join(dir, 'dg-orig.qcow2');
    qemuImgOk([
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'cluster_size=4k',
      '-b',
      'base.qcow2',
      '-F',
      'qcow2',
      orig,
    ]);
    const cmds: string[] = [];
    for (let i = 0; i < 32; i++) cmds.push(i % 2 === 0 ? `write -z ${i}M 1M` : `write -P ${i} ${i}M 512k`);
    qemuIo(orig, cmds, 'qcow2');
    const digest = qemuRawDigest(orig);
    let killed = 0;
    for (let round = 0; round < 6; round++) {
      const f = join(dir, `dg-${round}.qcow2`);
      copyFileSync(orig, f);
      const done = await runAndKill(['amend', '-o', 'compat=0.10', f], Math.floor(rand() * 300));
      if (!done) killed++;
      expectConsistent(f, digest);
      expect(['1.1', '0.10']).toContain(formatSpecific(f)['compat']);
      expect((await vdisk(['amend', '-o', 'compat=0.10', f])).code).toBe(0);
      expect(formatSpecific(f)['compat']).toBe('0.10');
      expectConsistent(f, digest);
    }
    expect(killed).toBeGreaterThan(0);
  });

  it('rebase (safe mode) on a qcow2 chain: old or new backing, visible content unchanged', async () => {
    const base = join(dir, 'rb-base.qcow2');
    const other = join(dir, 'rb-other.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', base, '32M']);
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', other, '32M']);
    const bw: string[] = [];
    const ow: string[] = [];
    for (let i = 0; i < 32; i++) {
      bw.push(`write -P ${i + 1} ${i}M 1M`);
      if (i % 3 !== 0) ow.push(`write -P ${(i + 7) & 0xff} ${i}M 768k`);
    }
    qemuIo(base, bw, 'qcow2');
    qemuIo(other, ow, 'qcow2');
    const orig = join(dir, 'rb-top-orig.qcow2');
    qemuImgOk([
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'cluster_size=4k',
      '-b',
      'rb-base.qcow2',
      '-F',
      'qcow2',
      orig,
    ]);
    qemuIo(orig, ['write -P 0x77 3M 2M', 'write -z 10M 1M'], 'qcow2');
    const digest = qemuRawDigest(orig);
    const baseDigest = qemuRawDigest(base);
    let killed = 0;
    for (let round = 0; round < 6; round++) {
      const f = join(dir, `rb-top-${round}.qcow2`);
      copyFileSync(orig, f);
      const args = ['rebase', '-b', 'rb-other.qcow2', '-F', 'qcow2', f];
      const done = await runAndKill(args, Math.floor(rand() * 350));
      if (!done) killed++;
      expectConsistent(f, digest);
      const backing = (
        JSON.parse(qemuImgOk(['info', '--output=json', '-U', f])) as { 'backing-filename': string }
      )['backing-filename'];
      expect(['rb-base.qcow2', 'rb-other.qcow2']).toContain(backing);
      // The backing images are never written; running the rebase again completes it.
      expect(qemuRawDigest(base)).toBe(baseDigest);
      expect((await vdisk(args, dir)).code).toBe(0);
      expect(
        (JSON.parse(qemuImgOk(['info', '--output=json', '-U', f])) as { 'backing-filename': string })[
          'backing-filename'
        ],
      ).toBe('rb-other.qcow2');
      expectConsistent(f, digest);
    }
    expect(killed).toBeGreaterThan(0);
  });
});
