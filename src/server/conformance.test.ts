/* biome-ignore-all lint/suspicious/noExplicitAny: API answers are parsed JSON of many shapes. */
/**
 * The registry on real engines: the SAME cases over every metadata database (PGlite,
 * PostgreSQL 15) × blob store (files, S3 on Ceph RGW), the BlobStore contract over both
 * stores, and the unmodified `openstack` client against `vdisk serve --database-url
 * postgres://… --store s3://…`. The servers are real and started here (src/server/test/
 * servers.ts); if they cannot start, these tests fail with the reason.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo } from '../test/oracle.js';
import { type RunningServer, startServer } from './server.js';
import { FsStore } from './store/fs.js';
import { S3Store } from './store/s3.js';
import type { BlobStore } from './store/store.js';
import { Api, addProjectUser, putChunked, runClient } from './test/harness.js';
import { type PgServer, type S3Server, startCeph, startPostgres } from './test/servers.js';

const MIB = 1 << 20;
/** Glance's definition files, which every server here loads on its first start (the default). */
const METADEFS = '/etc/glance/metadefs';
let pg: PgServer;
let ceph: S3Server;
const scratch: string[] = [];

beforeAll(async () => {
  const [p, c] = await Promise.allSettled([startPostgres(), startCeph()]);
  if (p.status === 'fulfilled') pg = p.value;
  if (c.status === 'fulfilled') ceph = c.value;
  const errors = [p, c].filter((r) => r.status === 'rejected').map((r) => String(r.reason));
  if (errors.length > 0) throw new Error(errors.join('\n'));
}, 180_000);

afterAll(async () => {
  await Promise.allSettled([pg?.stop(), ceph?.stop()]);
  for (const d of scratch) await rm(d, { recursive: true, force: true });
});

async function tempDir(name: string): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), `vdisk-conf-${name}-`));
  scratch.push(d);
  return d;
}

const hex = (algo: string, b: Uint8Array) => createHash(algo).update(b).digest('hex');

/** Random bytes that upload safety accepts as raw (no MBR signature at 510). */
function rawData(n: number): Buffer {
  const b = randomBytes(n);
  if (n >= 512) b.fill(0, 510, 512);
  return b;
}

async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/**
 * An independent view of a store: its committed blobs and whatever temporaries exist
 * (files in DIR/.tmp; multipart uploads in the bucket, listed by a store instance that is
 * writing nothing, so it hides none).
 */
interface Probe {
  blobs(): Promise<string[]>;
  temps(): Promise<string[]>;
  close(): Promise<void>;
}

async function probeFs(dir: string): Promise<Probe> {
  const s = await FsStore.open(dir);
  return {
    async blobs() {
      const out: string[] = [];
      for await (const k of s.list()) out.push(k.key);
      return out.sort();
    },
    async temps() {
      return readdir(join(dir, '.tmp'));
    },
    close: () => s.close(),
  };
}

async function probeS3(url: string): Promise<Probe> {
  const s = await S3Store.open(url);
  return {
    async blobs() {
      const out: string[] = [];
      for await (const k of s.list()) out.push(k.key);
      return out.sort();
    },
    async temps() {
      const out: string[] = [];
      for await (const u of s.pendingUploads()) out.push(u.key);
      return out;
    },
    close: () => s.close(),
  };
}

// ---------------------------------------------------------------------------------------------
// The registry over every database × store

interface Config {
  db: 'pglite' | 'postgres';
  store: 'fs' | 's3';
}
const configs: Config[] = [
  { db: 'pglite', store: 'fs' },
  { db: 'pglite', store: 's3' },
  { db: 'postgres', store: 'fs' },
  { db: 'postgres', store: 's3' },
];
const CAP = 24 * MIB;
const big = rawData(20 * MIB + 12345); // three 8 MiB S3 parts, the last one partial
const small = rawData(70_000);

