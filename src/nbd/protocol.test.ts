/**
 * The NBD server at the protocol level: what the specification asks of each option and
 * request, hostile input (bad magic, unknown flags and options, oversized lengths, ranges past
 * the end, garbage in the middle of a session) answered with the spec's errors or a clean
 * disconnect while other clients go on being served, and the server's bounds (requests in
 * flight, buffer budget, handshake time, the number of clients). Where qemu-nbd answers the
 * same hostile input, its answers are the reference, except where it departs from the spec
 * (there nbdkit, a third server, gives the spec's values and vdisk's).
 */
import { copyFileSync, readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../chain/open.js';
import { type Served, serveNbdkit, serveQemu, serveVdisk } from '../test/nbd-helpers.js';
import { hostFileMap, qemuImgOk, qemuIo, tempDir } from '../test/oracle.js';
import { NbdClient, NbdRequestError, openSocket } from './client.js';
import { NbdExport } from './export.js';
import { SocketReader } from './io.js';
import * as P from './protocol.js';
import { NbdServer } from './server.js';

const MiB = 1 << 20;
let dir: string;
let cleanup: () => void;
const p = (n: string) => join(dir, n);
let n = 0;
const sock = () => p(`p${n++}.sock`);

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-nbdp-'));
  qemuImgOk(['create', '-q', '-f', 'qcow2', p('a.qcow2'), `${16 * MiB}`]);
  qemuIo(
    p('a.qcow2'),
    ['write -P 0x41 0 1M', 'write -z 2M 1M', 'write -P 0x42 4M 64k', 'write -P 0x43 8M 3M'],
    'qcow2',
  );
  qemuImgOk(['convert', '-O', 'raw', p('a.qcow2'), p('a.raw')]);
});
afterAll(() => cleanup?.());

/** A raw connection: the greeting read, nothing sent yet. */
async function raw(path: string): Promise<{ s: Socket; r: SocketReader; greeting: Buffer }> {
  const s = await openSocket({ path });
  const r = new SocketReader(s, 8 << 20);
  const greeting = Buffer.from(await r.read(18));
  return { s, r, greeting };
}

function option(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64BE(P.IHAVEOPT, 0);
  b.writeUInt32BE(code, 8);
  b.writeUInt32BE(data.length, 12);
  return Buffer.concat([b, data]);
}

async function optionReply(r: SocketReader): Promise<{ option: number; type: number; data: Buffer }> {
  const h = await r.read(20);
  expect(h.readBigUInt64BE(0)).toBe(P.REPLY_MAGIC);
  const len = h.readUInt32BE(16);
  return {
    option: h.readUInt32BE(8),
    type: h.readUInt32BE(12),
    data: Buffer.from(len > 0 ? await r.read(len) : []),
  };
}

/** Does the server close the connection (read returns EOF) within three seconds? */
async function closes(r: SocketReader): Promise<boolean> {
  try {
    await Promise.race([r.read(1), new Promise((_, rej) => setTimeout(() => rej(new Error('open')), 3000))]);
    return false;
  } catch (err) {
    return (err as Error).message !== 'open';
  }
}

const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};
const u16 = (v: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
};
const goData = (name: string, infos: number[] = []) =>
  Buffer.concat([u32(Buffer.byteLength(name)), Buffer.from(name), u16(infos.length), ...infos.map(u16)]);
const metaData = (name: string, queries: string[]) =>
  Buffer.concat([
    u32(Buffer.byteLength(name)),
    Buffer.from(name),
    u32(queries.length),
    ...queries.flatMap((q) => [u32(Buffer.byteLength(q)), Buffer.from(q)]),
  ]);

/** The reply types a server gives to a sequence of options (after fixed newstyle flags). */
async function haggle(path: string, options: Buffer[]): Promise<number[]> {
  return (await haggleReplies(path, options)).map((r) => r.type);
}

