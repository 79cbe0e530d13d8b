/* biome-ignore-all lint/suspicious/noExplicitAny: parsed JSON of many shapes. */
/**
 * Image import against a real `vdisk serve`: stage + glance-direct, web-download from a
 * local HTTP server in the test (allowed explicitly, as the default refuses loopback), the
 * filters (disallowed host, port, scheme; redirects to a disallowed host), copy-image with
 * one store, the tasks API, conversion on import by the engine, hostile data refused with
 * nothing left behind, and the same flows through the real Debian `glance` 4.1.0 and
 * `openstack` 6.0.0 clients. Images are made by qemu-img; downloads are compared byte for
 * byte and conversions with `qemu-img compare`.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ADMIN_PASSWORD,
  Api,
  addProjectUser,
  type CliResult,
  runClient,
  startTestServer,
  type TestServer,
} from './test/harness.js';

let ts: TestServer;
let admin: Api;
let alice: Api;
let work: string;
let web: Server;
let webPort = 0;
const served = new Map<string, Buffer | { redirect: string }>();
/**
 * Images served with byte ranges under /ranged/…: HEAD, GET and Range GETs, sent in 64 KiB
 * writes. `resetAt`: the first response that reaches that byte of the image sends the bytes
 * before it and then resets the connection (once); `resetIn` says which kind it was.
 */
const ranged = new Map<string, { data: Buffer; resetAt?: number; resetIn?: 'range' | 'whole' }>();

async function serveRanged(
  req: import('node:http').IncomingMessage,
  res: import('node:http').ServerResponse,
  item: { data: Buffer; resetAt?: number; resetIn?: 'range' | 'whole' },
): Promise<void> {
  const { data } = item;
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  const start = m === null ? 0 : Number(m[1]);
  const end = m === null ? data.length : Math.min(data.length, Number(m[2]) + 1);
  const head: Record<string, string | number> = { 'Accept-Ranges': 'bytes', 'Content-Length': end - start };
  if (m !== null) head['Content-Range'] = `bytes ${start}-${end - 1}/${data.length}`;
  res.writeHead(m === null ? 200 : 206, head);
  if (req.method === 'HEAD') return void res.end();
  const at = item.resetAt;
  const cut = at !== undefined && item.resetIn === undefined && at >= start && at < end ? at : null;
  for (let o = start; o < (cut ?? end); o += 64 << 10) {
    const ok = res.write(data.subarray(o, Math.min(o + (64 << 10), cut ?? end)));
    if (res.destroyed) return;
    if (!ok) await new Promise((r) => res.once('drain', r).once('close', r));
  }
  if (cut !== null) {
    item.resetIn = m === null ? 'whole' : 'range';
    // Let the bytes before the cut go out, then RST.
    await new Promise((r) => setTimeout(r, 20));
    req.socket.resetAndDestroy();
    return;
  }
  res.end();
}
let releaseSlow: () => void = () => {};
const slowGate = new Promise<void>((r) => {
  releaseSlow = r;
});

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');
const sha512 = (b: Buffer) => createHash('sha512').update(b).digest('hex');
const qemuImg = (...args: string[]) => execFileSync('qemu-img', args, { cwd: work, stdio: 'pipe' });

beforeAll(async () => {
  ts = await startTestServer();
  admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
  await addProjectUser(admin, 'alpha', 'alice', 'alice-pw');
  alice = await Api.login(ts.url, 'alice', 'alice-pw', 'alpha');
  work = await mkdtemp(join(tmpdir(), 'vdisk-import-test-'));
  web = createServer((req, res) => {
    if (req.url === '/slow') {
      // Half the data, then the rest when the test says so.
      res.writeHead(200, { 'Content-Length': 2 << 20 });
      res.write(Buffer.alloc(1 << 20, 9));
      slowGate.then(() => res.end(Buffer.alloc(1 << 20, 9)));
      return;
    }
    const r = ranged.get(req.url ?? '');
    if (r !== undefined) {
      void serveRanged(req, res, r);
      return;
    }
    const item = served.get(req.url ?? '');
    if (item === undefined) {
      res.writeHead(404).end('not here');
    } else if (Buffer.isBuffer(item)) {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': item.length });
      res.end(item);
    } else {
      res.writeHead(302, { Location: item.redirect }).end();
    }
  });
  await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
  webPort = (web.address() as AddressInfo).port;
  // The test's web server is on loopback at a high port: allow exactly that.
  Object.assign(ts.server.services.settings, {
    importAllowedHosts: ['127.0.0.1'],
    importAllowedPorts: [webPort],
  });
});
afterAll(async () => {
  web?.close();
  await ts?.stop();
  if (work !== undefined) await rm(work, { recursive: true, force: true });
});

/** Every file of the blob store, temporary ones included. */
async function blobs(): Promise<string[]> {
  const dir = join(ts.dir, 'data', 'images');
  const top = (await readdir(dir)).filter((n) => n !== '.tmp');
  const tmp = (await readdir(join(dir, '.tmp'))).map((n) => `.tmp/${n}`);
  return [...top, ...tmp];
}

