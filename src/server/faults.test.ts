/**
 * Faults injected into a running `vdisk serve` (a real process on a real PostgreSQL and a file
 * store): the database dropping every connection (`pg_terminate_backend`) while idle, during an
 * upload and during an import. Nothing acknowledged is lost, nothing half-made is served, the
 * server keeps serving, and no image stays stuck in a writing state. docs/faults.md has the
 * table of faults tried and their outcomes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { connect, createServer as createTcpServer, type Socket, type Server as TcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Store } from './store/s3.js';
import { Api, type ServeProcess, spawnServe } from './test/harness.js';
import { type PgServer, type S3Server, startCeph, startPostgres } from './test/servers.js';

const MIB = 1 << 20;

let pgs: PgServer;
let root: string;

beforeAll(async () => {
  pgs = await startPostgres();
  root = await mkdtemp(join(tmpdir(), 'vdisk-faults-'));
}, 60_000);

afterAll(async () => {
  await pgs?.stop();
  if (root !== undefined) await rm(root, { recursive: true, force: true });
});

/** Terminate every connection to `db` but the caller's; how many went. */
async function terminate(db: string): Promise<number> {
  const c = new pg.Client({ connectionString: pgs.url('postgres') });
  await c.connect();
  try {
    const r = await c.query(
      'SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
      [db],
    );
    return Number(r.rows[0].n);
  } finally {
    await c.end();
  }
}

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('the database connection dropped (pg_terminate_backend on the real PostgreSQL)', () => {
  let s: ServeProcess;
  let a: Api;
  let store: string;
  const db = 'faults';

  beforeAll(async () => {
    const url = await pgs.createDatabase(db);
    store = join(root, 'store');
    s = await spawnServe([
      '--data-dir',
      join(root, 'data'),
      '--database-url',
      url,
      '--store',
      store,
      '--admin-password',
      'pw',
      '--node-lease',
      '2',
    ]);
    a = await Api.login(s.url, 'admin', 'pw', 'admin');
  }, 60_000);

  afterAll(async () => {
    await s?.stop();
  });

  it('while idle: the server stays up and the next requests are served', async () => {
    const img = await a.createImage({ name: 'before', disk_format: 'raw', container_format: 'bare' });
    expect(await terminate(db)).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 300));
    expect(s.p.exitCode).toBe(null);
    const shown = await until('a served request', async () => {
      const r = await a.req('GET', `/v2/images/${img.id}`);
      return r.status === 200 ? r : undefined;
    });
    expect(shown.json.name).toBe('before');
    // Every later request is served (the pool replaced its connections).
    for (let i = 0; i < 10; i++) expect((await a.req('GET', '/v2/images')).status).toBe(200);
  });

  it('during an upload: the image ends active with the right checksum, or queued with no blob', async () => {
    const img = await a.createImage({ name: 'up', disk_format: 'raw', container_format: 'bare' });
    const md5 = createHash('md5');
    const req = request(`${s.url}/v2/images/${img.id}/file`, {
      method: 'PUT',
      headers: {
        'X-Auth-Token': a.token,
        'Content-Type': 'application/octet-stream',
        'Transfer-Encoding': 'chunked',
      },
    });
    const answer = new Promise<number>((res) => {
      req.on('response', (r) => {
        r.resume();
        res(r.statusCode ?? 0);
      });
      req.on('error', () => res(-1));
    });
    for (let i = 0; i < 8; i++) {
      const b = randomBytes(MIB);
      md5.update(b);
      await new Promise<void>((r) => req.write(b, () => r()));
      if (i === 3) expect(await terminate(db)).toBeGreaterThanOrEqual(0);
    }
    req.end();
    const status = await answer;
    const end = await until('the image out of saving', async () => {
      const r = await a.req('GET', `/v2/images/${img.id}`);
      return r.status === 200 && r.json.status !== 'saving' ? r.json : undefined;
    });
    const blobs = (await readdir(store)).filter((n) => !n.startsWith('.'));
    if (status === 204) {
      expect(end.status).toBe('active');
      expect(end.checksum).toBe(md5.digest('hex'));
      expect(blobs).toContain(img.id);
    } else {
      expect(end.status).toBe('queued');
      expect(blobs).not.toContain(img.id);
      expect(await readdir(join(store, '.tmp'))).toEqual([]);
    }
    expect(s.p.exitCode).toBe(null);
  });

  it('an upload whose last UPDATE was lost (the row still names this node as writer): recovered by the node itself', async () => {
    const img = await a.createImage({ name: 'lost-update', disk_format: 'raw', container_format: 'bare' });
    const c = new pg.Client({ connectionString: pgs.url(db) });
    await c.connect();
    try {
      // What a write leaves when the database connection dies before its final UPDATE: the
      // row in saving, naming the (live) node, and no request of the node writing it.
      const r = await c.query(
        `UPDATE images SET status = 'saving', writer = (SELECT id FROM nodes WHERE expires_at > now() LIMIT 1),
           updated_at = now() - interval '1 minute' WHERE id = $1`,
        [img.id],
      );
      expect(r.rowCount).toBe(1);
    } finally {
      await c.end();
    }
    const end = await until('the image back to queued', async () => {
      const r = await a.req('GET', `/v2/images/${img.id}`);
      return r.json.status === 'queued' ? r.json : undefined;
    });
    expect(end.status).toBe('queued');
    expect(s.err()).toMatch(/recovered 1 interrupted upload/);
    expect(await a.upload(img.id, Buffer.from('now it lands'))).toBe(204);
  });

  it('at the end of an upload, many times over: never stuck in saving, never a blob without its image', async () => {
    const outcomes: number[] = [];
    for (let k = 0; k < 6; k++) {
      const img = await a.createImage({ name: `race-${k}`, disk_format: 'raw', container_format: 'bare' });
      const data = randomBytes(2 * MIB);
      const up = a.upload(img.id, data).catch(() => -1);
      // Cut the connections at a different moment of each upload.
      await new Promise((r) => setTimeout(r, k * 15));
      await terminate(db);
      outcomes.push(await up);
      const end = await until('the image out of saving', async () => {
        const r = await a.req('GET', `/v2/images/${img.id}`);
        return r.status === 200 && r.json.status !== 'saving' ? r.json : undefined;
      }).catch((err) => {
        throw new Error(`${err.message}; the server said:\n${s.err()}`);
      });
      const blobs = (await readdir(store)).filter((n) => !n.startsWith('.'));
      if (end.status === 'active') {
        expect(end.checksum).toBe(createHash('md5').update(data).digest('hex'));
        expect(blobs).toContain(img.id);
      } else {
        expect(end.status).toBe('queued');
        expect(blobs).not.toContain(img.id);
      }
    }
    expect(s.p.exitCode).toBe(null);
    // The server still works for a plain upload.
    const last = await a.createImage({ name: 'after', disk_format: 'raw', container_format: 'bare' });
    expect(await a.upload(last.id, Buffer.from('fine'))).toBe(204);
  }, 90_000);
});