/** The replies (type and data) to a sequence of options. */
async function haggleReplies(path: string, options: Buffer[]): Promise<{ type: number; data: string }[]> {
  const { s, r } = await raw(path);
  try {
    s.write(u32(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES));
    const out: { type: number; data: string }[] = [];
    for (const o of options) {
      s.write(o);
      for (;;) {
        const rep = await optionReply(r);
        out.push({ type: rep.type, data: rep.data.toString('latin1') });
        if (rep.type === P.REP_ACK || rep.type >= 0x80000000) break;
      }
    }
    return out;
  } finally {
    s.destroy();
  }
}

async function withBoth<T>(
  image: string,
  args: string[],
  o: Parameters<typeof serveVdisk>[2],
  fn: (path: string) => Promise<T>,
) {
  let q: Served | undefined;
  let v: Served | undefined;
  try {
    q = await serveQemu(image, sock(), args);
    const qemu = await fn(q.socket);
    await q.stop();
    q = undefined;
    v = await serveVdisk(image, sock(), o);
    const vdisk = await fn(v.socket);
    return { qemu, vdisk };
  } finally {
    await q?.stop();
    await v?.stop();
  }
}

describe('handshake', () => {
  it('greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES', async () => {
    const v = await serveVdisk(p('a.qcow2'), sock(), { readOnly: true });
    try {
      const { s, greeting } = await raw(v.socket);
      s.destroy();
      expect(greeting.readBigUInt64BE(0)).toBe(P.NBDMAGIC);
      expect(greeting.readBigUInt64BE(8)).toBe(P.IHAVEOPT);
      expect(greeting.readUInt16BE(16)).toBe(3);
    } finally {
      await v.stop();
    }
  });

  it('answers bad options with the error replies qemu-nbd gives', async () => {
    const seq = [
      option(99, Buffer.from('junk!')), // unknown option
      option(P.OPT_LIST, Buffer.from('x')), // LIST takes no data
      option(P.OPT_STARTTLS), // no TLS here
      option(P.OPT_SET_META_CONTEXT, metaData('', ['base:allocation'])), // before structured replies
      option(P.OPT_GO, Buffer.concat([u32(100), Buffer.from('ab')])), // name longer than the data
      option(P.OPT_GO, Buffer.concat([goData(''), Buffer.from('extra')])), // trailing bytes
      option(P.OPT_GO, goData('no-such-export')),
      option(P.OPT_INFO, goData('', [P.INFO_BLOCK_SIZE])),
      option(P.OPT_STRUCTURED_REPLY, Buffer.from('x')),
      option(P.OPT_STRUCTURED_REPLY),
      option(P.OPT_STRUCTURED_REPLY), // twice
      option(P.OPT_LIST_META_CONTEXT, metaData('', [])),
      option(
        P.OPT_SET_META_CONTEXT,
        metaData('', ['base:allocation', 'qemu:allocation-depth', 'x-foo:bar', 'nonsense']),
      ),
      option(11), // extended headers: not supported by either
      option(P.OPT_LIST),
    ];
    const r = await withBoth(p('a.qcow2'), ['-r', '-A'], { readOnly: true, allocationDepth: true }, (path) =>
      haggle(path, seq),
    );
    expect(r.vdisk).toEqual(r.qemu);
    expect(r.vdisk.slice(0, 7)).toEqual([
      P.REP_ERR_UNSUP,
      P.REP_ERR_INVALID,
      P.REP_ERR_POLICY,
      P.REP_ERR_INVALID,
      P.REP_ERR_INVALID,
      P.REP_ERR_INVALID,
      P.REP_ERR_UNKNOWN,
    ]);
  });

  it('closes on unknown client flags, a bad option magic, an unknown export by name', async () => {
    const v = await serveVdisk(p('a.qcow2'), sock(), { readOnly: true, name: 'x' });
    try {
      let c = await raw(v.socket);
      c.s.write(u32(0x80));
      expect(await closes(c.r)).toBe(true);
      c = await raw(v.socket);
      c.s.write(u32(3));
      c.s.write(Buffer.alloc(16, 0xff));
      expect(await closes(c.r)).toBe(true);
      c = await raw(v.socket);
      c.s.write(u32(3));
      c.s.write(option(P.OPT_EXPORT_NAME, Buffer.from('nope')));
      expect(await closes(c.r)).toBe(true);
      // Non-fixed newstyle: only EXPORT_NAME; anything else closes.
      c = await raw(v.socket);
      c.s.write(u32(0));
      c.s.write(option(P.OPT_LIST));
      expect(await closes(c.r)).toBe(true);
      // The server still serves.
      const ok = await NbdClient.connect({ path: v.socket }, { exportName: 'x' });
      expect(ok.size).toBe(16 * MiB);
      await ok.disconnect();
    } finally {
      await v.stop();
    }
  });

  it('EXPORT_NAME ends the handshake with size and flags, without the zeroes when NO_ZEROES', async () => {
    const v = await serveVdisk(p('a.qcow2'), sock(), { name: 'e' });
    try {
      for (const flags of [3, 1]) {
        const c = await raw(v.socket);
        c.s.write(u32(flags));
        c.s.write(option(P.OPT_EXPORT_NAME, Buffer.from('e')));
        const h = await c.r.read(10);
        expect(Number(h.readBigUInt64BE(0))).toBe(16 * MiB);
        const tflags = h.readUInt16BE(8);
        expect(tflags & P.FLAG_HAS_FLAGS).toBeTruthy();
        expect(tflags & P.FLAG_SEND_DF).toBe(0); // no structured replies asked
        if (flags === 1) expect([...(await c.r.read(124))].every((b) => b === 0)).toBe(true);
        // A simple reply to a read follows.
        const req = Buffer.alloc(28);
        req.writeUInt32BE(P.REQUEST_MAGIC, 0);
        req.writeBigUInt64BE(7n, 8);
        req.writeUInt32BE(512, 24);
        c.s.write(req);
        const rep = await c.r.read(16);
        expect(rep.readUInt32BE(0)).toBe(P.SIMPLE_REPLY_MAGIC);
        expect(rep.readUInt32BE(4)).toBe(0);
        expect([...(await c.r.read(512))].every((b) => b === 0x41)).toBe(true);
        c.s.destroy();
      }
    } finally {
      await v.stop();
    }
  });

  it('skips an oversized option and answers NBD_REP_ERR_TOO_BIG; ABORT is acknowledged', async () => {
    const v = await serveVdisk(p('a.qcow2'), sock(), { readOnly: true });
    try {
      const types = await haggle(v.socket, [
        option(P.OPT_GO, Buffer.alloc(3 * MiB)),
        option(P.OPT_INFO, goData('')),
      ]);
      expect(types[0]).toBe(P.REP_ERR_TOO_BIG);
      expect(types.at(-1)).toBe(P.REP_ACK);
      const c = await raw(v.socket);
      c.s.write(u32(3));
      c.s.write(option(P.OPT_ABORT));
      expect((await optionReply(c.r)).type).toBe(P.REP_ACK);
      expect(await closes(c.r)).toBe(true);
    } finally {
      await v.stop();
    }
  });

  it('lists contexts as qemu-nbd: all with no query, by namespace, only what -A enables', async () => {
    const queries = [[], ['base:'], ['qemu:'], ['qemu:allocation-depth'], ['base:allocation', 'base:nope']];
    for (const args of [['-r'], ['-r', '-A']]) {
      const r = await withBoth(
        p('a.qcow2'),
        args,
        { readOnly: true, allocationDepth: args.includes('-A') },
        (path) =>
          haggleReplies(path, [
            option(P.OPT_STRUCTURED_REPLY),
            ...queries.map((q) => option(P.OPT_LIST_META_CONTEXT, metaData('', q))),
          ]),
      );
      expect(r.vdisk).toEqual(r.qemu);
    }
  });
});

