/**
 * `vdisk nbd`: a drop-in qemu-nbd server (qemu-nbd 7.2's options where they make sense
 * without a kernel NBD device). The image and its backing chain open as every vdisk command
 * opens them; the protocol lives in src/nbd/.
 */
import { spawn } from 'node:child_process';
import { closeSync, writeSync } from 'node:fs';
import { readFile, unlink, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { openImage } from '../../chain/open.js';
import { loadSnapshot, type SnapshotRef } from '../../commands/convert.js';
import { inCliScript } from '../../core/bundle.js';
import { VdiskError } from '../../core/errors.js';
import type { Image } from '../../core/image.js';
import { findExportBitmaps } from '../../nbd/bitmaps.js';
import { type DetectZeroes, type DiscardMode, NbdExport } from '../../nbd/export.js';
import { MAX_STRING } from '../../nbd/protocol.js';
import { type Listen, NbdServer } from '../../nbd/server.js';
import { checkCacheMode } from '../cache.js';
import { printable } from '../errors.js';
import { getopt } from '../getopt.js';
import type { Io } from '../io.js';
import { type CliCommand, VERSION } from '../main.js';
import { parseSnapshotParam } from './convert.js';

/** The IANA port of NBD, qemu-nbd's default. */
const NBD_PORT = 10809;
/** Set in the environment of the server that `--fork` starts (the fd it reports readiness on). */
const FORK_ENV = 'VDISK_NBD_READY_FD';

const command: CliCommand = {
  syntax:
    'nbd [-f fmt] [-r] [-x name] [-D text] [-b addr] [-p port | -k socket] [-e num] [-t] [-A] [-B bitmap]... [-l snapshot] [--discard=mode] [--detect-zeroes=mode] [--cache=mode] [--fork] [--pid-file=path] filename',
  help: [
    'Serve FILENAME (and its backing chain) over the NBD protocol, as qemu-nbd does: qemu-img,',
    'qemu-io, nbdinfo, nbdcopy and any NBD client connect with nbd://HOST:PORT/NAME or',
    'nbd+unix:///NAME?socket=PATH.',
    '  -p, --port=PORT           TCP port to listen on (default 10809)',
    "  -b, --bind=IFACE          address to bind to (default '0.0.0.0')",
    '  -k, --socket=PATH         listen on this Unix socket (an absolute path) instead',
    '  -e, --shared=NUM          serve NUM clients at once (default 1; 0: no limit); more than',
    '                            one also advertises multi-conn',
    '  -t, --persistent          keep serving after the last client leaves',
    '  -x, --export-name=NAME    the export name (default: the empty name)',
    '  -D, --description=TEXT    a description of the export',
    '  -A, --allocation-depth    offer the qemu:allocation-depth metadata context',
    '  -B, --bitmap=NAME         offer the persistent dirty bitmap NAME (of the image or of a',
    '                            backing file) as the qemu:dirty-bitmap:NAME metadata context',
    '                            (repeatable)',
    '  -f, --format=FORMAT       image format (probed when absent)',
    '  -r, --read-only           export read-only',
    '  -l, --load-snapshot=SNAPSHOT_PARAM',
    '                            export an internal snapshot read-only: ID_OR_NAME or',
    '                            snapshot.id=ID,snapshot.name=NAME',
    '      --discard=MODE        ignore (default) or unmap: what trim and zero writes may free',
    '      --detect-zeroes=MODE  off (default), on or unmap (with --discard=unmap): writes of',
    '                            zeros become zero writes',
    '  -n, --nocache, --cache=MODE, --aio=MODE',
    '                            accepted (writethrough and directsync flush every write,',
    '                            unsafe never flushes)',
    '      --object, --image-opts  as in every vdisk command',
    '      --fork                start the server in the background and exit once it listens',
    '      --pid-file=PATH       write the server process id to PATH',
    '      --handshake-limit=N   seconds a client has to complete its handshake (default 10;',
    '                            0: no limit; from later qemu-nbd)',
    '  -v, --verbose             say on stderr what is served where',
    'Not supported: -c/-d (kernel devices), -L, -o, -s, -T, TLS.',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args, secrets } = getopt(argv, {
      command: 'nbd',
      short: 'hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L',
      long: {
        help: { value: false, short: 'h' },
        version: { value: false, short: 'V' },
        bind: { value: true, short: 'b' },
        port: { value: true, short: 'p' },
        socket: { value: true, short: 'k' },
        offset: { value: true, short: 'o' },
        'read-only': { value: false, short: 'r' },
        'allocation-depth': { value: false, short: 'A' },
        bitmap: { value: true, short: 'B' },
        connect: { value: true, short: 'c' },
        disconnect: { value: false, short: 'd' },
        list: { value: false, short: 'L' },
        snapshot: { value: false, short: 's' },
        'load-snapshot': { value: true, short: 'l' },
        nocache: { value: false, short: 'n' },
        cache: { value: true },
        aio: { value: true },
        discard: { value: true },
        'detect-zeroes': { value: true },
        shared: { value: true, short: 'e' },
        format: { value: true, short: 'f' },
        persistent: { value: false, short: 't' },
        verbose: { value: false, short: 'v' },
        object: { value: true },
        'export-name': { value: true, short: 'x' },
        description: { value: true, short: 'D' },
        'tls-creds': { value: true },
        'tls-hostname': { value: true },
        'tls-authz': { value: true },
        'image-opts': { value: false },
        trace: { value: true, short: 'T' },
        fork: { value: false },
        'pid-file': { value: true },
        'selinux-label': { value: true },
        'handshake-limit': { value: true },
      },
    });
    const fail = (m: string) => new VdiskError('INVALID_ARGUMENT', m);
    const unsupported = (m: string) => new VdiskError('UNSUPPORTED', m);
    let bind: string | undefined;
    let port: number | undefined;
    let socket: string | undefined;
    let readOnly = false;
    let allocationDepth = false;
    const bitmapNames: string[] = [];
    let snapshot: SnapshotRef | undefined;
    let cache: string | undefined;
    let aio: string | undefined;
    let discard: DiscardMode | undefined;
    let detectZeroes: DetectZeroes = 'off';
    let shared = 1;
    let format: string | undefined;
    let persistent = false;
    let verbose = false;
    let exportName = '';
    let description: string | undefined;
    let imageOpts = false;
    let fork = false;
    let pidFile: string | undefined;
    let handshakeLimit = 10;
    for (const [k, v] of opts) {
      switch (k) {
        case 'V':
          io.out(`vdisk nbd ${VERSION}\n`);
          return 0;
        case 'b':
          bind = v;
          break;
        case 'p': {
          const n = /^\d+$/.test(v) ? Number(v) : Number.NaN;
          if (!(n >= 0 && n <= 65535)) throw fail(`Invalid port '${v}'`);
          port = n;
          break;
        }
        case 'k':
          if (!v.startsWith('/')) throw fail('socket path must be absolute');
          socket = v;
          break;
        case 'r':
          readOnly = true;
          break;
        case 'l':
          snapshot = parseSnapshotParam(v);
          // qemu-nbd: a loaded snapshot is exported read-only.
          readOnly = true;
          break;
        case 'A':
          allocationDepth = true;
          break;
        case 'B':
          // qemu-nbd 7.2 prepends each -B to its list: the contexts come in reverse order.
          bitmapNames.unshift(v);
          break;
        case 'n':
        case 'cache':
          if (cache !== undefined) throw fail('-n and --cache can only be specified once');
          cache = k === 'n' ? 'none' : v;
          if (!checkCacheMode(cache)) throw fail(`Invalid cache mode \`${cache}'`);
          break;
        case 'aio':
          if (aio !== undefined) throw fail('--aio can only be specified once');
          if (!['native', 'io_uring', 'threads'].includes(v)) throw fail(`Invalid aio mode '${v}'`);
          aio = v;
          break;
        case 'discard':
          if (discard !== undefined) throw fail('--discard can only be specified once');
          if (v === 'ignore' || v === 'off') discard = 'ignore';
          else if (v === 'unmap' || v === 'on') discard = 'unmap';
          else throw fail(`Invalid discard mode \`${v}'`);
          break;
        case 'detect-zeroes':
          if (v !== 'off' && v !== 'on' && v !== 'unmap') {
            throw fail(
              `Failed to parse detect_zeroes mode: Parameter 'detect-zeroes' does not accept value '${v}'`,
            );
          }
          detectZeroes = v;
          break;
        case 'e': {
          const n = /^\d+$/.test(v) ? Number(v) : Number.NaN;
          if (!Number.isSafeInteger(n) || n > 0x7fffffff) throw fail(`Invalid shared device number '${v}'`);
          shared = n;
          break;
        }
        case 'f':
          format = v;
          break;
        case 't':
          persistent = true;
          break;
        case 'v':
          verbose = true;
          break;
        case 'x':
          if (Buffer.byteLength(v) > MAX_STRING) throw fail(`export name '${v}' too long`);
          exportName = v;
          break;
        case 'D':
          if (Buffer.byteLength(v) > MAX_STRING) throw fail(`export description '${v}' too long`);
          description = v;
          break;
        case 'image-opts':
          imageOpts = true;
          break;
        case 'fork':
          fork = true;
          break;
        case 'pid-file':
          pidFile = v;
          break;
        case 'handshake-limit': {
          const n = /^\d+$/.test(v) ? Number(v) : Number.NaN;
          if (!Number.isSafeInteger(n)) throw fail(`Invalid handshake limit '${v}'`);
          handshakeLimit = n;
          break;
        }
        case 'c':
        case 'd':
          throw unsupported('Kernel /dev/nbdN support not available');
        case 'L':
          throw unsupported('-L is not supported: list the exports with nbdinfo --list');
        case 'o':
          throw unsupported('-o (offset) is not supported');
        case 's':
          throw unsupported('-s (temporary snapshot) is not supported');
        case 'T':
          throw unsupported('-T (trace) is not supported');
        case 'tls-creds':
        case 'tls-hostname':
        case 'tls-authz':
          throw unsupported('TLS is not supported');
        case 'selinux-label':
          throw unsupported('SELinux support not enabled in this binary');
      }
    }
    if (args.length !== 1)
      throw fail("Invalid number of arguments\nTry 'vdisk nbd --help' for more information.");
    if (detectZeroes === 'unmap' && discard !== 'unmap') {
      throw fail('setting detect-zeroes to unmap is not allowed without setting discard operation to unmap');
    }
    if (imageOpts && format !== undefined) throw fail('--image-opts and -f are mutually exclusive');
    const listen: Listen =
      socket !== undefined ? { path: socket } : { host: bind ?? '0.0.0.0', port: port ?? NBD_PORT };

    if (fork && process.env[FORK_ENV] === undefined) return forkServer(argv, io);

    const filename = args[0]!;
    const warn = (m: string) => io.err(`${printable(m)}\n`);
    const image = await openImage(filename, {
      imageOpts,
      secrets,
      format,
      writable: !readOnly,
      backing: 'follow',
      allowDataFile: true,
      noFlush: cache === 'unsafe',
      onWarning: warn,
    });
    let exported: Image = image;
    try {
      // The bitmaps belong to the image (QEMU's node), also when a snapshot is loaded.
      const bitmaps = await findExportBitmaps(image, bitmapNames);
      if (snapshot !== undefined) exported = await loadSnapshot(image, snapshot);
      const exp = new NbdExport({
        name: exportName,
        description,
        image: exported,
        readOnly,
        allocationDepth,
        discard: discard ?? 'ignore',
        detectZeroes,
        multiConn: shared !== 1,
        writethrough: cache === 'writethrough' || cache === 'directsync',
        bitmaps,
      });
      const server = await NbdServer.start({
        exports: [exp],
        listen,
        shared,
        persistent,
        handshakeLimitMs: handshakeLimit * 1000,
        log: (m) => io.err(`vdisk: ${printable(m)}\n`),
      });
      const where = server.address();
      if (verbose) {
        io.err(
          `vdisk: serving '${filename}' on ${'path' in where ? where.path : `${where.host}:${where.port}`}\n`,
        );
      }
      if (pidFile !== undefined) await writeFile(pidFile, `${process.pid}\n`);
      reportReady();
      const stop = () => void server.close();
      const signals = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;
      for (const s of signals) process.on(s, stop);
      try {
        await server.done;
      } finally {
        for (const s of signals) process.off(s, stop);
        if (pidFile !== undefined) await removePidFile(pidFile);
      }
    } finally {
      if (exported !== image) await exported.driver.close().catch(() => {});
      await image.close();
    }
    return 0;
  },
};

