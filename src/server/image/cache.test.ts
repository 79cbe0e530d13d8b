/**
 * The image cache of an API node (Glance's image_cache_dir and /v2/cache API): filled by a
 * first full download or by the queue, served from the cache afterwards (proved by removing the
 * blob from the store behind the server's back), bounded by its size (least recently used out),
 * admin-only, cleared by target; a cut download caches nothing.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/oracle.js';
import { ADMIN_PASSWORD, Api, addProjectUser, startTestServer, type TestServer } from '../test/harness.js';

let ts: TestServer;
let admin: Api;
let user: Api;
const KiB = 1024;

function data(n: number): Buffer {
  const b = randomBytes(n);
  b.fill(0, 510, 512);
  return b;
}

async function newImage(api: Api, bytes: Buffer): Promise<string> {
  const img = await api.createImage({ disk_format: 'raw', container_format: 'bare' });
  expect(await api.upload(img.id, bytes)).toBe(204);
  return img.id as string;
}

const get = async (api: Api, id: string, headers: Record<string, string> = {}) => {
  const r = await fetch(`${api.url}/v2/images/${id}/file`, {
    headers: { 'X-Auth-Token': api.token, ...headers },
  });
  return { status: r.status, body: Buffer.from(await r.arrayBuffer()) };
};
const state = async () =>
  (await admin.req('GET', '/v2/cache')).json as {
    cached_images: { image_id: string; hits: number; size: number }[];
    queued_images: string[];
  };
const cachedIds = async () => (await state()).cached_images.map((c) => c.image_id);
async function until(cond: () => Promise<boolean>) {
  for (let i = 0; i < 200; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error('condition not reached');
}

let cacheDir: string;
let cleanup: () => void;

beforeAll(async () => {
  ({ dir: cacheDir, cleanup } = tempDir('vdisk-cache-'));
  ts = await startTestServer({ settings: { imageCacheDir: cacheDir, imageCacheMaxSize: 1000 * KiB } });
  admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
  await addProjectUser(admin, 'p', 'u', 'pw');
  user = await Api.login(ts.url, 'u', 'pw', 'p');
});
afterAll(async () => {
  await ts?.stop();
  cleanup?.();
});

const storePath = (id: string) => join(ts.dir, 'data', 'images', id);

describe('the image cache', () => {
  it('a first full download fills it; later downloads come from it, even with the blob gone', async () => {
    const bytes = data(300 * KiB);
    const id = await newImage(user, bytes);
    // A range read does not fill the cache.
    expect((await get(user, id, { Range: 'bytes=0-99' })).status).toBe(206);
    expect(await cachedIds()).not.toContain(id);
    const first = await get(user, id);
    expect(first.body.equals(bytes)).toBe(true);
    await until(async () => (await cachedIds()).includes(id));
    rmSync(storePath(id));
    const second = await get(user, id);
    expect(second.status).toBe(200);
    expect(second.body.equals(bytes)).toBe(true);
    expect((await state()).cached_images.find((c) => c.image_id === id)).toMatchObject({
      hits: 1,
      size: bytes.length,
    });
  });

  it('the queue fetches an image into the cache; only active images, existing ones', async () => {
    const id = await newImage(admin, data(200 * KiB));
    expect((await admin.req('PUT', `/v2/cache/${id}`)).status).toBe(202);
    await until(async () => (await cachedIds()).includes(id));
    expect((await state()).queued_images).not.toContain(id);
    const queued = await admin.createImage({ disk_format: 'raw', container_format: 'bare' });
    const r = await admin.req('PUT', `/v2/cache/${queued.id}`);
    expect(r.status).toBe(400);
    expect(r.text).toContain('Only images with status active can be targeted for queueing');
    expect((await admin.req('PUT', '/v2/cache/11111111-2222-3333-4444-555555555555')).status).toBe(404);
  });

  it('holds at most its size: the least recently used image goes; a bigger image is never cached', async () => {
    await admin.req('DELETE', '/v2/cache');
    const a = await newImage(admin, data(400 * KiB));
    const b = await newImage(admin, data(400 * KiB));
    const c = await newImage(admin, data(400 * KiB));
    for (const id of [a, b]) {
      await get(admin, id);
      await until(async () => (await cachedIds()).includes(id));
    }
    await get(admin, a); // a is now the most recently used
    await get(admin, c);
    await until(async () => (await cachedIds()).includes(c));
    expect((await cachedIds()).sort()).toEqual([a, c].sort());
    const big = await newImage(admin, data(1100 * KiB));
    await get(admin, big);
    await new Promise((r) => setTimeout(r, 200));
    expect(await cachedIds()).not.toContain(big);
  });

  it('a download cut short caches nothing', async () => {
    // Large enough that the server is still sending when the client goes (socket buffers are MiBs).
    const { dir, cleanup: done } = tempDir('vdisk-cache-cut-');
    const big = await startTestServer({ settings: { imageCacheDir: dir, imageCacheMaxSize: 2 ** 30 } });
    try {
      const a = await Api.login(big.url, 'admin', ADMIN_PASSWORD, 'admin');
      const id = await newImage(a, data(64 * 1024 * KiB));
      await new Promise<void>((resolve) => {
        const req = request(
          `${big.url}/v2/images/${id}/file`,
          { headers: { 'X-Auth-Token': a.token } },
          (res) => {
            res.once('data', () => {
              req.destroy();
              resolve();
            });
          },
        );
        req.end();
      });
      await new Promise((r) => setTimeout(r, 500));
      const st = (await a.req('GET', '/v2/cache')).json;
      expect(st.cached_images).toEqual([]);
      expect(readdirSync(join(dir, 'incomplete'))).toEqual([]);
      // A whole download afterwards does fill it.
      expect((await get(a, id)).body.length).toBe(64 * 1024 * KiB);
      await until(async () => (await a.req('GET', '/v2/cache')).json.cached_images.length === 1);
    } finally {
      await big.stop();
      done();
    }
  });

  it('admin only; clear by target; a deleted image leaves the cache', async () => {
    expect((await user.req('GET', '/v2/cache')).status).toBe(403);
    const id = await newImage(admin, data(100 * KiB));
    await get(admin, id);
    await until(async () => (await cachedIds()).includes(id));
    expect(
      (await admin.req('DELETE', '/v2/cache', undefined, { 'x-image-cache-clear-target': 'nope' })).status,
    ).toBe(400);
    expect(
      (await admin.req('DELETE', '/v2/cache', undefined, { 'x-image-cache-clear-target': 'queue' })).status,
    ).toBe(204);
    expect(await cachedIds()).toContain(id);
    expect((await admin.req('DELETE', `/v2/images/${id}`)).status).toBe(204);
    expect(await cachedIds()).not.toContain(id);
    expect(existsSync(join(cacheDir, id))).toBe(false);
    expect(
      (await admin.req('DELETE', '/v2/cache', undefined, { 'x-image-cache-clear-target': 'cache' })).status,
    ).toBe(204);
    expect((await state()).cached_images).toEqual([]);
  });

  it('without a cache directory, the API says caching is not supported (404)', async () => {
    const plain = await startTestServer();
    try {
      const a = await Api.login(plain.url, 'admin', ADMIN_PASSWORD, 'admin');
      const r = await a.req('GET', '/v2/cache');
      expect(r.status).toBe(404);
      expect(r.text).toContain('Caching via API is not supported at this site.');
    } finally {
      await plain.stop();
    }
  });
});
