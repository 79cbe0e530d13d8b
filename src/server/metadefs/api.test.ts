/* biome-ignore-all lint/suspicious/noExplicitAny: API answers are parsed JSON of many shapes. */
/**
 * The metadefs API on its own: each route's statuses and bodies, the policies (admin, a
 * member of the owning project, a member of another project; private and public
 * namespaces), the resource-type prefixes, X-Openstack-Append, and hostile bodies (never a
 * 500). src/server/metadefs/side-by-side.test.ts checks the same routes against Glance.
 */
import { randomBytes } from 'node:crypto';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ADMIN_PASSWORD,
  Api,
  addProjectUser,
  runClient,
  startTestServer,
  type TestServer,
} from '../test/harness.js';

let ts: TestServer;
let admin: Api;
/** A member of project `owner`, which owns the namespaces `owned-*`. */
let owner: Api;
/** A member of another project. */
let other: Api;
/** A reader only, of the owner project. */
let reader: Api;

const NS = '/v2/metadefs/namespaces';

beforeAll(async () => {
  ts = await startTestServer({ settings: { metadefsDir: null } });
  admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
  const ownerProject = await addProjectUser(admin, 'owner', 'owner1', 'pw-owner1');
  owner = await Api.login(ts.url, 'owner1', 'pw-owner1', 'owner');
  await addProjectUser(admin, 'other', 'other1', 'pw-other1');
  other = await Api.login(ts.url, 'other1', 'pw-other1', 'other');
  const u = await admin.req('POST', '/v3/users', {
    user: { name: 'reader1', password: 'pw-reader1', default_project_id: ownerProject },
  });
  const roles = await admin.req('GET', '/v3/roles?name=reader');
  await admin.req(
    'PUT',
    `/v3/projects/${ownerProject}/users/${u.json.user.id}/roles/${roles.json.roles[0].id}`,
  );
  reader = await Api.login(ts.url, 'reader1', 'pw-reader1', 'owner');
}, 120_000);

afterAll(async () => {
  await ts?.stop();
});