describe.each(configs.map((c, i) => ({ ...c, i, name: `${c.db} + ${c.store}` })))('$name', (cfg) => {
  let dataDir: string;
  let databaseUrl: string | undefined;
  let storeSpec: string | undefined;
  let server: RunningServer;
  let probe: Probe;
  let admin: Api;
  let alice: Api;
  let bob: Api;
  const ids: Record<string, string> = {};

  const start = () =>
    startServer({
      port: 0,
      dataDir,
      adminPassword: 'pw-admin',
      settings: { imageSizeCap: CAP },
      ...(databaseUrl !== undefined ? { databaseUrl } : {}),
      ...(storeSpec !== undefined ? { store: storeSpec } : {}),
    });
  const login = async () => {
    admin = await Api.login(server.url, 'admin', 'pw-admin', 'admin');
    alice = await Api.login(server.url, 'alice', 'pw-a', 'pa');
    bob = await Api.login(server.url, 'bob', 'pw-b', 'pb');
  };

  beforeAll(async () => {
    dataDir = await tempDir(`${cfg.db}-${cfg.store}`);
    if (cfg.db === 'postgres') databaseUrl = await pg.createDatabase(`conformance_${cfg.i}`);
    // One S3 config keeps its blobs under a prefix, the other at the bucket's root.
    if (cfg.store === 's3')
      storeSpec = ceph.storeUrl(`vdisk-conf-${cfg.i}`, cfg.db === 'pglite' ? 'images/v1' : undefined);
    server = await start();
    expect(server.services.store.kind).toBe(cfg.store === 's3' ? 's3' : 'file');
    probe = storeSpec !== undefined ? await probeS3(storeSpec) : await probeFs(join(dataDir, 'images'));
    admin = await Api.login(server.url, 'admin', 'pw-admin', 'admin');
    await addProjectUser(admin, 'pa', 'alice', 'pw-a');
    await addProjectUser(admin, 'pb', 'bob', 'pw-b');
    await login();
  });
  afterAll(async () => {
    await server?.close(5000);
    await probe?.close();
  });

  it('upload and download: bytes, checksums, sizes; the store holds exactly the blob', async () => {
    const a = await alice.createImage({ name: 'big', disk_format: 'raw', container_format: 'bare' });
    const b = await alice.createImage({ name: 'small', disk_format: 'raw', container_format: 'bare' });
    ids['big'] = a.id;
    ids['small'] = b.id;
    // sized (Content-Length) and chunked bodies
    expect(await alice.upload(a.id, big)).toBe(204);
    const chunks = [small.subarray(0, 1000), small.subarray(1000, 50_000), small.subarray(50_000)];
    expect(await putChunked(`${server.url}/v2/images/${b.id}/file`, alice.token, chunks)).toBe(204);
    for (const [id, data] of [
      [a.id, big],
      [b.id, small],
    ] as const) {
      const img = (await alice.req('GET', `/v2/images/${id}`)).json;
      expect(img.status).toBe('active');
      expect(img.size).toBe(data.length);
      expect(img.virtual_size).toBe(data.length);
      expect(img.checksum).toBe(hex('md5', data));
      expect(img.os_hash_algo).toBe('sha512');
      expect(img.os_hash_value).toBe(hex('sha512', data));
      const r = await fetch(`${server.url}/v2/images/${id}/file`, {
        headers: { 'X-Auth-Token': alice.token },
      });
      expect(r.status).toBe(200);
      expect(r.headers.get('content-md5')).toBe(hex('md5', data));
      const got = Buffer.from(await r.arrayBuffer());
      expect(got.length).toBe(data.length);
      expect(hex('sha512', got)).toBe(hex('sha512', data));
      expect(await server.services.store.size(id)).toBe(data.length);
    }
    expect(await probe.blobs()).toEqual([a.id, b.id].sort());
    expect(await probe.temps()).toEqual([]);
    // a second upload to an active image is a conflict and changes nothing
    expect(await alice.upload(b.id, big)).toBe(409);
    expect(await server.services.store.size(b.id)).toBe(small.length);
  });

  it('Range reads, within and across S3 part boundaries', async () => {
    const id = ids['big']!;
    const range = async (spec: string) =>
      fetch(`${server.url}/v2/images/${id}/file`, { headers: { 'X-Auth-Token': alice.token, Range: spec } });
    const cases: [string, number, number][] = [
      ['bytes=0-0', 0, 0],
      ['bytes=100-199', 100, 199],
      [`bytes=${8 * MIB - 5}-${8 * MIB + 4}`, 8 * MIB - 5, 8 * MIB + 4],
      [`bytes=${16 * MIB - 1}-${16 * MIB + 3 * 65536}`, 16 * MIB - 1, 16 * MIB + 3 * 65536],
      ['bytes=-10', big.length - 10, big.length - 1],
      [`bytes=${big.length - 3}-`, big.length - 3, big.length - 1],
      [`bytes=${big.length - 3}-${big.length + 100}`, big.length - 3, big.length - 1],
    ];
    for (const [spec, s, e] of cases) {
      const r = await range(spec);
      expect(r.status, spec).toBe(206);
      expect(r.headers.get('content-range'), spec).toBe(`bytes ${s}-${e}/${big.length}`);
      expect(Buffer.from(await r.arrayBuffer()).equals(big.subarray(s, e + 1)), spec).toBe(true);
    }
    expect((await range(`bytes=${big.length}-`)).status).toBe(416);
    // and directly on the store
    const s = await server.services.store.read(id, 8 * MIB - 1, 8 * MIB);
    expect((await readAll(s)).equals(big.subarray(8 * MIB - 1, 8 * MIB + 1))).toBe(true);
  });

  it('lists: filters, sorting, pagination', async () => {
    for (let i = 0; i < 6; i++) {
      const img = await alice.createImage({
        name: `list-${i}`,
        disk_format: i % 2 === 0 ? 'raw' : 'iso',
        container_format: 'bare',
        flavor: i < 2 ? 'small' : 'large',
        ...(i === 4 ? { tags: ['gold'] } : {}),
      });
      ids[`list-${i}`] = img.id;
      if (i < 3) expect(await alice.upload(img.id, new Uint8Array((i + 1) * 1000))).toBe(204);
    }
    const names = async (q: string) =>
      ((await alice.req('GET', `/v2/images?${q}`)).json.images as { name: string }[]).map((i) => i.name);
    expect(await names('name=in:list-1,list-4&sort=name:asc')).toEqual(['list-1', 'list-4']);
    expect(await names('sort=name:desc&limit=3')).toEqual(['small', 'list-5', 'list-4']);
    expect(await names('sort_key=disk_format&sort_key=name&sort_dir=asc&sort_dir=desc&limit=4')).toEqual([
      'list-5',
      'list-3',
      'list-1',
      'small',
    ]);
    expect(await names('disk_format=iso&sort=name:asc')).toEqual(['list-1', 'list-3', 'list-5']);
    expect(await names('tag=gold')).toEqual(['list-4']);
    expect(await names('flavor=small&sort=name:asc')).toEqual(['list-0', 'list-1']);
    expect(await names('size_min=2000&size_max=3000&sort=name:asc')).toEqual(['list-1', 'list-2']);
    expect(await names(`size_min=${CAP}`)).toEqual([]);
    expect(await names('status=queued&sort=name:asc')).toEqual(['list-3', 'list-4', 'list-5']);
    expect(await names('created_at=gt:2000-01-01T00:00:00Z&limit=1')).toHaveLength(1);
    expect(await names('created_at=lt:2000-01-01T00:00:00Z')).toEqual([]);
    // pages of 3 following `next`, newest first: every image of alice's exactly once
    const seen: string[] = [];
    let next: string | undefined = '/v2/images?limit=3';
    while (next !== undefined) {
      const r = await alice.req('GET', next);
      expect(r.status).toBe(200);
      seen.push(...r.json.images.map((i: { name: string }) => i.name));
      next = r.json.next;
    }
    expect(seen).toHaveLength(8);
    expect([...seen].sort()).toEqual([
      'big',
      'list-0',
      'list-1',
      'list-2',
      'list-3',
      'list-4',
      'list-5',
      'small',
    ]);
    expect(seen.slice(0, 3)).toEqual(['list-5', 'list-4', 'list-3']); // newest first
    // bob sees none of them
    expect(await bob.req('GET', '/v2/images').then((r) => r.json.images)).toEqual([]);
  });

  it('members: pending, accepted, rejected; what each side lists', async () => {
    const id = ids['small']!;
    let r = await alice.req('POST', `/v2/images/${id}/members`, { member: bob.projectId });
    expect(r.status).toBe(200);
    expect(r.json.status).toBe('pending');
    const bobList = async (q = '') =>
      ((await bob.req('GET', `/v2/images${q}`)).json.images as { id: string }[]).map((i) => i.id);
    expect(await bobList()).toEqual([]);
    expect(await bobList('?member_status=pending')).toEqual([id]);
    expect((await bob.req('GET', `/v2/images/${id}`)).status).toBe(200);
    // only the member changes its status; only the owner adds members
    expect(
      (await alice.req('PUT', `/v2/images/${id}/members/${bob.projectId}`, { status: 'accepted' })).status,
    ).toBe(403);
    expect((await bob.req('POST', `/v2/images/${id}/members`, { member: admin.projectId })).status).toBe(403);
    r = await bob.req('PUT', `/v2/images/${id}/members/${bob.projectId}`, { status: 'accepted' });
    expect(r.status).toBe(200);
    expect(await bobList()).toEqual([id]);
    const members = async (api: Api) =>
      ((await api.req('GET', `/v2/images/${id}/members`)).json.members as any[]).map(
        (m) => `${m.member_id}:${m.status}`,
      );
    expect(await members(alice)).toEqual([`${bob.projectId}:accepted`]);
    expect(await members(bob)).toEqual([`${bob.projectId}:accepted`]);
    // the member downloads the data
    const d = await fetch(`${server.url}/v2/images/${id}/file`, { headers: { 'X-Auth-Token': bob.token } });
    expect(hex('md5', Buffer.from(await d.arrayBuffer()))).toBe(hex('md5', small));
    // a second image shared then rejected
    const rej = ids['list-0']!;
    expect((await alice.req('POST', `/v2/images/${rej}/members`, { member: bob.projectId })).status).toBe(
      200,
    );
    expect(
      (await bob.req('PUT', `/v2/images/${rej}/members/${bob.projectId}`, { status: 'rejected' })).status,
    ).toBe(200);
    expect(await bobList()).toEqual([id]);
    expect(await bobList('?member_status=rejected')).toEqual([rej]);
    expect(await bobList('?member_status=all&sort=name:asc')).toEqual([rej, id]);
  });

  it('tags and PATCH', async () => {
    const id = ids['list-1']!;
    expect((await alice.req('PUT', `/v2/images/${id}/tags/blue`)).status).toBe(204);
    expect((await alice.req('PUT', `/v2/images/${id}/tags/green`)).status).toBe(204);
    expect((await alice.req('DELETE', `/v2/images/${id}/tags/blue`)).status).toBe(204);
    expect((await alice.req('DELETE', `/v2/images/${id}/tags/blue`)).status).toBe(404);
    let r = await alice.patch(id, [
      { op: 'replace', path: '/name', value: 'renamed' },
      { op: 'add', path: '/os_distro', value: 'debian' },
      { op: 'remove', path: '/flavor' },
      { op: 'replace', path: '/min_ram', value: 512 },
      { op: 'replace', path: '/tags', value: ['green', 'red'] },
    ]);
    expect(r.status).toBe(200);
    expect(r.json.name).toBe('renamed');
    expect(r.json.os_distro).toBe('debian');
    expect(r.json.flavor).toBeUndefined();
    expect(r.json.min_ram).toBe(512);
    expect([...r.json.tags].sort()).toEqual(['green', 'red']);
    expect((await alice.patch(id, [{ op: 'remove', path: '/nothing' }])).status).toBe(409);
    expect((await alice.patch(id, [{ op: 'replace', path: '/size', value: 1 }])).status).toBe(403);
    expect((await bob.patch(id, [{ op: 'replace', path: '/name', value: 'x' }])).status).toBe(404);
    r = await alice.patch(id, [{ add: '/build', value: 'k1' }], 4);
    expect(r.status).toBe(200);
    const got = (await alice.req('GET', `/v2/images/${id}`)).json;
    expect(got.build).toBe('k1');
    expect(got.os_distro).toBe('debian');
    const tagged = (await alice.req('GET', '/v2/images?tag=green&tag=red')).json.images as any[];
    expect(tagged.map((i) => i.id)).toEqual([id]);
  });

  it('delete removes the row and the blob', async () => {
    const id = ids['list-2']!;
    expect(await server.services.store.size(id)).toBe(3000);
    expect((await bob.req('DELETE', `/v2/images/${id}`)).status).toBe(404);
    expect((await alice.req('DELETE', `/v2/images/${id}`)).status).toBe(204);
    expect((await alice.req('GET', `/v2/images/${id}`)).status).toBe(404);
    expect(await server.services.store.size(id)).toBe(null);
    expect(await probe.blobs()).not.toContain(id);
    delete ids['list-2'];
  });

  it('import: stage + glance-direct, web-download, hostile staged data; staging leaves nothing', async () => {
    const settled = async (id: string) => {
      for (let i = 0; i < 600; i++) {
        const img = (await alice.req('GET', `/v2/images/${id}`)).json;
        if (img.status !== 'importing' && !('os_glance_import_task' in img)) return img;
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`import of ${id} never settled`);
    };
    const direct = await alice.createImage({
      name: 'imp-direct',
      disk_format: 'raw',
      container_format: 'bare',
    });
    expect((await alice.req('PUT', `/v2/images/${direct.id}/stage`, big)).status).toBe(204);
    expect(await probe.blobs()).toContain(`staging-${direct.id}`);
    expect(
      (await alice.req('POST', `/v2/images/${direct.id}/import`, { method: { name: 'glance-direct' } }))
        .status,
    ).toBe(202);
    const d = await settled(direct.id);
    expect(d.status).toBe('active');
    expect(d.os_hash_value).toBe(hex('sha512', big));
    // web-download from a server in the test, allowed explicitly (loopback is refused otherwise)
    const web = createServer((_req, res) => {
      res.writeHead(200, { 'Content-Length': big.length });
      res.end(big);
    });
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    const port = (web.address() as AddressInfo).port;
    Object.assign(server.services.settings, {
      importAllowedHosts: ['127.0.0.1'],
      importAllowedPorts: [port],
    });
    const wd = await alice.createImage({ name: 'imp-web', disk_format: 'raw', container_format: 'bare' });
    try {
      expect(
        (
          await alice.req('POST', `/v2/images/${wd.id}/import`, {
            method: { name: 'web-download', uri: `http://127.0.0.1:${port}/big` },
          })
        ).status,
      ).toBe(202);
      expect((await settled(wd.id)).checksum).toBe(hex('md5', big));
    } finally {
      web.close();
    }
    for (const id of [direct.id, wd.id]) {
      const r = await fetch(`${server.url}/v2/images/${id}/file`, {
        headers: { 'X-Auth-Token': alice.token },
      });
      expect(hex('sha512', Buffer.from(await r.arrayBuffer()))).toBe(hex('sha512', big));
    }
    // hostile staged data: 415, back to queued, nothing staged
    const qed = await alice.createImage({ name: 'imp-qed', disk_format: 'raw', container_format: 'bare' });
    const qedHead = Buffer.alloc(3 * MIB);
    qedHead.write('QED\0', 0, 'latin1');
    expect((await alice.req('PUT', `/v2/images/${qed.id}/stage`, qedHead)).status).toBe(415);
    expect((await alice.req('GET', `/v2/images/${qed.id}`)).json.status).toBe('queued');
    const blobs = await probe.blobs();
    expect(blobs.filter((k) => k.startsWith('staging-'))).toEqual([]);
    expect(blobs).toContain(direct.id);
    expect(blobs).toContain(wd.id);
    expect(await probe.temps()).toEqual([]);
    const tasks = (await alice.req('GET', `/v2/images/${direct.id}/tasks`)).json.tasks;
    expect(tasks.map((t: any) => t.status)).toEqual(['success']);
    for (const id of [direct.id, wd.id, qed.id])
      expect((await alice.req('DELETE', `/v2/images/${id}`)).status).toBe(204);
    const left = await probe.blobs();
    for (const id of [direct.id, wd.id]) expect(left).not.toContain(id);
  });

  it('aborted uploads leave nothing: no blob, no temporary, no multipart upload', async () => {
    // the client goes away after 12 MiB (past the first S3 part)
    const gone = await alice.createImage({ name: 'gone', disk_format: 'raw', container_format: 'bare' });
    const chunks = [rawData(6 * MIB), randomBytes(6 * MIB), randomBytes(6 * MIB)];
    await putChunked(`${server.url}/v2/images/${gone.id}/file`, alice.token, chunks, 2);
    let status = '';
    for (let i = 0; i < 100 && status !== 'queued'; i++) {
      status = (await alice.req('GET', `/v2/images/${gone.id}`)).json.status;
      if (status !== 'queued') await new Promise((r) => setTimeout(r, 100));
    }
    expect(status).toBe('queued');
    // over image_size_cap, chunked (no Content-Length): 413 mid-stream
    const over = await alice.createImage({ name: 'over', disk_format: 'raw', container_format: 'bare' });
    const parts = [rawData(8 * MIB), randomBytes(8 * MIB), randomBytes(8 * MIB), randomBytes(MIB)];
    expect(await putChunked(`${server.url}/v2/images/${over.id}/file`, alice.token, parts)).toBe(413);
    // refused content (a qcow2 header on a raw image is fine; a qed one never is): 415
    const qed = await alice.createImage({ name: 'qed', disk_format: 'raw', container_format: 'bare' });
    const qedHead = Buffer.alloc(9 * MIB);
    qedHead.write('QED\0', 0, 'latin1');
    expect(await alice.upload(qed.id, qedHead)).toBe(415);
    for (const id of [gone.id, over.id, qed.id]) {
      const img = (await alice.req('GET', `/v2/images/${id}`)).json;
      expect(img.status).toBe('queued');
      expect(img.size).toBe(null);
      expect(await server.services.store.size(id)).toBe(null);
    }
    expect(await probe.temps()).toEqual([]);
    const blobs = await probe.blobs();
    for (const id of [gone.id, over.id, qed.id]) expect(blobs).not.toContain(id);
    // and the image can still be uploaded
    expect(await alice.upload(gone.id, small)).toBe(204);
    ids['gone'] = gone.id;
  });

  it('import: glance-direct stages to the store, then imports (staging blob gone, bytes identical)', async () => {
    const data = rawData(9 * MIB + 3);
    const img = await alice.createImage({ name: 'imported', disk_format: 'raw', container_format: 'bare' });
    expect((await alice.req('PUT', `/v2/images/${img.id}/stage`, data)).status).toBe(204);
    expect((await alice.req('GET', `/v2/images/${img.id}`)).json.status).toBe('uploading');
    expect(await probe.blobs()).toContain(`staging-${img.id}`);
    const imp = await alice.req('POST', `/v2/images/${img.id}/import`, { method: { name: 'glance-direct' } });
    expect(imp.status).toBe(202);
    let got: any;
    for (let i = 0; i < 400; i++) {
      got = (await alice.req('GET', `/v2/images/${img.id}`)).json;
      if (got.status !== 'importing' && got.status !== 'uploading' && !('os_glance_import_task' in got))
        break;
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(got.status).toBe('active');
    expect(got.checksum).toBe(hex('md5', data));
    expect(got.os_hash_value).toBe(hex('sha512', data));
    const r = await fetch(`${server.url}/v2/images/${img.id}/file`, {
      headers: { 'X-Auth-Token': alice.token },
    });
    expect(Buffer.from(await r.arrayBuffer()).equals(data)).toBe(true);
    const blobs = await probe.blobs();
    expect(blobs).toContain(img.id);
    expect(blobs).not.toContain(`staging-${img.id}`);
    expect(await probe.temps()).toEqual([]);
  });

  it('layered images: an overlay two levels deep on its masters, exported in every sequential format and flattened, read from the store', async () => {
    const work = await tempDir(`layers-${cfg.i}`);
    const q = (n: string) => join(work, n);
    qemuImgOk(['create', '-f', 'qcow2', q('m.qcow2'), `${12 * MIB}`]);
    qemuIo(q('m.qcow2'), ['write -P 0x61 0 3m', 'write -P 0x62 9m 2m'], 'qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-b', 'm.qcow2', '-F', 'qcow2', q('o1.qcow2')]);
    qemuIo(q('o1.qcow2'), ['write -P 0x71 1m 1m', 'write -z 9m 512k'], 'qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-b', 'o1.qcow2', '-F', 'qcow2', q('o2.qcow2')]);
    qemuIo(q('o2.qcow2'), ['write -P 0x81 2m 2m'], 'qcow2');
    const up = async (file: string, extra: Record<string, string>) => {
      const img = await alice.createImage({ disk_format: 'qcow2', container_format: 'bare', ...extra });
      expect(await alice.upload(img.id, await readFile(q(file)))).toBe(204);
      return img.id as string;
    };
    const m = await up('m.qcow2', { name: 'layer-m' });
    const o1 = await up('o1.qcow2', { name: 'layer-o1', backing_image_id: m });
    const o2 = await up('o2.qcow2', { name: 'layer-o2', backing_image_id: o1 });
    ids['layer-m'] = m;
    ids['layer-o1'] = o1;
    ids['layer-o2'] = o2;
    for (const [query, fmt] of [
      ['disk_format=raw', 'raw'],
      ['disk_format=qcow2', 'qcow2'],
      ['disk_format=qcow2&compress=true', 'qcow2'],
      ['disk_format=qed', 'qed'],
      ['disk_format=vmdk', 'vmdk'],
      ['disk_format=vmdk&subformat=streamOptimized', 'vmdk'],
      ['disk_format=vhd', 'vpc'],
      ['disk_format=vhd&subformat=fixed', 'vpc'],
      ['disk_format=vdi', 'vdi'],
      ['disk_format=vhdx', 'vhdx'],
      ['disk_format=qcow', 'qcow'],
    ] as const) {
      const r = await fetch(`${server.url}/v2/images/${o2}/export?${query}`, {
        headers: { 'X-Auth-Token': alice.token },
      });
      expect(r.status, query).toBe(200);
      const out = q(`out-${fmt}`);
      await writeFile(out, Buffer.from(await r.arrayBuffer()));
      const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', fmt, q('o2.qcow2'), out]);
      expect(cmp.stdout + cmp.stderr, query).toContain('Images are identical');
    }
    // flatten: a new master, stored like any upload
    const f = await alice.req('POST', `/v2/images/${o2}/actions/flatten`, { name: 'layer-flat' });
    expect(f.status).toBe(202);
    let flat: any;
    for (let i = 0; i < 600; i++) {
      flat = (await alice.req('GET', `/v2/images/${f.json.id}`)).json;
      if (flat.status !== 'importing') break;
      await new Promise((res) => setTimeout(res, 50));
    }
    expect(flat.status).toBe('active');
    ids['layer-flat'] = f.json.id;
    const r = await fetch(`${server.url}/v2/images/${f.json.id}/file`, {
      headers: { 'X-Auth-Token': alice.token },
    });
    const body = Buffer.from(await r.arrayBuffer());
    expect(hex('md5', body)).toBe(flat.checksum);
    await writeFile(q('flat.qcow2'), body);
    expect(qemuImg(['compare', q('o2.qcow2'), q('flat.qcow2')]).stdout).toContain('Images are identical');
    expect(await probe.temps()).toEqual([]);
    // a master with dependents stays
    expect((await alice.req('DELETE', `/v2/images/${o1}`)).status).toBe(409);
  });

  it('metadefs: the definition files loaded on first start; a CRUD round with every kind of content', async () => {
    const NS = '/v2/metadefs/namespaces';
    // Glance's definition files, loaded into the empty database.
    const files = readdirSync(METADEFS).filter((f) => f.endsWith('.json'));
    const docs = files.map((f) => JSON.parse(readFileSync(join(METADEFS, f), 'utf8')));
    const all = (await admin.req('GET', `${NS}?limit=1000`)).json.namespaces as any[];
    expect(all.map((n) => n.namespace).sort()).toEqual(docs.map((d) => d.namespace).sort());
    const types = (await alice.req('GET', '/v2/metadefs/resource_types')).json.resource_types as any[];
    expect(types.map((t) => t.name).sort()).toEqual(
      [...new Set(docs.flatMap((d) => (d.resource_type_associations ?? []).map((a: any) => a.name)))].sort(),
    );
    // A round: create with contents, read as a member, change each kind, delete.
    let r = await admin.req('POST', NS, {
      namespace: 'conf:md',
      visibility: 'public',
      resource_type_associations: [{ name: 'OS::Glance::Image', prefix: 'c_' }],
      properties: { p1: { type: 'string', title: 'P1', enum: ['a', 'b'], default: 'a' } },
      objects: [
        { name: 'o1', required: ['q'], properties: { q: { type: 'integer', title: 'Q', minimum: 0 } } },
      ],
      tags: [{ name: 't1' }],
    });
    expect(r.status).toBe(201);
    r = await alice.req('GET', `${NS}/conf:md?resource_type=OS::Glance::Image`);
    expect(r.status).toBe(200);
    expect(Object.keys(r.json.properties)).toEqual(['c_p1']);
    expect(r.json.objects[0]).toMatchObject({
      name: 'o1',
      required: ['c_q'],
      properties: { c_q: { minimum: 0 } },
    });
    expect((await alice.req('POST', `${NS}/conf:md/objects`, { name: 'o2' })).status).toBe(403);
    expect((await admin.req('POST', `${NS}/conf:md/objects`, { name: 'o2' })).status).toBe(201);
    expect((await admin.req('POST', `${NS}/conf:md/objects`, { name: 'o2' })).status).toBe(409);
    expect((await admin.req('PUT', `${NS}/conf:md/objects/o2`, { name: 'o1' })).status).toBe(409);
    expect(
      (await admin.req('PUT', `${NS}/conf:md/objects/o2`, { name: 'o3', description: 'd' })).status,
    ).toBe(200);
    expect(
      (await admin.req('POST', `${NS}/conf:md/properties`, { name: 'p2', type: 'boolean', title: 'P2' }))
        .status,
    ).toBe(201);
    expect(
      (await admin.req('PUT', `${NS}/conf:md/properties/p2`, { name: 'p1', type: 'boolean', title: 'x' }))
        .status,
    ).toBe(409);
    expect(
      (await alice.req('GET', `${NS}/conf:md/properties/c_p2?resource_type=OS::Glance::Image`)).json,
    ).toEqual({
      name: 'p2',
      type: 'boolean',
      title: 'P2',
    });
    expect(
      (await admin.req('POST', `${NS}/conf:md/tags`, { tags: [{ name: 't2' }, { name: 't3' }] })).status,
    ).toBe(201);
    expect(
      (
        await admin.req(
          'POST',
          `${NS}/conf:md/tags`,
          { tags: [{ name: 't4' }, { name: 't2' }] },
          { 'X-Openstack-Append': 'true' },
        )
      ).status,
    ).toBe(409);
    expect((await admin.req('PUT', `${NS}/conf:md/tags/t2`, { name: 't3' })).status).toBe(409);
    expect(((await alice.req('GET', `${NS}/conf:md/tags`)).json.tags as any[]).map((t) => t.name)).toEqual([
      't3',
      't2',
    ]);
    expect(
      (await admin.req('POST', `${NS}/conf:md/resource_types`, { name: 'OS::Nova::Flavor', prefix: 'f:' }))
        .status,
    ).toBe(201);
    expect(
      (await admin.req('POST', `${NS}/conf:md/resource_types`, { name: 'OS::Nova::Flavor' })).status,
    ).toBe(409);
    expect((await admin.req('DELETE', `${NS}/conf:md/resource_types/OS::Glance::Image`)).status).toBe(204);
    expect(
      (
        await admin.req('PUT', `${NS}/conf:md`, {
          namespace: 'conf:md',
          visibility: 'private',
          protected: true,
        })
      ).status,
    ).toBe(200);
    expect((await alice.req('GET', `${NS}/conf:md`)).status).toBe(404);
    expect((await admin.req('DELETE', `${NS}/conf:md`)).status).toBe(403);
    r = await admin.req('GET', `${NS}/conf:md`);
    expect([
      r.json.objects.map((o: any) => o.name),
      Object.keys(r.json.properties),
      r.json.tags.length,
    ]).toEqual([['o1', 'o3'], ['p1', 'p2'], 2]);
    expect(r.json.resource_type_associations.map((a: any) => a.name)).toEqual(['OS::Nova::Flavor']);
    expect((await admin.req('PUT', `${NS}/conf:md`, { namespace: 'conf:md2' })).status).toBe(200);
    expect((await admin.req('DELETE', `${NS}/conf:md2`)).status).toBe(204);
    expect((await admin.req('GET', `${NS}/conf:md2/objects`)).status).toBe(404);
    // One that stays for the restart below.
    expect((await admin.req('POST', NS, { namespace: 'conf:kept', tags: [{ name: 'k' }] })).status).toBe(201);
  });

  it('restart: stop the server, start it on the same database and store, everything is there', async () => {
    const before = (await admin.req('GET', '/v2/images?limit=100&member_status=all&sort=name:asc')).json
      .images as any[];
    await server.close(5000);
    server = await start();
    await login();
    const after = (await admin.req('GET', '/v2/images?limit=100&member_status=all&sort=name:asc')).json
      .images as any[];
    const strip = (l: any[]) => l.map(({ self, file, schema, ...rest }) => rest);
    expect(strip(after)).toEqual(strip(before));
    // data, members and tags survived
    const r = await fetch(`${server.url}/v2/images/${ids['big']}/file`, {
      headers: { 'X-Auth-Token': alice.token },
    });
    expect(hex('sha512', Buffer.from(await r.arrayBuffer()))).toBe(hex('sha512', big));
    const part = await fetch(`${server.url}/v2/images/${ids['big']}/file`, {
      headers: { 'X-Auth-Token': alice.token, Range: 'bytes=12345-12444' },
    });
    expect(Buffer.from(await part.arrayBuffer()).equals(big.subarray(12345, 12445))).toBe(true);
    const bobImages = (await bob.req('GET', '/v2/images')).json.images as any[];
    expect(bobImages.map((i) => i.id)).toEqual([ids['small']]);
    expect((await alice.req('GET', `/v2/images/${ids['list-1']}`)).json.tags.sort()).toEqual([
      'green',
      'red',
    ]);
    // recovery on start kept every live blob and nothing else
    const live = after.filter((i) => i.status === 'active').map((i) => i.id as string);
    expect(await probe.blobs()).toEqual(live.sort());
    expect(await probe.temps()).toEqual([]);
    const blobs = await probe.blobs();
    expect(blobs).toContain(ids['gone']);
    // metadefs survived, and the files were not loaded a second time
    const ns = (await admin.req('GET', '/v2/metadefs/namespaces?limit=1000')).json.namespaces as any[];
    expect(ns.filter((n) => n.namespace === 'conf:kept')).toHaveLength(1);
    expect(ns).toHaveLength(readdirSync(METADEFS).filter((f) => f.endsWith('.json')).length + 1);
    expect((await admin.req('GET', '/v2/metadefs/namespaces/conf:kept/tags')).json.tags).toEqual([
      { name: 'k' },
    ]);
  });
});

