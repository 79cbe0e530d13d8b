/**
 * web-download filtering: Glance's validate_import_uri semantics (allowed lists win over
 * disallowed ones, ports only checked when the URL names one), the internal-address rule we
 * add, and fetchImage against a real local HTTP server (redirect checks, pinned address).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  fetchImage,
  type ImportFilter,
  isInternalAddress,
  openWebImage,
  validateImportUri,
} from './web-download.js';

const glanceDefaults: ImportFilter = {
  allowedSchemes: ['http', 'https'],
  disallowedSchemes: [],
  allowedHosts: [],
  disallowedHosts: [],
  allowedPorts: [80, 443],
  disallowedPorts: [],
};

describe('validateImportUri (Glance semantics)', () => {
  it('defaults: http/https, ports 80/443 when named, any host', () => {
    const ok = (u: string) => validateImportUri(u, glanceDefaults);
    expect(ok('http://example.com/a.img')).toBe(true);
    expect(ok('https://example.com:443/a.img')).toBe(true);
    expect(ok('http://example.com:8080/a.img')).toBe(false);
    expect(ok('ftp://example.com/a.img')).toBe(false);
    expect(ok('file:///etc/passwd')).toBe(false);
    expect(ok('http://:80/nohost')).toBe(false);
    expect(ok('garbage')).toBe(false);
  });

  it('allowed lists win over disallowed lists; disallowed lists apply alone', () => {
    const f = { ...glanceDefaults, allowedHosts: ['mirror.example'], disallowedHosts: ['mirror.example'] };
    expect(validateImportUri('http://mirror.example/x', f)).toBe(true);
    expect(validateImportUri('http://other.example/x', f)).toBe(false);
    const deny = { ...glanceDefaults, disallowedHosts: ['evil.example'] };
    expect(validateImportUri('http://EVIL.example/x', deny)).toBe(false);
    expect(validateImportUri('http://good.example/x', deny)).toBe(true);
    const ports = { ...glanceDefaults, allowedPorts: [], disallowedPorts: [8080] };
    expect(validateImportUri('http://a.example:8080/x', ports)).toBe(false);
    expect(validateImportUri('http://a.example:8081/x', ports)).toBe(true);
    const schemes = { ...glanceDefaults, allowedSchemes: [], disallowedSchemes: ['http'] };
    expect(validateImportUri('http://a.example/x', schemes)).toBe(false);
    expect(validateImportUri('https://a.example/x', schemes)).toBe(true);
  });
});

describe('isInternalAddress', () => {
  it('knows loopback, private, link-local, CGNAT, multicast, unspecified, mapped IPv4', () => {
    for (const a of [
      '127.0.0.1',
      '10.2.3.4',
      '172.16.0.1',
      '172.31.255.255',
      '192.168.1.1',
      '169.254.169.254',
      '100.64.0.1',
      '0.0.0.0',
      '224.0.0.1',
      '255.255.255.255',
      '::1',
      '::',
      'fe80::1',
      'fd00::1',
      'ff02::1',
      '::ffff:127.0.0.1',
      '::ffff:10.0.0.1',
      'not-an-address',
    ])
      expect(isInternalAddress(a), a).toBe(true);
    for (const a of ['8.8.8.8', '172.32.0.1', '192.169.0.1', '2001:4860:4860::8888', '::ffff:8.8.8.8'])
      expect(isInternalAddress(a), a).toBe(false);
  });
});

describe('fetchImage', () => {
  let server: Server;
  let port = 0;
  beforeAll(async () => {
    server = createServer((req, res) => {
      if (req.url === '/data') res.writeHead(200, { 'Content-Length': 5 }).end('hello');
      else if (req.url === '/hop') res.writeHead(301, { Location: '/data' }).end();
      else if (req.url === '/away') res.writeHead(307, { Location: `http://localhost:${port}/data` }).end();
      else if (req.url === '/loop') res.writeHead(302, { Location: '/loop' }).end();
      else res.writeHead(500, 'Broken').end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => {
    server?.close();
  });
  const allowLoopback = () => ({ ...glanceDefaults, allowedHosts: ['127.0.0.1'], allowedPorts: [port] });
  const body = async (uri: string, f: ImportFilter) => {
    const res = await fetchImage(uri, f);
    let s = '';
    for await (const c of res) s += String(c);
    return s;
  };

  it('fetches from an explicitly allowed loopback host and follows relative redirects', async () => {
    expect(await body(`http://127.0.0.1:${port}/data`, allowLoopback())).toBe('hello');
    expect(await body(`http://127.0.0.1:${port}/hop`, allowLoopback())).toBe('hello');
  });

  it('refuses redirects to disallowed hosts, redirect loops and HTTP errors', async () => {
    await expect(fetchImage(`http://127.0.0.1:${port}/away`, allowLoopback())).rejects.toThrow(
      `Redirect to a disallowed URI: http://localhost:${port}/data`,
    );
    await expect(fetchImage(`http://127.0.0.1:${port}/loop`, allowLoopback())).rejects.toThrow(
      /infinite loop/,
    );
    await expect(fetchImage(`http://127.0.0.1:${port}/nope`, allowLoopback())).rejects.toThrow(
      'HTTP Error 500: Broken',
    );
  });

  it('refuses loopback when it is not named in allowed_hosts, by literal or by name', async () => {
    const anyHost = { ...glanceDefaults, allowedPorts: [port] };
    await expect(fetchImage(`http://127.0.0.1:${port}/data`, anyHost)).rejects.toThrow(
      /internal address 127\.0\.0\.1/,
    );
    await expect(fetchImage(`http://localhost:${port}/data`, anyHost)).rejects.toThrow(/internal address/);
  });
});

describe('openWebImage', () => {
  const data = Buffer.alloc(6 << 20);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i, i);
  let server: Server;
  let port = 0;
  /** Requests seen, as "METHOD url range". */
  const seen: string[] = [];
  let resetDone = false;
  /** Sockets of requests left unanswered. */
  const held: Socket[] = [];
  beforeAll(async () => {
    server = createServer((req, res) => {
      seen.push(`${req.method} ${req.url} ${req.headers.range ?? ''}`);
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (req.url === '/plain') {
        // No Accept-Ranges: read by one GET.
        res.writeHead(200, { 'Content-Length': data.length }).end(req.method === 'HEAD' ? undefined : data);
      } else if (req.url === '/liar') {
        // Says it serves ranges, answers 200 with everything to a Range GET.
        res.writeHead(200, { 'Content-Length': data.length, 'Accept-Ranges': 'bytes' });
        res.end(req.method === 'HEAD' ? undefined : data);
      } else if (req.url === '/ranged' || req.url === '/reset') {
        const start = m === null ? 0 : Number(m[1]);
        const end = m === null ? data.length : Math.min(data.length, Number(m[2]) + 1);
        res.writeHead(m === null ? 200 : 206, {
          'Content-Length': end - start,
          'Accept-Ranges': 'bytes',
          ...(m === null ? {} : { 'Content-Range': `bytes ${start}-${end - 1}/${data.length}` }),
        });
        if (req.method === 'HEAD') return void res.end();
        const cutAt = 3 << 20;
        if (req.url === '/reset' && m !== null && !resetDone && start <= cutAt && cutAt < end) {
          resetDone = true;
          res.write(data.subarray(start, cutAt), () => setTimeout(() => req.socket.resetAndDestroy(), 20));
          return;
        }
        res.end(data.subarray(start, end));
      } else if (req.url === '/slow-head') {
        // A GET answered at once (with ranges), then a HEAD that never is.
        if (req.method === 'HEAD') {
          held.push(req.socket);
          return;
        }
        res.writeHead(200, { 'Content-Length': data.length, 'Accept-Ranges': 'bytes' }).end(data);
      } else if (req.url === '/to-localhost') {
        res.writeHead(302, { Location: `http://localhost:${port}/ranged` }).end();
      } else res.writeHead(404, 'Not Found').end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => {
    server?.close();
  });
  const f = () => ({ ...glanceDefaults, allowedHosts: ['127.0.0.1'], allowedPorts: [port] });
  const all = async (uri: string, filter: ImportFilter = f()) => {
    const body = await openWebImage(uri, filter);
    const parts: Buffer[] = [];
    for await (const c of body) parts.push(c as Buffer);
    return { bytes: Buffer.concat(parts), length: body.headers['content-length'] };
  };

  it('reads a server with byte ranges by ranges, one without by one GET, a liar by one GET', async () => {
    seen.length = 0;
    const r = await all(`http://127.0.0.1:${port}/ranged`);
    expect(r.bytes.equals(data)).toBe(true);
    expect(r.length).toBe(String(data.length));
    expect(seen.filter((s) => /bytes=/.test(s)).length).toBeGreaterThan(0);
    seen.length = 0;
    expect((await all(`http://127.0.0.1:${port}/plain`)).bytes.equals(data)).toBe(true);
    expect(seen).toEqual([`GET /plain `]);
    expect((await all(`http://127.0.0.1:${port}/liar`)).bytes.equals(data)).toBe(true);
  });

  it('an abort while the range source opens (a HEAD unanswered) ends the open at once', async () => {
    const ac = new AbortController();
    const t0 = Date.now();
    setTimeout(() => ac.abort(new Error('The server is shutting down.')), 300);
    await expect(openWebImage(`http://127.0.0.1:${port}/slow-head`, f(), ac.signal)).rejects.toThrow(
      'The server is shutting down.',
    );
    expect(Date.now() - t0).toBeLessThan(3000);
    // The HEAD's connection is closed by the client once the source it was opening arrives
    // or fails: here it waits for its own timeout, so the server ends it for the test.
    for (const sock of held) sock.destroy();
  });

  it('a connection reset part way through a range is resumed: every byte, in order', async () => {
    resetDone = false;
    const r = await all(`http://127.0.0.1:${port}/reset`);
    expect(resetDone).toBe(true);
    expect(r.bytes.equals(data)).toBe(true);
  });

  it('keeps the filter: a redirect to a disallowed host, an internal address, a 404', async () => {
    await expect(all(`http://127.0.0.1:${port}/to-localhost`)).rejects.toThrow(
      `Redirect to a disallowed URI: http://localhost:${port}/ranged`,
    );
    await expect(
      all(`http://127.0.0.1:${port}/ranged`, { ...glanceDefaults, allowedPorts: [port] }),
    ).rejects.toThrow(/internal address 127\.0\.0\.1/);
    // A name that resolves to loopback, allowed by port only: refused by the lookup hook.
    await expect(
      all(`http://localhost:${port}/ranged`, { ...glanceDefaults, allowedPorts: [port] }),
    ).rejects.toThrow(/localhost resolves to the internal address/);
    await expect(all(`http://127.0.0.1:${port}/nope`)).rejects.toThrow('HTTP Error 404: Not Found');
  });
});
