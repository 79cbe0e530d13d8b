/* biome-ignore-all lint/suspicious/noExplicitAny: parsed JSON of many shapes. */
/**
 * Multiple stores (Glance's enabled_backends) on a real `vdisk serve` with two file stores,
 * `fast` (the default) and `cold`: the configuration, /v2/info/stores(/detail), uploads with
 * X-Image-Meta-Store, imports to stores and all stores with Glance's progress properties and
 * failure semantics (a store that fails mid-copy), copy-image, DELETE /v2/stores/{store}/{image},
 * deletes, exports/map/flatten of an image that only the non-default store holds, and recovery
 * on start (orphans per store, an import or a copy cut by a stopped server). Statuses and
 * messages are Glance 25's (glance/api/v2/images.py, discovery.py, image_data.py).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningServer, startServer } from './server.js';
import { resolveConfig } from './settings.js';
import type { BlobStore, BlobWriter } from './store/store.js';
import { parseStoreConfig } from './store/stores.js';
import { Api, addProjectUser } from './test/harness.js';

const MIB = 1 << 20;
const sha512 = (b: Uint8Array) => createHash('sha512').update(b).digest('hex');
const scratch: string[] = [];
afterAll(async () => {
  for (const d of scratch) await rm(d, { recursive: true, force: true });
});
async function tempDir(name: string): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), `vdisk-ms-${name}-`));
  scratch.push(d);
  return d;
}

/** Random bytes that upload safety accepts as raw (no MBR signature). */
function rawData(n: number): Buffer {
  const b = randomBytes(n);
  if (n >= 512) b.fill(0, 510, 512);
  return b;
}

/** The committed blobs of a file store (its directory, without .tmp). */
async function blobs(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => !n.startsWith('.')).sort();
}

/** A store whose writes fail after `after` bytes (a store failing mid-copy). */
function failing(inner: BlobStore, after: number): BlobStore {
  const wrapped = Object.create(inner) as BlobStore;
  wrapped.create = async (key: string): Promise<BlobWriter> => {
    const w = await inner.create(key);
    let n = 0;
    return {
      async write(chunk) {
        n += chunk.length;
        if (n > after) throw Object.assign(new Error('No space left on device'), { code: 'ENOSPC' });
        await w.write(chunk);
      },
      commit: () => w.commit(),
      abort: () => w.abort(),
    };
  };
  return wrapped;
}

describe('store configuration', () => {
  it('one unnamed store is single-store mode; named stores are several, the first the default', () => {
    expect(parseStoreConfig([], [], null)).toEqual({ mode: 'single', location: undefined });
    expect(parseStoreConfig(['s3://a:b@h:1/bkt?region=x'], [], null)).toEqual({
      mode: 'single',
      location: 's3://a:b@h:1/bkt?region=x',
    });
    expect(parseStoreConfig(['fast=/srv/a', 'cold=s3://a:b@h:1/bkt'], ['cold=Ceph, slow'], null)).toEqual({
      mode: 'multi',
      defaultId: 'fast',
      stores: [
        { id: 'fast', location: '/srv/a', description: null },
        { id: 'cold', location: 's3://a:b@h:1/bkt', description: 'Ceph, slow' },
      ],
    });
    expect(parseStoreConfig(['a=/x', 'b=/y'], [], 'b')).toMatchObject({ defaultId: 'b' });
  });

  it('refuses what cannot be meant, in one line', () => {
    const bad: [string[], string[], string | null, RegExp][] = [
      [['/a', '/b'], [], null, /Several stores need names/],
      [['a=/x', '/y'], [], null, /Store '\/y' has no name/],
      [['a=/x', 'a=/y'], [], null, /Store 'a' is named twice/],
      [['os_glance_staging_store=/x'], [], null, /reserved/],
      [['a=/x'], [], 'b', /The default store 'b' is not one of the stores \(a\)/],
      [['a=/x'], ['b=text'], null, /Store description for 'b', which is not a store/],
      [['/x'], [], 'a', /--default-store needs named stores/],
      [['a='], [], null, /Store 'a' has no location/],
      [['a=/x', '1a=/y'], [], null, /Store '1a=\/y' has no name/],
      [['a=/x/', 'b=/x'], [], null, /Stores 'a' and 'b' have the same location/],
    ];
    for (const [specs, descs, dflt, re] of bad)
      expect(() => parseStoreConfig(specs, descs, dflt), specs.join(' ')).toThrow(re);
  });

  it('repeated flags, repeated config-file lines, and a comma-separated variable', async () => {
    const dir = await tempDir('conf');
    const file = join(dir, 'serve.conf');
    await writeFile(
      file,
      [
        '[vdisk]',
        'store = fast=/srv/fast',
        'store = cold=s3://k:s@127.0.0.1:7480/images',
        'store_description = fast=Local SSD',
        '[glance_store]',
        'default_backend = cold',
      ].join('\n'),
    );
    const warn: string[] = [];
    const c = await resolveConfig(new Map([['config', file]]), {}, (w) => warn.push(w));
    expect(warn).toEqual([]);
    expect(c.store).toBeUndefined();
    expect(c.stores).toEqual({
      defaultId: 'cold',
      stores: [
        { id: 'fast', location: '/srv/fast', description: 'Local SSD' },
        { id: 'cold', location: 's3://k:s@127.0.0.1:7480/images', description: null },
      ],
    });
    const e = await resolveConfig(
      new Map(),
      { VDISK_STORE: 'a=/x,b=/y', VDISK_DEFAULT_STORE: 'b' },
      () => {},
    );
    expect(e.stores?.stores.map((s) => s.id)).toEqual(['a', 'b']);
    expect(e.stores?.defaultId).toBe('b');
    // a single store from the variable keeps its commas
    expect((await resolveConfig(new Map(), { VDISK_STORE: '/srv/a,b' }, () => {})).store).toBe('/srv/a,b');
    const f = await resolveConfig(
      new Map<string, string | string[]>([
        ['store', ['x=/1', 'y=/2']],
        ['store-description', 'y=second'],
      ]),
      { VDISK_STORE: 'a=/x' },
      () => {},
    );
    expect(f.stores).toEqual({
      defaultId: 'x',
      stores: [
        { id: 'x', location: '/1', description: null },
        { id: 'y', location: '/2', description: 'second' },
      ],
    });
  });
});

