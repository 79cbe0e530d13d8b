/**
 * The http source's wire client (http-wire.ts) against a real Node HTTP server that answers
 * Range GETs the ways it does not handle itself: a chunked 206, a redirect, a 503 then a good
 * answer, `Connection: close` on every answer. Each time the source must still read every byte
 * right (node:http takes over, or the request is tried again). The plain path is covered
 * against qemu-img and nginx in http.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openHttpSource } from './http.js';

const data = randomBytes(9 * (1 << 20) + 12345);
let server: Server;
let base: string;
let ranged = 0;
let fails = 0;

function parseRange(h: string | undefined): [number, number] {
  const m = /^bytes=(\d+)-(\d+)$/.exec(h ?? '');
  if (m === null) throw new Error(`bad range ${h}`);
  return [Number(m[1]), Math.min(Number(m[2]), data.length - 1)];
}

beforeAll(async () => {
  server = createServer((req, res) => {
    const mode = req.url?.split('/')[1] ?? '';
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-length': data.length, 'accept-ranges': 'bytes' });
      res.end();
      return;
    }
    if (mode === 'redirect' && req.url === '/redirect/disk') {
      res.writeHead(302, { location: '/plain/disk' });
      res.end();
      return;
    }
    if (mode === 'flaky503' && fails++ % 3 === 0) {
      res.writeHead(503, { 'content-length': 0 });
      res.end();
      return;
    }
    ranged++;
    const [a, b] = parseRange(req.headers.range);
    const body = data.subarray(a, b + 1);
    const headers: Record<string, string | number> = { 'content-range': `bytes ${a}-${b}/${data.length}` };
    if (mode === 'close') headers.connection = 'close';
    if (mode !== 'chunked') headers['content-length'] = body.length;
    res.writeHead(206, headers);
    // Several writes: a chunked answer has several chunks.
    for (let o = 0; o < body.length; o += 300_000) res.write(body.subarray(o, o + 300_000));
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

async function readAll(path: string): Promise<Buffer> {
  const src = await openHttpSource(`${base}/${path}`);
  try {
    const out = Buffer.alloc(src.size);
    // Sequential 2 MiB reads (read-ahead on), then a few random small ones.
    for (let off = 0; off < src.size; off += 2 << 20) await src.read(out.subarray(off, off + (2 << 20)), off);
    for (const off of [5, 3 << 20, src.size - 100]) {
      const b = Buffer.alloc(100);
      await src.read(b, off);
      expect(b.equals(data.subarray(off, off + 100))).toBe(true);
    }
    return out;
  } finally {
    await src.close();
  }
}

describe('http source wire client', () => {
  for (const mode of ['plain', 'chunked', 'redirect', 'flaky503', 'close']) {
    it(`reads every byte from a server answering ${mode}`, async () => {
      ranged = 0;
      const got = await readAll(`${mode}/disk`);
      expect(got.equals(data)).toBe(true);
      expect(ranged).toBeGreaterThan(0);
    });
  }
});
