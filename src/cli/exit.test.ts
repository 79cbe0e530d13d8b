/**
 * How the CLI's process ends (src/cli/exit.ts): at once with the command's status when nothing
 * is left to do, as Node ends it otherwise. The built bin/vdisk keeps qemu-img's exit statuses
 * and everything it prints, and output still on its way through a pipe behind `-` arrives whole.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, tempDir } from '../test/oracle.js';
import { mayExitNow } from './exit.js';

const BIN = join(process.cwd(), 'bin', 'vdisk');

let dir: string;
let cleanup: () => void;
const p = (n: string) => join(dir, n);

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-exit-'));
  qemuImgOk(['create', '-q', '-f', 'qcow2', p('a.qcow2'), '64M']);
  qemuIo(p('a.qcow2'), ['write -P 7 0 4M', 'write -P 9 32M 8M'], 'qcow2');
  qemuImgOk(['convert', '-O', 'raw', p('a.qcow2'), p('a.raw')]);
  qemuImgOk(['convert', '-O', 'raw', p('a.qcow2'), p('b.raw')]);
  qemuIo(p('b.raw'), ['write -P 1 40M 512'], 'raw');
});
afterAll(() => cleanup());

describe('mayExitNow', () => {
  const idle = { execArgv: [], env: {}, exitListeners: 0, resources: [] };

  it('an idle process without Node flags ends at once', () => {
    expect(mayExitNow(idle)).toBe(true);
    expect(mayExitNow({ ...idle, env: { NODE_OPTIONS: '' } })).toBe(true);
  });

  it('what the teardown still has to do keeps it', () => {
    expect(mayExitNow({ ...idle, resources: ['PipeWrap'] })).toBe(false);
    expect(mayExitNow({ ...idle, resources: ['FSReqCallback'] })).toBe(false);
    expect(mayExitNow({ ...idle, exitListeners: 1 })).toBe(false);
    expect(mayExitNow({ ...idle, execArgv: ['--cpu-prof'] })).toBe(false);
    expect(mayExitNow({ ...idle, env: { NODE_OPTIONS: '--heap-prof' } })).toBe(false);
    expect(mayExitNow({ ...idle, env: { NODE_V8_COVERAGE: '/tmp/c' } })).toBe(false);
  });
});

describe('bin/vdisk ends as qemu-img does', () => {
  it('the same exit status and output, success and failure', () => {
    for (const args of [
      ['info', 'a.qcow2'],
      ['check', 'a.qcow2'],
      ['compare', 'a.qcow2', 'a.raw'],
      ['compare', 'a.qcow2', 'b.raw'],
      ['compare', '-f', 'qcow2', 'a.raw', 'b.raw'],
      ['info', 'missing.qcow2'],
    ]) {
      const v = spawnSync(BIN, args, { cwd: dir, encoding: 'utf8' });
      const q = qemuImg(args, dir);
      expect(v.status, args.join(' ')).toBe(q.code);
      expect(v.stdout, args.join(' ')).toBe(q.stdout.replaceAll('qemu-img', 'vdisk'));
      expect(v.stderr === '', args.join(' ')).toBe(q.stderr === '');
    }
  });

  it('convert to a pipe whose reader waits: every byte arrives before the process ends', async () => {
    const child = spawn(BIN, ['convert', '-O', 'raw', 'a.qcow2', '-'], { cwd: dir });
    child.stdout.pause();
    const hash = createHash('sha256');
    let bytes = 0;
    const code = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
    await new Promise((r) => setTimeout(r, 300));
    child.stdout.on('data', (b: Buffer) => {
      hash.update(b);
      bytes += b.length;
    });
    child.stdout.resume();
    expect(await code).toBe(0);
    expect(bytes).toBe(64 << 20);
    expect(hash.digest('hex')).toBe(qemuRawDigest(p('a.qcow2'), 'qcow2'));
  });
});
