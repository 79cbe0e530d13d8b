/**
 * Several `vdisk serve` nodes (real processes) on one real PostgreSQL and one real Ceph RGW
 * bucket: any request on any node, uploads that survive other nodes starting and stopping, a
 * killed node's upload and import recovered by exactly one other node once its lease ends, and
 * racing updates through different nodes without a lost update. The operations endpoints too.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Store } from './store/s3.js';
import { Api, addProjectUser } from './test/harness.js';
import { type PgServer, type S3Server, startCeph, startPostgres } from './test/servers.js';

const MIB = 1 << 20;
const LEASE = 3; // seconds: a dead node's work is recovered 3 s after its last renewal

interface Node {
  name: string;
  dataDir: string;
  p: ChildProcess;
  url: string;
  err: () => string;
}

let pg: PgServer;
let ceph: S3Server;
let root: string;
let databaseUrl: string;
let storeUrl: string;
let s3: S3Store;
// A web server for web-download imports (its port is allowed on every node): it sends the
// first MiB of 64 and then holds the connection until the test lets it go.
let web: Server;
let webPort: number;
const heldResponses = new Set<() => void>();

function startNode(name: string, extra: string[] = []): Promise<Node> {
  const dataDir = join(root, name);
  const p = spawn(
    process.execPath,
    [
      join(process.cwd(), 'bin', 'vdisk'),
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
      'pw',
      '--node-lease',
      String(LEASE),
      '--import-allowed-hosts',
      '127.0.0.1',
      '--import-allowed-ports',
      String(webPort),
      ...extra,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  return new Promise((resolve, reject) => {
    p.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) resolve({ name, dataDir, p, url: m[1]!, err: () => err });
    });
    p.on('exit', (code) => reject(new Error(`${name} exited ${code}: ${err}`)));
  });
}

async function stopNode(n: Node, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (n.p.exitCode !== null || n.p.signalCode !== null) return;
  const exited = new Promise((r) => n.p.once('exit', r));
  n.p.kill(signal);
  await exited;
}

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function temps(): Promise<string[]> {
  const out: string[] = [];
  for await (const u of s3.pendingUploads()) out.push(u.name);
  return out.sort();
}
async function blobs(): Promise<string[]> {
  const out: string[] = [];
  for await (const b of s3.list()) out.push(b.key);
  return out.sort();
}

/** A PUT /file whose body the test feeds piece by piece; `cut()` drops the connection. */
function slowUpload(url: string, token: string) {
  const md5 = createHash('md5');
  let size = 0;
  const req = request(url, {
    method: 'PUT',
    headers: {
      'X-Auth-Token': token,
      'Content-Type': 'application/octet-stream',
      'Transfer-Encoding': 'chunked',
    },
  });
  const answer = new Promise<number>((resolve) => {
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(-1));
  });
  return {
    answer,
    async send(bytes: number) {
      const b = randomBytes(bytes);
      md5.update(b);
      size += bytes;
      await new Promise<void>((r) => req.write(b, () => r()));
    },
    end() {
      req.end();
      return { md5: md5.digest('hex'), size };
    },
  };
}

beforeAll(async () => {
  [pg, ceph] = await Promise.all([startPostgres(), startCeph()]);
  root = await mkdtemp(join(tmpdir(), 'vdisk-nodes-'));
  databaseUrl = await pg.createDatabase('nodes');
  storeUrl = ceph.storeUrl('vdisk-nodes', 'glance');
  s3 = await S3Store.open(storeUrl);
  web = createServer((_req, res) => {
    res.writeHead(200, { 'Content-Length': String(64 * MIB) });
    res.write(randomBytes(MIB));
    heldResponses.add(() => res.destroy());
  });
  await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
  webPort = (web.address() as AddressInfo).port;
}, 120_000);

afterAll(async () => {
  await s3?.close();
  web?.closeAllConnections();
  web?.close();
  await Promise.allSettled([pg?.stop(), ceph?.stop()]);
  if (root !== undefined) await rm(root, { recursive: true, force: true });
});

