/**
 * The image API over HTTP: PATCH rules of both media types, the upload/download path
 * (sized and chunked bodies, checksums, Range, 204 without data, size cap), the status
 * machine, pagination/sorting/filters, and the server's own life cycle (exclusive data
 * directory lock, restart keeps everything, crash recovery of interrupted uploads).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer } from './server.js';
import {
  ADMIN_PASSWORD,
  Api,
  addProjectUser,
  putChunked,
  startTestServer,
  type TestServer,
} from './test/harness.js';

let ts: TestServer;
let admin: Api;
let user: Api;

beforeAll(async () => {
  ts = await startTestServer({ settings: { imageSizeCap: 8 << 20 } });
  admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
  await addProjectUser(admin, 'proj', 'user', 'pw');
  user = await Api.login(ts.url, 'user', 'pw', 'proj');
});
afterAll(async () => {
  await ts?.stop();
});

const hex = (algo: string, b: Uint8Array) => createHash(algo).update(b).digest('hex');

describe('PATCH', () => {
  it('follows Glance rules for both media types', async () => {
    const img = await user.createImage({
      name: 'a',
      disk_format: 'raw',
      container_format: 'bare',
      color: 'red',
    });
    // draft 10 (v2.1)
    let r = await user.patch(img.id, [
      { op: 'replace', path: '/name', value: 'b' },
      { op: 'add', path: '/size_hint', value: '5' },
      { op: 'remove', path: '/color' },
      { op: 'replace', path: '/min_ram', value: 512 },
      { op: 'replace', path: '/protected', value: true },
      { op: 'replace', path: '/tags', value: ['x', 'y', 'x'] },
    ]);
    expect(r.status).toBe(200);
    expect(r.json.name).toBe('b');
    expect(r.json.size_hint).toBe('5');
    expect(r.json.color).toBeUndefined();
    expect(r.json.min_ram).toBe(512);
    expect(r.json.protected).toBe(true);
    expect(r.json.tags.sort()).toEqual(['x', 'y']);
    // 409 on a missing path, for replace and remove
    expect((await user.patch(img.id, [{ op: 'replace', path: '/nope', value: 'v' }])).status).toBe(409);
    expect((await user.patch(img.id, [{ op: 'remove', path: '/nope' }])).status).toBe(409);
    // read-only, reserved, base attributes that cannot be removed
    for (const path of ['/status', '/id', '/checksum', '/size', '/created_at', '/self', '/file', '/schema'])
      expect((await user.patch(img.id, [{ op: 'replace', path, value: 'v' }])).status).toBe(403);
    for (const path of ['/deleted', '/location', '/os_glance_x'])
      expect((await user.patch(img.id, [{ op: 'add', path, value: 'v' }])).status).toBe(403);
    expect((await user.patch(img.id, [{ op: 'remove', path: '/name' }])).status).toBe(403);
    // schema: wrong types, bad enum, non-string properties
    expect((await user.patch(img.id, [{ op: 'replace', path: '/min_ram', value: 'lots' }])).status).toBe(400);
    expect((await user.patch(img.id, [{ op: 'replace', path: '/disk_format', value: 'exe' }])).status).toBe(
      400,
    );
    expect((await user.patch(img.id, [{ op: 'add', path: '/n', value: 5 }])).status).toBe(400);
    expect((await user.patch(img.id, [{ op: 'add', path: '/kernel_id', value: 'not-a-uuid' }])).status).toBe(
      400,
    );
    // malformed operations and pointers
    expect((await user.patch(img.id, [{ op: 'move', path: '/name', value: 'x' }])).status).toBe(400);
    expect((await user.patch(img.id, [{ op: 'add', path: 'name', value: 'x' }])).status).toBe(400);
    expect((await user.patch(img.id, [{ op: 'add', path: '/a/b', value: 'x' }])).status).toBe(400);
    expect((await user.patch(img.id, [{ op: 'add', path: '/name' }])).status).toBe(400);
    expect((await user.patch(img.id, { op: 'add' } as never)).status).toBe(400);
    // draft 4 (v2.0): {"add": "/path"}; add on an existing property is a conflict there
    r = await user.patch(img.id, [{ add: '/newprop', value: 'v' }], 4);
    expect(r.status).toBe(200);
    expect(r.json.newprop).toBe('v');
    expect((await user.patch(img.id, [{ add: '/newprop', value: 'w' }], 4)).status).toBe(409);
    expect((await user.patch(img.id, [{ add: '/name', value: 'w' }], 4)).status).toBe(409);
    expect((await user.patch(img.id, [{ replace: '/newprop', value: 'w' }], 4)).json.newprop).toBe('w');
    // draft 10 add on an existing property replaces it
    expect((await user.patch(img.id, [{ op: 'add', path: '/newprop', value: 'z' }])).json.newprop).toBe('z');
    // other media types: 415 with Accept-Patch
    const bad = await user.req('PATCH', `/v2/images/${img.id}`, [], {
      'Content-Type': 'application/json-patch+json',
    });
    expect(bad.status).toBe(415);
    expect(bad.headers.get('accept-patch')).toBe(
      'application/openstack-images-v2.0-json-patch, application/openstack-images-v2.1-json-patch',
    );
    // protected: no delete until unprotected
    expect((await user.req('DELETE', `/v2/images/${img.id}`)).status).toBe(403);
    await user.patch(img.id, [{ op: 'replace', path: '/protected', value: false }]);
    expect((await user.req('DELETE', `/v2/images/${img.id}`)).status).toBe(204);
    expect((await user.req('GET', `/v2/images/${img.id}`)).status).toBe(404);
  });

  it('disk_format and container_format change only while queued', async () => {
    const img = await user.createImage({ disk_format: 'raw', container_format: 'bare' });
    expect((await user.patch(img.id, [{ op: 'replace', path: '/disk_format', value: 'qcow2' }])).status).toBe(
      200,
    );
    await user.patch(img.id, [{ op: 'replace', path: '/disk_format', value: 'raw' }]);
    expect(await user.upload(img.id, new Uint8Array(10))).toBe(204);
    expect((await user.patch(img.id, [{ op: 'replace', path: '/disk_format', value: 'qcow2' }])).status).toBe(
      403,
    );
  });

  it('create refuses read-only and reserved attributes', async () => {
    for (const body of [{ status: 'active' }, { size: 5 }, { checksum: 'x' }, { self: 'x' }, { stores: 'a' }])
      expect((await user.req('POST', '/v2/images', body)).status).toBe(403);
    expect((await user.req('POST', '/v2/images', { deleted: 'x' })).status).toBe(403);
    expect((await user.req('POST', '/v2/images', { os_glance_foo: 'x' })).status).toBe(403);
    expect((await user.req('POST', '/v2/images', { id: 'nope' })).status).toBe(400);
    expect((await user.req('POST', '/v2/images', { visibility: 'everyone' })).status).toBe(400);
    const id = '11111111-2222-3333-4444-555555555555';
    expect((await user.req('POST', '/v2/images', { id })).status).toBe(201);
    expect((await user.req('POST', '/v2/images', { id })).status).toBe(409);
  });
});

describe('data', () => {
  it('sized and chunked uploads: checksums, size, download with Content-MD5 and Range', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const a = await user.createImage({ name: 'sized', disk_format: 'raw', container_format: 'bare' });
    expect(await user.upload(a.id, data)).toBe(204);
    const b = await user.createImage({ name: 'chunked', disk_format: 'raw', container_format: 'bare' });
    const chunks = [data.subarray(0, 1000), data.subarray(1000, 2_000_000), data.subarray(2_000_000)];
    expect(await putChunked(`${ts.url}/v2/images/${b.id}/file`, user.token, chunks)).toBe(204);
    for (const id of [a.id, b.id]) {
      const img = (await user.req('GET', `/v2/images/${id}`)).json;
      expect(img.status).toBe('active');
      expect(img.size).toBe(data.length);
      expect(img.virtual_size).toBe(data.length);
      expect(img.checksum).toBe(hex('md5', data));
      expect(img.os_hash_algo).toBe('sha512');
      expect(img.os_hash_value).toBe(hex('sha512', data));
      const r = await fetch(`${ts.url}/v2/images/${id}/file`, { headers: { 'X-Auth-Token': user.token } });
      expect(r.status).toBe(200);
      expect(r.headers.get('content-md5')).toBe(hex('md5', data));
      expect(Buffer.from(await r.arrayBuffer()).equals(data)).toBe(true);
    }
    const range = async (spec: string) =>
      fetch(`${ts.url}/v2/images/${a.id}/file`, { headers: { 'X-Auth-Token': user.token, Range: spec } });
    let r = await range('bytes=100-199');
    expect(r.status).toBe(206);
    expect(r.headers.get('content-range')).toBe(`bytes 100-199/${data.length}`);
    expect(Buffer.from(await r.arrayBuffer()).equals(data.subarray(100, 200))).toBe(true);
    r = await range('bytes=-10');
    expect(Buffer.from(await r.arrayBuffer()).equals(data.subarray(data.length - 10))).toBe(true);
    r = await range(`bytes=${data.length}-`);
    expect(r.status).toBe(416);
    // a second upload to an active image is a conflict
    expect(await user.upload(a.id, data)).toBe(409);
  });

  it('no data: 204; no formats: 400; wrong content type: 415', async () => {
    const img = await user.createImage({ name: 'empty' });
    expect((await user.req('GET', `/v2/images/${img.id}/file`)).status).toBe(204);
    expect(await user.upload(img.id, new Uint8Array(5))).toBe(400);
    await user.patch(img.id, [
      { op: 'add', path: '/disk_format', value: 'raw' },
      { op: 'add', path: '/container_format', value: 'bare' },
    ]);
    const r = await user.req('PUT', `/v2/images/${img.id}/file`, new Uint8Array(5), {
      'Content-Type': 'text/plain',
    });
    expect(r.status).toBe(415);
    expect((await user.req('GET', `/v2/images/${img.id}`)).json.status).toBe('queued');
  });

  it('image_size_cap: 413, the image stays queued and no blob is kept (sized and chunked)', async () => {
    const big = randomBytes(9 << 20);
    const a = await user.createImage({ disk_format: 'raw', container_format: 'bare' });
    expect(await user.upload(a.id, big)).toBe(413);
    const b = await user.createImage({ disk_format: 'raw', container_format: 'bare' });
    const chunks = Array.from({ length: 9 }, (_, i) => big.subarray(i << 20, (i + 1) << 20));
    expect(await putChunked(`${ts.url}/v2/images/${b.id}/file`, user.token, chunks)).toBe(413);
    for (const id of [a.id, b.id]) {
      const img = (await user.req('GET', `/v2/images/${id}`)).json;
      expect(img.status).toBe('queued');
      expect(img.size).toBe(null);
    }
    expect(await readdir(join(ts.dir, 'data', 'images', '.tmp'))).toEqual([]);
    const blobs = (await readdir(join(ts.dir, 'data', 'images'))).filter((n) => n !== '.tmp');
    expect(blobs).not.toContain(a.id);
    expect(blobs).not.toContain(b.id);
  });

  it('a client that goes away mid-upload leaves a queued image and no blob', async () => {
    const img = await user.createImage({ disk_format: 'raw', container_format: 'bare' });
    const chunks = Array.from({ length: 4 }, () => randomBytes(1 << 20));
    await putChunked(`${ts.url}/v2/images/${img.id}/file`, user.token, chunks, 2);
    let status = '';
    for (let i = 0; i < 50 && status !== 'queued'; i++) {
      status = (await user.req('GET', `/v2/images/${img.id}`)).json.status;
      if (status !== 'queued') await new Promise((r) => setTimeout(r, 100));
    }
    expect(status).toBe('queued');
    expect(await readdir(join(ts.dir, 'data', 'images', '.tmp'))).toEqual([]);
    // and it can be uploaded again
    expect(await user.upload(img.id, chunks[0]!)).toBe(204);
  });

  it('deactivate / reactivate and the status machine', async () => {
    const img = await user.createImage({ disk_format: 'raw', container_format: 'bare' });
    expect((await user.req('POST', `/v2/images/${img.id}/actions/deactivate`)).status).toBe(403); // queued
    await user.upload(img.id, new Uint8Array(100));
    expect((await user.req('POST', `/v2/images/${img.id}/actions/deactivate`)).status).toBe(204);
    expect((await user.req('GET', `/v2/images/${img.id}`)).json.status).toBe('deactivated');
    expect((await user.req('POST', `/v2/images/${img.id}/actions/deactivate`)).status).toBe(204);
    expect((await user.req('POST', `/v2/images/${img.id}/actions/reactivate`)).status).toBe(204);
    expect((await user.req('GET', `/v2/images/${img.id}`)).json.status).toBe('active');
  });
});

describe('paths', () => {
  it('an empty image id is an image that does not exist (404), as Glance answers, not the list', async () => {
    const get = await user.req('GET', '/v2/images/');
    expect(get.status).toBe(404);
    expect(get.text).toContain('No image found with ID');
    expect((await user.req('DELETE', '/v2/images/')).status).toBe(404);
    expect(
      (
        await user.req('PATCH', '/v2/images/', [], {
          'Content-Type': 'application/openstack-images-v2.1-json-patch',
        })
      ).status,
    ).toBe(404);
    // A trailing slash elsewhere is ignored, as before.
    expect((await user.req('GET', '/v2/images')).status).toBe(200);
    const created = await user.req('POST', '/v2/images/', { name: 'slash' });
    expect(created.status).toBe(201);
    expect((await user.req('GET', '/v3/auth/projects/')).status).toBe(200);
  });
});

describe('lists', () => {
  it('paginates with limit/marker/next, sorts in both syntaxes, filters as Glance', async () => {
    const api = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
    await addProjectUser(api, 'lister', 'lister', 'pw');
    const l = await Api.login(ts.url, 'lister', 'pw', 'lister');
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) {
      const img = await l.createImage({
        name: `img-${i}`,
        disk_format: i % 2 === 0 ? 'raw' : 'iso', // raw-like data: upload safety accepts zeros
        container_format: 'bare',
        ...(i === 3 ? { tags: ['gold'] } : {}),
        ...(i === 5 ? { os_hidden: true } : {}),
        flavor: i < 2 ? 'small' : 'large',
      });
      ids.push(img.id);
      if (i < 3) await l.upload(img.id, new Uint8Array((i + 1) * 1000));
    }
    // pages of 3 by created_at desc (default), following `next`
    const seen: string[] = [];
    let next: string | undefined = '/v2/images?limit=3';
    while (next !== undefined) {
      const r = await l.req('GET', next);
      expect(r.status).toBe(200);
      seen.push(...r.json.images.map((i: { id: string }) => i.id));
      next = r.json.next;
    }
    const visible = ids.filter((_, i) => i !== 5);
    expect(seen).toEqual([...visible].reverse());
    const names = async (q: string) =>
      ((await l.req('GET', `/v2/images?${q}`)).json.images as { name: string }[]).map((i) => i.name);
    expect(await names('sort=name:asc')).toEqual(['img-0', 'img-1', 'img-2', 'img-3', 'img-4', 'img-6']);
    expect(await names('sort_key=name&sort_dir=desc&limit=2')).toEqual(['img-6', 'img-4']);
    expect(await names('sort=disk_format:asc,name:desc')).toEqual([
      'img-3',
      'img-1',
      'img-6',
      'img-4',
      'img-2',
      'img-0',
    ]);
    expect(await names('name=in:img-1,img-4&sort=name:asc')).toEqual(['img-1', 'img-4']);
    expect(await names('disk_format=iso&sort=name:asc')).toEqual(['img-1', 'img-3']);
    expect(await names('tag=gold')).toEqual(['img-3']);
    expect(await names('size_min=2000&sort=name:asc')).toEqual(['img-1', 'img-2']);
    expect(await names('size_max=1000')).toEqual(['img-0']);
    // Exact columns, as Glance filters any attribute of the image.
    expect(await names('size=2000')).toEqual(['img-1']);
    expect(await names('min_ram=0&size=1000')).toEqual(['img-0']);
    expect((await user.req('GET', '/v2/images?size=big')).status).toBe(400);
    expect(await names('status=active&sort=name:asc')).toEqual(['img-0', 'img-1', 'img-2']);
    expect(await names('flavor=small&sort=name:asc')).toEqual(['img-0', 'img-1']);
    expect(await names('os_hidden=true')).toEqual(['img-5']);
    expect(await names('created_at=gt:2000-01-01T00:00:00Z&limit=1')).toHaveLength(1);
    expect(await names('created_at=lt:2000-01-01T00:00:00Z')).toEqual([]);
    for (const bad of [
      'sort=bogus',
      'sort_dir=sideways',
      'limit=x',
      'limit=-1',
      'member_status=maybe',
      'name=like:x',
      'size_min=big',
      'created_at=gt:yesterday',
      'marker=00000000-0000-0000-0000-000000000000',
      'sort=name&sort_key=id',
    ])
      expect((await l.req('GET', `/v2/images?${bad}`)).status, bad).toBe(400);
  });
});

describe('the server process', () => {
  it('one data directory, one server; a restart keeps images and data', async () => {
    await expect(startServer({ port: 0, dataDir: join(ts.dir, 'data') })).rejects.toThrow(
      /another vdisk server/,
    );
    const dir = join(ts.dir, 'second');
    let s = await startServer({ port: 0, dataDir: dir, adminPassword: 'x' });
    let a = await Api.login(s.url, 'admin', 'x', 'admin');
    const img = await a.createImage({ name: 'kept', disk_format: 'raw', container_format: 'bare' });
    const data = randomBytes(100_000);
    expect(await a.upload(img.id, data)).toBe(204);
    await s.close();
    s = await startServer({ port: 0, dataDir: dir });
    a = await Api.login(s.url, 'admin', 'x', 'admin');
    const got = (await a.req('GET', `/v2/images/${img.id}`)).json;
    expect(got.checksum).toBe(hex('md5', data));
    const r = await fetch(`${s.url}/v2/images/${img.id}/file`, { headers: { 'X-Auth-Token': a.token } });
    expect(Buffer.from(await r.arrayBuffer()).equals(data)).toBe(true);
    await s.close();
  });

  it('`vdisk serve` killed mid-upload restarts clean; SIGTERM shuts down gracefully', async () => {
    const dir = join(ts.dir, 'killed');
    const bin = join(process.cwd(), 'bin', 'vdisk');
    const start = () => {
      const p = spawn(
        process.execPath,
        [bin, 'serve', '--port', '0', '--data-dir', dir, '--admin-password', 'k'],
        {
          stdio: ['ignore', 'ignore', 'pipe'],
        },
      );
      return new Promise<{ p: typeof p; url: string; err: () => string }>((resolve, reject) => {
        let err = '';
        p.stderr.on('data', (d: Buffer) => {
          err += d.toString();
          const m = /listening on (http:\/\/\S+)/.exec(err);
          if (m) resolve({ p, url: m[1]!, err: () => err });
        });
        p.on('exit', (code) => reject(new Error(`serve exited ${code}: ${err}`)));
      });
    };
    let s = await start();
    let a = await Api.login(s.url, 'admin', 'k', 'admin');
    const img = await a.createImage({ disk_format: 'raw', container_format: 'bare' });
    const up = putChunked(
      `${s.url}/v2/images/${img.id}/file`,
      a.token,
      [randomBytes(1 << 20), randomBytes(1 << 20)],
      1,
    );
    await new Promise((r) => setTimeout(r, 100));
    expect((await a.req('GET', `/v2/images/${img.id}`)).json.status).toBe('saving');
    s.p.kill('SIGKILL');
    await up;
    await new Promise((r) => s.p.once('exit', r));
    s = await start();
    expect(s.err()).toMatch(/recovered 1 interrupted upload/);
    a = await Api.login(s.url, 'admin', 'k', 'admin');
    expect((await a.req('GET', `/v2/images/${img.id}`)).json.status).toBe('queued');
    expect(await readdir(join(dir, 'images', '.tmp'))).toEqual([]);
    expect(await a.upload(img.id, new Uint8Array(10))).toBe(204);
    const exit = new Promise<number | null>((r) => s.p.once('exit', r));
    s.p.kill('SIGTERM');
    expect(await exit).toBe(0);
    s = await start();
    a = await Api.login(s.url, 'admin', 'k', 'admin');
    expect((await a.req('GET', `/v2/images/${img.id}`)).json.status).toBe('active');
    s.p.kill('SIGTERM');
    await new Promise((r) => s.p.once('exit', r));
  });
});