async function qcow2(name: string, size = '64M', pattern = 0x5a): Promise<Buffer> {
  const file = join(work, name);
  qemuImg('create', '-q', '-f', 'qcow2', file, size);
  execFileSync('qemu-io', ['-c', `write -P ${pattern} 1M 2M`, file], { stdio: 'ignore' });
  return readFile(file);
}

async function waitFor(api: Api, id: string, until: (img: any) => boolean): Promise<any> {
  for (let i = 0; i < 400; i++) {
    const r = await api.req('GET', `/v2/images/${id}`);
    if (until(r.json)) return r.json;
    await new Promise((res) => setTimeout(res, 25));
  }
  throw new Error(`image ${id} never reached the expected state`);
}
/** The import is over: the status moved on and the lock (dropped last) is gone. */
const settled = (img: any) => img.status !== 'importing' && !('os_glance_import_task' in img);

async function download(api: Api, id: string): Promise<Buffer> {
  const r = await fetch(`${api.url}/v2/images/${id}/file`, { headers: { 'X-Auth-Token': api.token } });
  return Buffer.from(await r.arrayBuffer());
}

async function imageTasks(api: Api, id: string): Promise<any[]> {
  const r = await api.req('GET', `/v2/images/${id}/tasks`);
  expect(r.status).toBe(200);
  return r.json.tasks;
}

describe('discovery', () => {
  it('lists the import methods and has no multi-store', async () => {
    const r = await alice.req('GET', '/v2/info/import');
    expect(r.json['import-methods'].value).toEqual(['glance-direct', 'web-download', 'copy-image']);
    const s = await alice.req('GET', '/v2/info/stores');
    expect(s.status).toBe(404);
    expect(s.text).toContain('Multi backend is not supported at this site.');
    const c = await alice.req('POST', '/v2/images', { name: 'x' });
    expect(c.headers.get('openstack-image-import-methods')).toBe('glance-direct,web-download,copy-image');
  });
});

