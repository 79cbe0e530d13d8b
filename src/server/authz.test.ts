/**
 * The authorization matrix: owner, members (pending / accepted / rejected), another project
 * and admin, against every image and member endpoint, each cell on a fresh shared image so
 * that no cell depends on another. Expected answers are Glance 25's (default policies).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgOk } from '../test/oracle.js';
import { ADMIN_PASSWORD, Api, addProjectUser, startTestServer, type TestServer } from './test/harness.js';

let ts: TestServer;
const who: Record<string, Api> = {};
type Actor = 'owner' | 'pending' | 'accepted' | 'rejected' | 'other' | 'admin';
const ACTORS: Actor[] = ['owner', 'pending', 'accepted', 'rejected', 'other', 'admin'];

beforeAll(async () => {
  ts = await startTestServer();
  who['admin'] = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
  for (const a of ['owner', 'pending', 'accepted', 'rejected', 'other'] as const) {
    await addProjectUser(who['admin']!, `p-${a}`, `u-${a}`, `pw-${a}`);
    who[a] = await Api.login(ts.url, `u-${a}`, `pw-${a}`, `p-${a}`);
  }
});
afterAll(async () => {
  await ts?.stop();
});

const DATA = new Uint8Array(4096).fill(7);

/** A fresh active shared image with three members in the three states. */
async function fixture(): Promise<string> {
  const owner = who['owner']!;
  const img = await owner.createImage({ name: 'm', disk_format: 'raw', container_format: 'bare' });
  expect(await owner.upload(img.id, DATA)).toBe(204);
  for (const s of ['pending', 'accepted', 'rejected'] as const) {
    const r = await owner.req('POST', `/v2/images/${img.id}/members`, { member: who[s]!.projectId });
    expect(r.status).toBe(200);
    if (s !== 'pending') {
      const u = await who[s]!.req('PUT', `/v2/images/${img.id}/members/${who[s]!.projectId}`, { status: s });
      expect(u.status).toBe(200);
    }
  }
  return img.id;
}

interface Cell {
  name: string;
  call: (api: Api, id: string) => Promise<{ status: number }>;
  expect: Record<Actor, number>;
}

const M = (o: number, p: number, a: number, r: number, x: number, ad: number): Record<Actor, number> => ({
  owner: o,
  pending: p,
  accepted: a,
  rejected: r,
  other: x,
  admin: ad,
});

const cells: Cell[] = [
  {
    name: 'GET image',
    call: (api, id) => api.req('GET', `/v2/images/${id}`),
    expect: M(200, 200, 200, 200, 404, 200),
  },
  {
    name: 'PATCH image',
    call: (api, id) => api.patch(id, [{ op: 'replace', path: '/name', value: 'x' }]),
    expect: M(200, 403, 403, 403, 404, 200),
  },
  {
    name: 'PATCH add property',
    call: (api, id) => api.patch(id, [{ op: 'add', path: '/color', value: 'red' }]),
    expect: M(200, 403, 403, 403, 404, 200),
  },
  {
    name: 'DELETE image',
    call: (api, id) => api.req('DELETE', `/v2/images/${id}`),
    expect: M(204, 403, 403, 403, 404, 204),
  },
  {
    name: 'GET file',
    call: (api, id) => api.req('GET', `/v2/images/${id}/file`),
    expect: M(200, 200, 200, 200, 404, 200),
  },
  {
    name: 'GET export',
    call: (api, id) => api.req('GET', `/v2/images/${id}/export?disk_format=qcow2`),
    expect: M(200, 200, 200, 200, 404, 200),
  },
  {
    // Into the caller's own project: whoever may read the data may make a master of it.
    name: 'POST flatten',
    call: (api, id) => api.req('POST', `/v2/images/${id}/actions/flatten`, { name: 'mine' }),
    expect: M(202, 202, 202, 202, 404, 202),
  },
  {
    name: 'PUT file (already active)',
    call: (api, id) => api.req('PUT', `/v2/images/${id}/file`, DATA),
    expect: M(409, 403, 403, 403, 404, 409),
  },
  {
    name: 'deactivate',
    call: (api, id) => api.req('POST', `/v2/images/${id}/actions/deactivate`),
    expect: M(204, 403, 403, 403, 404, 204),
  },
  {
    name: 'reactivate',
    call: (api, id) => api.req('POST', `/v2/images/${id}/actions/reactivate`),
    expect: M(204, 403, 403, 403, 404, 204),
  },
  {
    name: 'PUT tag',
    call: (api, id) => api.req('PUT', `/v2/images/${id}/tags/t1`),
    expect: M(204, 403, 403, 403, 404, 204),
  },
  {
    name: 'DELETE tag (absent)',
    call: (api, id) => api.req('DELETE', `/v2/images/${id}/tags/t1`),
    expect: M(404, 403, 403, 403, 404, 404),
  },
  {
    name: 'GET members',
    call: (api, id) => api.req('GET', `/v2/images/${id}/members`),
    expect: M(200, 200, 200, 200, 404, 200),
  },
  {
    name: 'POST member',
    call: (api, id) => api.req('POST', `/v2/images/${id}/members`, { member: 'newproject' }),
    expect: M(200, 403, 403, 403, 404, 200),
  },
  {
    name: "GET the pending member's membership",
    call: (api, id) => api.req('GET', `/v2/images/${id}/members/${who['pending']!.projectId}`),
    expect: M(200, 200, 404, 404, 404, 200),
  },
  {
    name: "PUT the pending member's status",
    call: (api, id) =>
      api.req('PUT', `/v2/images/${id}/members/${who['pending']!.projectId}`, { status: 'accepted' }),
    expect: M(403, 200, 404, 404, 404, 200),
  },
  {
    name: "DELETE the pending member's membership",
    call: (api, id) => api.req('DELETE', `/v2/images/${id}/members/${who['pending']!.projectId}`),
    expect: M(204, 403, 404, 404, 404, 204),
  },
];

