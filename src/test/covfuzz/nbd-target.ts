/**
 * The NBD server's option and request parsing as a fuzz target: each input is the byte stream
 * a client sends (handshake flags, options, requests), written to a vdisk NbdServer on a Unix
 * socket in tmpfs, serving a 1 MiB raw export (writable, on /dev/shm). The connection is
 * half-closed after the input; the server must close it (within 5 s) and never log an internal
 * JavaScript error (it logs every reason it disconnects a client).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as P from '../../nbd/protocol.js';
import type { Target } from './targets.js';

/** Words of JavaScript's own errors: a message with one of them is an internal error. */
const INTERNAL =
  /Cannot read propert|is not a function|is not defined|is not iterable|Invalid array length|Invalid typed array length|out of range|Maximum call stack|allocation failed|ERR_/;

function opt(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(P.IHAVEOPT, 0);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

function req(type: number, offset: number, length: number, flags = 0, payload?: Buffer): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(P.REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(BigInt(offset + 1), 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return payload ? Buffer.concat([b, payload]) : b;
}

const name = (n: string) => {
  const t = Buffer.from(n);
  const l = Buffer.alloc(4);
  l.writeUInt32BE(t.length);
  return Buffer.concat([l, t]);
};

function metaQuery(exportName: string, queries: string[]): Buffer {
  const n = Buffer.alloc(4);
  n.writeUInt32BE(queries.length);
  return Buffer.concat([name(exportName), n, ...queries.map(name)]);
}

function goData(exportName: string, infos: number[]): Buffer {
  const n = Buffer.alloc(2 + infos.length * 2);
  n.writeUInt16BE(infos.length, 0);
  for (const [k, i] of infos.entries()) n.writeUInt16BE(i, 2 + 2 * k);
  return Buffer.concat([name(exportName), n]);
}

const FLAGS = Buffer.from([0, 0, 0, P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES]);

interface Server {
  path: string;
  logs: string[];
}

let server: Promise<Server> | undefined;

async function start(): Promise<Server> {
  const dir = mkdtempSync(join(process.platform === 'linux' ? '/dev/shm' : tmpdir(), 'vdisk-covfuzz-nbd-'));
  const file = join(dir, 'disk.raw');
  writeFileSync(file, Buffer.alloc(1 << 20, 0x5a));
  const { HostFile } = await import('../../core/host-file.js');
  const { Image } = await import('../../core/image.js');
  const { rawDriver } = await import('../../formats/raw/driver.js');
  const { NbdExport } = await import('../../nbd/export.js');
  const { NbdServer } = await import('../../nbd/server.js');
  const host = await HostFile.open(file, { writable: true, lock: 'none' });
  const image = new Image(await rawDriver.open(host, { writable: true, forceShare: true }), file);
  const logs: string[] = [];
  const path = join(dir, 'sock');
  await NbdServer.start({
    exports: [new NbdExport({ name: '', image, readOnly: false, allocationDepth: true })],
    listen: { path },
    shared: 0,
    persistent: true,
    handshakeLimitMs: 3000,
    directIo: false,
    log: (m) => logs.push(m),
  });
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return { path, logs };
}

export const nbdTarget: Target = {
  name: 'nbd',
  scripts: ['/nbd/'],
  maxLen: 1 << 20,
  seeds: () => [
    Buffer.concat([
      FLAGS,
      opt(P.OPT_STRUCTURED_REPLY),
      opt(P.OPT_SET_META_CONTEXT, metaQuery('', ['base:allocation', 'qemu:allocation-depth'])),
      opt(P.OPT_GO, goData('', [P.INFO_BLOCK_SIZE, P.INFO_NAME, P.INFO_DESCRIPTION])),
      req(P.CMD_READ, 0, 4096),
      req(P.CMD_WRITE, 4096, 512, P.CMD_FLAG_FUA, Buffer.alloc(512, 0xab)),
      req(P.CMD_BLOCK_STATUS, 0, 1 << 20),
      req(P.CMD_BLOCK_STATUS, 0, 1 << 20, P.CMD_FLAG_REQ_ONE),
      req(P.CMD_WRITE_ZEROES, 8192, 4096, P.CMD_FLAG_NO_HOLE),
      req(P.CMD_TRIM, 65536, 65536),
      req(P.CMD_CACHE, 0, 65536),
      req(P.CMD_READ, 0, 65536, P.CMD_FLAG_DF),
      req(P.CMD_FLUSH, 0, 0),
      req(P.CMD_DISC, 0, 0),
    ]),
    Buffer.concat([
      FLAGS,
      opt(P.OPT_LIST),
      opt(P.OPT_LIST_META_CONTEXT, metaQuery('', ['qemu:', 'base:'])),
      opt(P.OPT_INFO, goData('', [P.INFO_EXPORT])),
      opt(P.OPT_INFO, goData('nope', [])),
      opt(P.OPT_STARTTLS),
      opt(99, Buffer.from('xyz')),
      opt(P.OPT_ABORT),
    ]),
    Buffer.concat([
      FLAGS,
      opt(P.OPT_EXPORT_NAME),
      req(P.CMD_READ, 0, 512),
      req(P.CMD_WRITE, 0, 512, 0, Buffer.alloc(512, 1)),
      req(P.CMD_READ, (1 << 20) - 512, 1024),
    ]),
  ],
  dict: () => {
    const u32 = (v: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(v >>> 0);
      return b;
    };
    const ihave = Buffer.alloc(8);
    ihave.writeBigUInt64BE(P.IHAVEOPT);
    return {
      tokens: [
        ihave,
        u32(P.REQUEST_MAGIC),
        ...[1, 2, 3, 5, 6, 7, 8, 9, 10].map(u32),
        ...[0, 1, 2, 3, 4, 5, 6, 7].map((c) => Buffer.from([0, c])),
        Buffer.from('base:allocation'),
        Buffer.from('qemu:allocation-depth'),
        Buffer.from('qemu:dirty-bitmap:'),
        u32(1 << 20),
        u32(32 << 20),
        u32(0xffffffff),
      ],
      offsets: [0, 4, 12, 16, 20, 24, 28],
    };
  },
  async run(input) {
    server ??= start();
    const { path, logs } = await server;
    logs.length = 0;
    await new Promise<void>((resolve, reject) => {
      const sock = connect(path);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error('the server did not close the connection within 5 s of the end of the input'));
      }, 5000);
      sock.on('data', () => {});
      sock.on('error', () => {});
      sock.on('close', () => {
        clearTimeout(timer);
        resolve();
      });
      sock.end(input);
    });
    // The server logs its side after the close it sends: let the session finish.
    await new Promise((r) => setImmediate(r));
    const bad = logs.find((l) => INTERNAL.test(l));
    if (bad !== undefined) throw new Error(`server logged an internal error: ${bad}`);
  },
  // Every refusal is the server's business (an error reply or a disconnect): nothing may throw.
  expected: () => false,
  ext: 'nbd',
};