describe('three nodes on one PostgreSQL and one S3 bucket', () => {
  let nodes: Node[] = [];
  let admin: Api[] = []; // one client per node, one token

  beforeAll(async () => {
    // The first node creates the schema; the two others start together.
    nodes = [await startNode('n1')];
    nodes.push(...(await Promise.all([startNode('n2'), startNode('n3')])));
    const a = await Api.login(nodes[0]!.url, 'admin', 'pw', 'admin');
    admin = nodes.map((n) => new Api(n.url, a.token, a.projectId));
  }, 120_000);

  afterAll(async () => {
    await Promise.all(nodes.map((n) => stopNode(n)));
  });

  it('any node answers any request with one token; each is healthy, ready and counted', async () => {
    const img = await admin[0]!.createImage({
      name: 'anywhere',
      disk_format: 'raw',
      container_format: 'bare',
    });
    expect(await admin[1]!.upload(img.id, Buffer.from('hello from node 2'))).toBe(204);
    const got = await fetch(`${nodes[2]!.url}/v2/images/${img.id}/file`, {
      headers: { 'X-Auth-Token': admin[2]!.token },
    });
    expect(await got.text()).toBe('hello from node 2');
    for (const n of nodes) {
      expect((await fetch(`${n.url}/healthz`)).status).toBe(200);
      const ready = await fetch(`${n.url}/readyz`);
      expect(ready.status).toBe(200);
      expect(((await ready.json()) as { checks: Record<string, string> }).checks).toEqual({
        database: 'ok',
        store: 'ok',
        lease: 'ok',
        draining: 'ok',
      });
    }
    const metrics = await (await fetch(`${nodes[1]!.url}/metrics`)).text();
    expect(metrics).toMatch(
      /vdisk_http_requests_total\{method="PUT",route="\/v2\/images\/:id\/file",status="204",node="[0-9a-f]{16}"\} 1/,
    );
    expect(metrics).toMatch(/vdisk_node_lease_held\{node="[0-9a-f]{16}"\} 1/);
    expect(metrics).toMatch(
      /vdisk_http_request_duration_seconds_count\{[^}]*route="\/v2\/images\/:id\/file"[^}]*\} 1/,
    );
  });

  it('an upload through node 1 completes while node 2 stops and starts again', async () => {
    const img = await admin[0]!.createImage({ name: 'steady', disk_format: 'raw', container_format: 'bare' });
    const up = slowUpload(`${nodes[0]!.url}/v2/images/${img.id}/file`, admin[0]!.token);
    await up.send(9 * MIB); // past one S3 part: a multipart upload exists
    await until('the multipart upload', async () => ((await temps()).includes(img.id) ? true : undefined));
    await stopNode(nodes[1]!);
    await up.send(5 * MIB);
    nodes[1] = await startNode('n2');
    admin[1] = new Api(nodes[1].url, admin[0]!.token, admin[0]!.projectId);
    await up.send(3 * MIB);
    // A full lease later the upload's node still holds it: nobody touched the upload.
    await new Promise((r) => setTimeout(r, LEASE * 1000 + 500));
    await up.send(MIB);
    const sent = up.end();
    expect(await up.answer).toBe(204);
    const shown = (await admin[1]!.req('GET', `/v2/images/${img.id}`)).json;
    expect(shown.status).toBe('active');
    expect(shown.size).toBe(sent.size);
    expect(shown.checksum).toBe(sent.md5);
    expect(nodes[1]!.err()).not.toMatch(/recovered|removed/);
    const back = await fetch(`${nodes[2]!.url}/v2/images/${img.id}/file`, {
      headers: { 'X-Auth-Token': admin[2]!.token },
    });
    const md5 = createHash('md5')
      .update(Buffer.from(await back.arrayBuffer()))
      .digest('hex');
    expect(md5).toBe(sent.md5);
  }, 60_000);

  it('node 1 killed mid-upload: after its lease, exactly one node puts the image back to queued and removes its parts; nothing else moves', async () => {
    const keep = await admin[2]!.createImage({ name: 'keep', disk_format: 'raw', container_format: 'bare' });
    expect(await admin[2]!.upload(keep.id, randomBytes(10 * MIB))).toBe(204);
    const img = await admin[0]!.createImage({ name: 'cut', disk_format: 'raw', container_format: 'bare' });
    const up = slowUpload(`${nodes[0]!.url}/v2/images/${img.id}/file`, admin[0]!.token);
    await up.send(10 * MIB);
    await until('the multipart upload', async () => ((await temps()).includes(img.id) ? true : undefined));
    const before = await blobs();
    const killedAt = Date.now();
    await stopNode(nodes[0]!, 'SIGKILL');
    expect(await up.answer).toBe(-1);
    // Within the lease: still saving, its parts still there.
    expect((await admin[1]!.req('GET', `/v2/images/${img.id}`)).json.status).toBe('saving');
    const queuedAt = await until('the image back to queued', async () => {
      const s = (await admin[1]!.req('GET', `/v2/images/${img.id}`)).json.status;
      return s === 'queued' ? Date.now() : undefined;
    });
    expect(queuedAt - killedAt).toBeGreaterThanOrEqual((LEASE - 1) * 1000);
    await until('the parts removed', async () => ((await temps()).includes(img.id) ? undefined : true));
    expect(await blobs()).toEqual(before);
    const recovered = [nodes[1]!, nodes[2]!].map(
      (n) => n.err().match(/recovered 1 interrupted upload/g)?.length ?? 0,
    );
    expect(recovered.reduce((a, b) => a + b)).toBe(1);
    expect((await admin[2]!.req('GET', `/v2/images/${keep.id}`)).json.status).toBe('active');
    // The image takes a new upload through another node.
    expect(await admin[2]!.upload(img.id, Buffer.from('again'))).toBe(204);
    nodes[0] = await startNode('n1');
    admin[0] = new Api(nodes[0].url, admin[1]!.token, admin[1]!.projectId);
  }, 60_000);

  it('updates racing through different nodes: no lost update (properties, tags, members)', async () => {
    const img = await admin[0]!.createImage({
      name: 'raced',
      disk_format: 'raw',
      container_format: 'bare',
      visibility: 'shared',
    });
    const n = 30;
    const results = await Promise.all(
      Array.from({ length: n }, (_, i) =>
        admin[i % 3]!.patch(img.id, [{ op: 'add', path: `/p${i}`, value: String(i) }]),
      ),
    );
    expect(results.map((r) => r.status)).toEqual(Array(n).fill(200));
    const tags = await Promise.all(
      Array.from({ length: n }, (_, i) => admin[(i + 1) % 3]!.req('PUT', `/v2/images/${img.id}/tags/t${i}`)),
    );
    expect(tags.map((r) => r.status)).toEqual(Array(n).fill(204));
    const shown = (await admin[2]!.req('GET', `/v2/images/${img.id}`)).json;
    for (let i = 0; i < n; i++) expect(shown[`p${i}`]).toBe(String(i));
    expect([...shown.tags].sort()).toEqual(Array.from({ length: n }, (_, i) => `t${i}`).sort());
    // The same member added through two nodes at once: one 200, one 409 (Glance's answers).
    const project = await addProjectUser(admin[0]!, 'racer', 'racer', 'pw-r');
    const adds = await Promise.all(
      [0, 1].map((k) => admin[k]!.req('POST', `/v2/images/${img.id}/members`, { member: project })),
    );
    expect(adds.map((r) => r.status).sort()).toEqual([200, 409]);
    const racer = await Api.login(nodes[2]!.url, 'racer', 'pw-r', 'racer');
    const upd = await Promise.all(
      ['accepted', 'rejected', 'accepted'].map((status, k) =>
        new Api(nodes[k]!.url, racer.token, racer.projectId).req(
          'PUT',
          `/v2/images/${img.id}/members/${project}`,
          { status },
        ),
      ),
    );
    expect(upd.map((r) => r.status)).toEqual([200, 200, 200]);
    const m = (await admin[1]!.req('GET', `/v2/images/${img.id}/members`)).json.members;
    expect(m).toHaveLength(1);
    expect(['accepted', 'rejected']).toContain(m[0].status);
  }, 60_000);

  it('an import whose node dies is failed cleanly by another node: queued, task failed, nothing staged', async () => {
    try {
      const img = await admin[0]!.createImage({
        name: 'imported',
        disk_format: 'raw',
        container_format: 'bare',
      });
      const r = await admin[0]!.req('POST', `/v2/images/${img.id}/import`, {
        method: { name: 'web-download', uri: `http://127.0.0.1:${webPort}/disk.raw` },
      });
      expect(r.status).toBe(202);
      await until('the import running', async () => {
        const s = (await admin[1]!.req('GET', `/v2/images/${img.id}`)).json;
        return s.status === 'importing' ? true : undefined;
      });
      await stopNode(nodes[0]!, 'SIGKILL');
      for (const release of heldResponses) release();
      const done = await until('the image back to queued', async () => {
        const s = (await admin[1]!.req('GET', `/v2/images/${img.id}`)).json;
        return s.status === 'queued' ? s : undefined;
      });
      expect(done.os_glance_import_task).toBeUndefined();
      const tasks = (await admin[2]!.req('GET', `/v2/images/${img.id}/tasks`)).json.tasks;
      expect(tasks).toHaveLength(1);
      expect(tasks[0].status).toBe('failure');
      expect(tasks[0].message).toMatch(/stopped during the import/);
      expect((await blobs()).filter((k) => k.includes(img.id))).toEqual([]);
      expect((await temps()).filter((k) => k.includes(img.id))).toEqual([]);
      const recovered = [nodes[1]!, nodes[2]!].map(
        (n) => n.err().match(/recovered 1 interrupted import/g)?.length ?? 0,
      );
      expect(recovered.reduce((a, b) => a + b)).toBe(1);
    } finally {
      for (const release of heldResponses) release();
    }
  }, 60_000);
});
