/* biome-ignore-all lint/suspicious/noExplicitAny: API answers are parsed JSON of many shapes. */
/**
 * Loading definition files: Glance's own files (/etc/glance/metadefs) loaded by vdisk serve
 * on its first start and by `glance-manage db_load_metadefs` into the real Glance 25 give
 * the same namespaces, objects, properties, tags and resource types, and the same documents
 * through the API; bad files are skipped with one log line each and never half loaded; the
 * files are loaded once per database.
 */
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultMetadefsDir } from '../context.js';
import { startServer } from '../server.js';
import { type GlanceServer, rawRequest, startGlance } from '../test/glance.js';
import { ADMIN_PASSWORD, Api, startTestServer, type TestServer } from '../test/harness.js';

const DIR = '/etc/glance/metadefs';
const scratch: string[] = [];

afterAll(async () => {
  for (const d of scratch) await rm(d, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'vdisk-metadefs-'));
  scratch.push(d);
  return d;
}

const mask = (v: any): any =>
  Array.isArray(v)
    ? v.map(mask)
    : typeof v === 'object' && v !== null
      ? Object.fromEntries(
          Object.entries(v).map(([k, x]) => [
            k,
            k === 'created_at' || k === 'updated_at' ? '<time>' : mask(x),
          ]),
        )
      : v;

/** Everything a reader sees of the metadefs: every namespace in full, and the resource types. */
async function snapshot(get: (path: string) => Promise<any>) {
  const list = await get('/v2/metadefs/namespaces?limit=1000');
  const names: string[] = list.namespaces.map((n: any) => n.namespace).sort();
  const full: Record<string, any> = {};
  for (const n of names) full[n] = mask(await get(`/v2/metadefs/namespaces/${encodeURIComponent(n)}`));
  const listed = Object.fromEntries(list.namespaces.map((n: any) => [n.namespace, mask(n)]));
  const types = (await get('/v2/metadefs/resource_types')).resource_types.map((t: any) => t.name).sort();
  const count = (k: string) =>
    Object.values(full).reduce(
      (s: number, ns: any) => s + (Array.isArray(ns[k]) ? ns[k].length : Object.keys(ns[k] ?? {}).length),
      0,
    );
  return {
    names,
    full,
    listed,
    types,
    counts: {
      namespaces: names.length,
      objects: count('objects'),
      properties: count('properties'),
      tags: count('tags'),
      resourceTypes: types.length,
      associations: count('resource_type_associations'),
    },
  };
}

