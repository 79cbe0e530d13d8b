/**
 * The dashboard's route: redirect, files with their types, caching and security headers,
 * gzip, ETag, 404 for what is missing, and no path traversal (raw requests, encoded forms).
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DASHBOARD_CSP } from './dashboard.js';
import { startTestServer, type TestServer } from './test/harness.js';

let ts: TestServer;
let web: string;
const JS = `console.log(${JSON.stringify('x'.repeat(4000))});\n`;

/** A raw HTTP request: the path is sent exactly as given (no URL normalisation by a client). */
function raw(path: string, method = 'GET', headers: Record<string, string> = {}) {
  const u = new URL(ts.url);
  return new Promise<{
    status: number;
    headers: Record<string, string | string[] | undefined>;
    body: Buffer;
  }>((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  const root = await mkdtemp(join(tmpdir(), 'vdisk-dash-'));
  web = join(root, 'web');
  await mkdir(join(web, 'sub'), { recursive: true });
  await writeFile(
    join(web, 'index.html'),
    '<!doctype html><title>t</title><script type="module" src="main-ABCD1234.js"></script>',
  );
  await writeFile(join(web, 'main-ABCD1234.js'), JS);
  await writeFile(join(web, 'main-ABCD1234.css'), 'body{}');
  await writeFile(join(web, '.hidden'), 'hidden');
  await writeFile(join(web, 'sub', 'x.js'), 'nested');
  await writeFile(join(root, 'secret.txt'), 'SECRET');
  ts = await startTestServer({ dashboardDir: web });
});
afterAll(async () => {
  await ts.stop();
  await rm(join(web, '..'), { recursive: true, force: true });
});

describe('GET /dashboard', () => {
  it('the version document at / stays Glance’s', async () => {
    const r = await raw('/');
    expect(r.status).toBe(300);
    expect(JSON.parse(r.body.toString()).versions.length).toBeGreaterThan(0);
  });

  it('/dashboard redirects to /dashboard/', async () => {
    const r = await raw('/dashboard');
    expect(r.status).toBe(301);
    expect(r.headers['location']).toBe('/dashboard/');
  });

  it('index.html: no-cache, CSP, nosniff, no-referrer, ETag and 304', async () => {
    const r = await raw('/dashboard/');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(r.headers['cache-control']).toBe('no-cache');
    expect(r.headers['content-security-policy']).toBe(DASHBOARD_CSP);
    expect(DASHBOARD_CSP).toContain("script-src 'self'");
    expect(DASHBOARD_CSP).toContain("connect-src 'self'");
    expect(DASHBOARD_CSP).not.toContain('unsafe');
    expect(r.headers['x-content-type-options']).toBe('nosniff');
    expect(r.headers['referrer-policy']).toBe('no-referrer');
    expect(r.body.toString()).toContain('main-ABCD1234.js');
    const again = await raw('/dashboard/index.html', 'GET', { 'If-None-Match': String(r.headers['etag']) });
    expect(again.status).toBe(304);
    expect(again.body.length).toBe(0);
  });

  it('content-hashed assets are immutable, typed, gzipped on request', async () => {
    const r = await raw('/dashboard/main-ABCD1234.js', 'GET', { 'Accept-Encoding': 'gzip, br' });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(r.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    expect(r.headers['content-encoding']).toBe('gzip');
    expect(gunzipSync(r.body).toString()).toBe(JS);
    const plain = await raw('/dashboard/main-ABCD1234.js');
    expect(plain.headers['content-encoding']).toBeUndefined();
    expect(plain.body.toString()).toBe(JS);
    const css = await raw('/dashboard/main-ABCD1234.css');
    expect(css.headers['content-type']).toBe('text/css; charset=utf-8');
    const head = await raw('/dashboard/main-ABCD1234.js', 'HEAD');
    expect(head.status).toBe(200);
    expect(head.body.length).toBe(0);
  });

  it('404 for missing files; 405 for other methods', async () => {
    expect((await raw('/dashboard/nope-12345678.js')).status).toBe(404);
    expect((await raw('/dashboard/', 'POST')).status).toBe(405);
    expect((await raw('/dashboard/', 'DELETE')).status).toBe(405);
  });

  it('no path traversal, no nested paths, no dot files', async () => {
    const attempts = [
      '/dashboard/../secret.txt',
      '/dashboard/..%2fsecret.txt',
      '/dashboard/%2e%2e%2fsecret.txt',
      '/dashboard/%2e%2e/secret.txt',
      '/dashboard/..%5csecret.txt',
      '/dashboard/....//secret.txt',
      '/dashboard//etc/passwd',
      '/dashboard/%2fetc%2fpasswd',
      '/dashboard/sub/x.js',
      '/dashboard/sub%2fx.js',
      '/dashboard/.hidden',
      '/dashboard/%00index.html',
      '/dashboard/index.html%00.js',
      '/dashboard/%ff',
    ];
    for (const p of attempts) {
      const r = await raw(p);
      expect([400, 404], p).toContain(r.status);
      expect(r.body.toString(), p).not.toContain('SECRET');
      expect(r.body.toString(), p).not.toContain('nested');
      expect(r.body.toString(), p).not.toContain('hidden');
      expect(r.body.toString(), p).not.toContain('root:');
    }
  });

  it('server.ts loads the dashboard module lazily (no static import)', async () => {
    const src = await readFile(new URL('./server.ts', import.meta.url), 'utf8');
    expect(src).not.toMatch(/^import[^;]*'\.\/dashboard\.js'/m);
    expect(src).toContain("await import('./dashboard.js')");
  });
});