describe('two file stores', () => {
  let server: RunningServer;
  let dataDir: string;
  let fastDir: string;
  let coldDir: string;
  let admin: Api;
  let alice: Api;
  let bob: Api;

  const start = () =>
    startServer({
      port: 0,
      dataDir,
      adminPassword: 'pw',
      stores: {
        stores: [
          { id: 'fast', location: fastDir, description: 'Fast local disk' },
          { id: 'cold', location: coldDir, description: null },
        ],
        defaultId: 'fast',
      },
    });
  const login = async () => {
    admin = await Api.login(server.url, 'admin', 'pw', 'admin');
    alice = await Api.login(server.url, 'alice', 'pw-a', 'pa');
    bob = await Api.login(server.url, 'bob', 'pw-b', 'pb');
  };
  const show = async (id: string) => (await admin.req('GET', `/v2/images/${id}`)).json;
  const settled = async (id: string) => {
    for (let i = 0; i < 400; i++) {
      const img = await show(id);
      if (!('os_glance_import_task' in img)) return img;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`import of ${id} never settled`);
  };
  const download = async (api: Api, id: string, range?: string) => {
    const r = await fetch(`${server.url}/v2/images/${id}/file`, {
      headers: { 'X-Auth-Token': api.token, ...(range !== undefined ? { Range: range } : {}) },
    });
    return { status: r.status, body: Buffer.from(await r.arrayBuffer()) };
  };
  const staged = async (api: Api, data: Buffer, extra: Record<string, unknown> = {}) => {
    const img = await api.createImage({ disk_format: 'raw', container_format: 'bare', ...extra });
    expect((await api.req('PUT', `/v2/images/${img.id}/stage`, data)).status).toBe(204);
    return img.id as string;
  };

  beforeAll(async () => {
    const dir = await tempDir('two');
    dataDir = join(dir, 'data');
    fastDir = join(dir, 'fast');
    coldDir = join(dir, 'cold');
    server = await start();
    admin = await Api.login(server.url, 'admin', 'pw', 'admin');
    await addProjectUser(admin, 'pa', 'alice', 'pw-a');
    await addProjectUser(admin, 'pb', 'bob', 'pw-b');
    await login();
  });
  afterAll(async () => {
    await server?.close(5000);
  });

  it('GET /v2/info/stores and /detail (admin); the store ids on create', async () => {
    let r = await alice.req('GET', '/v2/info/stores');
    expect(r.status).toBe(200);
    expect(r.json).toEqual({
      stores: [{ id: 'fast', description: 'Fast local disk', default: 'true' }, { id: 'cold' }],
    });
    r = await alice.req('GET', '/v2/info/stores/detail');
    expect(r.status).toBe(403);
    expect(r.text).toContain('You are not authorized to complete stores_info_detail action.');
    r = await admin.req('GET', '/v2/info/stores/detail');
    expect(r.status).toBe(200);
    expect(r.json.stores).toEqual([
      {
        id: 'fast',
        description: 'Fast local disk',
        default: 'true',
        type: 'file',
        properties: { data_dir: fastDir, chunk_size: MIB, thin_provisioning: false },
      },
      {
        id: 'cold',
        type: 'file',
        properties: { data_dir: coldDir, chunk_size: MIB, thin_provisioning: false },
      },
    ]);
    r = await alice.req('POST', '/v2/images', { name: 'h', disk_format: 'raw', container_format: 'bare' });
    expect(r.status).toBe(201);
    expect(r.headers.get('openstack-image-store-ids')).toBe('fast,cold');
    expect(r.json.stores).toBeUndefined(); // no data yet: no stores, as Glance
    // the schema keeps no `stores` (glanceclient 4.1 collides with it)
    expect((await alice.req('GET', '/v2/schemas/image')).json.properties.stores).toBeUndefined();
    // `stores` is the server's
    expect((await alice.patch(r.json.id, [{ op: 'add', path: '/stores', value: 'x' }])).status).toBe(403);
  });

  it('PUT /file to the default store or to X-Image-Meta-Store; 400 on an unknown store', async () => {
    const data = rawData(3 * MIB + 7);
    const a = await alice.createImage({ disk_format: 'raw', container_format: 'bare' });
    const b = await alice.createImage({ disk_format: 'raw', container_format: 'bare' });
    let r = await alice.req('PUT', `/v2/images/${a.id}/file`, data, { 'X-Image-Meta-Store': 'nope' });
    expect(r.status).toBe(400);
    expect(r.text).toContain('Store for identifier nope not found');
    expect((await show(a.id)).status).toBe('queued');
    expect(await alice.upload(a.id, data)).toBe(204);
    r = await alice.req('PUT', `/v2/images/${b.id}/file`, data, { 'X-Image-Meta-Store': 'cold' });
    expect(r.status).toBe(204);
    expect((await show(a.id)).stores).toBe('fast');
    expect((await show(b.id)).stores).toBe('cold');
    expect(await blobs(fastDir)).toContain(a.id);
    expect(await blobs(fastDir)).not.toContain(b.id);
    expect(await blobs(coldDir)).toEqual([b.id]);
    // downloads and ranges from the store that holds it
    const d = await download(alice, b.id);
    expect(d.status).toBe(200);
    expect(sha512(d.body)).toBe(sha512(data));
    const part = await download(alice, b.id, 'bytes=1048570-1048590');
    expect(part.status).toBe(206);
    expect(part.body.equals(data.subarray(1048570, 1048591))).toBe(true);
    // lists show stores too
    const list = (await alice.req('GET', '/v2/images?sort=created_at:asc')).json.images as any[];
    expect(list.find((i) => i.id === b.id).stores).toBe('cold');
  });

  it("import to named stores, to all stores; the progress lists; Glance's 400/409 on the request", async () => {
    const data = rawData(2 * MIB + 1);
    const id = await staged(alice, data);
    const imp = (body: unknown, headers: Record<string, string> = {}) =>
      alice.req('POST', `/v2/images/${id}/import`, body, headers);
    let r = await imp({ method: { name: 'glance-direct' }, stores: ['fast', 'nope'] });
    expect(r.status).toBe(409);
    expect(r.text).toContain('Store for identifier nope not found');
    r = await imp({ method: { name: 'glance-direct' }, all_stores: true, stores: ['fast'] });
    expect(r.status).toBe(400);
    expect(r.text).toContain(
      "All_stores parameter can't be used with x-image-meta-store header or stores parameter",
    );
    r = await imp({ method: { name: 'glance-direct' }, stores: ['fast'] }, { 'X-Image-Meta-Store': 'cold' });
    expect(r.status).toBe(400);
    expect(r.text).toContain("Stores parameter and x-image-meta-store header can't be both specified");
    r = await imp({ method: { name: 'glance-direct' }, stores: 'fast' });
    expect(r.status).toBe(400);
    expect((await show(id)).status).toBe('uploading');
    r = await imp({ method: { name: 'glance-direct' }, stores: ['cold', 'fast'] });
    expect(r.status).toBe(202);
    const done = await settled(id);
    expect(done.status).toBe('active');
    expect(done.stores).toBe('cold,fast');
    expect(done.os_glance_importing_to_stores).toBe('');
    expect(done.os_glance_failed_import).toBe('');
    expect(done.os_hash_value).toBe(sha512(data));
    expect(await blobs(fastDir)).toContain(id);
    expect(await blobs(coldDir)).toContain(id);
    expect((await blobs(fastDir)).filter((k) => k.startsWith('staging-'))).toEqual([]);
    const task = (await alice.req('GET', `/v2/images/${id}/tasks`)).json.tasks[0];
    expect(task.status).toBe('success');
    expect(task.input.backend).toEqual(['cold', 'fast']);
    // all_stores; the header alone names one store
    const all = await staged(alice, data);
    expect(
      (
        await alice.req('POST', `/v2/images/${all}/import`, {
          method: { name: 'glance-direct' },
          all_stores: true,
        })
      ).status,
    ).toBe(202);
    expect((await settled(all)).stores).toBe('cold,fast');
    const one = await staged(alice, data);
    r = await alice.req(
      'POST',
      `/v2/images/${one}/import`,
      { method: { name: 'glance-direct' } },
      { 'X-Image-Meta-Store': 'cold' },
    );
    expect(r.status).toBe(202);
    expect((await settled(one)).stores).toBe('cold');
    expect(await blobs(fastDir)).not.toContain(one);
  });

  it('web-download to all stores from a server with byte ranges that resets once: resumed, every store has it', async () => {
    const data = rawData(9 * MIB + 5);
    let reset = false;
    const web = createServer((req, res) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      const start = m === null ? 0 : Number(m[1]);
      const end = m === null ? data.length : Math.min(data.length, Number(m[2]) + 1);
      res.writeHead(m === null ? 200 : 206, {
        'Accept-Ranges': 'bytes',
        'Content-Length': end - start,
        ...(m === null ? {} : { 'Content-Range': `bytes ${start}-${end - 1}/${data.length}` }),
      });
      if (req.method === 'HEAD') return void res.end();
      const cut = 5 * MIB;
      if (m !== null && !reset && start <= cut && cut < end) {
        reset = true;
        res.write(data.subarray(start, cut), () => setTimeout(() => req.socket.resetAndDestroy(), 20));
        return;
      }
      res.end(data.subarray(start, end));
    });
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    const port = (web.address() as AddressInfo).port;
    const settings = server.services.settings;
    const saved = { hosts: settings.importAllowedHosts, ports: settings.importAllowedPorts };
    Object.assign(settings, { importAllowedHosts: ['127.0.0.1'], importAllowedPorts: [port] });
    try {
      const img = await alice.createImage({ disk_format: 'raw', container_format: 'bare' });
      const r = await alice.req('POST', `/v2/images/${img.id}/import`, {
        method: { name: 'web-download', uri: `http://127.0.0.1:${port}/disk.raw` },
        all_stores: true,
      });
      expect(r.status).toBe(202);
      const done = await settled(img.id);
      const task = (await alice.req('GET', `/v2/images/${img.id}/tasks`)).json.tasks[0];
      expect([done.status, done.stores, task.status]).toEqual(['active', 'cold,fast', 'success']);
      expect(reset).toBe(true);
      expect(done.os_hash_value).toBe(sha512(data));
      expect(sha512((await download(alice, img.id)).body)).toBe(sha512(data));
    } finally {
      Object.assign(settings, { importAllowedHosts: saved.hosts, importAllowedPorts: saved.ports });
      web.closeAllConnections();
      web.close();
    }
  });

  it('a store failing mid-copy: all_stores_must_succeed reverts everything; without it, the rest goes on', async () => {
    const set = server.services.stores!;
    const cold = set.get('cold')!;
    const real = cold.store;
    const data = rawData(3 * MIB);
    cold.store = failing(real, MIB);
    try {
      // must succeed (the default): fast is written first, then cold fails: all reverted
      const id = await staged(alice, data);
      expect(
        (
          await alice.req('POST', `/v2/images/${id}/import`, {
            method: { name: 'glance-direct' },
            stores: ['fast', 'cold'],
          })
        ).status,
      ).toBe(202);
      const img = await settled(id);
      expect(img.status).toBe('queued');
      expect(img.stores).toBeUndefined();
      expect(img.size).toBe(null);
      expect(img.checksum).toBe(null);
      expect(img.os_glance_failed_import).toBe('cold');
      expect(img.os_glance_importing_to_stores).toBe('');
      expect(await blobs(fastDir)).not.toContain(id);
      expect(await blobs(fastDir)).not.toContain(`staging-${id}`);
      expect(await blobs(coldDir)).not.toContain(id);
      expect(await readdir(join(coldDir, '.tmp'))).toEqual([]);
      const task = (await alice.req('GET', `/v2/images/${id}/tasks`)).json.tasks[0];
      expect(task.status).toBe('failure');
      expect(task.message).toContain('No space left on device');
      // not required: cold fails, fast makes the image active, cold is listed as failed
      const id2 = await staged(alice, data);
      expect(
        (
          await alice.req('POST', `/v2/images/${id2}/import`, {
            method: { name: 'glance-direct' },
            stores: ['cold', 'fast'],
            all_stores_must_succeed: false,
          })
        ).status,
      ).toBe(202);
      const img2 = await settled(id2);
      expect(img2.status).toBe('active');
      expect(img2.stores).toBe('fast');
      expect(img2.os_glance_failed_import).toBe('cold');
      expect(img2.os_glance_importing_to_stores).toBe('');
      expect((await alice.req('GET', `/v2/images/${id2}/tasks`)).json.tasks[0].status).toBe('success');
      expect(await blobs(coldDir)).not.toContain(id2);
      expect(sha512((await download(alice, id2)).body)).toBe(sha512(data));
      // not required, nothing failing: active with the first store, and the second one too
      cold.store = real;
      const id4 = await staged(alice, data);
      expect(
        (
          await alice.req('POST', `/v2/images/${id4}/import`, {
            method: { name: 'glance-direct' },
            stores: ['fast', 'cold'],
            all_stores_must_succeed: false,
          })
        ).status,
      ).toBe(202);
      const img4 = await settled(id4);
      expect(img4.status).toBe('active');
      expect(img4.stores).toBe('cold,fast');
      expect(img4.os_glance_failed_import).toBe('');
      expect(await blobs(coldDir)).toContain(id4);
      cold.store = failing(real, MIB);
      // every store failing, not required: back to queued ('None of the uploads finished!')
      const fast = set.get('fast')!;
      const realFast = fast.store;
      fast.store = failing(realFast, MIB);
      try {
        const id3 = await staged(alice, data);
        // staging (the default store's) must still work: fail only the image's own key
        fast.store = Object.assign(Object.create(realFast) as BlobStore, {
          create: (k: string) =>
            k.startsWith('staging-') ? realFast.create(k) : failing(realFast, MIB).create(k),
        });
        expect(
          (
            await alice.req('POST', `/v2/images/${id3}/import`, {
              method: { name: 'glance-direct' },
              all_stores: true,
              all_stores_must_succeed: false,
            })
          ).status,
        ).toBe(202);
        const img3 = await settled(id3);
        expect(img3.status).toBe('queued');
        expect(img3.os_glance_failed_import).toBe('cold,fast');
        const t3 = (await alice.req('GET', `/v2/images/${id3}/tasks`)).json.tasks[0];
        expect(t3.message).toBe('None of the uploads finished!');
        expect(await blobs(fastDir)).not.toContain(`staging-${id3}`);
      } finally {
        fast.store = realFast;
      }
    } finally {
      cold.store = real;
    }
  });

  it('copy-image: admin only, 400 already there, 409 unknown store, progress; a failing copy leaves the image as it was', async () => {
    const data = rawData(2 * MIB + 3);
    const img = await alice.createImage({ disk_format: 'raw', container_format: 'bare' });
    expect(await alice.upload(img.id, data)).toBe(204);
    const copy = (api: Api, body: Record<string, unknown>) =>
      api.req('POST', `/v2/images/${img.id}/import`, { method: { name: 'copy-image' }, ...body });
    let r = await copy(alice, { stores: ['cold'] });
    expect(r.status).toBe(403);
    r = await copy(admin, { stores: ['fast'] });
    expect(r.status).toBe(400);
    expect(r.text).toContain("Image is already present at store 'fast'");
    r = await copy(admin, { stores: ['nope'] });
    expect(r.status).toBe(409);
    // a copy that fails (must succeed): the image stays active in fast only
    const cold = server.services.stores!.get('cold')!;
    const real = cold.store;
    cold.store = failing(real, MIB);
    try {
      expect((await copy(admin, { stores: ['cold'] })).status).toBe(202);
      const failed = await settled(img.id);
      expect(failed.status).toBe('active');
      expect(failed.stores).toBe('fast');
      expect(failed.os_glance_failed_import).toBe('cold');
      expect(failed.os_glance_importing_to_stores).toBe('');
      expect(await blobs(coldDir)).not.toContain(img.id);
    } finally {
      cold.store = real;
    }
    // all_stores leaves out where it is already; the failed list is cleared for the targets
    expect((await copy(admin, { all_stores: true })).status).toBe(202);
    const done = await settled(img.id);
    expect(done.status).toBe('active');
    expect(done.stores).toBe('cold,fast');
    expect(done.os_glance_importing_to_stores).toBe('');
    expect(done.os_glance_failed_import).toBe('');
    expect(done.checksum).toBe(createHash('md5').update(data).digest('hex'));
    expect(await blobs(coldDir)).toContain(img.id);
    // in every store already: 202 and nothing to do (no task)
    const tasks = (await admin.req('GET', `/v2/images/${img.id}/tasks`)).json.tasks.length;
    expect((await copy(admin, { all_stores: true })).status).toBe(202);
    expect((await admin.req('GET', `/v2/images/${img.id}/tasks`)).json.tasks.length).toBe(tasks);
    // the owner may not delete from a store (Glance: delete_image_location is admin's)
    r = await alice.req('DELETE', `/v2/stores/fast/${img.id}`);
    expect(r.status).toBe(403);
    expect(r.text).toContain('You are not authorized to complete delete_image_location action.');
    r = await bob.req('DELETE', `/v2/stores/fast/${img.id}`);
    expect(r.status).toBe(404);
    expect(r.text).toContain(`Failed to find image ${img.id}`);
    r = await admin.req('DELETE', `/v2/stores/nope/${img.id}`);
    expect(r.status).toBe(409);
    expect(r.text).toContain('The selected store nope is not available on this node.');
    // from fast: the data stays readable from cold
    r = await admin.req('DELETE', `/v2/stores/fast/${img.id}`);
    expect(r.status).toBe(204);
    expect((await show(img.id)).stores).toBe('cold');
    expect(await blobs(fastDir)).not.toContain(img.id);
    expect(sha512((await download(alice, img.id)).body)).toBe(sha512(data));
    r = await admin.req('DELETE', `/v2/stores/fast/${img.id}`);
    expect(r.status).toBe(403); // cold is the only store left
    expect(r.text).toContain('Cannot delete image data from the only store containing it.');
    // copy it back, then fast is not... then 404 for a store it is not in
    expect((await copy(admin, { stores: ['fast'] })).status).toBe(202);
    expect((await settled(img.id)).stores).toBe('cold,fast');
    expect((await admin.req('DELETE', `/v2/stores/cold/${img.id}`)).status).toBe(204);
    r = await admin.req('DELETE', `/v2/stores/cold/${img.id}`);
    expect(r.status).toBe(403);
    const other = await alice.createImage({ disk_format: 'raw', container_format: 'bare' });
    r = await admin.req('DELETE', `/v2/stores/cold/${other.id}`);
    expect(r.status).toBe(409);
    expect(r.text).toContain(
      "It's not allowed to remove image data from store if image status is not 'active'",
    );
    // deleting the image removes its data from every store
    expect((await copy(admin, { stores: ['cold'] })).status).toBe(202);
    expect((await settled(img.id)).stores).toBe('cold,fast');
    expect((await alice.req('DELETE', `/v2/images/${img.id}`)).status).toBe(204);
    expect(await blobs(fastDir)).not.toContain(img.id);
    expect(await blobs(coldDir)).not.toContain(img.id);
  });

  it('export, map and flatten of an image that only the non-default store holds', async () => {
    const data = rawData(5 * MIB);
    const img = await alice.createImage({ name: 'cold-only', disk_format: 'raw', container_format: 'bare' });
    expect(
      (await alice.req('PUT', `/v2/images/${img.id}/file`, data, { 'X-Image-Meta-Store': 'cold' })).status,
    ).toBe(204);
    expect(await blobs(fastDir)).not.toContain(img.id);
    const ex = await fetch(`${server.url}/v2/images/${img.id}/export?disk_format=raw`, {
      headers: { 'X-Auth-Token': alice.token },
    });
    expect(ex.status).toBe(200);
    expect(sha512(Buffer.from(await ex.arrayBuffer()))).toBe(sha512(data));
    const map = await alice.req('GET', `/v2/images/${img.id}/map?buckets=4`);
    expect(map.status).toBe(200);
    expect(map.json.virtual_size).toBe(data.length);
    const fl = await alice.req('POST', `/v2/images/${img.id}/actions/flatten`, {
      disk_format: 'raw',
      name: 'flat',
    });
    expect(fl.status).toBe(202);
    const flat = await settled(fl.json.id);
    expect(flat.status).toBe('active');
    expect(flat.os_hash_value).toBe(sha512(data));
    expect(flat.stores).toBe('fast'); // made in the default store
  });

  it('restart: orphans go from every store, claimed data stays, images from before multiple stores are in the default', async () => {
    const data = rawData(MIB);
    const keep = await alice.createImage({ disk_format: 'raw', container_format: 'bare' });
    expect(
      (await alice.req('PUT', `/v2/images/${keep.id}/file`, data, { 'X-Image-Meta-Store': 'cold' })).status,
    ).toBe(204);
    const legacy = await alice.createImage({ disk_format: 'raw', container_format: 'bare' });
    expect(await alice.upload(legacy.id, data)).toBe(204);
    await server.close(5000);
    // what a crash leaves: an unclaimed blob in each store, a temporary in each
    const orphan = '11111111-2222-4333-8444-555555555555';
    for (const d of [fastDir, coldDir]) {
      await writeFile(join(d, orphan), 'x');
      await writeFile(join(d, '.tmp', `${orphan}.abc`), 'x');
    }
    // a copy of `keep` in fast that the database does not claim (a copy cut before its row)
    await writeFile(join(fastDir, keep.id), data);
    const { openPglite } = await import('./db/connect.js');
    const meta = await openPglite(join(dataDir, 'db'));
    await meta.db
      .updateTable('images')
      .set({ stores: '[]' as never })
      .where('id', '=', legacy.id)
      .execute();
    await meta.close();
    const lines: string[] = [];
    server = await startServer({
      port: 0,
      dataDir,
      adminPassword: 'pw',
      log: (l) => lines.push(l),
      stores: {
        stores: [
          { id: 'fast', location: fastDir, description: 'Fast local disk' },
          { id: 'cold', location: coldDir, description: null },
        ],
        defaultId: 'fast',
      },
    });
    await login();
    expect(lines.join('\n')).toMatch(/removed 3 orphaned blob/);
    expect(lines.join('\n')).toMatch(/1 image\(s\) stored before multiple stores/);
    for (const d of [fastDir, coldDir]) {
      expect(await blobs(d)).not.toContain(orphan);
      expect(await readdir(join(d, '.tmp'))).toEqual([]);
    }
    expect(await blobs(fastDir)).not.toContain(keep.id);
    expect(await blobs(coldDir)).toContain(keep.id);
    expect((await show(keep.id)).stores).toBe('cold');
    expect((await show(legacy.id)).stores).toBe('fast');
    expect(sha512((await download(alice, legacy.id)).body)).toBe(sha512(data));
    expect(sha512((await download(alice, keep.id)).body)).toBe(sha512(data));
  });

  it('restart after an import and a copy that a stopped server left half-way', async () => {
    const data = rawData(MIB);
    // An import to fast+cold that had finished fast (claimed) when its server stopped.
    const imp = await staged(alice, data);
    const cp = await alice.createImage({ disk_format: 'raw', container_format: 'bare' });
    expect(await alice.upload(cp.id, data)).toBe(204);
    await server.close(5000);
    await writeFile(join(fastDir, imp), data);
    const { openPglite } = await import('./db/connect.js');
    const meta = await openPglite(join(dataDir, 'db'));
    const now = new Date();
    const task = (id: string, t: string, backend: string[]) =>
      meta.db
        .insertInto('tasks')
        .values({
          id: t,
          type: 'api_image_import',
          status: 'processing',
          owner: alice.projectId,
          image_id: id,
          input: JSON.stringify({ image_id: id, backend }) as never,
          result: null,
          message: '',
          created_at: now,
          updated_at: now,
          expires_at: null,
          user_id: null,
          request_id: null,
        })
        .execute();
    const t1 = '00000000-0000-4000-8000-000000000001';
    const t2 = '00000000-0000-4000-8000-000000000002';
    await task(imp, t1, ['fast', 'cold']);
    await task(cp.id, t2, ['cold']);
    const { sql } = await import('kysely');
    await meta.db
      .updateTable('images')
      .set({
        status: 'importing',
        writer: 'dead-server',
        blob: imp,
        size: data.length,
        stores: '["fast"]' as never,
        properties: sql`properties || ${JSON.stringify({ os_glance_import_task: t1, os_glance_importing_to_stores: 'cold', os_glance_failed_import: '' })}::jsonb`,
      })
      .where('id', '=', imp)
      .execute();
    // a copy to cold whose blob was committed but not yet claimed
    await writeFile(join(coldDir, cp.id), data);
    await meta.db
      .updateTable('images')
      .set({
        writer: 'dead-server',
        properties: sql`properties || ${JSON.stringify({ os_glance_import_task: t2, os_glance_importing_to_stores: 'cold', os_glance_failed_import: '' })}::jsonb`,
      })
      .where('id', '=', cp.id)
      .execute();
    await meta.close();
    const lines: string[] = [];
    server = await startServer({
      port: 0,
      dataDir,
      adminPassword: 'pw',
      log: (l) => lines.push(l),
      stores: {
        stores: [
          { id: 'fast', location: fastDir, description: null },
          { id: 'cold', location: coldDir, description: null },
        ],
        defaultId: 'fast',
      },
    });
    await login();
    expect(lines.join('\n')).toMatch(/recovered 1 interrupted import/);
    expect(lines.join('\n')).toMatch(/recovered 1 interrupted copy/);
    const a = await show(imp);
    expect(a.status).toBe('queued');
    expect(a.stores).toBeUndefined();
    expect(a.os_glance_import_task).toBeUndefined();
    expect(a.os_glance_importing_to_stores).toBe('');
    expect(a.os_glance_failed_import).toBe('cold');
    expect(await blobs(fastDir)).not.toContain(imp);
    expect(await blobs(fastDir)).not.toContain(`staging-${imp}`);
    const b = await show(cp.id);
    expect(b.status).toBe('active');
    expect(b.stores).toBe('fast');
    expect(b.os_glance_import_task).toBeUndefined();
    expect(b.os_glance_failed_import).toBe('cold');
    expect(await blobs(coldDir)).not.toContain(cp.id);
    for (const t of [t1, t2]) {
      const row = (await admin.req('GET', `/v2/tasks/${t}`)).json;
      expect(row.status).toBe('failure');
      expect(row.message).toBe('The server stopped during the import.');
    }
    // and both work again
    expect(
      (
        await admin.req('POST', `/v2/images/${cp.id}/import`, {
          method: { name: 'copy-image' },
          stores: ['cold'],
        })
      ).status,
    ).toBe(202);
    expect((await settled(cp.id)).stores).toBe('cold,fast');
  });
});

