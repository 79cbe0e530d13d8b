/**
 * Downloads through sendfile(2) (src/server/image/zero-copy.ts, native/vdisk_sendfile.c) over
 * real HTTP, against the copying path in the same process: every byte of whole and Range
 * downloads compared, both paths; HEAD; keep-alive after a zero-copy response; clients that
 * leave mid-download, reading or stalled (the thread waiting in poll), leave no descriptor
 * and no thread behind and the server goes on serving; the access log counts what sendfile
 * sent.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setZeroCopy, ZERO_COPY_MIN, zeroCopyEnabled, zeroCopyStats } from './image/zero-copy.js';
import type { AccessEvent } from './ops.js';
import { ADMIN_PASSWORD, Api, startTestServer, type TestServer } from './test/harness.js';

let ts: TestServer;
let admin: Api;
const access: AccessEvent[] = [];
const MiB = 1 << 20;
const data = randomBytes(40 * MiB + 12345);
let id: string;

beforeAll(async () => {
  ts = await startTestServer({ accessLog: (e) => access.push(e) });
  admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
  id = (await admin.createImage({ name: 'zc', disk_format: 'raw', container_format: 'bare' })).id;
  const r = await fetch(`${ts.url}/v2/images/${id}/file`, {
    method: 'PUT',
    headers: { 'X-Auth-Token': admin.token, 'Content-Type': 'application/octet-stream' },
    body: data,
  });
  expect(r.status).toBe(204);
});
afterAll(async () => {
  setZeroCopy(true);
  await ts?.stop();
});

interface Got {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

function get(range?: string, method = 'GET', agent?: Agent): Promise<Got> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'X-Auth-Token': admin.token };
    if (range !== undefined) headers['Range'] = range;
    request(`${ts.url}/v2/images/${id}/file`, { method, headers, ...(agent ? { agent } : {}) }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }),
      );
      res.on('error', reject);
    })
      .on('error', reject)
      .end();
  });
}

const fds = () => readdirSync('/proc/self/fd').length;
const threads = () => readdirSync('/proc/self/task').length;

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!ok()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A raw client: sends the GET, reads `readBytes` of the answer (head included), then either
 * leaves at once (destroy: a reset, unread data in its buffer) or stops reading for `stallMs`
 * first (the server's socket buffer fills: its thread waits in poll) and then leaves.
 */
function leaver(
  readBytes: number,
  stallMs: number,
  onStalled?: () => void,
  url = ts.url,
  blob = id,
  token = admin.token,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    let got = 0;
    let timer: NodeJS.Timeout | undefined;
    const s = connect({ host: u.hostname, port: Number(u.port) });
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
    s.on('data', (c: Buffer) => {
      got += c.length;
      if (got < readBytes) return;
      s.pause();
      s.removeAllListeners('data');
      timer = setTimeout(() => {
        onStalled?.();
        s.destroy();
      }, stallMs);
    });
    s.write(
      `GET /v2/images/${blob}/file HTTP/1.1\r\nHost: ${u.host}\r\nX-Auth-Token: ${token}\r\n\r\n`,
      (err) => err && reject(err),
    );
  });
}

