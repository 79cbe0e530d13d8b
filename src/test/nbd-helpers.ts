/**
 * Test helpers for the NBD server: vdisk's server in-process and the real qemu-nbd beside it,
 * and the real clients (qemu-img, qemu-io, nbdinfo, nbdcopy) run asynchronously — a
 * synchronous spawn would block the event loop that serves them.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { openImage } from '../chain/open.js';
import { NbdExport } from '../nbd/export.js';
import { NbdServer } from '../nbd/server.js';

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a program without blocking the event loop. */
export function exec(
  cmd: string,
  args: string[],
  o: { cwd?: string; timeoutMs?: number } = {},
): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: o.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 60_000);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal !== null ? 128 : -1), stdout, stderr });
    });
  });
}

export async function execOk(cmd: string, args: string[], o: { cwd?: string } = {}): Promise<string> {
  const r = await exec(cmd, args, o);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

export function nbdUri(socket: string, name = ''): string {
  return `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`;
}

export interface Served {
  socket: string;
  uri: string;
  stop(): Promise<void>;
}

export interface VdiskServeOptions {
  name?: string;
  format?: string;
  readOnly?: boolean;
  allocationDepth?: boolean;
  shared?: number;
  discard?: 'ignore' | 'unmap';
  detectZeroes?: 'off' | 'on' | 'unmap';
  description?: string;
  log?: (m: string) => void;
}

/** vdisk's NBD server in this process, on a Unix socket, persistent (qemu-nbd -t). */
export async function serveVdisk(
  image: string,
  socket: string,
  o: VdiskServeOptions = {},
): Promise<Served & { server: NbdServer }> {
  const img = await openImage(image, {
    format: o.format,
    writable: o.readOnly !== true,
    backing: 'follow',
    allowDataFile: true,
  });
  const shared = o.shared ?? 1;
  const exp = new NbdExport({
    name: o.name ?? '',
    description: o.description,
    image: img,
    readOnly: o.readOnly === true,
    allocationDepth: o.allocationDepth === true,
    discard: o.discard,
    detectZeroes: o.detectZeroes,
    multiConn: shared !== 1,
  });
  const server = await NbdServer.start({
    exports: [exp],
    listen: { path: socket },
    shared,
    persistent: true,
    log: o.log ?? (() => {}),
  });
  return {
    socket,
    uri: nbdUri(socket, o.name),
    server,
    async stop() {
      await server.close();
      await img.close();
    },
  };
}

/** The real qemu-nbd on a Unix socket (-t, so it stays up between clients). */
export function serveQemu(image: string, socket: string, args: string[] = [], name = ''): Promise<Served> {
  return serveProcess(
    'qemu-nbd',
    ['-t', '-k', socket, ...(name !== '' ? ['-x', name] : []), ...args, image],
    socket,
    name,
  );
}

/** nbdkit's file plugin serving a raw file on a Unix socket (a third server to compare with). */
export function serveNbdkit(file: string, socket: string, args: string[] = []): Promise<Served> {
  return serveProcess('nbdkit', ['-f', '-U', socket, ...args, 'file', file], socket);
}

/**
 * A server process (`cmd args…`) that listens on the Unix socket `socket`: ready once the socket
 * accepts connections, failed with its stderr when it exits first. `onSpawn` sees the child
 * (tests keep it to kill it if they fail half way).
 */
export async function serveProcess(
  cmd: string,
  args: string[],
  socket: string,
  name = '',
  onSpawn?: (child: ChildProcess) => void,
): Promise<Served> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  onSpawn?.(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await waitForSocket(
    socket,
    () => child.exitCode !== null,
    () => stderr,
  );
  return {
    socket,
    uri: nbdUri(socket, name),
    async stop() {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** Wait until a Unix socket accepts connections. */
export async function waitForSocket(
  path: string,
  failed: () => boolean = () => false,
  why = () => '',
): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (failed()) throw new Error(`server exited before listening: ${why()}`);
    if (existsSync(path) && (await canConnect(path))) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`nothing listens on ${path}: ${why()}`);
}

function canConnect(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