// ---------------------------------------------------------------------------------------------
// Multiple stores (Glance's enabled_backends) mixed: `fast` a directory (the default, and the
// staging store), `cold` S3 on Ceph, over both databases.

describe.each([
  { db: 'pglite' as const, i: 10 },
  { db: 'postgres' as const, i: 11 },
])('multiple stores on $db: fast = files, cold = S3', (cfg) => {
  let dataDir: string;
  let fastDir: string;
  let coldUrl: string;
  let databaseUrl: string | undefined;
  let server: RunningServer;
  let fast: Probe;
  let cold: Probe;
  let admin: Api;
  let alice: Api;
  const lines: string[] = [];

  const start = () =>
    startServer({
      port: 0,
      dataDir,
      adminPassword: 'pw-admin',
      log: (l) => lines.push(l),
      ...(databaseUrl !== undefined ? { databaseUrl } : {}),
      stores: {
        stores: [
          { id: 'fast', location: fastDir, description: 'local files' },
          { id: 'cold', location: coldUrl, description: 'Ceph RGW' },
        ],
        defaultId: 'fast',
      },
    });
  const settled = async (id: string) => {
    for (let i = 0; i < 600; i++) {
      const img = (await admin.req('GET', `/v2/images/${id}`)).json;
      if (!('os_glance_import_task' in img) && img.status !== 'importing') return img;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`import of ${id} never settled`);
  };
  const get = async (id: string, range?: string) => {
    const r = await fetch(`${server.url}/v2/images/${id}/file`, {
      headers: { 'X-Auth-Token': alice.token, ...(range !== undefined ? { Range: range } : {}) },
    });
    return { status: r.status, body: Buffer.from(await r.arrayBuffer()) };
  };

  beforeAll(async () => {
    const dir = await tempDir(`multi-${cfg.db}`);
    dataDir = join(dir, 'data');
    fastDir = join(dir, 'fast');
    coldUrl = ceph.storeUrl(`vdisk-multi-${cfg.i}`, 'cold');
    if (cfg.db === 'postgres') databaseUrl = await pg.createDatabase(`multistore_${cfg.i}`);
    server = await start();
    fast = await probeFs(fastDir);
    cold = await probeS3(coldUrl);
    admin = await Api.login(server.url, 'admin', 'pw-admin', 'admin');
    await addProjectUser(admin, 'pa', 'alice', 'pw-a');
    alice = await Api.login(server.url, 'alice', 'pw-a', 'pa');
  });
  afterAll(async () => {
    await server?.close(5000);
    await fast?.close();
    await cold?.close();
  });

  it('stores, their details (never a credential), uploads to S3 by X-Image-Meta-Store, Range across parts', async () => {
    const info = (await alice.req('GET', '/v2/info/stores')).json.stores;
    expect(info).toEqual([
      { id: 'fast', description: 'local files', default: 'true' },
      { id: 'cold', description: 'Ceph RGW' },
    ]);
    const detail = await admin.req('GET', '/v2/info/stores/detail');
    expect(detail.json.stores.map((s: any) => s.type)).toEqual(['file', 's3']);
    expect(detail.json.stores[1].properties).toEqual({
      s3_store_large_object_size: 8,
      s3_store_large_object_chunk_size: 8,
      s3_store_thread_pools: 3,
    });
    expect(detail.text).not.toContain(coldUrl.replace(/^s3:\/\/([^:]+):.*$/, '$1'));
    const img = await alice.createImage({ name: 'in-cold', disk_format: 'raw', container_format: 'bare' });
    const r = await alice.req('PUT', `/v2/images/${img.id}/file`, big, { 'X-Image-Meta-Store': 'cold' });
    expect(r.status).toBe(204);
    expect((await alice.req('GET', `/v2/images/${img.id}`)).json.stores).toBe('cold');
    expect(await cold.blobs()).toEqual([img.id]);
    expect(await fast.blobs()).toEqual([]);
    const all = await get(img.id);
    expect(hex('sha512', all.body)).toBe(hex('sha512', big));
    const part = await get(img.id, `bytes=${8 * MIB - 3}-${8 * MIB + 2}`);
    expect(part.status).toBe(206);
    expect(part.body.equals(big.subarray(8 * MIB - 3, 8 * MIB + 3))).toBe(true);
    // an upload cut short in S3 leaves no multipart upload
    const gone = await alice.createImage({ disk_format: 'raw', container_format: 'bare' });
    const chunks = [rawData(6 * MIB), randomBytes(6 * MIB), randomBytes(6 * MIB)];
    const ctrl = await new Promise<number>((resolve) => {
      const req = request(`${server.url}/v2/images/${gone.id}/file`, {
        method: 'PUT',
        headers: {
          'X-Auth-Token': alice.token,
          'Content-Type': 'application/octet-stream',
          'Transfer-Encoding': 'chunked',
          'X-Image-Meta-Store': 'cold',
        },
      });
      req.on('error', () => resolve(-1));
      req.write(chunks[0]);
      req.write(chunks[1]);
      setTimeout(() => {
        req.destroy();
        resolve(-1);
      }, 500);
    });
    expect(ctrl).toBe(-1);
    for (let i = 0; i < 100; i++) {
      if ((await alice.req('GET', `/v2/images/${gone.id}`)).json.status === 'queued') break;
      await new Promise((res) => setTimeout(res, 100));
    }
    expect(await cold.temps()).toEqual([]);
    expect(await cold.blobs()).toEqual([img.id]);
  });

  it('import to all stores, copy-image S3 → files, delete from one store, delete the image', async () => {
    const id = (await alice.createImage({ name: 'both', disk_format: 'raw', container_format: 'bare' })).id;
    expect((await alice.req('PUT', `/v2/images/${id}/stage`, big)).status).toBe(204);
    expect(await fast.blobs()).toEqual([`staging-${id}`]);
    const imp = await alice.req('POST', `/v2/images/${id}/import`, {
      method: { name: 'glance-direct' },
      all_stores: true,
    });
    expect(imp.status).toBe(202);
    const done = await settled(id);
    expect(done.status).toBe('active');
    expect(done.stores).toBe('cold,fast');
    expect(done.os_glance_importing_to_stores).toBe('');
    expect(done.os_glance_failed_import).toBe('');
    expect(await fast.blobs()).toEqual([id]);
    expect(await cold.blobs()).toContain(id);
    // copy-image of the S3-only image into the files
    const inCold = (await alice.req('GET', '/v2/images?name=in-cold')).json.images[0].id;
    const cp = await admin.req('POST', `/v2/images/${inCold}/import`, {
      method: { name: 'copy-image' },
      stores: ['fast'],
    });
    expect(cp.status).toBe(202);
    expect((await settled(inCold)).stores).toBe('cold,fast');
    expect(await fast.blobs()).toContain(inCold);
    // out of S3: the object goes, reads come from the files
    expect((await admin.req('DELETE', `/v2/stores/cold/${inCold}`)).status).toBe(204);
    expect(await cold.blobs()).not.toContain(inCold);
    expect(hex('sha512', (await get(inCold)).body)).toBe(hex('sha512', big));
    // the image deleted: gone from both
    expect((await alice.req('DELETE', `/v2/images/${id}`)).status).toBe(204);
    expect(await fast.blobs()).not.toContain(id);
    expect(await cold.blobs()).not.toContain(id);
    expect(await fast.temps()).toEqual([]);
    expect(await cold.temps()).toEqual([]);
  });

  it('a chain across stores (master in S3, overlay in files): exports read each layer where it is', async () => {
    const work = await tempDir(`multi-layers-${cfg.i}`);
    const q = (n: string) => join(work, n);
    qemuImgOk(['create', '-f', 'qcow2', q('m.qcow2'), `${10 * MIB}`]);
    qemuIo(q('m.qcow2'), ['write -P 0x61 0 3m', 'write -P 0x62 8m 1m'], 'qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-b', 'm.qcow2', '-F', 'qcow2', q('o.qcow2')]);
    qemuIo(q('o.qcow2'), ['write -P 0x71 1m 1m'], 'qcow2');
    const m = await alice.createImage({ disk_format: 'qcow2', container_format: 'bare' });
    const r = await alice.req('PUT', `/v2/images/${m.id}/file`, await readFile(q('m.qcow2')), {
      'X-Image-Meta-Store': 'cold',
    });
    expect(r.status).toBe(204);
    const o = await alice.createImage({
      disk_format: 'qcow2',
      container_format: 'bare',
      backing_image_id: m.id,
    });
    expect(await alice.upload(o.id, await readFile(q('o.qcow2')))).toBe(204);
    for (const [query, fmt] of [
      ['disk_format=raw', 'raw'],
      ['disk_format=vmdk&subformat=streamOptimized', 'vmdk'],
    ] as const) {
      const res = await fetch(`${server.url}/v2/images/${o.id}/export?${query}`, {
        headers: { 'X-Auth-Token': alice.token },
      });
      expect(res.status, query).toBe(200);
      await writeFile(q(`out-${fmt}`), Buffer.from(await res.arrayBuffer()));
      const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', fmt, q('o.qcow2'), q(`out-${fmt}`)]);
      expect(cmp.stdout + cmp.stderr, query).toContain('Images are identical');
    }
  });

  it('restart: orphans and a stale multipart upload go from each store; claimed data stays', async () => {
    await server.close(5000);
    const orphan = '22222222-3333-4444-8555-666666666666';
    await writeFile(join(fastDir, orphan), 'x');
    const s3 = await S3Store.open(coldUrl);
    const w = await s3.create(orphan);
    await w.write(Buffer.from('orphan'));
    await w.commit();
    const stale = await s3.create('33333333-3333-4444-8555-666666666666');
    await stale.write(randomBytes(9 * MIB)); // a multipart upload a crash left
    await s3.close();
    expect(await cold.temps()).toHaveLength(1);
    const claimedFast = await fast.blobs();
    const claimedCold = (await cold.blobs()).filter((k) => k !== orphan);
    lines.length = 0;
    server = await start();
    admin = await Api.login(server.url, 'admin', 'pw-admin', 'admin');
    alice = await Api.login(server.url, 'alice', 'pw-a', 'pa');
    expect(lines.join('\n')).toMatch(/removed 2 orphaned blob/);
    expect(await fast.blobs()).toEqual(claimedFast.filter((k) => k !== orphan));
    expect(await cold.blobs()).toEqual(claimedCold);
    expect(await cold.temps()).toEqual([]);
    const inCold = (await alice.req('GET', '/v2/images?name=in-cold')).json.images[0];
    expect(inCold.stores).toBe('fast');
    expect(hex('sha512', (await get(inCold.id)).body)).toBe(hex('sha512', big));
  });
});

