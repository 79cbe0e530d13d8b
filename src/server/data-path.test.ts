/* biome-ignore-all lint/suspicious/noExplicitAny: the tests read JSON answers of many shapes. */
/**
 * The upload/download path under load, over real HTTP: large uploads with sized and chunked
 * bodies (many 4 MiB hashing blocks, chunk sizes that straddle them), several uploads and
 * downloads of different and of the same image at once, every checksum (md5 `checksum`,
 * sha512 `os_hash_value`) and every downloaded byte compared with what was sent; Range reads
 * across the download buffers' boundaries; a client that leaves mid-download does not disturb
 * the server; and lists over a few hundred images keep Glance's order and pagination.
 */
import { createHash, randomBytes } from 'node:crypto';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_PASSWORD, Api, startTestServer, type TestServer } from './test/harness.js';

let ts: TestServer;
let admin: Api;

beforeAll(async () => {
  ts = await startTestServer();
  admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
});
afterAll(async () => {
  await ts?.stop();
});

const hex = (algo: string, b: Uint8Array) => createHash(algo).update(b).digest('hex');
const MiB = 1 << 20;

/** PUT `data` in pieces of irregular sizes, sized (Content-Length) or chunked. */
function put(id: string, data: Buffer, sized: boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {
      'X-Auth-Token': admin.token,
      'Content-Type': 'application/octet-stream',
    };
    if (sized) headers['Content-Length'] = String(data.length);
    else headers['Transfer-Encoding'] = 'chunked';
    const req = request(`${ts.url}/v2/images/${id}/file`, { method: 'PUT', headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    let off = 0;
    let i = 0;
    const pump = () => {
      while (off < data.length) {
        const n = Math.min(data.length - off, 1 + ((i++ * 337_171) % (3 * MiB)));
        const ok = req.write(data.subarray(off, off + n));
        off += n;
        if (!ok) return void req.once('drain', pump);
      }
      req.end();
    };
    pump();
  });
}

function get(id: string, range?: string): Promise<{ status: number; body: Buffer; md5: string | undefined }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'X-Auth-Token': admin.token };
    if (range !== undefined) headers['Range'] = range;
    request(`${ts.url}/v2/images/${id}/file`, { headers }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          body: Buffer.concat(parts),
          md5: res.headers['content-md5'] as string | undefined,
        }),
      );
      res.on('error', reject);
    })
      .on('error', reject)
      .end();
  });
}

async function newImage(name: string): Promise<string> {
  return (await admin.createImage({ name, disk_format: 'raw', container_format: 'bare' })).id;
}