/**
 * A TCP proxy in front of the real RGW: `cut()` resets every connection and refuses new ones
 * (the gateway gone mid-upload), `heal()` lets them through again.
 */
async function s3Proxy(target: { host: string; port: number }) {
  const open = new Set<Socket>();
  let down = false;
  const server: TcpServer = createTcpServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    const upstream = connect(target.port, target.host);
    open.add(client);
    open.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    cut() {
      down = true;
      for (const s of open) s.resetAndDestroy();
      open.clear();
    },
    heal() {
      down = false;
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

describe('the S3 store going away mid-upload (the real Ceph RGW behind a proxy that is cut)', () => {
  let ceph: S3Server;
  let proxy: Awaited<ReturnType<typeof s3Proxy>>;
  let s: ServeProcess;
  let a: Api;
  let direct: S3Store;
  let storeUrl: string;
  let dbUrl: string;

  beforeAll(async () => {
    ceph = await startCeph();
    const real = new URL(ceph.storeUrl('vdisk-faults', 'glance').replace(/^s3:/, 'http:'));
    proxy = await s3Proxy({ host: real.hostname, port: Number(real.port) });
    storeUrl = ceph.storeUrl('vdisk-faults', 'glance').replace(`:${real.port}/`, `:${proxy.port}/`);
    direct = await S3Store.open(ceph.storeUrl('vdisk-faults', 'glance'));
    dbUrl = await pgs.createDatabase('faults_s3');
    await serve();
  }, 120_000);

  afterAll(async () => {
    await s?.stop();
    await direct?.close();
    await proxy?.close();
    await ceph?.stop();
  });

  /** (Re)start the node on the proxied store, and log in. */
  const serve = async () => {
    s = await spawnServe([
      '--data-dir',
      join(root, 'data-s3'),
      '--database-url',
      dbUrl,
      '--store',
      storeUrl,
      '--admin-password',
      'pw',
    ]);
    a = await Api.login(s.url, 'admin', 'pw', 'admin');
  };

  const temps = async () => {
    const out: string[] = [];
    for await (const u of direct.pendingUploads()) out.push(u.name);
    return out;
  };
  const blobs = async () => {
    const out: string[] = [];
    for await (const b of direct.list()) out.push(b.key);
    return out;
  };

  it("the upload fails with Glance's 503, the image goes back to queued, other requests are served, and what is left goes at the next start", async () => {
    const kept = await a.createImage({ name: 'kept', disk_format: 'raw', container_format: 'bare' });
    expect(await a.upload(kept.id, randomBytes(3 * MIB))).toBe(204);
    const img = await a.createImage({ name: 'cut', disk_format: 'raw', container_format: 'bare' });
    const req = request(`${s.url}/v2/images/${img.id}/file`, {
      method: 'PUT',
      headers: {
        'X-Auth-Token': a.token,
        'Content-Type': 'application/octet-stream',
        'Transfer-Encoding': 'chunked',
      },
    });
    const answer = new Promise<{ status: number; body: string }>((res) => {
      req.on('response', (r) => {
        let body = '';
        r.on('data', (d: Buffer) => {
          body += d.toString();
        });
        r.on('end', () => res({ status: r.statusCode ?? 0, body }));
      });
      req.on('error', () => res({ status: -1, body: '' }));
    });
    for (let i = 0; i < 12; i++) await new Promise<void>((r) => req.write(randomBytes(MIB), () => r()));
    await until('the multipart upload', async () => ((await temps()).includes(img.id) ? true : undefined));
    proxy.cut();
    // The client goes on sending; the server answers when the store fails.
    // (A server that has answered stops reading: a write may never call back.)
    for (let i = 0; i < 20 && req.writable; i++)
      await Promise.race([
        new Promise<void>((r) => req.write(randomBytes(MIB), () => r())),
        new Promise((r) => setTimeout(r, 200)),
      ]);
    req.end();
    const got = await answer;
    if (got.status !== -1) {
      expect(got.status).toBe(503);
      expect(got.body).toMatch(/503 Service Unavailable/);
    }
    const end = await until('the image back to queued', async () => {
      const r = await a.req('GET', `/v2/images/${img.id}`);
      return r.json.status === 'queued' ? r.json : undefined;
    });
    expect(end.size).toBe(null);
    // Reads of what is stored fail while the store is away; the API itself answers.
    expect((await a.req('GET', '/v2/images')).status).toBe(200);
    proxy.heal();
    expect(
      Buffer.from(
        await (
          await fetch(`${s.url}/v2/images/${kept.id}/file`, { headers: { 'X-Auth-Token': a.token } })
        ).arrayBuffer(),
      ).length,
    ).toBe(3 * MIB);
    // The abort could not reach the store: at most the cut multipart upload is left, and the
    // next start removes it; the stored image stays.
    await s.stop();
    await serve();
    expect(await temps()).toEqual([]);
    expect((await blobs()).sort()).toEqual([kept.id]);
    expect(await a.upload(img.id, Buffer.from('after the cut'))).toBe(204);
  }, 120_000);
});