// ---------------------------------------------------------------------------------------------
// The BlobStore contract

describe.each(['fs', 's3'] as const)('BlobStore contract: %s', (kind) => {
  let store: BlobStore;
  let probe: Probe;
  let reopen: () => Promise<BlobStore>;

  beforeAll(async () => {
    if (kind === 'fs') {
      const dir = join(await tempDir('store'), 'blobs');
      reopen = () => FsStore.open(dir);
      store = await reopen();
      probe = await probeFs(dir);
    } else {
      const url = ceph.storeUrl('vdisk-contract', 'p');
      reopen = () => S3Store.open(url);
      store = await reopen();
      probe = await probeS3(url);
    }
  });
  afterAll(async () => {
    await store?.close();
    await probe?.close();
  });

  it('a blob is invisible until commit, then whole; ranges; size; list; delete', async () => {
    const data = randomBytes(19 * MIB + 7);
    const w = await store.create('blob-1');
    // odd chunk sizes, crossing every buffer and part boundary
    let off = 0;
    let step = 1;
    while (off < data.length) {
      const n = Math.min(data.length - off, step);
      await w.write(data.subarray(off, off + n));
      off += n;
      step = step * 3 + 1;
      if (step > 5 * MIB) step = 12345;
    }
    expect(await store.size('blob-1')).toBe(null);
    expect(await probe.blobs()).not.toContain('blob-1');
    expect((await probe.temps()).length).toBe(1); // the temporary file, or the multipart upload
    await w.commit();
    expect(await probe.temps()).toEqual([]);
    expect(await store.size('blob-1')).toBe(data.length);
    expect(await probe.blobs()).toContain('blob-1');
    expect(hex('sha256', await readAll(await store.read('blob-1')))).toBe(hex('sha256', data));
    for (const [s, e] of [
      [0, 0],
      [8 * MIB - 1, 8 * MIB],
      [MIB, 17 * MIB],
      [data.length - 1, data.length - 1],
    ] as const) {
      expect((await readAll(await store.read('blob-1', s, e))).equals(data.subarray(s, e + 1))).toBe(true);
    }
    expect((await readAll(await store.read('blob-1', data.length - 5))).equals(data.subarray(-5))).toBe(true);
    await store.delete('blob-1');
    expect(await store.size('blob-1')).toBe(null);
    await store.delete('blob-1'); // idempotent
    await expect(store.read('blob-1')).rejects.toThrow();
  });

  it('random reads (openRandom): any range, forward walks, the end; reads from a closed blob fail', async () => {
    const data = randomBytes(11 * MIB + 333);
    const w = await store.create('random-1');
    await w.write(data);
    await w.commit();
    const src = await store.openRandom('random-1');
    expect(src.size).toBe(data.length);
    const at = async (offset: number, length: number) => {
      const b = Buffer.alloc(length);
      const n = await src.read(b, offset);
      return b.subarray(0, n);
    };
    for (const [o, n] of [
      [0, 1],
      [MIB - 3, 10],
      [5 * MIB + 17, 3 * MIB],
      [data.length - 100, 100],
      [data.length - 10, 100],
      [123, 64 * 1024],
    ] as const) {
      expect((await at(o, n)).equals(data.subarray(o, Math.min(o + n, data.length))), `${o}+${n}`).toBe(true);
    }
    expect((await at(data.length, 10)).length).toBe(0);
    // a forward walk in 64 KiB reads, as a driver reads its data
    const walked: Buffer[] = [];
    for (let o = 0; o < data.length; o += 65536) walked.push(await at(o, 65536));
    expect(hex('sha256', Buffer.concat(walked))).toBe(hex('sha256', data));
    await src.close();
    await expect(src.read(Buffer.alloc(1), 0)).rejects.toThrow();
    await expect(store.openRandom('no-such-blob')).rejects.toThrow();
    await store.delete('random-1');
  });

  it('small and empty blobs; commit over an existing key replaces it', async () => {
    for (const [key, data] of [
      ['empty', Buffer.alloc(0)],
      ['tiny', randomBytes(10)],
    ] as const) {
      const w = await store.create(key);
      if (data.length > 0) await w.write(data);
      expect(await store.size(key)).toBe(null);
      await w.commit();
      expect(await store.size(key)).toBe(data.length);
      expect((await readAll(await store.read(key))).equals(data)).toBe(true);
    }
    const w = await store.create('tiny');
    await w.write(Buffer.from('replaced'));
    await w.commit();
    expect((await readAll(await store.read('tiny'))).toString()).toBe('replaced');
    const keys: string[] = [];
    for await (const k of store.list()) keys.push(k.key);
    expect(keys.sort()).toEqual(['empty', 'tiny']);
    for (const k of keys) await store.delete(k);
  });

  it('abort drops everything written (the multipart upload included)', async () => {
    const w = await store.create('aborted');
    for (let i = 0; i < 5; i++) await w.write(randomBytes(4 * MIB));
    expect((await probe.temps()).length).toBe(1);
    await w.abort();
    await w.abort(); // idempotent
    expect(await probe.temps()).toEqual([]);
    expect(await store.size('aborted')).toBe(null);
    expect(await probe.blobs()).toEqual([]);
  });

  it('cleanup after a crash removes stale temporaries, and nothing a live writer owns', async () => {
    // A "crashed" writer: its store is dropped without commit or abort.
    const crashed = await reopen();
    const w = await crashed.create('crashed');
    await w.write(randomBytes(9 * MIB));
    expect((await probe.temps()).length).toBe(1);
    // a live upload in the store that runs cleanup
    const live = await store.create('live');
    await live.write(randomBytes(9 * MIB));
    expect((await probe.temps()).length).toBe(2);
    if (kind === 'fs') {
      // the filesystem store's cleanup runs before any upload starts (server start)
      await live.abort();
    }
    await store.cleanup();
    if (kind === 's3') {
      expect(await probe.temps()).toHaveLength(1); // the live one
      await live.write(randomBytes(MIB));
      await live.commit();
      expect(await store.size('live')).toBe(9 * MIB + MIB);
      await store.delete('live');
    }
    expect(await probe.temps()).toEqual([]);
    expect(await probe.blobs()).toEqual([]);
    // release what the "crashed" writer holds (its file handle); nothing comes back
    await w.abort();
    expect(await probe.temps()).toEqual([]);
    await crashed.close();
  });

  it('refuses keys that are not plain names', async () => {
    for (const k of ['../x', 'a/b', '.tmp', '', 'x y'])
      await expect(store.create(k)).rejects.toThrow(/invalid blob key/);
  });
});