describe('three stores', () => {
  it('DELETE /v2/stores: 404 for an image that is not in that store (and in two others)', async () => {
    const dir = await tempDir('three');
    const server = await startServer({
      port: 0,
      dataDir: join(dir, 'data'),
      adminPassword: 'pw',
      stores: {
        stores: ['a', 'b', 'c'].map((id) => ({ id, location: join(dir, id), description: null })),
        defaultId: 'b',
      },
    });
    try {
      const admin = await Api.login(server.url, 'admin', 'pw', 'admin');
      const img = await admin.createImage({ disk_format: 'raw', container_format: 'bare' });
      expect(await admin.upload(img.id, rawData(5000))).toBe(204);
      expect((await admin.req('GET', `/v2/images/${img.id}`)).json.stores).toBe('b');
      const r0 = await admin.req('POST', `/v2/images/${img.id}/import`, {
        method: { name: 'copy-image' },
        stores: ['c'],
      });
      expect(r0.status).toBe(202);
      for (let i = 0; i < 200; i++) {
        const j = (await admin.req('GET', `/v2/images/${img.id}`)).json;
        if (!('os_glance_import_task' in j)) break;
        await new Promise((r) => setTimeout(r, 25));
      }
      expect((await admin.req('GET', `/v2/images/${img.id}`)).json.stores).toBe('b,c');
      const r = await admin.req('DELETE', `/v2/stores/a/${img.id}`);
      expect(r.status).toBe(404);
      expect(r.text).toContain(`Image ${img.id} is not stored in store a.`);
      expect((await admin.req('DELETE', `/v2/stores/b/${img.id}`)).status).toBe(204);
      // reads now come from c, the first store that holds it
      expect((await admin.req('GET', `/v2/images/${img.id}`)).json.stores).toBe('c');
      const d = await fetch(`${server.url}/v2/images/${img.id}/file`, {
        headers: { 'X-Auth-Token': admin.token },
      });
      expect((await d.arrayBuffer()).byteLength).toBe(5000);
      expect(await blobs(join(dir, 'b'))).toEqual([]);
    } finally {
      await server.close(5000);
    }
  });
});