describe('Glance definition files, beside glance-manage db_load_metadefs', () => {
  let glance: GlanceServer;
  let vdisk: TestServer;
  const logs: string[] = [];

  beforeAll(async () => {
    const [g, v] = await Promise.allSettled([
      startGlance(),
      startTestServer({ settings: { metadefsDir: DIR }, log: (l) => logs.push(l) }),
    ]);
    if (g.status === 'fulfilled') glance = g.value;
    if (v.status === 'fulfilled') vdisk = v.value;
    if (g.status === 'rejected') throw new Error(`Glance did not start: ${String(g.reason)}`);
    if (v.status === 'rejected') throw v.reason;
    await glance.loadMetadefs(DIR);
  }, 240_000);

  afterAll(async () => {
    await Promise.allSettled([glance?.stop(), vdisk?.stop()]);
  });

  it('loads what Glance loads, and shows it as Glance does', async () => {
    const admin = await Api.login(vdisk.url, 'admin', ADMIN_PASSWORD, 'admin');
    const ours = await snapshot(async (p) => (await admin.req('GET', p)).json);
    const headers = glance.headers({ project: admin.projectId, roles: ['admin', 'member', 'reader'] });
    const theirs = await snapshot(async (p) =>
      JSON.parse((await rawRequest(`${glance.url}${p}`, 'GET', headers)).text),
    );
    const files = (await readdir(DIR)).filter((f) => f.endsWith('.json'));
    expect(ours.counts.namespaces).toBe(files.length);
    expect(ours.counts).toEqual(theirs.counts);
    expect(ours.counts.objects).toBeGreaterThan(10);
    expect(ours.counts.properties).toBeGreaterThan(100);
    expect(ours.types).toEqual(theirs.types);
    expect(ours.names).toEqual(theirs.names);
    for (const n of ours.names) {
      expect(ours.listed[n], n).toEqual(theirs.listed[n]);
      // The whole document, key order included (defaults turned to strings, minimum to
      // integers, objects and properties in name order…).
      expect(JSON.stringify(ours.full[n]), n).toBe(JSON.stringify(theirs.full[n]));
    }
    expect(logs).toContain(
      `metadefs: loaded ${files.length} namespace(s) from ${files.length} file(s) in ${DIR}`,
    );
  });

  it('hides the namespaces the files leave private from non-admins, as Glance', async () => {
    const admin = await Api.login(vdisk.url, 'admin', ADMIN_PASSWORD, 'admin');
    const p = await admin.req('POST', '/v3/projects', { project: { name: 'p1' } });
    const u = await admin.req('POST', '/v3/users', {
      user: { name: 'u1', password: 'pw', default_project_id: p.json.project.id },
    });
    const roles = await admin.req('GET', '/v3/roles?name=member');
    await admin.req(
      'PUT',
      `/v3/projects/${p.json.project.id}/users/${u.json.user.id}/roles/${roles.json.roles[0].id}`,
    );
    const user = await Api.login(vdisk.url, 'u1', 'pw', 'p1');
    const ours = (await user.req('GET', '/v2/metadefs/namespaces?limit=1000')).json.namespaces.map(
      (n: any) => n.namespace,
    );
    const headers = glance.headers({ project: p.json.project.id, roles: ['member', 'reader'] });
    const theirs = JSON.parse(
      (await rawRequest(`${glance.url}/v2/metadefs/namespaces?limit=1000`, 'GET', headers)).text,
    ).namespaces.map((n: any) => n.namespace);
    expect(ours.sort()).toEqual(theirs.sort());
    expect(ours).not.toContain('OS::Glance::CommonImageProperties');
    expect(ours.length).toBeGreaterThan(20);
  });
});