describe('authorization matrix on a shared image', () => {
  for (const cell of cells) {
    it(cell.name, async () => {
      const got: Record<string, number> = {};
      for (const a of ACTORS) {
        const id = await fixture();
        got[a] = (await cell.call(who[a]!, id)).status;
      }
      expect(got).toEqual(cell.expect);
    });
  }

  it('member lists: the owner and admin see every member, a member only itself', async () => {
    const id = await fixture();
    const count = async (a: Actor) => {
      const r = await who[a]!.req('GET', `/v2/images/${id}/members`);
      return (r.json.members as { member_id: string }[]).map((m) => m.member_id).sort();
    };
    const all = ['pending', 'accepted', 'rejected'].map((a) => who[a]!.projectId).sort();
    expect(await count('owner')).toEqual(all);
    expect(await count('admin')).toEqual(all);
    for (const a of ['pending', 'accepted', 'rejected'] as const)
      expect(await count(a)).toEqual([who[a]!.projectId]);
  });

  it('image lists: who sees the shared image, by member_status', async () => {
    const id = await fixture();
    const sees = async (a: Actor, q = '') => {
      const r = await who[a]!.req('GET', `/v2/images?limit=1000${q}`);
      return (r.json.images as { id: string }[]).some((i) => i.id === id);
    };
    expect(await sees('owner')).toBe(true);
    expect(await sees('accepted')).toBe(true);
    expect(await sees('pending')).toBe(false);
    expect(await sees('rejected')).toBe(false);
    expect(await sees('other')).toBe(false);
    expect(await sees('admin')).toBe(true);
    expect(await sees('pending', '&member_status=pending')).toBe(true);
    expect(await sees('rejected', '&member_status=rejected')).toBe(true);
    expect(await sees('rejected', '&member_status=all')).toBe(true);
    expect(await sees('accepted', '&member_status=pending')).toBe(false);
    expect(await sees('other', '&member_status=all&visibility=all')).toBe(false);
  });

  it('private and community images; members only on shared images; publicize is admin-only', async () => {
    const owner = who['owner']!;
    const priv = await owner.createImage({ name: 'p', visibility: 'private' });
    for (const a of ['pending', 'accepted', 'rejected', 'other'] as const)
      expect((await who[a]!.req('GET', `/v2/images/${priv.id}`)).status).toBe(404);
    expect((await who['admin']!.req('GET', `/v2/images/${priv.id}`)).status).toBe(200);
    const add = await owner.req('POST', `/v2/images/${priv.id}/members`, { member: who['other']!.projectId });
    expect(add.status).toBe(403);
    expect(add.text).toMatch(/Only shared images have members/);

    const comm = await owner.createImage({ name: 'c', visibility: 'community' });
    expect((await who['other']!.req('GET', `/v2/images/${comm.id}`)).status).toBe(200);
    const listed = async (q: string) =>
      ((await who['other']!.req('GET', `/v2/images${q}`)).json.images as { id: string }[]).some(
        (i) => i.id === comm.id,
      );
    expect(await listed('')).toBe(false); // community images are not in default lists
    expect(await listed('?visibility=community')).toBe(true);
    expect((await who['other']!.patch(comm.id, [{ op: 'replace', path: '/name', value: 'z' }])).status).toBe(
      403,
    );

    expect(
      (await owner.patch(priv.id, [{ op: 'replace', path: '/visibility', value: 'public' }])).status,
    ).toBe(403);
    expect((await owner.req('POST', '/v2/images', { name: 'pub', visibility: 'public' })).status).toBe(403);
    expect(
      (await who['admin']!.patch(priv.id, [{ op: 'replace', path: '/visibility', value: 'public' }])).status,
    ).toBe(200);
    expect((await who['other']!.req('GET', `/v2/images/${priv.id}`)).status).toBe(200);
    // Creating an image for another project is refused, except to admin.
    expect(
      (await owner.req('POST', '/v2/images', { name: 'x', owner: who['other']!.projectId })).status,
    ).toBe(403);
    expect(
      (await who['admin']!.req('POST', '/v2/images', { name: 'x', owner: who['other']!.projectId })).status,
    ).toBe(201);
  });

  it('deactivated images: only admin downloads', async () => {
    const id = await fixture();
    expect((await who['owner']!.req('POST', `/v2/images/${id}/actions/deactivate`)).status).toBe(204);
    expect((await who['owner']!.req('GET', `/v2/images/${id}/file`)).status).toBe(403);
    expect((await who['accepted']!.req('GET', `/v2/images/${id}/file`)).status).toBe(403);
    expect((await who['admin']!.req('GET', `/v2/images/${id}/file`)).status).toBe(200);
  });

  it('overlays across projects: members need the master; export and flatten need it too', async () => {
    const owner = who['owner']!;
    const master = await fixture();
    // An overlay of the shared master (a qcow2 naming any backing file; the name is ignored).
    const dir = mkdtempSync(join(tmpdir(), 'vdisk-authz-'));
    try {
      qemuImgOk(['create', '-f', 'qcow2', '-b', 'x', '-F', 'raw', '-u', join(dir, 'o.qcow2'), '4096']);
      const ov = await owner.createImage({
        disk_format: 'qcow2',
        container_format: 'bare',
        backing_image_id: master,
      });
      expect(await owner.upload(ov.id, readFileSync(join(dir, 'o.qcow2')))).toBe(204);
      for (const a of ['pending', 'accepted', 'rejected'] as const)
        expect(
          (await owner.req('POST', `/v2/images/${ov.id}/members`, { member: who[a]!.projectId })).status,
        ).toBe(200);
      const exportOf = async (a: Actor) =>
        (await who[a]!.req('GET', `/v2/images/${ov.id}/export?disk_format=raw`)).status;
      const got: Record<string, number> = {};
      for (const a of ACTORS) got[a] = await exportOf(a);
      expect(got).toEqual(M(200, 200, 200, 200, 404, 200));
      // The master is unshared with 'accepted': the overlay's own bytes still, not its export.
      expect(
        (await owner.req('DELETE', `/v2/images/${master}/members/${who['accepted']!.projectId}`)).status,
      ).toBe(204);
      expect((await who['accepted']!.req('GET', `/v2/images/${ov.id}/file`)).status).toBe(200);
      expect(await exportOf('accepted')).toBe(403);
      expect((await who['accepted']!.req('POST', `/v2/images/${ov.id}/actions/flatten`, {})).status).toBe(
        403,
      );
      // A new member that cannot see the master is refused (409), one that can is added.
      const add = await owner.req('POST', `/v2/images/${ov.id}/members`, { member: who['other']!.projectId });
      expect(add.status).toBe(409);
      expect(
        (await owner.req('POST', `/v2/images/${master}/members`, { member: who['other']!.projectId })).status,
      ).toBe(200);
      expect(
        (await owner.req('POST', `/v2/images/${ov.id}/members`, { member: who['other']!.projectId })).status,
      ).toBe(200);
      expect(await exportOf('other')).toBe(200);
      // The master cannot go while the overlay needs it, whoever asks.
      expect((await owner.req('DELETE', `/v2/images/${master}`)).status).toBe(409);
      expect((await who['admin']!.req('DELETE', `/v2/images/${master}`)).status).toBe(409);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('no token or a revoked token: 401', async () => {
    const r = await fetch(`${ts.url}/v2/images`);
    expect(r.status).toBe(401);
    const api = await Api.login(ts.url, 'u-other', 'pw-other', 'p-other');
    expect((await api.req('GET', '/v2/images')).status).toBe(200);
    const rev = await api.req('DELETE', '/v3/auth/tokens', undefined, { 'X-Subject-Token': api.token });
    expect(rev.status).toBe(204);
    expect((await api.req('GET', '/v2/images')).status).toBe(401);
  });
});