describe('single-store mode is unchanged', () => {
  it('no stores attribute, no store ids header, 404 on the stores routes, X-Image-Meta-Store ignored', async () => {
    const dir = await tempDir('single');
    const server = await startServer({ port: 0, dataDir: dir, adminPassword: 'pw' });
    try {
      const admin = await Api.login(server.url, 'admin', 'pw', 'admin');
      for (const p of ['/v2/info/stores', '/v2/info/stores/detail']) {
        const r = await admin.req('GET', p);
        expect(r.status).toBe(404);
        expect(r.text).toContain('Multi backend is not supported at this site.');
      }
      const c = await admin.req('POST', '/v2/images', { disk_format: 'raw', container_format: 'bare' });
      expect(c.headers.get('openstack-image-store-ids')).toBe(null);
      const r = await admin.req('PUT', `/v2/images/${c.json.id}/file`, rawData(1000), {
        'X-Image-Meta-Store': 'x',
      });
      expect(r.status).toBe(204);
      const img = (await admin.req('GET', `/v2/images/${c.json.id}`)).json;
      expect(img.stores).toBeUndefined();
      expect((await admin.req('DELETE', `/v2/stores/file/${c.json.id}`)).status).toBe(404);
    } finally {
      await server.close(5000);
    }
  });
});

