/**
 * `vdisk nbd` as users run it: the built CLI (bin/vdisk) in the background with qemu-nbd's
 * options, --fork and --pid-file, SIGTERM, a server that stops after its client, TCP, locks,
 * --object/--image-opts and -l; the option errors in-process.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec, execOk, nbdUri, waitForSocket } from '../../test/nbd-helpers.js';
import { qemuImgLuks, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';

const BIN = join(process.cwd(), 'bin', 'vdisk');
const MiB = 1 << 20;
let dir: string;
let cleanup: () => void;
const p = (n: string) => join(dir, n);
const children: ChildProcess[] = [];

function start(args: string[]): { child: ChildProcess; exited: Promise<number>; stderr: () => string } {
  const child = spawn(BIN, ['nbd', ...args], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(child);
  let err = '';
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const exited = new Promise<number>((resolve) => child.once('exit', (code) => resolve(code ?? 128)));
  return { child, exited, stderr: () => err };
}

/**
 * `vdisk nbd --fork …`: its exit status. The server it leaves keeps its stderr (as qemu-nbd's
 * does), so stderr goes to a file and only the parent's exit is awaited.
 */
async function forked(args: string[]): Promise<number> {
  const err = openSync(p('fork.err'), 'w');
  try {
    const child = spawn(BIN, ['nbd', '--fork', ...args], { cwd: dir, stdio: ['ignore', 'ignore', err] });
    return await new Promise<number>((resolve) => child.once('exit', (code) => resolve(code ?? 128)));
  } finally {
    closeSync(err);
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

beforeAll(() => {
  expect(existsSync(join(process.cwd(), 'dist', 'cli', 'bin.js')), 'build first: npm run build').toBe(true);
  ({ dir, cleanup } = tempDir('vdisk-nbdcli-'));
  qemuImgOk(['create', '-q', '-f', 'qcow2', p('a.qcow2'), `${16 * MiB}`]);
  qemuIo(p('a.qcow2'), ['write -P 0x61 0 1M', 'write -P 0x62 5M 64k'], 'qcow2');
  qemuImgOk(['convert', '-O', 'raw', p('a.qcow2'), p('a.raw')]);
});
afterAll(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  cleanup?.();
});

describe('vdisk nbd (the built CLI)', () => {
  it('--fork returns once the server listens; --pid-file names it; SIGTERM stops it and removes the socket', async () => {
    const s = p('fork.sock');
    expect(await forked(['--pid-file', p('nbd.pid'), '-k', s, '-x', 'a', '-r', 'a.qcow2'])).toBe(0);
    expect(existsSync(s)).toBe(true);
    const pid = Number(readFileSync(p('nbd.pid'), 'utf8').trim());
    expect(pid).toBeGreaterThan(0);
    expect(await execOk('nbdinfo', ['--size', nbdUri(s, 'a')])).toBe(`${16 * MiB}\n`);
    // Not persistent: the server stops once its only client has left (as qemu-nbd), removing
    // its socket and pid file. A persistent one (-t) is stopped by SIGTERM.
    for (let i = 0; i < 100 && (existsSync(s) || existsSync(p('nbd.pid'))); i++) {
      await new Promise((res) => setTimeout(res, 50));
    }
    expect(existsSync(s)).toBe(false);
    expect(existsSync(p('nbd.pid'))).toBe(false);
    expect(await forked(['-t', '--pid-file', p('nbd2.pid'), '-k', s, 'a.qcow2'])).toBe(0);
    const pid2 = Number(readFileSync(p('nbd2.pid'), 'utf8').trim());
    expect(await execOk('qemu-img', ['compare', '-f', 'raw', nbdUri(s), p('a.raw')])).toContain('identical');
    expect(existsSync(s)).toBe(true); // persistent
    process.kill(pid2, 'SIGTERM');
    for (let i = 0; i < 100 && existsSync(s); i++) await new Promise((res) => setTimeout(res, 50));
    expect(existsSync(s)).toBe(false);
  });

  it('--fork reports a failure to start with exit status 1', async () => {
    expect(await forked(['-k', p('x.sock'), 'missing.qcow2'])).toBe(1);
    expect(readFileSync(p('fork.err'), 'utf8')).toContain("Could not open 'missing.qcow2'");
  });

  it('exits 0 after its client leaves; holds the image lock meanwhile', async () => {
    const s = p('once.sock');
    const srv = start(['-k', s, '-f', 'qcow2', 'a.qcow2']);
    await waitForSocket(s, () => srv.child.exitCode !== null, srv.stderr);
    // A writable export holds the write lock: qemu-img cannot open the image meanwhile.
    const locked = await exec('qemu-img', ['info', p('a.qcow2')]);
    expect(locked.code).toBe(1);
    expect(locked.stderr).toContain('lock');
    expect(await execOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x63 8M 4k', nbdUri(s)])).toContain(
      'wrote 4096',
    );
    expect(await srv.exited).toBe(0);
    expect(existsSync(s)).toBe(false);
    qemuIo(p('a.qcow2'), ['read -P 0x63 8M 4k'], 'qcow2');
  });

  it('listens on TCP with -b and -p; -e 2 advertises multi-conn', async () => {
    const port = await freePort();
    const srv = start([
      '-t',
      '-r',
      '-e',
      '2',
      '-b',
      '127.0.0.1',
      '-p',
      String(port),
      '-x',
      'disk',
      'a.qcow2',
    ]);
    try {
      const uri = `nbd://127.0.0.1:${port}/disk`;
      for (let i = 0; i < 200; i++) {
        if ((await exec('nbdinfo', ['--size', uri])).code === 0) break;
        await new Promise((res) => setTimeout(res, 25));
      }
      const info = await execOk('nbdinfo', [uri]);
      expect(info).toContain('can_multi_conn: true');
      expect(info).toContain('is_read_only: true');
      expect(await execOk('qemu-img', ['info', uri])).toContain('virtual size: 16 MiB');
    } finally {
      srv.child.kill('SIGTERM');
      expect(await srv.exited).toBe(0);
    }
  });

  it('serves a luks image opened with --object and --image-opts', async () => {
    qemuImgLuks([
      'create',
      '-q',
      '--object',
      'secret,id=s0,data=pw',
      '-f',
      'luks',
      '-o',
      'key-secret=s0,iter-time=10',
      p('l.luks'),
      `${16 * MiB}`,
    ]);
    qemuImgOk([
      'convert',
      '-n',
      '--object',
      'secret,id=s0,data=pw',
      '--target-image-opts',
      '-f',
      'raw',
      p('a.raw'),
      `driver=luks,key-secret=s0,file.filename=${p('l.luks')}`,
    ]);
    const s = p('luks.sock');
    const srv = start([
      '-t',
      '-r',
      '-k',
      s,
      '--object',
      'secret,id=s0,data=pw',
      '--image-opts',
      `driver=luks,key-secret=s0,file.filename=${p('l.luks')}`,
    ]);
    try {
      await waitForSocket(s, () => srv.child.exitCode !== null, srv.stderr);
      const info = await execOk('nbdinfo', [nbdUri(s)]);
      expect(info).toContain('block_size_minimum: 512');
      const head = await execOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x61 0 1M', nbdUri(s)]);
      expect(head).toContain('read 1048576');
    } finally {
      srv.child.kill('SIGTERM');
      await srv.exited;
    }
  });

  it('-l exports an internal snapshot, read-only', async () => {
    qemuImgOk(['create', '-q', '-f', 'qcow2', p('snap.qcow2'), `${4 * MiB}`]);
    qemuIo(p('snap.qcow2'), ['write -P 0x71 0 64k'], 'qcow2');
    qemuImgOk(['snapshot', '-c', 'first', p('snap.qcow2')]);
    qemuIo(p('snap.qcow2'), ['write -P 0x72 0 64k'], 'qcow2');
    const s = p('snap.sock');
    const srv = start(['-t', '-k', s, '-l', 'first', 'snap.qcow2']);
    try {
      await waitForSocket(s, () => srv.child.exitCode !== null, srv.stderr);
      expect(await execOk('nbdinfo', [nbdUri(s)])).toContain('is_read_only: true');
      expect(await execOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x71 0 64k', nbdUri(s)])).toContain(
        'read 65536',
      );
    } finally {
      srv.child.kill('SIGTERM');
      await srv.exited;
    }
  });

  it("refuses qemu-nbd's invalid option combinations with its messages", async () => {
    const cases: [string[], string][] = [
      [['-k', 'rel.sock', 'a.qcow2'], 'socket path must be absolute'],
      [
        ['--detect-zeroes=unmap', 'a.qcow2'],
        'setting detect-zeroes to unmap is not allowed without setting discard operation to unmap',
      ],
      [['--discard=maybe', 'a.qcow2'], "Invalid discard mode `maybe'"],
      [['-e', '-1', 'a.qcow2'], "Invalid shared device number '-1'"],
      [
        ['--image-opts', '-f', 'raw', 'driver=raw,file.filename=a.raw'],
        '--image-opts and -f are mutually exclusive',
      ],
      [['--cache=fast', 'a.qcow2'], "Invalid cache mode `fast'"],
      [['-c', '/dev/nbd0', 'a.qcow2'], 'Kernel /dev/nbdN support not available'],
      [['--tls-creds=t', 'a.qcow2'], 'TLS is not supported'],
      [[], 'Invalid number of arguments'],
      [['-k', p('m.sock'), 'missing.qcow2'], "Could not open 'missing.qcow2'"],
    ];
    for (const [args, message] of cases) {
      const r = await vdisk(['nbd', ...args], dir);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toContain(message);
    }
    const help = await vdisk(['nbd', '--help']);
    expect(help.stdout).toContain('--allocation-depth');
  });

  it('libnbd through Python (nbdsh) sees the export and its contexts', async () => {
    const s = p('py.sock');
    const srv = start(['-t', '-A', '-e', '4', '-k', s, '-x', 'py', '-D', 'python check', 'a.qcow2']);
    try {
      await waitForSocket(s, () => srv.child.exitCode !== null, srv.stderr);
      const script = [
        'h.set_export_name("py")',
        'h.add_meta_context("base:allocation")',
        'h.add_meta_context("qemu:allocation-depth")',
        `h.connect_unix("${s}")`,
        'print(h.get_size(), h.can_multi_conn(), h.get_structured_replies_negotiated())',
        'print(h.can_meta_context("base:allocation"), h.can_meta_context("qemu:allocation-depth"))',
        'print(bytes(h.pread(4, 5 * 1024 * 1024)))',
        'h.pwrite(b"abcd", 0)',
        'h.flush()',
        'print(bytes(h.pread(4, 0)))',
      ].join('\n');
      // nbdsh is `python3 -m nbd`: Debian's python3, where python3-libnbd is installed.
      const out = await execOk('/usr/bin/python3', ['-m', 'nbd', '-c', script]);
      expect(out.split('\n').slice(0, 4)).toEqual([
        `${16 * MiB} True True`,
        'True True',
        "b'bbbb'",
        "b'abcd'",
      ]);
    } finally {
      srv.child.kill('SIGTERM');
      await srv.exited;
    }
  });
});