describe('bad files and loading once', () => {
  const good = (name: string) => ({
    namespace: name,
    display_name: name,
    visibility: 'public',
    resource_type_associations: [{ name: 'OS::Glance::Image', prefix: 'x_' }],
    properties: { p: { type: 'string', title: 'P' } },
    objects: [{ name: 'o', required: ['p'], properties: { p: { type: 'string', title: 'P' } } }],
    tags: [{ name: 't1' }, { name: 't2' }],
  });

  it('skips a bad file with one log line, loads the rest; a refused file leaves nothing', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'a-good.json'), JSON.stringify(good('ok:one')));
    await writeFile(join(dir, 'b-malformed.json'), '{"namespace": "bad:json",');
    await writeFile(join(dir, 'c-no-namespace.json'), JSON.stringify({ display_name: 'x' }));
    await writeFile(join(dir, 'd-array.json'), '[1, 2]');
    // Valid up to its second object, which has no name: nothing of it may be loaded.
    await writeFile(
      join(dir, 'e-half.json'),
      JSON.stringify({ ...good('bad:half'), objects: [{ name: 'fine' }, { description: 'no name' }] }),
    );
    // Passes every check, fails in the database (PostgreSQL text has no NUL): rolled back.
    await writeFile(
      join(dir, 'f-db.json'),
      JSON.stringify({ ...good('bad:db'), tags: [{ name: 'ok' }, { name: 'nul\u0000' }] }),
    );
    await writeFile(
      join(dir, 'g-unknown-attr.json'),
      JSON.stringify({ ...good('bad:attr'), properties: { p: { type: 'string', title: 'P', foo: 1 } } }),
    );
    await writeFile(join(dir, 'h-dup.json'), JSON.stringify(good('ok:one')));
    await writeFile(join(dir, 'i-good.json'), JSON.stringify(good('ok:two')));
    await writeFile(join(dir, 'j-bad-utf8.json'), Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]));
    await writeFile(join(dir, 'notes.txt'), 'not a definition');
    const logs: string[] = [];
    const ts = await startTestServer({ settings: { metadefsDir: dir }, log: (l) => logs.push(l) });
    try {
      const admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
      const list = await admin.req('GET', '/v2/metadefs/namespaces');
      expect(list.json.namespaces.map((n: any) => n.namespace).sort()).toEqual(['ok:one', 'ok:two']);
      const one = await admin.req('GET', '/v2/metadefs/namespaces/ok:one');
      expect(one.json).toMatchObject({ owner: 'admin', visibility: 'public', protected: false });
      expect(one.json.updated_at).toBeUndefined();
      expect(one.json.objects[0].required).toEqual(['p']);
      expect(one.json.tags.map((t: any) => t.name).sort()).toEqual(['t1', 't2']);
      const skipped = logs.filter((l) => l.startsWith('metadefs: skipped'));
      expect(skipped.map((l) => l.slice(`metadefs: skipped ${dir}/`.length).split(':')[0])).toEqual([
        'b-malformed.json',
        'c-no-namespace.json',
        'd-array.json',
        'e-half.json',
        'f-db.json',
        'g-unknown-attr.json',
        'j-bad-utf8.json',
      ]);
      for (const l of skipped) expect(l.includes('\n'), l).toBe(false);
      // f-db.json got as far as the database, whose error undid the whole file.
      expect(skipped.find((l) => l.includes('f-db.json'))).toContain('f-db.json: database: ');
      expect(logs).toContain(`metadefs: namespace ok:one of ${dir}/h-dup.json already exists; skipped`);
      expect(logs).toContain(`metadefs: loaded 2 namespace(s) from 10 file(s) in ${dir}, 7 skipped`);
      for (const n of ['bad:json', 'bad:half', 'bad:db', 'bad:attr'])
        expect((await admin.req('GET', `/v2/metadefs/namespaces/${n}`)).status, n).toBe(404);
      // The resource type came from the good files only, protected (nothing deletes it).
      const types = await admin.req('GET', '/v2/metadefs/resource_types');
      expect(types.json.resource_types).toEqual([
        { name: 'OS::Glance::Image', created_at: expect.any(String) },
      ]);
    } finally {
      await ts.stop();
    }
  });

  it('loads once per database: what an admin deleted does not come back on restart', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'one.json'), JSON.stringify(good('once:one')));
    const data = await tempDir();
    const logs: string[] = [];
    const start = () =>
      startServer({
        port: 0,
        dataDir: data,
        adminPassword: 'pw',
        settings: { metadefsDir: dir },
        log: (l) => logs.push(l),
      });
    let s = await start();
    let admin = await Api.login(s.url, 'admin', 'pw', 'admin');
    expect((await admin.req('DELETE', '/v2/metadefs/namespaces/once:one')).status).toBe(204);
    await s.close();
    await writeFile(join(dir, 'two.json'), JSON.stringify(good('once:two')));
    s = await start();
    admin = await Api.login(s.url, 'admin', 'pw', 'admin');
    expect((await admin.req('GET', '/v2/metadefs/namespaces')).json.namespaces).toEqual([]);
    await s.close();
    expect(logs.filter((l) => l.startsWith('metadefs: loaded'))).toHaveLength(1);
  });

  it('without a directory loads nothing; a missing directory is one log line', async () => {
    const logs: string[] = [];
    const ts = await startTestServer({
      settings: { metadefsDir: '/nonexistent/metadefs' },
      log: (l) => logs.push(l),
    });
    try {
      const admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
      expect((await admin.req('GET', '/v2/metadefs/namespaces')).json.namespaces).toEqual([]);
      expect(logs.filter((l) => l.startsWith('metadefs:'))).toEqual([
        expect.stringMatching(/^metadefs: cannot read \/nonexistent\/metadefs: ENOENT/),
      ]);
    } finally {
      await ts.stop();
    }
    expect(defaultMetadefsDir()).toBe(DIR);
  });
});