describe('S3 store URLs', () => {
  it('parses credentials, endpoint, bucket, prefix and region; refuses bad forms', async () => {
    const { parseS3Url } = await import('./store/s3.js');
    expect(parseS3Url('s3://AK:S%2Fk%2B@h:7480/bkt/a/b?region=eu-1', {})).toEqual({
      endpoint: 'http://h:7480',
      bucket: 'bkt',
      prefix: 'a/b/',
      region: 'eu-1',
      accessKeyId: 'AK',
      secretAccessKey: 'S/k+',
    });
    expect(
      parseS3Url('s3+https://s3.example.com/images', { AWS_ACCESS_KEY_ID: 'E', AWS_SECRET_ACCESS_KEY: 'S' }),
    ).toMatchObject({ endpoint: 'https://s3.example.com', bucket: 'images', prefix: '', accessKeyId: 'E' });
    for (const bad of ['s3://AK:SK@h:1', 's3://h:1/bkt', 'http://AK:SK@h/bkt', 's3://AK:SK@h/B_ad'])
      expect(() => parseS3Url(bad, {}), bad).toThrow(/Invalid S3 store URL/);
    // the secret never appears in the message
    expect(() => parseS3Url('s3://AK:SECRET@h:1', {})).toThrow(/s3:\/\/\*\*\*@h:1/);
  });

  it('an unreachable S3 endpoint fails `vdisk serve` with one line', async () => {
    const dir = await tempDir('unreach');
    await expect(
      startServer({ port: 0, dataDir: dir, adminPassword: 'x', store: 's3://a:b@127.0.0.1:1/bucket' }),
    ).rejects.toThrow(/Could not open the S3 store http:\/\/127\.0\.0\.1:1\/bucket/);
  });
});

