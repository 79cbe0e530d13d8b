/**
 * web-download filtering: Glance's validate_import_uri semantics (allowed lists win over
 * disallowed ones, ports only checked when the URL names one), the internal-address rule we
 * add, and fetchImage against a real local HTTP server (redirect checks, pinned address).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchImage, type ImportFilter, isInternalAddress, validateImportUri } from './web-download.js';

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