describe('glance-direct', () => {
  it('stages (uploading, size), imports (importing → active) and serves identical bytes', async () => {
    const data = await qcow2('direct.qcow2');
    const img = await alice.createImage({ name: 'direct', disk_format: 'qcow2', container_format: 'bare' });
    // Importing before staging: 409 as Glance.
    const early = await alice.req('POST', `/v2/images/${img.id}/import`, {
      method: { name: 'glance-direct' },
    });
    expect(early.status).toBe(409);
    expect(early.text).toContain("Image needs to be staged before 'glance-direct' method can be used");

    const st = await alice.req('PUT', `/v2/images/${img.id}/stage`, data);
    expect(st.status).toBe(204);
    const staged = (await alice.req('GET', `/v2/images/${img.id}`)).json;
    expect(staged.status).toBe('uploading');
    expect(staged.size).toBe(data.length);
    expect(staged.checksum).toBeNull();
    expect(await blobs()).toContain(`staging-${img.id}`);
    // Nothing to download while staged; a second stage is refused.
    expect(
      (await fetch(`${ts.url}/v2/images/${img.id}/file`, { headers: { 'X-Auth-Token': alice.token } }))
        .status,
    ).toBe(204);
    expect((await alice.req('PUT', `/v2/images/${img.id}/stage`, data)).status).toBe(409);

    const imp = await alice.req('POST', `/v2/images/${img.id}/import`, { method: { name: 'glance-direct' } });
    expect(imp.status).toBe(202);
    expect(imp.text).toBe('');
    const done = await waitFor(alice, img.id, settled);
    expect(done.status).toBe('active');
    expect(done.size).toBe(data.length);
    expect(done.virtual_size).toBe(64 << 20);
    expect(done.checksum).toBe(md5(data));
    expect(done.os_hash_algo).toBe('sha512');
    expect(done.os_hash_value).toBe(sha512(data));
    // Glance with one store: the progress properties are empty strings, the lock is gone.
    expect(done.os_glance_importing_to_stores).toBe('');
    expect(done.os_glance_failed_import).toBe('');
    expect(done).not.toHaveProperty('os_glance_import_task');
    expect((await download(alice, img.id)).equals(data)).toBe(true);
    const files = await blobs();
    expect(files).toContain(img.id);
    expect(files).not.toContain(`staging-${img.id}`);

    const tasks = await imageTasks(alice, img.id);
    expect(tasks).toHaveLength(1);
    const t = tasks[0];
    expect(t.type).toBe('api_image_import');
    expect(t.status).toBe('success');
    expect(t.result).toEqual({ image_id: img.id });
    expect(t.input).toEqual({
      image_id: img.id,
      import_req: { method: { name: 'glance-direct' } },
      backend: [null],
    });
    expect(t.owner).toBe(alice.projectId);
    expect(t.image_id).toBe(img.id);
    expect(t.expires_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/);
    expect(t.deleted).toBe(false);

    // An active image is no target for an import.
    const again = await alice.req('POST', `/v2/images/${img.id}/import`, {
      method: { name: 'glance-direct' },
    });
    expect(again.status).toBe(409);
    expect(again.text).toContain('Image with status active cannot be target for import');
  });

  it('validates the request as Glance', async () => {
    const img = await alice.createImage({ name: 'v', disk_format: 'raw', container_format: 'bare' });
    const imp = (body: unknown) => alice.req('POST', `/v2/images/${img.id}/import`, body);
    let r = await imp({});
    expect(r.status).toBe(400);
    expect(r.text).toContain("Import request requires a 'method' field.");
    r = await imp({ method: {} });
    expect(r.text).toContain("Import request requires a 'name' field.");
    r = await imp({ method: { name: 'glance-download' } });
    expect(r.status).toBe(400);
    expect(r.text).toContain("Unknown import method name 'glance-download'.");
    r = await imp({ method: { name: 'glance-direct' }, all_stores: 'yes' });
    expect(r.text).toContain("'all_stores' must be boolean value only");
    // Formats must be set before an import.
    const bare = await alice.createImage({ name: 'noformat' });
    r = await alice.req('POST', `/v2/images/${bare.id}/import`, {
      method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/x` },
    });
    expect(r.status).toBe(409);
    expect(r.text).toContain("'container_format' needs to be set before import");
    // Another project cannot see it; admin-only copy-image.
    const other = await admin.createImage({
      name: 'admins',
      disk_format: 'raw',
      container_format: 'bare',
      visibility: 'private',
    });
    expect((await alice.req('PUT', `/v2/images/${other.id}/stage`, Buffer.alloc(512))).status).toBe(404);
  });

  it('refuses hostile staged data (qcow2 backing /etc/passwd) and keeps nothing', async () => {
    const file = join(work, 'hostile.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/passwd', file, '1M');
    const data = await readFile(file);
    const img = await alice.createImage({ name: 'hostile', disk_format: 'qcow2', container_format: 'bare' });
    const before = await blobs();
    const r = await alice.req('PUT', `/v2/images/${img.id}/stage`, data);
    expect(r.status).toBe(415);
    expect(r.text).toContain(
      'Image has disallowed configuration: the qcow2 image names a backing file "/etc/passwd"; to upload an overlay, name its master with the property backing_image_id.',
    );
    const after = (await alice.req('GET', `/v2/images/${img.id}`)).json;
    expect(after.status).toBe('queued');
    expect(after.size).toBeNull();
    expect(await blobs()).toEqual(before);
    // Data that is not what disk_format says: 415 too.
    const raw = await alice.createImage({ name: 'mismatch', disk_format: 'raw', container_format: 'bare' });
    const m = await alice.req('PUT', `/v2/images/${raw.id}/stage`, await qcow2('mm.qcow2', '4M'));
    expect(m.status).toBe(415);
    expect(m.text).toContain('the data is not in disk_format raw (it is qcow2)');
    expect(await blobs()).toEqual(before);
  });
});

describe('web-download', () => {
  it('fetches from an allowed host and imports', async () => {
    const data = await qcow2('web.qcow2', '32M', 0x33);
    served.set('/web.qcow2', data);
    const img = await alice.createImage({ name: 'web', disk_format: 'qcow2', container_format: 'bare' });
    const uri = `http://127.0.0.1:${webPort}/web.qcow2`;
    const r = await alice.req('POST', `/v2/images/${img.id}/import`, {
      method: { name: 'web-download', uri },
    });
    expect(r.status).toBe(202);
    const done = await waitFor(alice, img.id, settled);
    expect(done.status).toBe('active');
    expect(done.checksum).toBe(md5(data));
    expect(done.virtual_size).toBe(32 << 20);
    expect((await download(alice, img.id)).equals(data)).toBe(true);
    expect(await blobs()).not.toContain(`staging-${img.id}`);
    const [t] = await imageTasks(alice, img.id);
    expect(t.status).toBe('success');
    expect(t.input.import_req.method.uri).toBe(uri);
  });

  it('follows a redirect to an allowed host, not to a disallowed one', async () => {
    const data = Buffer.alloc(1 << 20, 7);
    served.set('/raw.img', data);
    served.set('/to-allowed', { redirect: `http://127.0.0.1:${webPort}/raw.img` });
    served.set('/to-disallowed', { redirect: `http://localhost:${webPort}/raw.img` });
    const ok = await alice.createImage({ name: 'redir-ok', disk_format: 'raw', container_format: 'bare' });
    expect(
      (
        await alice.req('POST', `/v2/images/${ok.id}/import`, {
          method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/to-allowed` },
        })
      ).status,
    ).toBe(202);
    expect((await waitFor(alice, ok.id, settled)).status).toBe('active');
    expect((await download(alice, ok.id)).equals(data)).toBe(true);

    const before = await blobs();
    const bad = await alice.createImage({ name: 'redir-bad', disk_format: 'raw', container_format: 'bare' });
    expect(
      (
        await alice.req('POST', `/v2/images/${bad.id}/import`, {
          method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/to-disallowed` },
        })
      ).status,
    ).toBe(202);
    const failed = await waitFor(alice, bad.id, settled);
    expect(failed.status).toBe('queued');
    expect(failed.size).toBeNull();
    expect(failed.os_glance_failed_import).toBe('');
    expect(failed).not.toHaveProperty('os_glance_import_task');
    const [t] = await imageTasks(alice, bad.id);
    expect(t.status).toBe('failure');
    expect(t.message).toContain(`Redirect to a disallowed URI: http://localhost:${webPort}/raw.img`);
    expect(await blobs()).toEqual(before);
    // The image can be imported again after the failure.
    expect(
      (
        await alice.req('POST', `/v2/images/${bad.id}/import`, {
          method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/raw.img` },
        })
      ).status,
    ).toBe(202);
    expect((await waitFor(alice, bad.id, settled)).status).toBe('active');
  });

  it('a server with byte ranges that resets the connection part way: the import resumes and completes', async () => {
    const data = await qcow2('ranged.qcow2', '64M', 0x4c);
    // Big enough that the cut falls in a Range GET, not in the GET that is dropped after
    // its headers (openWebImage).
    const item: { data: Buffer; resetAt?: number; resetIn?: 'range' | 'whole' } = {
      data: Buffer.concat([data, Buffer.alloc((24 << 20) - data.length, 0)]),
      resetAt: (12 << 20) + 12345,
    };
    ranged.set('/ranged/reset.qcow2', item);
    const img = await alice.createImage({ name: 'ranged', disk_format: 'qcow2', container_format: 'bare' });
    const r = await alice.req('POST', `/v2/images/${img.id}/import`, {
      method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/ranged/reset.qcow2` },
    });
    expect(r.status).toBe(202);
    const done = await waitFor(alice, img.id, settled);
    const [t] = await imageTasks(alice, img.id);
    // Before the range source, the GET ended part way and the task failed.
    expect([done.status, t.status, t.message]).toEqual(['active', 'success', 'Copied 24 MiB']);
    expect(item.resetIn).toBe('range');
    expect(done.checksum).toBe(md5(item.data));
    expect(done.os_hash_value).toBe(sha512(item.data));
    expect((await download(alice, img.id)).equals(item.data)).toBe(true);
  });

  it('a server with byte ranges: a redirect to a disallowed host is still refused', async () => {
    served.set('/ranged-away', { redirect: `http://localhost:${webPort}/ranged/away.img` });
    ranged.set('/ranged/away.img', { data: Buffer.alloc(1 << 20, 3) });
    const img = await alice.createImage({
      name: 'ranged-away',
      disk_format: 'raw',
      container_format: 'bare',
    });
    await alice.req('POST', `/v2/images/${img.id}/import`, {
      method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/ranged-away` },
    });
    expect((await waitFor(alice, img.id, settled)).status).toBe('queued');
    const [t] = await imageTasks(alice, img.id);
    expect(t.status).toBe('failure');
    expect(t.message).toContain(`Redirect to a disallowed URI: http://localhost:${webPort}/ranged/away.img`);
  });

  it('refuses disallowed hosts, ports and schemes with 400 (nothing starts)', async () => {
    const img = await alice.createImage({ name: 'denied', disk_format: 'raw', container_format: 'bare' });
    for (const uri of [
      `http://localhost:${webPort}/raw.img`, // host not in the allowed list
      'http://127.0.0.1:22/raw.img', // port not allowed
      `ftp://127.0.0.1:${webPort}/raw.img`, // scheme
      `file:///etc/passwd`,
      'not a uri',
    ]) {
      const r = await alice.req('POST', `/v2/images/${img.id}/import`, {
        method: { name: 'web-download', uri },
      });
      expect(r.status, uri).toBe(400);
      expect(r.text).toContain('URI for web-download does not pass filtering');
    }
    // With the default filters (no allowed hosts), loopback and private addresses are refused.
    const s = ts.server.services.settings;
    const saved = { hosts: s.importAllowedHosts, ports: s.importAllowedPorts };
    s.importAllowedHosts = [];
    s.importAllowedPorts = [80, 443];
    try {
      for (const uri of [
        'http://127.0.0.1/raw.img',
        'http://10.1.2.3/x',
        'http://[::1]/x',
        'http://169.254.169.254/latest/meta-data',
      ]) {
        const r = await alice.req('POST', `/v2/images/${img.id}/import`, {
          method: { name: 'web-download', uri },
        });
        expect(r.status, uri).toBe(400);
      }
      // A name that resolves to loopback passes the URI filter but fails in the task.
      const r = await alice.req('POST', `/v2/images/${img.id}/import`, {
        method: { name: 'web-download', uri: 'http://localhost/raw.img' },
      });
      expect(r.status).toBe(202);
      const failed = await waitFor(alice, img.id, settled);
      expect(failed.status).toBe('queued');
      const tasks = await imageTasks(alice, img.id);
      expect(tasks.at(-1).message).toMatch(/resolves to the internal address (127\.0\.0\.1|::1)/);
    } finally {
      s.importAllowedHosts = saved.hosts;
      s.importAllowedPorts = saved.ports;
    }
    expect((await alice.req('GET', `/v2/images/${img.id}`)).json.status).toBe('queued');
  });

  it('refuses hostile downloaded data and a wrong format, keeping nothing', async () => {
    const file = join(work, 'web-hostile.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/passwd', file, '1M');
    served.set('/hostile.qcow2', await readFile(file));
    const before = await blobs();
    const img = await alice.createImage({
      name: 'web-hostile',
      disk_format: 'qcow2',
      container_format: 'bare',
    });
    await alice.req('POST', `/v2/images/${img.id}/import`, {
      method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/hostile.qcow2` },
    });
    const failed = await waitFor(alice, img.id, settled);
    expect(failed.status).toBe('queued');
    expect(failed.checksum).toBeNull();
    const [t] = await imageTasks(alice, img.id);
    expect(t.status).toBe('failure');
    expect(t.message).toContain(
      'Image has disallowed configuration: the qcow2 image names a backing file "/etc/passwd"; to upload an overlay, name its master with the property backing_image_id.',
    );
    expect(await blobs()).toEqual(before);
    // A 404 from the remote server fails the task too.
    const gone = await alice.createImage({ name: 'web-404', disk_format: 'raw', container_format: 'bare' });
    await alice.req('POST', `/v2/images/${gone.id}/import`, {
      method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/nothing` },
    });
    expect((await waitFor(alice, gone.id, settled)).status).toBe('queued');
    expect((await imageTasks(alice, gone.id))[0].message).toBe('HTTP Error 404: Not Found');
  });
});

describe('copy-image and tasks', () => {
  it('copy-image: active only, admin only, and the one store already has it', async () => {
    const img = await alice.createImage({ name: 'copy', disk_format: 'raw', container_format: 'bare' });
    let r = await alice.req('POST', `/v2/images/${img.id}/import`, { method: { name: 'copy-image' } });
    expect(r.status).toBe(409);
    expect(r.text).toContain('Only images with status active can be targeted for copying');
    expect(await alice.upload(img.id, Buffer.alloc(4096, 1))).toBe(204);
    r = await alice.req('POST', `/v2/images/${img.id}/import`, { method: { name: 'copy-image' } });
    expect(r.status).toBe(403);
    r = await admin.req('POST', `/v2/images/${img.id}/import`, { method: { name: 'copy-image' } });
    expect(r.status).toBe(400);
    expect(r.text).toContain("Image is already present at store 'file'");
    r = await admin.req('POST', `/v2/images/${img.id}/import`, {
      method: { name: 'copy-image' },
      all_stores: true,
    });
    expect(r.status).toBe(202);
    expect(await imageTasks(admin, img.id)).toEqual([]);
  });

  it('GET /v2/tasks and /v2/tasks/{id}: admin only, stubs in lists, pagination', async () => {
    expect((await alice.req('GET', '/v2/tasks')).status).toBe(403);
    const all = await admin.req('GET', '/v2/tasks');
    expect(all.status).toBe(200);
    expect(all.json.schema).toBe('/v2/schemas/tasks');
    expect(all.json.tasks.length).toBeGreaterThanOrEqual(5);
    const stub = all.json.tasks[0];
    expect(Object.keys(stub).sort()).toEqual(
      ['created_at', 'expires_at', 'id', 'owner', 'schema', 'self', 'status', 'type', 'updated_at'].sort(),
    );
    const p1 = await admin.req('GET', '/v2/tasks?limit=2');
    expect(p1.json.tasks).toHaveLength(2);
    expect(p1.json.next).toContain('marker=');
    const p2 = await admin.req('GET', p1.json.next);
    expect(p2.json.tasks[0].id).toBe(all.json.tasks[2].id);
    const failures = await admin.req('GET', '/v2/tasks?status=failure');
    expect(failures.json.tasks.every((t: any) => t.status === 'failure')).toBe(true);
    expect((await admin.req('GET', '/v2/tasks?status=bogus')).status).toBe(400);
    const one = await admin.req('GET', `/v2/tasks/${stub.id}`);
    expect(one.status).toBe(200);
    expect(one.json.self).toBe(`/v2/tasks/${stub.id}`);
    expect(one.json).toHaveProperty('input');
    expect(one.json.user_id).toMatch(/^[0-9a-f]{32}$/);
    expect((await alice.req('GET', `/v2/tasks/${stub.id}`)).status).toBe(403);
    expect((await admin.req('GET', '/v2/tasks/00000000-0000-0000-0000-000000000000')).status).toBe(404);
    expect((await admin.req('DELETE', `/v2/tasks/${stub.id}`)).status).toBe(405);
  });
});

describe('conversion on import (the engine, no qemu-img)', () => {
  it('qcow2 → raw and vmdk → qcow2, identical content', async () => {
    const s = ts.server.services.settings;
    s.importConvertTo = 'raw';
    try {
      const data = await qcow2('conv.qcow2', '16M', 0x42);
      const img = await alice.createImage({ name: 'conv', disk_format: 'qcow2', container_format: 'bare' });
      expect((await alice.req('PUT', `/v2/images/${img.id}/stage`, data)).status).toBe(204);
      await alice.req('POST', `/v2/images/${img.id}/import`, { method: { name: 'glance-direct' } });
      const done = await waitFor(alice, img.id, settled);
      expect(done.status).toBe('active');
      expect(done.disk_format).toBe('raw');
      expect(done.size).toBe(16 << 20);
      expect(done.virtual_size).toBe(16 << 20);
      const got = await download(alice, img.id);
      qemuImg('convert', '-f', 'qcow2', '-O', 'raw', 'conv.qcow2', 'conv.raw');
      expect(got.equals(await readFile(join(work, 'conv.raw')))).toBe(true);
      expect(done.checksum).toBe(md5(got));

      s.importConvertTo = 'qcow2';
      const vmdk = join(work, 'conv.vmdk');
      qemuImg('convert', '-f', 'qcow2', '-O', 'vmdk', 'conv.qcow2', vmdk);
      served.set('/conv.vmdk', await readFile(vmdk));
      const v = await alice.createImage({ name: 'conv-vmdk', disk_format: 'vmdk', container_format: 'bare' });
      await alice.req('POST', `/v2/images/${v.id}/import`, {
        method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/conv.vmdk` },
      });
      const vd = await waitFor(alice, v.id, settled);
      expect(vd.status).toBe('active');
      expect(vd.disk_format).toBe('qcow2');
      expect(vd.virtual_size).toBe(16 << 20);
      await writeFile(join(work, 'back.qcow2'), await download(alice, v.id));
      qemuImg('check', '-f', 'qcow2', 'back.qcow2');
      qemuImg('compare', '-f', 'qcow2', '-F', 'qcow2', 'back.qcow2', 'conv.qcow2');
    } finally {
      s.importConvertTo = null;
    }
  });
});

/** Run a client with stdin closed (glanceclient treats any non-tty stdin as image data). */
function client(
  prog: 'glance' | 'openstack',
  args: string[],
  as = { user: 'alice', password: 'alice-pw', project: 'alpha' },
): Promise<CliResult> {
  return runClient(ts, prog, args, as, { closeStdin: true });
}

/** glance's print_dict table: | Property | Value | rows. */
function field(out: string, name: string): string | undefined {
  const m = new RegExp(`^\\|\\s*${name}\\s*\\|\\s*(.*?)\\s*\\|$`, 'm').exec(out);
  return m?.[1];
}

describe('the real clients', () => {
  it('glance image-create-via-import --import-method glance-direct --file, then image-download', async () => {
    const data = await qcow2('gd.qcow2', '8M', 0x11);
    const r = await client('glance', [
      'image-create-via-import',
      '--disk-format',
      'qcow2',
      '--container-format',
      'bare',
      '--import-method',
      'glance-direct',
      '--file',
      join(work, 'gd.qcow2'),
      '--name',
      'via-import',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const id = field(r.stdout, 'id')!;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    const done = await waitFor(alice, id, settled);
    expect(done.status).toBe('active');
    const out = join(work, 'gd.back');
    const d = await client('glance', ['image-download', '--file', out, id]);
    expect(d.code).toBe(0);
    expect((await readFile(out)).equals(data)).toBe(true);
    // glance twice in a row (the schema cache) and the task list of the image.
    const show = await client('glance', ['image-show', id]);
    expect(show.code).toBe(0);
    expect(field(show.stdout, 'status')).toBe('active');
    expect(field(show.stdout, 'os_glance_failed_import')).toBe('');
  });

  it('glance image-create-via-import --import-method web-download --uri', async () => {
    const data = await qcow2('gw.qcow2', '8M', 0x22);
    served.set('/gw.qcow2', data);
    const r = await client('glance', [
      'image-create-via-import',
      '--disk-format',
      'qcow2',
      '--container-format',
      'bare',
      '--import-method',
      'web-download',
      '--uri',
      `http://127.0.0.1:${webPort}/gw.qcow2`,
      '--name',
      'via-web',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const id = field(r.stdout, 'id')!;
    expect((await waitFor(alice, id, settled)).status).toBe('active');
    expect((await download(alice, id)).equals(data)).toBe(true);
    // A disallowed host: the client reports Glance's 400.
    const bad = await client('glance', [
      'image-create-via-import',
      '--disk-format',
      'raw',
      '--container-format',
      'bare',
      '--import-method',
      'web-download',
      '--uri',
      'http://10.0.0.1/disk.img',
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('URI for web-download does not pass filtering');
  });

  it('glance image-stage + image-import, task-list and task-show (admin)', async () => {
    const data = await qcow2('gs.qcow2', '8M', 0x44);
    const c = await client('glance', [
      'image-create',
      '--disk-format',
      'qcow2',
      '--container-format',
      'bare',
      '--name',
      'staged',
    ]);
    expect(c.code).toBe(0);
    const id = field(c.stdout, 'id')!;
    const s = await client('glance', ['image-stage', '--file', join(work, 'gs.qcow2'), id]);
    expect(s.stderr).toBe('');
    expect(s.code).toBe(0);
    expect((await alice.req('GET', `/v2/images/${id}`)).json.status).toBe('uploading');
    const i = await client('glance', ['image-import', '--import-method', 'glance-direct', id]);
    expect(i.stderr).toBe('');
    expect(i.code).toBe(0);
    expect((await waitFor(alice, id, settled)).status).toBe('active');
    expect((await download(alice, id)).equals(data)).toBe(true);

    const adminAs = { user: 'admin', password: ADMIN_PASSWORD, project: 'admin' };
    const tl = await client('glance', ['task-list'], adminAs);
    expect(tl.stderr).toBe('');
    expect(tl.code).toBe(0);
    const [task] = await imageTasks(alice, id);
    expect(tl.stdout).toMatch(
      new RegExp(`\\| ${task.id} \\| api_image_import \\| success\\s*\\| ${alice.projectId} \\|`),
    );
    const sh = await client('glance', ['task-show', task.id], adminAs);
    expect(sh.stderr).toBe('');
    expect(sh.code).toBe(0);
    expect(field(sh.stdout, 'status')).toBe('success');
    expect(field(sh.stdout, 'image_id')).toBe(id);
    expect(field(sh.stdout, 'type')).toBe('api_image_import');
    // Not for a member.
    const denied = await client('glance', ['task-list']);
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toMatch(/403|not authorized/i);
  });

  it('openstack image create --import (stage + glance-direct through openstacksdk)', async () => {
    const data = await qcow2('os.qcow2', '8M', 0x66);
    const r = await client('openstack', [
      'image',
      'create',
      '--import',
      '--disk-format',
      'qcow2',
      '--file',
      join(work, 'os.qcow2'),
      'os-import',
      '-f',
      'json',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const id = JSON.parse(r.stdout).id;
    expect((await waitFor(alice, id, settled)).status).toBe('active');
    expect((await download(alice, id)).equals(data)).toBe(true);
    const [t] = await imageTasks(alice, id);
    expect(t.input.import_req.method.name).toBe('glance-direct');
  });
});

describe('concurrency', () => {
  it('two imports of one staged image: one 202, one 409; a delete during a download keeps nothing', async () => {
    const img = await alice.createImage({ name: 'twice', disk_format: 'raw', container_format: 'bare' });
    expect((await alice.req('PUT', `/v2/images/${img.id}/stage`, Buffer.alloc(1 << 20, 3))).status).toBe(204);
    const both = await Promise.all(
      [0, 1].map(() =>
        alice.req('POST', `/v2/images/${img.id}/import`, { method: { name: 'glance-direct' } }),
      ),
    );
    expect(both.map((r) => r.status).sort()).toEqual([202, 409]);
    expect((await waitFor(alice, img.id, settled)).status).toBe('active');
    expect(await imageTasks(alice, img.id)).toHaveLength(1);

    const before = await blobs();
    const slow = await alice.createImage({ name: 'slow', disk_format: 'raw', container_format: 'bare' });
    await alice.req('POST', `/v2/images/${slow.id}/import`, {
      method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/slow` },
    });
    expect((await alice.req('GET', `/v2/images/${slow.id}`)).json.status).toBe('importing');
    expect((await alice.req('DELETE', `/v2/images/${slow.id}`)).status).toBe(204);
    releaseSlow();
    const tasks = await admin.req('GET', '/v2/tasks?limit=1000');
    const mine = tasks.json.tasks.find((t: any) => t.status !== 'success' && t.status !== 'failure');
    for (let i = 0; mine !== undefined && i < 400; i++) {
      const t = await admin.req('GET', `/v2/tasks/${mine.id}`);
      if (t.json.status === 'failure') break;
      await new Promise((r) => setTimeout(r, 25));
    }
    expect((await admin.req('GET', `/v2/tasks/${mine.id}`)).json.status).toBe('failure');
    expect(await blobs()).toEqual(before);
  });
});

describe('the import lock', () => {
  it('a running task holds it (409); a finished task left in it is stale', async () => {
    served.set('/lock.img', Buffer.alloc(1 << 20, 5));
    const img = await alice.createImage({ name: 'locked', disk_format: 'raw', container_format: 'bare' });
    const db = ts.server.services.db;
    const { sql } = await import('kysely');
    const lockWith = async (id: string, status: string) => {
      const now = new Date();
      await db
        .insertInto('tasks')
        .values({
          id,
          type: 'api_image_import',
          status,
          owner: alice.projectId,
          image_id: img.id,
          input: JSON.stringify({}) as never,
          result: null,
          message: '',
          created_at: now,
          updated_at: now,
          expires_at: null,
          user_id: null,
          request_id: null,
        })
        .execute();
      await db
        .updateTable('images')
        .set({ properties: sql`properties || ${JSON.stringify({ os_glance_import_task: id })}::jsonb` })
        .where('id', '=', img.id)
        .execute();
    };
    const imp = () =>
      alice.req('POST', `/v2/images/${img.id}/import`, {
        method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/lock.img` },
      });
    await lockWith('aaaaaaaa-0000-0000-0000-000000000001', 'processing');
    const busy = await imp();
    expect(busy.status).toBe(409);
    expect(busy.text).toContain('Image has active task');
    await db.deleteFrom('tasks').where('id', '=', 'aaaaaaaa-0000-0000-0000-000000000001').execute();
    await lockWith('aaaaaaaa-0000-0000-0000-000000000002', 'failure');
    expect((await imp()).status).toBe(202);
    const done = await waitFor(alice, img.id, settled);
    expect(done.status).toBe('active');
  });
});

describe('size cap and restarts', () => {
  it('web-download over image_size_cap fails the task and keeps nothing', async () => {
    served.set('/big.img', Buffer.alloc(3 << 20, 1));
    const s = ts.server.services.settings;
    const cap = s.imageSizeCap;
    s.imageSizeCap = 1 << 20;
    try {
      const before = await blobs();
      const img = await alice.createImage({ name: 'big', disk_format: 'raw', container_format: 'bare' });
      await alice.req('POST', `/v2/images/${img.id}/import`, {
        method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/big.img` },
      });
      expect((await waitFor(alice, img.id, settled)).status).toBe('queued');
      expect((await imageTasks(alice, img.id))[0].message).toContain('Image exceeds the storage quota');
      expect(await blobs()).toEqual(before);
      // Staging over the cap: 413 and back to queued.
      const st = await alice.req('PUT', `/v2/images/${img.id}/stage`, Buffer.alloc(2 << 20));
      expect(st.status).toBe(413);
      expect((await alice.req('GET', `/v2/images/${img.id}`)).json.status).toBe('queued');
      expect(await blobs()).toEqual(before);
    } finally {
      s.imageSizeCap = cap;
    }
  });

  it('staged data survives a restart; an import cut off by a stop fails cleanly on the next start', async () => {
    const { startServer } = await import('./server.js');
    const dataDir = join(work, 'restart-data');
    const start = () => startServer({ port: 0, dataDir, adminPassword: ADMIN_PASSWORD });
    let srv = await start();
    let a = await Api.login(srv.url, 'admin', ADMIN_PASSWORD, 'admin');
    const data = await qcow2('restart.qcow2', '4M', 0x77);
    const kept = await a.createImage({ name: 'kept', disk_format: 'qcow2', container_format: 'bare' });
    expect((await a.req('PUT', `/v2/images/${kept.id}/stage`, data)).status).toBe(204);
    const cut = await a.createImage({ name: 'cut', disk_format: 'qcow2', container_format: 'bare' });
    expect((await a.req('PUT', `/v2/images/${cut.id}/stage`, data)).status).toBe(204);
    // What a server killed in the middle of an import leaves: the image importing, locked by
    // a processing task, written by another server instance.
    const taskId = '11111111-2222-3333-4444-555555555555';
    const db = srv.services.db;
    const now = new Date();
    await db
      .insertInto('tasks')
      .values({
        id: taskId,
        type: 'api_image_import',
        status: 'processing',
        owner: a.projectId,
        image_id: cut.id,
        input: JSON.stringify({ image_id: cut.id }) as never,
        result: null,
        message: '',
        created_at: now,
        updated_at: now,
        expires_at: null,
        user_id: null,
        request_id: null,
      })
      .execute();
    const props = JSON.stringify({
      os_glance_import_task: taskId,
      os_glance_importing_to_stores: '',
      os_glance_failed_import: '',
    });
    const { sql } = await import('kysely');
    await db
      .updateTable('images')
      .set({ status: 'importing', writer: 'gone', properties: sql`properties || ${props}::jsonb` })
      .where('id', '=', cut.id)
      .execute();
    await srv.close(5000);

    srv = await start();
    try {
      a = await Api.login(srv.url, 'admin', ADMIN_PASSWORD, 'admin');
      const k = (await a.req('GET', `/v2/images/${kept.id}`)).json;
      expect(k.status).toBe('uploading');
      expect(k.size).toBe(data.length);
      const c = (await a.req('GET', `/v2/images/${cut.id}`)).json;
      expect(c.status).toBe('queued');
      expect(c).not.toHaveProperty('os_glance_import_task');
      const t = (await a.req('GET', `/v2/tasks/${taskId}`)).json;
      expect(t.status).toBe('failure');
      expect(t.message).toBe('The server stopped during the import.');
      const files = await readdir(join(dataDir, 'images'));
      expect(files).toContain(`staging-${kept.id}`);
      expect(files).not.toContain(`staging-${cut.id}`);
      // The staged image imports after the restart.
      expect(
        (await a.req('POST', `/v2/images/${kept.id}/import`, { method: { name: 'glance-direct' } })).status,
      ).toBe(202);
      expect((await waitFor(a, kept.id, settled)).status).toBe('active');
      expect((await download(a, kept.id)).equals(data)).toBe(true);
    } finally {
      await srv.close(5000);
    }
  });
});