describe('transmission', () => {
  /** Each request's outcome: 'ok' or its errno. */
  async function outcomes(
    path: string,
    reqs: [number, number, number, number][],
  ): Promise<(string | number)[]> {
    const c = await NbdClient.connect({ path }, { contexts: [] });
    try {
      const out: (string | number)[] = [];
      for (const [type, flags, offset, length] of reqs) {
        try {
          await c.request(
            type,
            flags,
            offset,
            length,
            type === P.CMD_WRITE ? Buffer.alloc(length) : undefined,
          );
          out.push('ok');
        } catch (err) {
          out.push(err instanceof NbdRequestError ? err.errno : String(err));
        }
      }
      return out;
    } finally {
      c.close();
    }
  }

  it("refuses bad requests with the spec's error values (EPERM read-only, ENOSPC past the end of writes)", async () => {
    const size = 16 * MiB;
    const ro: [number, number, number, number][] = [
      [P.CMD_READ, 0, size - 512, 1024], // past the end
      [P.CMD_READ, 0, size + 4096, 0],
      [P.CMD_READ, P.CMD_FLAG_REQ_ONE, 0, 512], // a flag READ does not take
      [P.CMD_WRITE, 0, 0, 4096], // read-only
      [P.CMD_TRIM, 0, 0, 4096],
      [P.CMD_WRITE_ZEROES, 0, 0, 4096],
      [P.CMD_BLOCK_STATUS, 0, 0, 4096], // no context selected
      [42, 0, 0, 0], // no such command
      [P.CMD_CACHE, 0, 0, 4096],
      [P.CMD_FLUSH, 0, 0, 0],
      [P.CMD_READ, P.CMD_FLAG_FUA, 0, 0],
    ];
    const a = await withBoth(p('a.qcow2'), ['-r'], { readOnly: true }, (path) => outcomes(path, ro));
    expect(a.vdisk).toEqual([
      P.EINVAL,
      P.EINVAL,
      P.EINVAL,
      P.EPERM,
      P.EPERM,
      P.EPERM,
      P.EINVAL,
      P.EINVAL,
      'ok',
      'ok',
      'ok',
    ]);
    // nbdkit (file plugin, -r) gives the spec's values too (it refuses a zero-length read).
    const kit = await serveNbdkit(p('a.raw'), sock(), ['-r']);
    try {
      expect((await outcomes(kit.socket, ro)).slice(0, 10)).toEqual(a.vdisk.slice(0, 10));
    } finally {
      await kit.stop();
    }
    // qemu-nbd 7.2 answers every request it refuses on receipt with EINVAL (nbd_trip sends
    // -EINVAL whatever nbd_co_receive_request found); vdisk follows the spec's values there.
    expect(a.qemu.slice(0, 8)).toEqual(Array(8).fill(P.EINVAL));
    copyFileSync(p('a.qcow2'), p('rw.qcow2'));
    const rw: [number, number, number, number][] = [
      [P.CMD_WRITE, 0, size - 512, 1024], // past the end: ENOSPC for writes
      [P.CMD_WRITE_ZEROES, 0, size, 512],
      [P.CMD_TRIM, 0, size, 512], // EINVAL for trim
      [P.CMD_WRITE_ZEROES, P.CMD_FLAG_DF, 0, 512],
      [P.CMD_WRITE, 0, 0, 4096],
    ];
    const b = await withBoth(p('rw.qcow2'), [], {}, (path) => outcomes(path, rw));
    expect(b.vdisk).toEqual([P.ENOSPC, P.ENOSPC, P.EINVAL, P.EINVAL, 'ok']);
    expect(b.qemu).toEqual([P.EINVAL, P.EINVAL, P.EINVAL, P.EINVAL, 'ok']);
    copyFileSync(p('a.raw'), p('rw.raw'));
    const kw = await serveNbdkit(p('rw.raw'), sock());
    try {
      expect(await outcomes(kw.socket, rw)).toEqual(b.vdisk);
    } finally {
      await kw.stop();
    }
  });

  it('refuses requests longer than 32 MiB and stays in step with the client', async () => {
    copyFileSync(p('a.qcow2'), p('long.qcow2'));
    const v = await serveVdisk(p('long.qcow2'), sock(), {});
    try {
      const c = await NbdClient.connect({ path: v.socket });
      // A read longer than one reply: EOVERFLOW with structured replies.
      await expect(c.read(0, 33 * MiB)).rejects.toMatchObject({ errno: P.EOVERFLOW });
      // A write longer than the maximum payload: its data is read and dropped, EINVAL.
      await expect(c.write(0, Buffer.alloc(33 * MiB, 0x55))).rejects.toMatchObject({ errno: P.EINVAL });
      // The connection is still in step: the next request is answered right.
      expect((await c.read(0, 4096)).every((b) => b === 0x41)).toBe(true);
      // Trim and zero writes may be longer than the maximum payload.
      await c.request(P.CMD_WRITE_ZEROES, 0, 0, 16 * MiB);
      expect((await c.read(8 * MiB, 4096)).every((b) => b === 0)).toBe(true);
      await c.disconnect();
      // Simple replies: EINVAL for the long read.
      const s = await NbdClient.connect({ path: v.socket }, { structured: false });
      await expect(s.read(0, 33 * MiB)).rejects.toMatchObject({ errno: P.EINVAL });
      await s.disconnect();
    } finally {
      await v.stop();
    }
  });

  it('drops a client that sends a bad request magic, and serves the next one', async () => {
    const logs: string[] = [];
    const v = await serveVdisk(p('a.qcow2'), sock(), { readOnly: true, log: (m) => logs.push(m) });
    try {
      const c = await NbdClient.connect({ path: v.socket });
      const pending = c.read(0, 4096);
      (c as unknown as { sock: Socket }).sock.write(Buffer.alloc(28, 0xee));
      expect((await pending).length).toBe(4096);
      await expect(c.read(0, 512)).rejects.toThrow();
      expect(logs.join('\n')).toContain('invalid magic');
      const d = await NbdClient.connect({ path: v.socket });
      expect((await d.read(4 * MiB, 64 * 1024)).every((b) => b === 0x42)).toBe(true);
      await d.disconnect();
    } finally {
      await v.stop();
    }
  });

  it('reads: holes as hole chunks, DF as one data chunk, simple replies with the data', async () => {
    const v = await serveVdisk(p('a.qcow2'), sock(), { readOnly: true });
    try {
      const file = readFileSync(p('a.raw'));
      const c = await NbdClient.connect({ path: v.socket });
      const sparse = await c.request(P.CMD_READ, 0, 0, 6 * MiB);
      expect(sparse.chunks).toBeGreaterThan(1);
      expect(sparse.data!.equals(file.subarray(0, 6 * MiB))).toBe(true);
      const df = await c.request(P.CMD_READ, P.CMD_FLAG_DF, 0, 6 * MiB);
      expect(df.chunks).toBe(1);
      expect(df.data!.equals(file.subarray(0, 6 * MiB))).toBe(true);
      const empty = await c.request(P.CMD_READ, 0, 0, 0);
      expect(empty.chunks).toBe(1);
      await c.disconnect();
      const s = await NbdClient.connect({ path: v.socket }, { structured: false });
      expect((await s.read(8 * MiB - 100, 200)).equals(file.subarray(8 * MiB - 100, 8 * MiB + 100))).toBe(
        true,
      );
      expect(s.flags & P.FLAG_SEND_DF).toBe(0);
      await s.disconnect();
    } finally {
      await v.stop();
    }
  });

  it('sends from the file (sendfile) or through buffers alike, also when the socket fills up', async () => {
    const file = readFileSync(p('a.raw'));
    for (const image of ['a.qcow2', 'a.raw']) {
      for (const directIo of [true, false]) {
        const img = await openImage(p(image), { backing: 'follow' });
        const server = await NbdServer.start({
          exports: [new NbdExport({ name: '', image: img, readOnly: true })],
          listen: { path: sock() },
          persistent: true,
          directIo,
        });
        try {
          const c = await NbdClient.connect(server.address());
          // Stop reading while 48 MiB of replies are asked for: the socket fills up, the rest of
          // a reply being sent from the file goes through a buffer, in order.
          const s = (c as unknown as { sock: Socket }).sock;
          s.pause();
          const reads = Array.from({ length: 48 }, (_, k) => {
            const off = (k * 333 * 1024) % (15 * MiB);
            return c.read(off, MiB).then((d) => d.equals(file.subarray(off, off + MiB)));
          });
          await new Promise((r) => setTimeout(r, 300));
          s.resume();
          expect((await Promise.all(reads)).every(Boolean), `${image} directIo=${directIo}`).toBe(true);
          await c.disconnect();
        } finally {
          await server.close();
          await img.close();
        }
      }
    }
  });

  it('reads see every write made before them (on this connection or another)', async () => {
    for (const image of ['a.qcow2', 'a.raw']) {
      const copy = `seq.${image}`;
      copyFileSync(p(image), p(copy));
      const v = await serveVdisk(p(copy), sock(), { shared: 2, discard: 'unmap' });
      try {
        const a = await NbdClient.connect({ path: v.socket });
        const b = await NbdClient.connect({ path: v.socket });
        // Read a hole (its status is remembered), write into it from the other connection, read.
        expect((await a.read(12 * MiB, MiB)).every((x) => x === 0)).toBe(true);
        await b.write(12 * MiB + 4096, Buffer.alloc(8192, 0x5e));
        const after = await a.read(12 * MiB, MiB);
        expect(
          after.subarray(4096, 12288).every((x) => x === 0x5e),
          image,
        ).toBe(true);
        expect(after.subarray(0, 4096).every((x) => x === 0)).toBe(true);
        // Data, then zeroed and trimmed from the other side.
        expect((await a.read(0, MiB)).every((x) => x === 0x41)).toBe(true);
        await b.request(P.CMD_WRITE_ZEROES, 0, 0, 512 * 1024);
        await b.request(P.CMD_TRIM, 0, 8 * MiB, 64 * 1024);
        const z = await a.read(0, MiB);
        expect(z.subarray(0, 512 * 1024).every((x) => x === 0)).toBe(true);
        expect(z.subarray(512 * 1024).every((x) => x === 0x41)).toBe(true);
        await a.disconnect();
        await b.disconnect();
      } finally {
        await v.stop();
      }
    }
  });

  it('block status: one extent with REQ_ONE, extents covering the request otherwise, both contexts', async () => {
    const v = await serveVdisk(p('a.qcow2'), sock(), { readOnly: true, allocationDepth: true });
    try {
      const c = await NbdClient.connect(
        { path: v.socket },
        { contexts: ['base:allocation', 'qemu:allocation-depth'] },
      );
      const base = c.contexts.get('base:allocation')!;
      const depth = c.contexts.get('qemu:allocation-depth')!;
      const one = await c.blockStatus(512 * 1024, 8 * MiB, P.CMD_FLAG_REQ_ONE);
      expect(one.get(base)).toEqual([{ length: 512 * 1024, flags: 0 }]);
      expect(one.get(depth)).toEqual([{ length: 512 * 1024, flags: 1 }]);
      const all = await c.blockStatus(0, 16 * MiB);
      expect(all.get(base)!.reduce((s, e) => s + e.length, 0)).toBe(16 * MiB);
      expect(all.get(base)!.slice(0, 3)).toEqual([
        { length: MiB, flags: 0 },
        { length: 3 * MiB, flags: P.STATE_HOLE | P.STATE_ZERO },
        { length: 64 * 1024, flags: 0 },
      ]);
      expect(all.get(depth)!.slice(0, 4)).toEqual([
        { length: MiB, flags: 1 },
        { length: MiB, flags: 0 },
        { length: MiB, flags: 1 },
        { length: MiB, flags: 0 },
      ]);
      await expect(c.blockStatus(0, 0)).rejects.toMatchObject({ errno: P.EINVAL });
      await expect(c.blockStatus(16 * MiB, 1)).rejects.toMatchObject({ errno: P.EINVAL });
      await c.disconnect();
    } finally {
      await v.stop();
    }
  });

  it('FAST_ZERO: done on whole qcow2 clusters, refused (ENOTSUP, nothing changed) where data would be written', async () => {
    copyFileSync(p('a.qcow2'), p('fz.qcow2'));
    const v = await serveVdisk(p('fz.qcow2'), sock(), {});
    try {
      const c = await NbdClient.connect({ path: v.socket });
      expect(c.flags & P.FLAG_SEND_FAST_ZERO).toBeTruthy();
      await c.request(P.CMD_WRITE_ZEROES, P.CMD_FLAG_FAST_ZERO, 8 * MiB, MiB);
      expect((await c.read(8 * MiB, MiB)).every((b) => b === 0)).toBe(true);
      await expect(
        c.request(P.CMD_WRITE_ZEROES, P.CMD_FLAG_FAST_ZERO, 9 * MiB + 512, 4096),
      ).rejects.toMatchObject({
        errno: P.ENOTSUP,
      });
      expect((await c.read(9 * MiB, 8192)).every((b) => b === 0x43)).toBe(true);
      // Already zero: fast whatever the alignment.
      await c.request(P.CMD_WRITE_ZEROES, P.CMD_FLAG_FAST_ZERO, 2 * MiB + 512, 4096);
      await c.disconnect();
    } finally {
      await v.stop();
    }
  });

  it('--detect-zeroes=unmap --discard=unmap: writes of zeros free clusters as qemu-nbd does', async () => {
    copyFileSync(p('a.qcow2'), p('dzq.qcow2'));
    copyFileSync(p('a.qcow2'), p('dzv.qcow2'));
    const ops = async (path: string) => {
      const c = await NbdClient.connect({ path });
      await c.write(0, Buffer.alloc(512 * 1024));
      await c.write(8 * MiB, Buffer.alloc(64 * 1024), P.CMD_FLAG_FUA);
      await c.request(P.CMD_TRIM, 0, 9 * MiB, MiB);
      await c.request(P.CMD_WRITE_ZEROES, 0, 10 * MiB, 256 * 1024);
      await c.request(P.CMD_WRITE_ZEROES, P.CMD_FLAG_NO_HOLE, 10 * MiB + 512 * 1024, 256 * 1024);
      await c.flush();
      await c.disconnect();
    };
    const q = await serveQemu(p('dzq.qcow2'), sock(), ['--discard=unmap', '--detect-zeroes=unmap']);
    await ops(q.socket);
    await q.stop();
    const v = await serveVdisk(p('dzv.qcow2'), sock(), { discard: 'unmap', detectZeroes: 'unmap' });
    await ops(v.socket);
    await v.stop();
    expect(qemuImgOk(['compare', p('dzq.qcow2'), p('dzv.qcow2')])).toContain('identical');
    expect(qemuImgOk(['map', '--output=json', p('dzv.qcow2')]).replaceAll('dzv', 'dz')).toBe(
      qemuImgOk(['map', '--output=json', p('dzq.qcow2')]).replaceAll('dzq', 'dz'),
    );
    // The clusters the discards freed go back to the host (QCOW2_DISCARD_REQUEST passes
    // through under --discard=unmap): the files keep the same blocks.
    expect(hostFileMap(p('dzv.qcow2'))).toBe(hostFileMap(p('dzq.qcow2')));
  });
});