/** In the server that --fork started: tell the waiting parent that it listens. */
function reportReady(): void {
  const fd = Number(process.env[FORK_ENV]);
  if (!Number.isInteger(fd)) return;
  delete process.env[FORK_ENV];
  try {
    writeSync(fd, 'ready\n');
    closeSync(fd);
  } catch {
    // The parent is gone: nothing to tell.
  }
}

/**
 * --fork: start the same command as a detached process and exit once it listens (0) or has
 * failed (1), as qemu-nbd's parent does. The server keeps this process's stderr; its stdin and
 * stdout are /dev/null.
 */
async function forkServer(argv: string[], io: Io): Promise<number> {
  // From the CLI script (dist/cli/vdisk.cjs) bin/ is two levels up, else three.
  const rel = inCliScript(import.meta.url) ? '../../bin/vdisk' : '../../../bin/vdisk';
  const bin = fileURLToPath(new URL(rel, import.meta.url));
  const child = spawn(process.execPath, [bin, 'nbd', ...argv], {
    detached: true,
    stdio: ['ignore', 'ignore', 'inherit', 'pipe'],
    env: { ...process.env, [FORK_ENV]: '3' },
  });
  const ready = child.stdio[3] as NodeJS.ReadableStream | null;
  const code = await new Promise<number>((resolve) => {
    let said = '';
    ready?.on('data', (d: Buffer) => {
      said += d.toString();
      if (said.includes('ready')) resolve(0);
    });
    child.once('error', (err) => {
      io.err(`vdisk: Failed to fork: ${err.message}\n`);
      resolve(1);
    });
    child.once('exit', () => resolve(1));
  });
  (ready as { destroy?: () => void } | null)?.destroy?.();
  child.unref();
  return code;
}

async function removePidFile(path: string): Promise<void> {
  try {
    if ((await readFile(path, 'utf8')).trim() === String(process.pid)) await unlink(path);
  } catch {
    // Gone already.
  }
}

export default command;