describe('vdisk serve with two stores, killed during an import', () => {
  it('restarts clean: the image queued, no copy in either store, nothing staged', async () => {
    const dir = await tempDir('kill');
    const fast = join(dir, 'fast');
    const cold = join(dir, 'cold');
    const serve = () => {
      const p = spawn(
        process.execPath,
        [
          join(process.cwd(), 'bin', 'vdisk'),
          'serve',
          '--port',
          '0',
          '--data-dir',
          join(dir, 'data'),
          '--admin-password',
          'k',
          '--store',
          `fast=${fast}`,
          '--store',
          `cold=${cold}`,
          '--store-description',
          'cold=Second disk',
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      let err = '';
      return new Promise<{ p: typeof p; url: string; err: () => string }>((resolve, reject) => {
        p.stderr.on('data', (d: Buffer) => {
          err += d.toString();
          const m = /listening on (http:\/\/\S+)/.exec(err);
          if (m) resolve({ p, url: m[1]!, err: () => err });
        });
        p.on('exit', (code) => reject(new Error(`vdisk serve exited ${code}: ${err}`)));
      });
    };
    let s = await serve();
    try {
      let a = await Api.login(s.url, 'admin', 'k', 'admin');
      expect((await a.req('GET', '/v2/info/stores')).json.stores).toEqual([
        { id: 'fast', default: 'true' },
        { id: 'cold', description: 'Second disk' },
      ]);
      const img = await a.createImage({ disk_format: 'raw', container_format: 'bare' });
      expect((await a.req('PUT', `/v2/images/${img.id}/stage`, rawData(400 * MIB))).status).toBe(204);
      expect(
        (
          await a.req('POST', `/v2/images/${img.id}/import`, {
            method: { name: 'glance-direct' },
            all_stores: true,
          })
        ).status,
      ).toBe(202);
      // wait until the first store is done (the image claims fast, still importing), then kill
      let seen: any;
      for (let i = 0; i < 2000; i++) {
        seen = (await a.req('GET', `/v2/images/${img.id}`)).json;
        if (seen.stores === 'fast' || seen.status !== 'importing') break;
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(seen.status).toBe('importing');
      expect(seen.stores).toBe('fast');
      expect(seen.os_glance_importing_to_stores).toBe('cold');
      s.p.kill('SIGKILL');
      await new Promise((r) => s.p.once('exit', r));
      s = await serve();
      expect(s.err()).toMatch(/recovered 1 interrupted import/);
      a = await Api.login(s.url, 'admin', 'k', 'admin');
      const after = (await a.req('GET', `/v2/images/${img.id}`)).json;
      expect(after.status).toBe('queued');
      expect(after.stores).toBeUndefined();
      expect(after.os_glance_failed_import).toBe('cold');
      expect(await blobs(fast)).toEqual([]);
      expect(await blobs(cold)).toEqual([]);
      expect(await readdir(join(fast, '.tmp'))).toEqual([]);
      expect(await readdir(join(cold, '.tmp'))).toEqual([]);
    } finally {
      const exit = new Promise<number | null>((r) => s.p.once('exit', r));
      s.p.kill('SIGTERM');
      expect(await exit).toBe(0);
    }
  }, 120_000);
});