describe('large and concurrent transfers', () => {
  it('large sized and chunked uploads: exact checksums, size and content', async () => {
    const data = randomBytes(48 * MiB + 4321);
    for (const sized of [true, false]) {
      const id = await newImage(`large-${sized}`);
      expect(await put(id, data, sized)).toBe(204);
      const img = (await admin.req('GET', `/v2/images/${id}`)).json;
      expect(img.status).toBe('active');
      expect(img.size).toBe(data.length);
      expect(img.checksum).toBe(hex('md5', data));
      expect(img.os_hash_algo).toBe('sha512');
      expect(img.os_hash_value).toBe(hex('sha512', data));
      const got = await get(id);
      expect(got.status).toBe(200);
      expect(got.md5).toBe(img.checksum);
      expect(got.body.equals(data)).toBe(true);
    }
  });

  it('concurrent uploads of different images and downloads of one image keep every checksum', async () => {
    const datas = Array.from({ length: 5 }, (_, i) => randomBytes(9 * MiB + i * 777_777));
    const ids = await Promise.all(datas.map((_, i) => newImage(`conc-${i}`)));
    const codes = await Promise.all(ids.map((id, i) => put(id, datas[i]!, i % 2 === 0)));
    expect(codes).toEqual([204, 204, 204, 204, 204]);
    for (let i = 0; i < ids.length; i++) {
      const img = (await admin.req('GET', `/v2/images/${ids[i]}`)).json;
      expect(img.checksum).toBe(hex('md5', datas[i]!));
      expect(img.os_hash_value).toBe(hex('sha512', datas[i]!));
    }
    // Many downloads at once, of the same image and of different ones.
    const reads = await Promise.all([...ids, ids[0]!, ids[0]!, ids[1]!].map((id) => get(id)));
    const want = [...datas, datas[0]!, datas[0]!, datas[1]!];
    reads.forEach((r, i) => {
      expect(r.status).toBe(200);
      expect(r.body.equals(want[i]!), `download ${i}`).toBe(true);
    });
    // Two uploads of one image at once: one wins, the other gets 409, the winner's data is whole.
    const id = await newImage('race');
    const a = randomBytes(6 * MiB);
    const b = randomBytes(6 * MiB);
    const both = await Promise.all([put(id, a, true), put(id, b, false)]);
    expect([...both].sort()).toEqual([204, 409]);
    const img = (await admin.req('GET', `/v2/images/${id}`)).json;
    const winner = both[0] === 204 ? a : b;
    expect(img.checksum).toBe(hex('md5', winner));
    expect(img.os_hash_value).toBe(hex('sha512', winner));
    expect((await get(id)).body.equals(winner)).toBe(true);
  });

  it('Range reads across the download buffers, and a client leaving mid-download', async () => {
    const data = randomBytes(7 * MiB + 3);
    const id = await newImage('ranges');
    expect(await put(id, data, true)).toBe(204);
    const B = 2 * MiB; // the server's read size
    for (const [a, b] of [
      [0, 0],
      [B - 1, B],
      [B - 10, 3 * B + 10],
      [1, data.length - 2],
      [data.length - 1, data.length - 1],
    ] as const) {
      const r = await get(id, `bytes=${a}-${b}`);
      expect(r.status).toBe(206);
      expect(r.body.equals(data.subarray(a, b + 1)), `bytes=${a}-${b}`).toBe(true);
    }
    const tail = await get(id, `bytes=-${B + 5}`);
    expect(tail.body.equals(data.subarray(data.length - B - 5))).toBe(true);
    // A client that reads a little and leaves.
    await new Promise<void>((resolve, reject) => {
      const req = request(
        `${ts.url}/v2/images/${id}/file`,
        { headers: { 'X-Auth-Token': admin.token } },
        (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        },
      );
      req.on('error', () => {});
      req.on('close', () => resolve());
      req.end();
      setTimeout(() => reject(new Error('no data')), 10_000);
    });
    const again = await get(id);
    expect(again.body.equals(data)).toBe(true);
  });
});

describe('lists over many images', () => {
  it('default order, pagination with marker and sorts on nullable keys stay exact', async () => {
    const names: string[] = [];
    const queue = Array.from({ length: 300 }, (_, i) => i);
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
          const body: Record<string, unknown> = { disk_format: 'raw', container_format: 'bare' };
          // every third image without a name: NULLs sort as ''
          if (i % 3 !== 0) {
            body['name'] = `n-${String(i % 50).padStart(3, '0')}`;
            names.push(body['name'] as string);
          }
          await admin.createImage(body);
        }
      }),
    );
    const all = async (query: string) => {
      const out: Record<string, any>[] = [];
      let next: string | undefined = `/v2/images?${query}`;
      while (next !== undefined) {
        const r = await admin.req('GET', next);
        expect(r.status).toBe(200);
        out.push(...r.json.images);
        next = r.json.next;
      }
      return out;
    };
    const total = (await all('limit=1000')).length;
    expect(total).toBeGreaterThanOrEqual(300);
    // Default: created_at desc, id desc; pages of 7 give the same sequence as one page.
    const one = await all('limit=1000');
    const paged = await all('limit=7');
    expect(paged.map((x) => x.id)).toEqual(one.map((x) => x.id));
    for (let i = 1; i < one.length; i++) {
      const a = one[i - 1]!;
      const b = one[i]!;
      // (the view shows seconds; ties within a second are ordered by the stored milliseconds)
      expect(a.created_at >= b.created_at).toBe(true);
    }
    // Ascending by id in pages: the row-comparison path.
    const byId = await all('sort=id:asc&limit=13');
    expect(byId.map((x) => x.id)).toEqual(one.map((x) => x.id).sort());
    // A nullable key with mixed directions: the OR path, NULL names first ascending.
    const byName = await all('sort=name:asc,id:desc&limit=11');
    expect(byName.length).toBe(total);
    const key = (x: Record<string, any>) => x.name ?? '';
    for (let i = 1; i < byName.length; i++) {
      const a = byName[i - 1]!;
      const b = byName[i]!;
      expect(key(a) <= key(b)).toBe(true);
      if (key(a) === key(b)) expect(a.id > b.id).toBe(true);
    }
    expect(new Set(byName.map((x) => x.id)).size).toBe(total);
  });
});