// ---------------------------------------------------------------------------------------------
// The real `openstack` client against `vdisk serve --database-url postgres://… --store s3://…`

/** `vdisk serve` as a child process on PostgreSQL + S3; resolves once it listens. */
function serve(dataDir: string, databaseUrl: string, storeUrl: string, password: string) {
  const bin = join(process.cwd(), 'bin', 'vdisk');
  const p = spawn(
    process.execPath,
    [
      bin,
      'serve',
      '--port',
      '0',
      '--data-dir',
      dataDir,
      '--database-url',
      databaseUrl,
      '--store',
      storeUrl,
      '--admin-password',
      password,
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
}

describe('vdisk serve on PostgreSQL + S3', () => {
  it('`vdisk serve` killed mid-upload restarts clean: no multipart upload left, the image queued', async () => {
    const dir = await tempDir('kill');
    const databaseUrl = await pg.createDatabase('killed');
    const storeUrl = ceph.storeUrl('vdisk-killed', 'glance');
    const probe = await probeS3(storeUrl);
    let s = await serve(join(dir, 'data'), databaseUrl, storeUrl, 'k');
    try {
      let a = await Api.login(s.url, 'admin', 'k', 'admin');
      const img = await a.createImage({ disk_format: 'raw', container_format: 'bare' });
      // 12 MiB sent (one 8 MiB part uploaded), the client still connected, then the server dies
      const req = request(`${s.url}/v2/images/${img.id}/file`, {
        method: 'PUT',
        headers: {
          'X-Auth-Token': a.token,
          'Content-Type': 'application/octet-stream',
          'Transfer-Encoding': 'chunked',
        },
      });
      const up = new Promise<void>((resolve) => {
        req.on('error', () => resolve());
        req.on('response', (res) => {
          res.resume();
          resolve();
        });
      });
      req.write(rawData(6 * MIB));
      req.write(randomBytes(6 * MIB));
      let temps: string[] = [];
      for (let i = 0; i < 100 && temps.length === 0; i++) {
        temps = await probe.temps();
        if (temps.length === 0) await new Promise((r) => setTimeout(r, 100));
      }
      expect(temps).toHaveLength(1); // the multipart upload exists while the upload runs
      expect((await a.req('GET', `/v2/images/${img.id}`)).json.status).toBe('saving');
      s.p.kill('SIGKILL');
      await up;
      await new Promise((r) => s.p.once('exit', r));
      expect(await probe.temps()).toHaveLength(1); // what the crash left
      s = await serve(join(dir, 'data'), databaseUrl, storeUrl, 'k');
      expect(s.err()).toMatch(/recovered 1 interrupted upload/);
      expect(await probe.temps()).toEqual([]);
      expect(await probe.blobs()).toEqual([]);
      a = await Api.login(s.url, 'admin', 'k', 'admin');
      expect((await a.req('GET', `/v2/images/${img.id}`)).json.status).toBe('queued');
      expect(await a.upload(img.id, small)).toBe(204);
      expect(await probe.blobs()).toEqual([img.id]);
    } finally {
      await probe.close();
      const exit = new Promise<number | null>((r) => s.p.once('exit', r));
      s.p.kill('SIGTERM');
      expect(await exit).toBe(0);
    }
  });

  it('the real openstack client: create --file, list, show, save (byte-identical), delete (the object goes away)', async () => {
    const dir = await tempDir('e2e');
    const databaseUrl = await pg.createDatabase('e2e');
    const storeUrl = ceph.storeUrl('vdisk-e2e');
    const { p, url } = await serve(join(dir, 'data'), databaseUrl, storeUrl, 'e2e-pw');
    const probe = await probeS3(storeUrl);
    try {
      const ts = { url, home: join(dir, 'home') };
      const as = { user: 'admin', password: 'e2e-pw', project: 'admin' };
      const file = join(dir, 'disk.raw');
      const data = rawData(18 * MIB + 4097);
      await writeFile(file, data);
      let r = await runClient(
        ts,
        'openstack',
        [
          'image',
          'create',
          '--file',
          file,
          '--disk-format',
          'raw',
          '--container-format',
          'bare',
          'pg-s3',
          '-f',
          'json',
        ],
        as,
      );
      expect(r.code, r.stderr).toBe(0);
      const created = JSON.parse(r.stdout);
      expect(created.id).toMatch(/^[0-9a-f-]{36}$/);
      expect(await probe.blobs()).toEqual([created.id]);
      r = await runClient(ts, 'openstack', ['image', 'list', '-f', 'json'], as);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual([{ ID: created.id, Name: 'pg-s3', Status: 'active' }]);
      r = await runClient(ts, 'openstack', ['image', 'show', 'pg-s3', '-f', 'json'], as);
      const shown = JSON.parse(r.stdout);
      expect(shown.checksum).toBe(hex('md5', data));
      expect(shown.size).toBe(data.length);
      // openstackclient 6 puts os_hash_value among `properties`
      expect(shown.os_hash_value ?? shown.properties?.os_hash_value).toBe(hex('sha512', data));
      const out = join(dir, 'saved.raw');
      r = await runClient(ts, 'openstack', ['image', 'save', '--file', out, 'pg-s3'], as);
      expect(r.code, r.stderr).toBe(0);
      expect((await readFile(out)).equals(data)).toBe(true);
      r = await runClient(ts, 'openstack', ['image', 'delete', 'pg-s3'], as);
      expect(r.code, r.stderr).toBe(0);
      expect(await probe.blobs()).toEqual([]);
      expect(await probe.temps()).toEqual([]);
    } finally {
      await probe.close();
      const exit = new Promise<number | null>((r) => p.once('exit', r));
      p.kill('SIGTERM');
      expect(await exit).toBe(0);
    }
  });
});