describe('zero-copy downloads (sendfile)', () => {
  it('is available here (the addon is built with sendfileStart)', () => {
    expect(zeroCopyEnabled()).toBe(true);
  });

  for (const zc of [true, false]) {
    it(`whole and Range downloads are byte for byte the blob (${zc ? 'sendfile' : 'copying path'})`, async () => {
      setZeroCopy(zc);
      try {
        const n0 = zeroCopyStats.transfers;
        const whole = await get();
        expect(whole.status).toBe(200);
        expect(whole.headers['content-length']).toBe(String(data.length));
        expect(whole.headers['content-md5']).toBe(createHash('md5').update(data).digest('hex'));
        expect(whole.headers['content-range']).toBeUndefined();
        expect(whole.body.equals(data)).toBe(true);
        const L = data.length;
        const ranges: [string, number, number][] = [
          ['bytes=0-0', 0, 0],
          [`bytes=0-${ZERO_COPY_MIN - 2}`, 0, ZERO_COPY_MIN - 2], // below the threshold: copied
          [`bytes=1-${ZERO_COPY_MIN}`, 1, ZERO_COPY_MIN],
          [`bytes=${2 * MiB - 7}-${30 * MiB + 3}`, 2 * MiB - 7, 30 * MiB + 3],
          [`bytes=${L - 3 * MiB - 1}-`, L - 3 * MiB - 1, L - 1],
          [`bytes=${5 * MiB}-${L + 1000}`, 5 * MiB, L - 1], // an end past the blob: clamped
          [`bytes=-${MiB + 1}`, L - MiB - 1, L - 1],
        ];
        for (const [spec, a, b] of ranges) {
          const r = await get(spec);
          expect(r.status, spec).toBe(206);
          expect(r.headers['content-range'], spec).toBe(`bytes ${a}-${b}/${L}`);
          expect(r.headers['content-length'], spec).toBe(String(b - a + 1));
          expect(r.headers['content-md5'], spec).toBeUndefined();
          expect(r.body.equals(data.subarray(a, b + 1)), spec).toBe(true);
        }
        expect((await get(`bytes=${L}-`)).status).toBe(416);
        // The whole download and the five ranges at or above the threshold went through sendfile.
        expect(zeroCopyStats.transfers - n0).toBe(zc ? 6 : 0);
      } finally {
        setZeroCopy(true);
      }
    });
  }

  it('HEAD: the GET headers, no body, and the connection serves the next request', async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const n0 = zeroCopyStats.transfers;
      const h = await get(undefined, 'HEAD', agent);
      expect(h.status).toBe(200);
      expect(h.headers['content-length']).toBe(String(data.length));
      expect(h.headers['content-md5']).toBe(createHash('md5').update(data).digest('hex'));
      expect(h.body.length).toBe(0);
      const hr = await get('bytes=10-2000000', 'HEAD', agent);
      expect(hr.status).toBe(206);
      expect(hr.headers['content-range']).toBe(`bytes 10-2000000/${data.length}`);
      expect(hr.headers['content-length']).toBe('1999991');
      expect(hr.body.length).toBe(0);
      expect(zeroCopyStats.transfers).toBe(n0);
      // Keep-alive: a zero-copy response, then another request on the same connection.
      const a = await get('bytes=100-3000099', 'GET', agent);
      const b = await get(undefined, 'GET', agent);
      expect(a.body.equals(data.subarray(100, 3000100))).toBe(true);
      expect(b.body.equals(data)).toBe(true);
      expect(zeroCopyStats.transfers).toBe(n0 + 2);
    } finally {
      agent.destroy();
    }
  });

  it('clients leaving mid-download: no descriptor or thread left, the server goes on serving', async () => {
    // Warm-up (whatever the first transfer opens once), logged before the baseline is taken.
    // (Its own entry, by request id: an earlier test's request may be logged late under load.)
    const warm = await get('bytes=0-1048575', 'GET', new Agent({ keepAlive: false }));
    const warmId = warm.headers['x-openstack-request-id'];
    await until('the warm-up logged', () => access.some((e) => e.request_id === warmId));
    await new Promise((r) => setTimeout(r, 100));
    const fd0 = fds();
    const th0 = threads();
    const before = access.length;
    const z0 = zeroCopyStats.transfers;
    // Leaving while reading (the server's sendfile fails: EPIPE/ECONNRESET, or Node's close
    // cancels it), five at once and one by one.
    const got = await Promise.all(Array.from({ length: 5 }, (_, i) => leaver((i + 1) * MiB, 0)));
    for (const g of got) expect(g).toBeLessThan(data.length);
    for (const n of [1, 64 * 1024, 4 * MiB]) await leaver(n, 0);
    // Stalled: the client stops reading, the server's thread waits in poll; then it leaves.
    let waiting = 0;
    await leaver(2 * MiB, 500, () => {
      waiting = threads() - th0;
    });
    expect(waiting).toBeGreaterThanOrEqual(1);
    expect(zeroCopyStats.transfers - z0).toBe(9);
    await until('descriptors closed', () => fds() <= fd0);
    await until('threads ended', () => threads() <= th0);
    // Every one of them was a zero-copy download cut short, in the access log as aborted.
    await until('access log', () => access.length >= before + 9);
    const cut = access.slice(before).filter((e) => e.route.endsWith('/file') && e.request_id !== warmId);
    expect(cut.length).toBe(9);
    for (const e of cut) {
      expect(e.aborted).toBe(true);
      expect(e.bytes_out).toBeGreaterThan(0);
      expect(e.bytes_out).toBeLessThan(data.length);
    }
    const again = await get();
    expect(again.body.equals(data)).toBe(true);
    expect(fds()).toBeLessThanOrEqual(fd0 + 2); // (the client's own socket may still be closing)
  });

  it('the access log counts the bytes sendfile sent', async () => {
    const before = access.length;
    const n0 = zeroCopyStats.transfers;
    await get();
    expect(zeroCopyStats.transfers).toBe(n0 + 1);
    await until('access log', () => access.length > before);
    const e = access.slice(before).find((x) => x.route.endsWith('/file'))!;
    expect(e.aborted).toBe(false);
    expect(e.status).toBe(200);
    expect(e.bytes_out).toBeGreaterThan(data.length);
    expect(e.bytes_out).toBeLessThan(data.length + 1024);
  });
});