describe('bounds', () => {
  it('serves 16 connections with 64 requests in flight each, every byte right', async () => {
    const v = await serveVdisk(p('a.qcow2'), sock(), { readOnly: true, shared: 0 });
    try {
      const file = readFileSync(p('a.raw'));
      const clients = await Promise.all(
        Array.from({ length: 16 }, () => NbdClient.connect({ path: v.socket })),
      );
      await Promise.all(
        clients.map(async (c, i) => {
          const reads = Array.from({ length: 64 }, (_, k) => {
            const off = ((i * 64 + k) * 193 * 1024) % (15 * MiB);
            return c.read(off, 256 * 1024).then((d) => d.equals(file.subarray(off, off + 256 * 1024)));
          });
          expect((await Promise.all(reads)).every(Boolean)).toBe(true);
        }),
      );
      await Promise.all(clients.map((c) => c.disconnect()));
    } finally {
      await v.stop();
    }
  });

  it('a client that does not read its replies holds a bounded amount, others are still served', async () => {
    const img = await openImage(p('a.qcow2'), { backing: 'follow' });
    const server = await NbdServer.start({
      exports: [new NbdExport({ name: '', image: img, readOnly: true })],
      listen: { path: sock() },
      shared: 0,
      persistent: true,
    });
    try {
      const path = (server.address() as { path: string }).path;
      const greedy = await NbdClient.connect({ path });
      // Stop reading, then ask for 512 MiB of replies.
      const s = (greedy as unknown as { sock: Socket }).sock;
      s.pause();
      for (let i = 0; i < 512; i++) void greedy.read((i % 15) * MiB, MiB).catch(() => {});
      await new Promise((r) => setTimeout(r, 500));
      expect(server.budget.inUse).toBeLessThanOrEqual(32 * MiB);
      const other = await NbdClient.connect({ path });
      expect((await other.read(0, MiB)).every((b) => b === 0x41)).toBe(true);
      await other.disconnect();
      greedy.close();
      await new Promise((r) => setTimeout(r, 200));
      expect(server.budget.inUse).toBe(0);
    } finally {
      await server.close();
      await img.close();
    }
  });

  it('drops a client that does not finish its handshake in time', async () => {
    const img = await openImage(p('a.qcow2'), { backing: 'follow' });
    const logs: string[] = [];
    const server = await NbdServer.start({
      exports: [new NbdExport({ name: '', image: img, readOnly: true })],
      listen: { path: sock() },
      persistent: true,
      handshakeLimitMs: 200,
      log: (m) => logs.push(m),
    });
    try {
      const c = await raw((server.address() as { path: string }).path);
      c.s.write(u32(3));
      expect(await closes(c.r)).toBe(true);
      expect(logs.join()).toContain('timed out');
    } finally {
      await server.close();
      await img.close();
    }
  });

  it('serves one client at a time with shared 1, the next one waiting', async () => {
    const img = await openImage(p('a.qcow2'), { backing: 'follow' });
    const server = await NbdServer.start({
      exports: [new NbdExport({ name: '', image: img, readOnly: true })],
      listen: { path: sock() },
      shared: 1,
      persistent: true,
    });
    try {
      const path = (server.address() as { path: string }).path;
      const first = await NbdClient.connect({ path });
      let secondReady = false;
      const second = NbdClient.connect({ path }).then((c) => {
        secondReady = true;
        return c;
      });
      await new Promise((r) => setTimeout(r, 300));
      expect(secondReady).toBe(false);
      await first.disconnect();
      const c2 = await second;
      expect(c2.size).toBe(16 * MiB);
      await c2.disconnect();
    } finally {
      await server.close();
      await img.close();
    }
  });

  it('stops when its last client leaves unless persistent, whatever port probes came before', async () => {
    const img = await openImage(p('a.qcow2'), { backing: 'follow' });
    const server = await NbdServer.start({
      exports: [new NbdExport({ name: '', image: img, readOnly: true })],
      listen: { path: sock() },
      shared: 2,
    });
    try {
      const path = (server.address() as { path: string }).path;
      // A connection that never completes a handshake does not stop the server.
      (await openSocket({ path })).destroy();
      await new Promise((r) => setTimeout(r, 100));
      const a = await NbdClient.connect({ path });
      const b = await NbdClient.connect({ path });
      await a.disconnect();
      let stopped = false;
      void server.done.then(() => {
        stopped = true;
      });
      await new Promise((r) => setTimeout(r, 100));
      expect(stopped).toBe(false);
      await b.disconnect();
      await server.done;
      expect(stopped).toBe(true);
    } finally {
      await server.close();
      await img.close();
    }
  });
});