describe('namespaces', () => {
  it('creates a namespace with its contents and shows it back', async () => {
    const r = await admin.req('POST', NS, {
      namespace: 'api:full',
      display_name: 'Full',
      description: 'everything',
      visibility: 'public',
      protected: false,
      resource_type_associations: [{ name: 'OS::Glance::Image', prefix: 'img_' }],
      properties: { size: { type: 'integer', title: 'Size', minimum: 1, default: 4 } },
      objects: [{ name: 'Obj', required: ['a'], properties: { a: { type: 'string', title: 'A' } } }],
      tags: [{ name: 'x' }],
    });
    expect(r.status).toBe(201);
    expect(r.headers.get('location')).toBe(`${ts.url}${NS}/api:full`);
    expect(r.json).toMatchObject({
      namespace: 'api:full',
      visibility: 'public',
      protected: false,
      owner: admin.projectId,
      resource_type_associations: [{ name: 'OS::Glance::Image', prefix: 'img_' }],
      properties: { size: { type: 'integer', title: 'Size', minimum: 1, default: '4' } },
      self: `${NS}/api:full`,
      schema: '/v2/schemas/metadefs/namespace',
    });
    expect(r.json.created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    const show = await other.req('GET', `${NS}/api:full`);
    expect(show.status).toBe(200);
    expect(show.json.objects).toEqual([
      {
        name: 'Obj',
        required: ['a'],
        properties: { a: { type: 'string', title: 'A' } },
        created_at: r.json.created_at,
        updated_at: r.json.created_at,
        self: `${NS}/api:full/objects/Obj`,
        schema: '/v2/schemas/metadefs/object',
      },
    ]);
    expect(show.json.tags).toEqual([{ name: 'x' }]);
    expect(show.json.resource_type_associations[0]).toMatchObject({
      name: 'OS::Glance::Image',
      prefix: 'img_',
    });
    // The prefix of a resource type, on properties and objects' properties and required.
    const pre = await other.req('GET', `${NS}/api:full?resource_type=OS::Glance::Image`);
    expect(Object.keys(pre.json.properties)).toEqual(['img_size']);
    expect(pre.json.objects[0].required).toEqual(['img_a']);
    expect(Object.keys(pre.json.objects[0].properties)).toEqual(['img_a']);
    const types = await other.req('GET', '/v2/metadefs/resource_types');
    expect(types.json.resource_types.map((t: any) => t.name)).toEqual(['OS::Glance::Image']);
  });

  it('refuses duplicates, bad bodies and read-only attributes as Glance', async () => {
    await admin.req('POST', NS, { namespace: 'api:dup' });
    const dup = await admin.req('POST', NS, { namespace: 'api:dup' });
    expect(dup.status).toBe(409);
    expect(dup.text).toBe('409 Conflict\n\nThe metadata definition namespace=api:dup already exists.\n\n   ');
    const ro = await admin.req('POST', NS, { namespace: 'x', self: 'y' });
    expect([ro.status, ro.text]).toEqual([403, "403 Forbidden\n\nAttribute 'self' is read-only.\n\n   "]);
    const bad = await admin.req('POST', NS, { namespace: 'x', visibility: 'shared' });
    expect(bad.status).toBe(400);
    expect(bad.text).toContain(
      "Provided object does not match schema 'namespace': 'shared' is not one of ['public', 'private']  Failed validating 'enum' in schema['properties']['visibility']:",
    );
    const none = await admin.req('POST', NS, undefined, { 'Content-Type': 'application/json' });
    expect([none.status, none.text]).toEqual([400, '400 Bad Request\n\nBody expected in request.\n\n   ']);
  });

  it('lists with pagination links, sorting and filters', async () => {
    for (const n of ['api:p1', 'api:p2', 'api:p3'])
      await admin.req('POST', NS, { namespace: n, visibility: 'public' });
    const page = await admin.req('GET', `${NS}?limit=2&sort_key=namespace&sort_dir=asc&visibility=public`);
    expect(page.status).toBe(200);
    expect(page.json.namespaces.map((n: any) => n.namespace)).toEqual(['api:full', 'api:p1']);
    expect(page.json.first).toBe(
      '/v2/metadefs/namespaces?limit=2&sort_key=namespace&sort_dir=asc&visibility=public',
    );
    expect(page.json.next).toBe(
      '/v2/metadefs/namespaces?limit=2&sort_key=namespace&sort_dir=asc&visibility=public&marker=api%3Ap1',
    );
    const next = await admin.req('GET', page.json.next);
    expect(next.json.namespaces.map((n: any) => n.namespace)).toEqual(['api:p2', 'api:p3']);
    const last = await admin.req('GET', next.json.next);
    expect(last.json.namespaces).toEqual([]);
    expect(last.json.next).toBeUndefined();
    // Newest first by default.
    const all = await admin.req('GET', NS);
    expect(all.json.namespaces[0].namespace).toBe('api:p3');
    const byType = await admin.req('GET', `${NS}?resource_types=OS::Glance::Image,OS::Nope`);
    expect(byType.json.namespaces.map((n: any) => n.namespace)).toEqual(['api:full']);
    for (const [q, msg] of [
      ['sort_dir=up', 'Invalid sort direction: up'],
      ['visibility=shared', 'Invalid visibility value: shared'],
      ['limit=-1', 'limit param must be positive'],
      ['limit=x', 'limit param must be an integer'],
      ['sort_key=nope', 'Sort key supplied is invalid: nope'],
    ] as const) {
      const r = await admin.req('GET', `${NS}?${q}`);
      expect([r.status, r.text], q).toEqual([400, `400 Bad Request\n\n${msg}\n\n   `]);
    }
    const m = await admin.req('GET', `${NS}?marker=nope`);
    expect([m.status, m.text]).toEqual([
      404,
      '404 Not Found\n\nMetadata definition namespace=nope was not found.\n\n   ',
    ]);
  });

  it('updates (PUT replaces: what is not given is reset) and deletes', async () => {
    await admin.req('POST', NS, {
      namespace: 'api:upd',
      description: 'd',
      display_name: 'D',
      visibility: 'public',
    });
    const u = await admin.req('PUT', `${NS}/api:upd`, { namespace: 'api:upd2', protected: true });
    expect(u.status).toBe(200);
    expect(u.json).toMatchObject({ namespace: 'api:upd2', visibility: 'private', protected: true });
    expect(u.json.description).toBeUndefined();
    expect((await admin.req('GET', `${NS}/api:upd`)).status).toBe(404);
    const del = await admin.req('DELETE', `${NS}/api:upd2`);
    expect([del.status, del.text]).toEqual([
      403,
      '403 Forbidden\n\nMetadata definition namespace api:upd2 is protected and cannot be deleted.\n\n   ',
    ]);
    await admin.req('PUT', `${NS}/api:upd2`, { namespace: 'api:upd2' });
    expect((await admin.req('DELETE', `${NS}/api:upd2`)).status).toBe(204);
    expect((await admin.req('DELETE', `${NS}/api:upd2`)).status).toBe(404);
  });
});

describe('policies (Glance 25 defaults: reads by visibility, writes by admins)', () => {
  beforeAll(async () => {
    expect(
      (
        await admin.req('POST', NS, {
          namespace: 'owned-private',
          owner: owner.projectId,
          objects: [{ name: 'o' }],
        })
      ).status,
    ).toBe(201);
    expect(
      (
        await admin.req('POST', NS, {
          namespace: 'owned-public',
          owner: owner.projectId,
          visibility: 'public',
          objects: [{ name: 'o' }],
          tags: [{ name: 't' }],
          properties: { p: { type: 'string', title: 'P' } },
        })
      ).status,
    ).toBe(201);
    expect((await admin.req('POST', NS, { namespace: 'admin-private' })).status).toBe(201);
  });

  it('lets each caller read what it may see, and nothing else', async () => {
    const names = async (api: Api) =>
      (await api.req('GET', `${NS}?limit=1000`)).json.namespaces.map((n: any) => n.namespace);
    expect(await names(admin)).toEqual(
      expect.arrayContaining(['owned-private', 'owned-public', 'admin-private']),
    );
    expect(await names(owner)).toEqual(expect.arrayContaining(['owned-private', 'owned-public']));
    expect(await names(owner)).not.toContain('admin-private');
    expect(await names(reader)).toContain('owned-private');
    expect(await names(other)).toContain('owned-public');
    expect(await names(other)).not.toContain('owned-private');
    for (const api of [owner, reader]) {
      expect((await api.req('GET', `${NS}/owned-private`)).status).toBe(200);
      expect((await api.req('GET', `${NS}/owned-private/objects/o`)).status).toBe(200);
    }
    const hidden = await other.req('GET', `${NS}/owned-private`);
    expect([hidden.status, hidden.text]).toEqual([
      404,
      '404 Not Found\n\nThe resource could not be found.\n\n   ',
    ]);
    const objs = await other.req('GET', `${NS}/owned-private/objects`);
    expect([objs.status, objs.text]).toEqual([
      404,
      '404 Not Found\n\nNamespace owned-private not found\n\n   ',
    ]);
    for (const sub of ['properties', 'tags', 'resource_types'])
      expect((await other.req('GET', `${NS}/owned-private/${sub}`)).status, sub).toBe(404);
    expect((await other.req('GET', `${NS}/owned-public/objects/o`)).status).toBe(200);
    // A private namespace is not a marker for who cannot see it.
    const mk = await other.req('GET', `${NS}?marker=owned-private`);
    expect([mk.status, mk.text]).toEqual([
      403,
      '403 Forbidden\n\nForbidding request, metadata definition namespace=owned-private is not visible.\n\n   ',
    ]);
  });

  it('refuses every write to non-admins, even in their own project (403), and hides what they cannot see (404)', async () => {
    const writes: [string, string, unknown, string][] = [
      ['POST', NS, { namespace: 'mine' }, 'add_metadef_namespace'],
      ['PUT', `${NS}/NS`, { namespace: 'NS' }, 'modify_metadef_namespace'],
      ['DELETE', `${NS}/NS`, undefined, 'delete_metadef_namespace'],
      ['POST', `${NS}/NS/objects`, { name: 'x' }, 'add_metadef_object'],
      ['PUT', `${NS}/NS/objects/o`, { name: 'o' }, 'modify_metadef_object'],
      ['DELETE', `${NS}/NS/objects/o`, undefined, 'delete_metadef_object'],
      ['DELETE', `${NS}/NS/objects`, undefined, 'delete_metadef_namespace'],
      ['POST', `${NS}/NS/properties`, { name: 'x', type: 'string', title: 'X' }, 'add_metadef_property'],
      ['PUT', `${NS}/NS/properties/p`, { name: 'p', type: 'string', title: 'X' }, 'modify_metadef_property'],
      ['DELETE', `${NS}/NS/properties/p`, undefined, 'remove_metadef_property'],
      ['DELETE', `${NS}/NS/properties`, undefined, 'delete_metadef_namespace'],
      ['POST', `${NS}/NS/tags`, { tags: [{ name: 'a' }] }, 'add_metadef_tags'],
      ['POST', `${NS}/NS/tags/new`, undefined, 'add_metadef_tag'],
      ['PUT', `${NS}/NS/tags/t`, { name: 'u' }, 'modify_metadef_tag'],
      ['DELETE', `${NS}/NS/tags/t`, undefined, 'delete_metadef_tag'],
      ['DELETE', `${NS}/NS/tags`, undefined, 'delete_metadef_namespace'],
      ['POST', `${NS}/NS/resource_types`, { name: 'OS::X' }, 'add_metadef_resource_type_association'],
      ['DELETE', `${NS}/NS/resource_types/OS::X`, undefined, 'remove_metadef_resource_type_association'],
    ];
    for (const [method, path, body, action] of writes) {
      for (const [who, api] of [
        ['owner', owner],
        ['reader', reader],
        ['other', other],
      ] as const) {
        for (const ns of ['owned-private', 'owned-public']) {
          const r = await api.req(method, path.replace('/NS', `/${ns}`), body);
          const label = `${who} ${method} ${path} on ${ns}`;
          if (ns === 'owned-private' && who === 'other' && path !== NS) {
            expect(r.status, label).toBe(404);
          } else {
            expect([r.status, r.text], label).toEqual([
              403,
              `403 Forbidden\n\nYou are not authorized to complete ${action} action.\n\n   `,
            ]);
          }
        }
      }
    }
    // Nothing changed.
    const after = await admin.req('GET', `${NS}/owned-public`);
    expect(after.json.objects.map((o: any) => o.name)).toEqual(['o']);
    expect(after.json.tags).toEqual([{ name: 't' }]);
    expect(Object.keys(after.json.properties)).toEqual(['p']);
  });

  it('lets an admin create for another project, and defaults the owner to the caller', async () => {
    const r = await admin.req('POST', NS, { namespace: 'api:default-owner' });
    expect(r.json.owner).toBe(admin.projectId);
    expect((await owner.req('GET', `${NS}/owned-private`)).json.owner).toBe(owner.projectId);
  });
});

describe('objects, properties, tags, resource types', () => {
  beforeAll(async () => {
    await admin.req('POST', NS, {
      namespace: 'api:c',
      visibility: 'public',
      resource_type_associations: [
        { name: 'OS::Nova::Flavor', prefix: 'hw:' },
        { name: 'OS::Cinder::Volume' },
      ],
    });
  });

  it('objects: create, show, list, update, delete', async () => {
    const P = `${NS}/api:c/objects`;
    const c = await admin.req('POST', P, {
      name: 'vm',
      description: 'd',
      properties: { a: { type: 'integer', title: 'A', maximum: 3.9 } },
    });
    expect(c.status).toBe(201);
    expect(c.json).toMatchObject({
      name: 'vm',
      description: 'd',
      properties: { a: { maximum: 3 } },
      self: `${P}/vm`,
    });
    expect(c.json.required).toBeUndefined();
    expect((await admin.req('GET', `${P}/vm`)).json.required).toEqual([]);
    expect((await admin.req('POST', P, { name: 'vm' })).status).toBe(409);
    const list = await other.req('GET', P);
    expect(list.json.schema).toBe('v2/schemas/metadefs/objects');
    expect(list.json.objects.map((o: any) => o.name)).toEqual(['vm']);
    const u = await admin.req('PUT', `${P}/vm`, { name: 'vm2', required: ['a'] });
    expect(u.status).toBe(200);
    expect(u.json.properties).toBeUndefined();
    expect((await admin.req('GET', `${P}/vm2`)).json).toMatchObject({ required: ['a'], properties: {} });
    expect((await admin.req('GET', `${P}/vm`)).text).toBe(
      '404 Not Found\n\nCould not find metadata object vm\n\n   ',
    );
    expect((await admin.req('DELETE', `${P}/vm2`)).status).toBe(204);
    const missing = await admin.req('GET', `${NS}/nope/objects`);
    expect(missing.text).toBe('404 Not Found\n\nMetadata definition namespace=nope was not found.\n\n   ');
  });

  it('properties: the resource type prefix rules', async () => {
    const P = `${NS}/api:c/properties`;
    const c = await admin.req('POST', P, { name: 'cpus', type: 'integer', title: 'CPUs', readonly: true });
    expect(c.status).toBe(201);
    expect(c.json).toEqual({ name: 'cpus', type: 'integer', title: 'CPUs', readonly: true });
    expect((await other.req('GET', `${P}/hw:cpus?resource_type=OS::Nova::Flavor`)).json.name).toBe('cpus');
    const noPrefix = await other.req('GET', `${P}/cpus?resource_type=OS::Nova::Flavor`);
    expect([noPrefix.status, noPrefix.text]).toEqual([
      404,
      "404 Not Found\n\nProperty cpus does not start with the expected resource type association prefix of 'hw:'.\n\n   ",
    ]);
    const none = await other.req('GET', `${P}/cpus?resource_type=OS::Cinder::Volume`);
    expect(none.text).toContain("expected resource type association prefix of 'None'.");
    const unknown = await other.req('GET', `${P}/cpus?resource_type=OS::Nope`);
    expect(unknown.text).toContain(
      'The metadata definition resource-type with name=OS::Nope, was not found.',
    );
    const list = await other.req('GET', P);
    expect(list.json).toEqual({
      properties: { cpus: { name: 'cpus', type: 'integer', title: 'CPUs', readonly: true } },
    });
    const u = await admin.req('PUT', `${P}/cpus`, { name: 'vcpus', type: 'integer', title: 'vCPUs' });
    expect(u.json).toEqual({ name: 'vcpus', type: 'integer', title: 'vCPUs' });
    expect((await admin.req('DELETE', `${P}/vcpus`)).status).toBe(204);
    expect((await admin.req('DELETE', `${P}/vcpus`)).text).toBe(
      '404 Not Found\n\nCould not find property vcpus\n\n   ',
    );
  });

  it('tags: one, many, X-Openstack-Append, update, delete', async () => {
    const T = `${NS}/api:c/tags`;
    const one = await admin.req('POST', `${T}/solo`);
    expect(one.status).toBe(201);
    expect(Object.keys(one.json)).toEqual(['name', 'created_at', 'updated_at']);
    // Without the header the list replaces the tags; with it, it adds to them.
    expect((await admin.req('POST', T, { tags: [{ name: 'a' }, { name: 'b' }] })).json).toEqual({
      tags: [{ name: 'a' }, { name: 'b' }],
    });
    const names = async () => (await other.req('GET', T)).json.tags.map((t: any) => t.name).sort();
    expect(await names()).toEqual(['a', 'b']);
    expect(
      (await admin.req('POST', T, { tags: [{ name: 'c' }] }, { 'X-Openstack-Append': 'true' })).status,
    ).toBe(201);
    expect(await names()).toEqual(['a', 'b', 'c']);
    const dup = await admin.req(
      'POST',
      T,
      { tags: [{ name: 'd' }, { name: 'a' }] },
      { 'X-Openstack-Append': '1' },
    );
    expect([dup.status, dup.text]).toEqual([
      409,
      '409 Conflict\n\nA metadata tag with name=a already exists in namespace=api:c. (Please note that metadata tag names are case insensitive).\n\n   ',
    ]);
    expect(await names()).toEqual(['a', 'b', 'c']);
    // X-Openstack-Append: false replaces.
    await admin.req('POST', T, { tags: [{ name: 'z' }] }, { 'X-Openstack-Append': 'false' });
    expect(await names()).toEqual(['z']);
    const page = await other.req('GET', `${T}?limit=1&sort_key=name&sort_dir=asc`);
    expect(page.json.tags).toEqual([{ name: 'z' }]);
    expect((await admin.req('PUT', `${T}/z`, { name: 'y' })).json.name).toBe('y');
    expect((await admin.req('GET', `${T}/z`)).text).toBe(
      '404 Not Found\n\nCould not find metadata tag z\n\n   ',
    );
    expect((await admin.req('DELETE', `${T}/y`)).status).toBe(204);
    expect((await admin.req('DELETE', T)).status).toBe(204);
    expect(await names()).toEqual([]);
  });

  it('resource types: associate (created on the fly), list, dissociate', async () => {
    const R = `${NS}/api:c/resource_types`;
    const a = await admin.req('POST', R, {
      name: 'OS::New::Thing',
      prefix: 'n_',
      properties_target: 'image',
    });
    expect(a.status).toBe(201);
    expect(a.json).toMatchObject({ name: 'OS::New::Thing', prefix: 'n_', properties_target: 'image' });
    const all = await other.req('GET', '/v2/metadefs/resource_types');
    expect(all.json.resource_types.map((t: any) => t.name)).toContain('OS::New::Thing');
    const list = await other.req('GET', R);
    expect(list.json.resource_type_associations.map((t: any) => t.name)).toEqual([
      'OS::Nova::Flavor',
      'OS::Cinder::Volume',
      'OS::New::Thing',
    ]);
    expect((await admin.req('POST', R, { name: 'OS::New::Thing' })).status).toBe(409);
    expect((await admin.req('DELETE', `${R}/OS::New::Thing`)).status).toBe(204);
    const again = await admin.req('DELETE', `${R}/OS::New::Thing`);
    expect(again.text).toBe('404 Not Found\n\nFailed to find resource type OS::New::Thing to delete\n\n   ');
  });

  it('a protected namespace keeps its contents', async () => {
    await admin.req('POST', NS, {
      namespace: 'api:prot',
      protected: true,
      objects: [{ name: 'o' }],
      tags: [{ name: 't' }],
      properties: { p: { type: 'string', title: 'P' } },
      resource_type_associations: [{ name: 'OS::Glance::Image' }],
    });
    const P = `${NS}/api:prot`;
    const cases: [string, string][] = [
      [`${P}/objects/o`, 'Metadata definition object o is protected and cannot be deleted.'],
      [`${P}/properties/p`, 'Metadata definition property p is protected and cannot be deleted.'],
      [`${P}/tags/t`, 'Metadata definition tag t is protected and cannot be deleted.'],
      [
        `${P}/resource_types/OS::Glance::Image`,
        'Metadata definition resource-type-association OS::Glance::Image is protected and cannot be deleted.',
      ],
      [`${P}/objects`, 'Metadata definition namespace api:prot is protected and cannot be deleted.'],
      [`${P}/tags`, 'Metadata definition namespace api:prot is protected and cannot be deleted.'],
      [`${P}/properties`, 'Metadata definition namespace api:prot is protected and cannot be deleted.'],
      [P, 'Metadata definition namespace api:prot is protected and cannot be deleted.'],
    ];
    for (const [path, msg] of cases) {
      const r = await admin.req('DELETE', path);
      expect([r.status, r.text], path).toEqual([403, `403 Forbidden\n\n${msg}\n\n   `]);
    }
    const still = await admin.req('GET', P);
    expect([still.json.objects.length, still.json.tags.length, Object.keys(still.json.properties)]).toEqual([
      1,
      1,
      ['p'],
    ]);
  });
});

describe('schemas and routes', () => {
  it('serves the ten metadef schemas; 404 for others; 405 with Allow', async () => {
    const names: Record<string, string> = {
      namespace: 'namespace',
      namespaces: 'namespaces',
      object: 'object',
      objects: 'objects',
      property: 'property',
      properties: 'properties',
      resource_type: 'resource_type_association',
      resource_types: 'resource_type_associations',
      tag: 'tag',
      tags: 'tags',
    };
    for (const [path, name] of Object.entries(names)) {
      const r = await other.req('GET', `/v2/schemas/metadefs/${path}`);
      expect([r.status, r.json.name], path).toEqual([200, name]);
    }
    expect((await other.req('GET', '/v2/schemas/metadefs/nope')).status).toBe(404);
    expect((await other.req('GET', '/v2/schemas/metadefs/toString')).status).toBe(404);
    const m = await admin.req('PATCH', `${NS}/x/tags/y`);
    expect([m.status, m.headers.get('allow')]).toEqual([405, 'GET, POST, PUT, DELETE']);
    expect(m.text).toBe('405 Method Not Allowed\n\nThe method PATCH is not allowed for this resource. \n\n ');
    const anon = await fetch(`${ts.url}${NS}`);
    expect(anon.status).toBe(401);
  });
});

describe('the real glance client (python-glanceclient 4.1.0) md-* commands', () => {
  it('creates, shows, lists and deletes through glance md-*', async () => {
    const g = (args: string[], as?: { user: string; password: string; project: string }) =>
      runClient(ts, 'glance', args, as, { closeStdin: true });
    let r = await g([
      'md-namespace-create',
      'cli:ns',
      '--visibility',
      'public',
      '--description',
      'from the CLI',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/\| namespace\s+\| cli:ns\s+\|/);
    r = await g([
      'md-property-create',
      'cli:ns',
      '--name',
      'speed',
      '--title',
      'Speed',
      '--schema',
      '{"type": "integer", "minimum": 1}',
    ]);
    expect(r.code, r.stderr).toBe(0);
    r = await g([
      'md-object-create',
      'cli:ns',
      '--name',
      'Disk',
      '--schema',
      '{"description": "d", "properties": {"rpm": {"type": "integer", "title": "RPM"}}}',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/\| properties\s+\| \["rpm"\]/);
    r = await g(['md-tag-create-multiple', 'cli:ns', '--names', 'fast,slow']);
    expect(r.code, r.stderr).toBe(0);
    r = await g(['md-resource-type-associate', 'cli:ns', '--name', 'OS::Glance::Image', '--prefix', 'hw_']);
    expect(r.code, r.stderr).toBe(0);
    r = await g(['md-namespace-show', 'cli:ns', '--resource-type', 'OS::Glance::Image']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('hw_speed');
    r = await g(['md-namespace-list', '--resource-types', 'OS::Glance::Image']);
    expect(r.stdout).toContain('cli:ns');
    r = await g(['md-tag-list', 'cli:ns']);
    expect(r.stdout).toMatch(/fast[\s\S]*slow|slow[\s\S]*fast/);
    // A member sees the public namespace, and gets Glance's 403 on a write.
    r = await g(['md-namespace-show', 'cli:ns'], { user: 'other1', password: 'pw-other1', project: 'other' });
    expect(r.code, r.stderr).toBe(0);
    r = await g(['md-tag-create', 'cli:ns', '--name', 'x'], {
      user: 'other1',
      password: 'pw-other1',
      project: 'other',
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('You are not authorized to complete add_metadef_tag action.');
    r = await g(['md-namespace-update', 'cli:ns', '--protected', 'true']);
    expect(r.code, r.stderr).toBe(0);
    r = await g(['md-namespace-delete', 'cli:ns']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('Metadata definition namespace cli:ns is protected and cannot be deleted.');
    await g(['md-namespace-update', 'cli:ns', '--protected', 'false']);
    r = await g(['md-namespace-delete', 'cli:ns']);
    expect(r.code, r.stderr).toBe(0);
    expect((await admin.req('GET', `${NS}/cli:ns`)).status).toBe(404);
  });
});

/** A request with exactly these bytes and headers. */
function raw(method: string, path: string, body: Buffer | string, headers: Record<string, string>) {
  return new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = request(
      `${ts.url}${path}`,
      { method, headers: { 'X-Auth-Token': admin.token, ...headers } },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString() }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

describe('hostile bodies: 400 or 413, never 500', () => {
  beforeAll(async () => {
    await admin.req('POST', NS, { namespace: 'api:fuzz', visibility: 'public' });
  });

  const targets: [string, string][] = [
    ['POST', NS],
    ['PUT', `${NS}/api:fuzz`],
    ['POST', `${NS}/api:fuzz/objects`],
    ['POST', `${NS}/api:fuzz/properties`],
    ['POST', `${NS}/api:fuzz/tags`],
    ['POST', `${NS}/api:fuzz/resource_types`],
  ];

  it('wrong types, odd JSON, huge and deep bodies, NUL, bad UTF-8', async () => {
    const deep = `${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}`;
    const deepList = `${'['.repeat(200_000)}${']'.repeat(200_000)}`;
    const bodies: (string | Buffer)[] = [
      '',
      'null',
      '"str"',
      '5',
      'true',
      '[]',
      '[1, {"namespace": "x"}]',
      '{"namespace": "x",',
      '{"namespace": NaN}',
      deep,
      deepList,
      JSON.stringify({ namespace: 'x'.repeat(500_000) }),
      JSON.stringify({ namespace: 'nul\u0000x' }),
      JSON.stringify({ namespace: 'x', description: 'a\u0000' }),
      JSON.stringify({ namespace: 'x', properties: { 'a\u0000': { type: 'string', title: 't' } } }),
      JSON.stringify({ namespace: 'x', properties: { ['k'.repeat(200)]: { type: 'string', title: 't' } } }),
      JSON.stringify({ namespace: 'x', objects: [{ name: 'o'.repeat(200) }] }),
      JSON.stringify({ namespace: 'x', tags: [{ name: 't'.repeat(200) }] }),
      JSON.stringify({ namespace: 'x', resource_type_associations: [{ name: 'r'.repeat(200) }] }),
      JSON.stringify({ tags: [{ name: 't'.repeat(200) }] }),
      JSON.stringify({
        namespace: 'x',
        properties: { p: { type: 'string', title: 't', default: { a: [1] } } },
      }),
      JSON.stringify({ namespace: 'x', properties: { p: { type: 'string', title: 't', items: 'x' } } }),
      JSON.stringify({
        namespace: 'x',
        properties: { p: { type: 'string', title: 't', readonly: 'maybe' } },
      }),
      JSON.stringify({ namespace: 'x', properties: { p: { type: 'string', title: 't', minimum: 1e300 } } }),
      JSON.stringify({ namespace: 'x', properties: { __proto__: { type: 'string', title: 't' } } }),
      JSON.stringify({ name: 'x', type: 'string', title: 't', minLength: '5' }),
      JSON.stringify({ name: 'x', type: 'string', title: 't', toString: 1 }),
      JSON.stringify({ tags: null }),
      JSON.stringify({ tags: [null] }),
      Buffer.from([0x7b, 0x22, 0x6e, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]),
      Buffer.alloc(2 << 20, 0x20),
    ];
    for (const [method, path] of targets) {
      for (const body of bodies) {
        const r = await raw(method, path, body, { 'Content-Type': 'application/json' });
        const label = `${method} ${path} ${String(body).slice(0, 60)}`;
        expect([400, 403, 404, 409, 413, 201, 200], label).toContain(r.status);
        expect(r.status, label).not.toBe(500);
      }
    }
    const big = await raw('POST', NS, Buffer.alloc(2 << 20, 0x20), { 'Content-Type': 'application/json' });
    expect(big.status).toBe(413);
    const nul = await raw('POST', NS, JSON.stringify({ namespace: 'nul\u0000x' }), {});
    expect(nul.text).toContain('Null characters are not allowed');
    const utf = await raw('POST', NS, Buffer.from([0x7b, 0xff, 0x7d]), {});
    expect(utf.text).toContain('could not be decoded by Glance');
  });

  it('random mutations of valid bodies never make a 500', async () => {
    const valid = [
      {
        namespace: 'm',
        objects: [{ name: 'o', properties: { p: { type: 'string', title: 'P', enum: ['a'] } } }],
      },
      { name: 'm', type: 'array', title: 'T', items: { type: 'string', enum: ['x'] }, minItems: 1 },
      { tags: [{ name: 'a' }, { name: 'b' }] },
      { name: 'OS::X', prefix: 'x_' },
    ];
    const values = [null, true, 0, -1, 1.5, '', 'x', [], {}, [null], { a: 1 }, '😀', 'x'.repeat(100)];
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const mutate = (v: any, depth = 0): any => {
      if (depth > 3 || rnd(4) === 0) return values[rnd(values.length)];
      if (Array.isArray(v)) return v.map((x) => (rnd(3) === 0 ? mutate(x, depth + 1) : x));
      if (typeof v === 'object' && v !== null) {
        const o: any = { ...v };
        for (const k of Object.keys(o)) if (rnd(3) === 0) o[k] = mutate(o[k], depth + 1);
        if (rnd(5) === 0) o[`k${rnd(3)}`] = values[rnd(values.length)];
        return o;
      }
      return values[rnd(values.length)];
    };
    let n = 0;
    for (let i = 0; i < 60; i++) {
      for (const [method, path] of targets) {
        const base = valid[rnd(valid.length)]!;
        const body = JSON.stringify(mutate(base));
        const r = await raw(method, path, body, { 'Content-Type': 'application/json' });
        expect(r.status, `${method} ${path} ${body}`).not.toBe(500);
        n++;
      }
    }
    expect(n).toBe(360);
    // And in paths and queries.
    const odd = [
      '%00',
      '%FF',
      encodeURIComponent('😀'.repeat(100)),
      'x'.repeat(3000),
      randomBytes(8).toString('hex'),
    ];
    for (const o of odd) {
      for (const p of [
        `${NS}/${o}`,
        `${NS}/api:fuzz/tags/${o}`,
        `${NS}?marker=${o}`,
        `${NS}?sort_key=${o}`,
        `${NS}/api:fuzz/properties/x?resource_type=${o}`,
      ]) {
        const r = await admin.req('GET', p);
        expect(r.status, p).not.toBe(500);
      }
      const t = await admin.req('POST', `${NS}/api:fuzz/tags/${o}`);
      expect(t.status, o).not.toBe(500);
    }
  });
});
