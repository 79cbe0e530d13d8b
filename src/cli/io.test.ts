/**
 * The CLI's output to fds 1 and 2 (src/cli/io.ts) as users run it: the built bin/vdisk, its
 * output compared with qemu-img's on the same image, through a pipe, a non-blocking pipe that
 * fills up (EAGAIN), and a reader that goes away (EPIPE); and the start-up work it avoids
 * (issue 16): printing commands load neither node:net (process.stdout on a pipe) nor the NBD
 * client, nor node:module.
 */
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgOk, qemuIo, tempDir } from '../test/oracle.js';

const BIN = join(process.cwd(), 'bin', 'vdisk');

let dir: string;
let cleanup: () => void;
const p = (n: string) => join(dir, n);

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-io-'));
  qemuImgOk(['create', '-q', '-f', 'qcow2', p('small.qcow2'), '64M']);
  // Every other 4 KiB cluster of 12 MiB written: `map --output=json` prints ~300 KiB, more
  // than a pipe holds (64 KiB).
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', p('many.qcow2'), '64M']);
  const writes: string[] = [];
  for (let i = 0; i < 3000; i += 2) writes.push(`write ${i * 4096} 4096`);
  qemuIo(p('many.qcow2'), writes, 'qcow2');
});
afterAll(() => cleanup());

describe('bin/vdisk output', () => {
  it('info, check and map print what qemu-img prints, through a pipe', () => {
    for (const args of [
      ['info', 'small.qcow2'],
      ['check', 'small.qcow2'],
      ['map', '--output=json', 'many.qcow2'],
    ]) {
      const v = spawnSync(BIN, args, { cwd: dir, encoding: 'utf8', maxBuffer: 1 << 24 });
      const q = spawnSync('qemu-img', args, { cwd: dir, encoding: 'utf8', maxBuffer: 1 << 24 });
      expect(v.stderr).toBe('');
      expect(v.status).toBe(q.status);
      expect(v.stdout).toBe(q.stdout.replaceAll('qemu-img', 'vdisk'));
    }
  });

  it('a non-blocking pipe that fills up (EAGAIN): everything arrives, in order', () => {
    // python3 makes the pipe non-blocking (as a parent sharing its own pipe can leave it) and
    // reads only after the writer has filled it.
    const script = `
import os, fcntl, subprocess, sys, time
r, w = os.pipe()
fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
p = subprocess.Popen(sys.argv[1:], stdout=w)
os.close(w)
time.sleep(1)
out = b''
while True:
    b = os.read(r, 65536)
    if not b: break
    out += b
sys.stdout.buffer.write(out)
sys.exit(p.wait())
`;
    writeFileSync(p('nb.py'), script);
    const args = ['map', '--output=json', 'many.qcow2'];
    const v = spawnSync('python3', [p('nb.py'), BIN, ...args], { cwd: dir, maxBuffer: 1 << 24 });
    expect(v.stderr.toString()).toBe('');
    expect(v.status).toBe(0);
    const q = qemuImgOk(args, dir);
    expect(v.stdout.length).toBe(q.length);
    expect(v.stdout.toString()).toBe(q);
  });

  it('a reader that goes away (EPIPE): no stack trace, no hang', async () => {
    const child = spawn(BIN, ['map', '--output=json', 'many.qcow2'], { cwd: dir });
    const err: Buffer[] = [];
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdout.once('data', () => child.stdout.destroy());
    const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
    // qemu-img dies of SIGPIPE; Node ignores the signal, and vdisk drops what it cannot write.
    expect(Buffer.concat(err).toString()).toBe('');
    expect(code).toBe(0);
  });

  it('info, check and map load no module they do not use (start-up)', () => {
    const dump = p('dump.mjs');
    writeFileSync(
      dump,
      `import { writeFileSync } from 'node:fs';
process.on('exit', () => writeFileSync(process.env.MODULES_OUT, process.moduleLoadList.join('\\n')));
`,
    );
    for (const args of [
      ['info', 'small.qcow2'],
      ['check', 'small.qcow2'],
      ['map', 'small.qcow2'],
      ['--version'],
    ]) {
      const out = p('modules.txt');
      const r = spawnSync(process.execPath, ['--import', dump, BIN, ...args], {
        cwd: dir,
        encoding: 'utf8',
        env: { ...process.env, MODULES_OUT: out },
      });
      expect(r.status).toBe(0);
      const loaded = readFileSync(out, 'utf8').split('\n');
      expect(loaded).toContain('NativeModule fs');
      for (const m of ['NativeModule net', 'NativeModule module', 'NativeModule tty']) {
        expect(loaded, `${args.join(' ')}: ${m}`).not.toContain(m);
      }
    }
  });
});