describe('zero-copy download and shutdown', () => {
  it('a stalled download does not hold the server up: close() cancels the transfer', async () => {
    const other = await startTestServer();
    try {
      const api = await Api.login(other.url, 'admin', ADMIN_PASSWORD, 'admin');
      const img = (await api.createImage({ name: 'stall', disk_format: 'raw', container_format: 'bare' })).id;
      const r = await fetch(`${other.url}/v2/images/${img}/file`, {
        method: 'PUT',
        headers: { 'X-Auth-Token': api.token, 'Content-Type': 'application/octet-stream' },
        body: data,
      });
      expect(r.status).toBe(204);
      const th0 = threads();
      const z0 = zeroCopyStats.transfers;
      // A client that reads 1 MiB, then stops reading (the transfer waits in poll).
      const u = new URL(other.url);
      const s = connect({ host: u.hostname, port: Number(u.port) });
      s.on('error', () => {});
      let got = 0;
      const closed = new Promise<void>((resolve) => s.on('close', () => resolve()));
      const onData = (c: Buffer) => {
        got += c.length;
        if (got >= MiB) {
          s.pause();
          s.off('data', onData);
        }
      };
      s.on('data', onData);
      s.write(`GET /v2/images/${img}/file HTTP/1.1\r\nHost: ${u.host}\r\nX-Auth-Token: ${api.token}\r\n\r\n`);
      await until('the transfer waiting', () => threads() > th0 && got >= MiB);
      expect(zeroCopyStats.transfers - z0).toBe(1);
      const t0 = Date.now();
      await other.server.close(1000);
      expect(Date.now() - t0).toBeLessThan(10_000);
      await until('threads ended', () => threads() <= th0);
      // The connection is gone: the client, reading again, sees its end, short of the blob.
      s.on('data', (c: Buffer) => {
        got += c.length;
      });
      s.resume();
      await Promise.race([
        closed,
        new Promise((_, reject) => setTimeout(() => reject(new Error('the connection stayed open')), 10_000)),
      ]);
      expect(got).toBeLessThan(data.length);
    } finally {
      await other.stop();
    }
  });
});
