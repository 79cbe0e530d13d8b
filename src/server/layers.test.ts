/**
 * Layered images in the registry, against the real qemu-img: masters and overlays made by
 * qemu-img are uploaded with backing_image_id, exported in every format vdisk writes
 * (flattened, and as the top layer alone), flattened into new masters and rebased onto
 * another master; the rules on masters (upload checks, loops, depth, delete, members,
 * visibility, deactivation) are checked cell by cell.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../test/oracle.js';
import { ADMIN_PASSWORD, Api, addProjectUser, startTestServer, type TestServer } from './test/harness.js';

let ts: TestServer;
let admin: Api;
let teacher: Api;
let student: Api;
let dir: string;
let cleanup: () => void;
const MiB = 1 << 20;
const p = (n: string) => join(dir, n);
const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');

/** Local images made by qemu-img: master ← ov1 ← ov2 (ov2 is larger than its masters). */
function buildLocal(): void {
  qemuImgOk(['create', '-f', 'qcow2', p('master.qcow2'), `${24 * MiB}`]);
  qemuIo(p('master.qcow2'), ['write -P 0x61 0 6m', 'write -P 0x62 12m 3m'], 'qcow2');
  qemuImgOk(['create', '-f', 'qcow2', '-b', 'master.qcow2', '-F', 'qcow2', p('ov1.qcow2')]);
  qemuIo(p('ov1.qcow2'), ['write -P 0x71 1m 1m', 'write -z 4m 1m', 'write -P 0x72 20m 64k'], 'qcow2');
  qemuImgOk(['create', '-f', 'qcow2', '-b', 'ov1.qcow2', '-F', 'qcow2', p('ov2.qcow2'), `${28 * MiB}`]);
  qemuIo(p('ov2.qcow2'), ['write -P 0x81 1536k 64k', 'write -z 13m 512k', 'write -P 0x82 26m 1m'], 'qcow2');
  // A qed master and overlay, as the seed's workflow makes them.
  qemuImgOk(['create', '-f', 'qed', p('base.qed'), `${8 * MiB}`]);
  qemuIo(p('base.qed'), ['write -P 0x91 0 2m'], 'qed');
  qemuImgOk(['create', '-f', 'qed', '-b', 'base.qed', '-F', 'qed', p('diff.qed')]);
  qemuIo(p('diff.qed'), ['write -P 0x92 1m 1m'], 'qed');
}

async function upload(api: Api, file: string, fields: Record<string, unknown>): Promise<string> {
  const img = await api.createImage({ container_format: 'bare', ...fields });
  const r = await api.req('PUT', `/v2/images/${img.id}/file`, readFileSync(p(file)));
  expect(r.status, r.text).toBe(204);
  return img.id as string;
}

async function download(api: Api, path: string): Promise<{ status: number; body: Buffer; headers: Headers }> {
  const r = await fetch(`${api.url}${path}`, { headers: { 'X-Auth-Token': api.token } });
  return { status: r.status, body: Buffer.from(await r.arrayBuffer()), headers: r.headers };
}

let masterId: string;
let ov1Id: string;
let ov2Id: string;

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('vdisk-layers-'));
  buildLocal();
  ts = await startTestServer();
  admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
  await addProjectUser(admin, 'teachers', 'teacher', 'pw-t');
  await addProjectUser(admin, 'students', 'student', 'pw-s');
  teacher = await Api.login(ts.url, 'teacher', 'pw-t', 'teachers');
  student = await Api.login(ts.url, 'student', 'pw-s', 'students');
  masterId = await upload(teacher, 'master.qcow2', { name: 'master', disk_format: 'qcow2' });
  ov1Id = await upload(teacher, 'ov1.qcow2', {
    name: 'ov1',
    disk_format: 'qcow2',
    backing_image_id: masterId,
  });
  ov2Id = await upload(teacher, 'ov2.qcow2', { name: 'ov2', disk_format: 'qcow2', backing_image_id: ov1Id });
});
afterAll(async () => {
  await ts?.stop();
  cleanup?.();
});

describe('overlay uploads', () => {
  it('stores an overlay as uploaded: its own size, checksum and bytes, its own virtual size', async () => {
    const local = readFileSync(p('ov2.qcow2'));
    const r = await teacher.req('GET', `/v2/images/${ov2Id}`);
    expect(r.json.size).toBe(local.length);
    expect(r.json.checksum).toBe(md5(local));
    expect(r.json.os_hash_value).toBe(createHash('sha512').update(local).digest('hex'));
    expect(r.json.virtual_size).toBe(28 * MiB);
    expect(r.json.backing_image_id).toBe(ov1Id);
    const d = await download(teacher, `/v2/images/${ov2Id}/file`);
    expect(d.status).toBe(200);
    expect(md5(d.body)).toBe(md5(local));
  });

  it('refuses an overlay that names no master, saying how to name one', async () => {
    const img = await teacher.createImage({ name: 'x', disk_format: 'qcow2', container_format: 'bare' });
    const r = await teacher.req('PUT', `/v2/images/${img.id}/file`, readFileSync(p('ov1.qcow2')));
    expect(r.status).toBe(415);
    expect(r.text).toContain('names a backing file "master.qcow2"');
    expect(r.text).toContain('backing_image_id');
    expect((await teacher.req('GET', `/v2/images/${img.id}`)).json.status).toBe('queued');
  });

  it('refuses standalone data declared as an overlay, and an overlay smaller than its master', async () => {
    const a = await teacher.createImage({
      disk_format: 'qcow2',
      container_format: 'bare',
      backing_image_id: masterId,
    });
    const r1 = await teacher.req('PUT', `/v2/images/${a.id}/file`, readFileSync(p('master.qcow2')));
    expect(r1.status).toBe(415);
    expect(r1.text).toContain('is not an overlay');
    qemuImgOk(['create', '-f', 'qcow2', '-b', 'master.qcow2', '-F', 'qcow2', p('small.qcow2'), `${8 * MiB}`]);
    const b = await teacher.createImage({
      disk_format: 'qcow2',
      container_format: 'bare',
      backing_image_id: masterId,
    });
    const r2 = await teacher.req('PUT', `/v2/images/${b.id}/file`, readFileSync(p('small.qcow2')));
    expect(r2.status).toBe(415);
    expect(r2.text).toContain(`smaller than its master's (${24 * MiB}`);
  });

  it('checks the master when it is named and when data arrives', async () => {
    const missing = '11111111-2222-3333-4444-555555555555';
    const r1 = await teacher.req('POST', '/v2/images', {
      disk_format: 'qcow2',
      container_format: 'bare',
      backing_image_id: missing,
    });
    expect(r1.status).toBe(409);
    expect(r1.text).toContain(missing);
    const r2 = await teacher.req('POST', '/v2/images', {
      disk_format: 'raw',
      container_format: 'bare',
      backing_image_id: masterId,
    });
    expect(r2.status).toBe(400);
    expect(r2.text).toContain('Only qcow2 and qed images can name a master');
    // A master without data yet: the overlay waits.
    const queued = await teacher.createImage({ disk_format: 'qcow2', container_format: 'bare' });
    const ov = await teacher.createImage({
      disk_format: 'qcow2',
      container_format: 'bare',
      backing_image_id: queued.id,
    });
    const r3 = await teacher.req('PUT', `/v2/images/${ov.id}/file`, readFileSync(p('ov1.qcow2')));
    expect(r3.status).toBe(409);
    expect(r3.text).toContain('is queued');
    // A master the uploader cannot see (the teacher's image is not shared with the student).
    const r4 = await student.req('POST', '/v2/images', {
      disk_format: 'qcow2',
      container_format: 'bare',
      backing_image_id: masterId,
    });
    expect(r4.status).toBe(409);
  });

  it('names masters by PATCH while queued only, and refuses loops', async () => {
    const a = await teacher.createImage({ disk_format: 'qcow2', container_format: 'bare' });
    const b = await teacher.createImage({
      disk_format: 'qcow2',
      container_format: 'bare',
      backing_image_id: a.id,
    });
    const loop = await teacher.patch(a.id, [{ op: 'add', path: '/backing_image_id', value: b.id }]);
    expect(loop.status).toBe(409);
    expect(loop.text).toContain('loop');
    const self = await teacher.patch(a.id, [{ op: 'add', path: '/backing_image_id', value: a.id }]);
    expect(self.status).toBe(409);
    const ok = await teacher.patch(a.id, [{ op: 'add', path: '/backing_image_id', value: masterId }]);
    expect(ok.status).toBe(200);
    expect(ok.json.backing_image_id).toBe(masterId);
    const active = await teacher.patch(ov1Id, [{ op: 'replace', path: '/backing_image_id', value: a.id }]);
    expect(active.status).toBe(403);
    const removeActive = await teacher.patch(ov1Id, [{ op: 'remove', path: '/backing_image_id' }]);
    expect(removeActive.status).toBe(403);
  });

  it('limits the depth of chains', async () => {
    const shallow = await startTestServer({ settings: { maxChainDepth: 2 } });
    try {
      const a = await Api.login(shallow.url, 'admin', ADMIN_PASSWORD, 'admin');
      const m = await upload(a, 'master.qcow2', { disk_format: 'qcow2' });
      const o1 = await upload(a, 'ov1.qcow2', { disk_format: 'qcow2', backing_image_id: m });
      const o2 = await upload(a, 'ov2.qcow2', { disk_format: 'qcow2', backing_image_id: o1 });
      const r = await a.req('POST', '/v2/images', {
        disk_format: 'qcow2',
        container_format: 'bare',
        backing_image_id: o2,
      });
      expect(r.status).toBe(409);
      expect(r.text).toContain('limited to 2 masters');
    } finally {
      await shallow.stop();
    }
  });

  it('accepts qed, standalone and as an overlay', async () => {
    const base = await upload(teacher, 'base.qed', { disk_format: 'qed' });
    const diff = await upload(teacher, 'diff.qed', { disk_format: 'qed', backing_image_id: base });
    const r = await teacher.req('GET', `/v2/images/${diff}`);
    expect(r.json.virtual_size).toBe(8 * MiB);
    const out = await download(teacher, `/v2/images/${diff}/export?disk_format=raw`);
    expect(out.status).toBe(200);
    writeFileSync(p('diff-export.raw'), out.body);
    const cmp = qemuImg(['compare', '-f', 'qed', '-F', 'raw', p('diff.qed'), p('diff-export.raw')]);
    expect(cmp.stdout).toContain('Images are identical');
  });
});

describe('masters and their dependents', () => {
  it('lists direct dependents with the property filter and keeps a master that has some', async () => {
    const list = await teacher.req('GET', `/v2/images?backing_image_id=${masterId}`);
    expect(list.json.images.map((i: { id: string }) => i.id)).toContain(ov1Id);
    expect(list.json.images.map((i: { id: string }) => i.id)).not.toContain(ov2Id);
    const del = await teacher.req('DELETE', `/v2/images/${ov1Id}`);
    expect(del.status).toBe(409);
    expect(del.text).toMatch(/is the master of 1 image/);
    expect((await teacher.req('GET', `/v2/images/${ov1Id}`)).status).toBe(200);
  });

  it('shares an overlay only with projects that can see its masters', async () => {
    await teacher.patch(ov1Id, [{ op: 'replace', path: '/visibility', value: 'shared' }]);
    const r = await teacher.req('POST', `/v2/images/${ov1Id}/members`, { member: student.projectId });
    expect(r.status).toBe(409);
    expect(r.text).toContain(`share image ${masterId} with it first`);
    expect(
      (await teacher.req('POST', `/v2/images/${masterId}/members`, { member: student.projectId })).status,
    ).toBe(200);
    expect(
      (await teacher.req('POST', `/v2/images/${ov1Id}/members`, { member: student.projectId })).status,
    ).toBe(200);
    // The student sees both; then the master is unshared: the overlay's own bytes still come,
    // its export does not (403, naming the master).
    expect((await download(student, `/v2/images/${ov1Id}/export?disk_format=raw`)).status).toBe(200);
    expect((await teacher.req('DELETE', `/v2/images/${masterId}/members/${student.projectId}`)).status).toBe(
      204,
    );
    expect((await download(student, `/v2/images/${ov1Id}/file`)).status).toBe(200);
    const ex = await student.req('GET', `/v2/images/${ov1Id}/export?disk_format=raw`);
    expect(ex.status).toBe(403);
    expect(ex.text).toContain(`The master image ${masterId}`);
    const fl = await student.req('POST', `/v2/images/${ov1Id}/actions/flatten`, { name: 'mine' });
    expect(fl.status).toBe(403);
    expect((await teacher.req('DELETE', `/v2/images/${ov1Id}/members/${student.projectId}`)).status).toBe(
      204,
    );
  });

  it('a deactivated master stops the exports of its dependents (admins excepted)', async () => {
    expect((await teacher.req('POST', `/v2/images/${masterId}/actions/deactivate`)).status).toBe(204);
    try {
      const r = await teacher.req('GET', `/v2/images/${ov2Id}/export?disk_format=raw`);
      expect(r.status).toBe(403);
      expect(r.text).toContain('deactivated');
      expect((await download(teacher, `/v2/images/${ov2Id}/file`)).status).toBe(200);
      expect((await download(admin, `/v2/images/${ov2Id}/export?disk_format=raw`)).status).toBe(200);
    } finally {
      expect((await teacher.req('POST', `/v2/images/${masterId}/actions/reactivate`)).status).toBe(204);
    }
  });
});

/** Export formats: [query, engine format for qemu-img, may round the size up]. */
const EXPORTS: [string, string, boolean][] = [
  ['disk_format=raw', 'raw', false],
  ['disk_format=qcow2', 'qcow2', false],
  ['disk_format=qcow2&compress=true', 'qcow2', false],
  ['disk_format=qed', 'qed', false],
  ['disk_format=vmdk', 'vmdk', false],
  ['disk_format=vmdk&subformat=streamOptimized', 'vmdk', false],
  ['disk_format=vdi', 'vdi', false],
  ['disk_format=vhd', 'vpc', true],
  ['disk_format=vhd&subformat=fixed', 'vpc', true],
  ['disk_format=vhdx', 'vhdx', false],
  ['disk_format=qcow', 'qcow', false],
];

describe('export', () => {
  for (const [query, fmt, grows] of EXPORTS) {
    it(`${query}: an overlay two levels deep, flattened, checks and compares clean`, async () => {
      const r = await download(teacher, `/v2/images/${ov2Id}/export?${query}`);
      expect(r.status, r.body.toString()).toBe(200);
      const len = r.headers.get('content-length');
      if (len !== null) expect(Number(len)).toBe(r.body.length);
      expect(r.headers.get('content-disposition')).toMatch(/^attachment; filename="ov2\./);
      const out = p(`export-${query.replace(/[=&]/g, '_')}`);
      writeFileSync(out, r.body);
      if (fmt !== 'raw') {
        // qemu-img check knows no vpc or qcow (exit 63, "does not support checks").
        const chk = qemuImg(['check', '-f', fmt, out]);
        expect(chk.code, chk.stdout + chk.stderr).toBe(fmt === 'vpc' || fmt === 'qcow' ? 63 : 0);
      }
      const info = JSON.parse(qemuImgOk(['info', '--output=json', '-f', fmt, out]));
      expect(info['backing-filename']).toBeUndefined();
      if (grows) expect(info['virtual-size']).toBeGreaterThanOrEqual(28 * MiB);
      else expect(info['virtual-size']).toBe(28 * MiB);
      const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', fmt, p('ov2.qcow2'), out]);
      expect(cmp.stdout + cmp.stderr).toContain('Images are identical');
    });
  }

  it('vhd fixed for Azure: a whole number of MiB, exactly', async () => {
    const r = await download(teacher, `/v2/images/${ov2Id}/export?disk_format=vhd&subformat=fixed`);
    expect(r.body.length).toBe(28 * MiB + 512);
    expect(r.body.subarray(r.body.length - 512, r.body.length - 504).toString('latin1')).toBe('conectix');
  });

  it('flatten=false: the overlay alone, naming its master by image id', async () => {
    for (const [id, name] of [
      [ov2Id, 'ov2'],
      [ov1Id, 'ov1'],
    ] as const) {
      const r = await download(teacher, `/v2/images/${id}/export?disk_format=qcow2&flatten=false`);
      expect(r.status).toBe(200);
      writeFileSync(p(`layer-${name}`), r.body);
    }
    const m = await download(teacher, `/v2/images/${masterId}/file`);
    // Lay the chain out as the names say: each layer's file named by the image id it names.
    writeFileSync(p(ov1Id), readFileSync(p('layer-ov1')));
    writeFileSync(p(masterId), m.body);
    const info = JSON.parse(qemuImgOk(['info', '--output=json', '-f', 'qcow2', p('layer-ov2')]));
    expect(info['backing-filename']).toBe(ov1Id);
    expect(info['backing-filename-format']).toBe('qcow2');
    expect(readFileSync(p('layer-ov2')).length).toBeLessThan(4 * MiB);
    const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', p('ov2.qcow2'), p('layer-ov2')]);
    expect(cmp.stdout + cmp.stderr).toContain('Images are identical');
    const chain = qemuImgOk(['info', '--backing-chain', p('layer-ov2')]);
    expect(chain).toContain(masterId);
  });

  it('refuses what it cannot do with a clear 400', async () => {
    const bad = [
      ['disk_format=iso', "Cannot export to disk_format 'iso'"],
      ['disk_format=vmdk&subformat=monolithicFlat', "Invalid subformat 'monolithicFlat'"],
      ['disk_format=raw&subformat=fixed', 'has no subformat'],
      ['disk_format=vdi&flatten=false', "Backing file not supported for file format 'vdi'"],
      ['disk_format=raw&flatten=maybe', "Invalid value 'maybe' for flatten"],
      ['disk_format=vdi&compress=true', 'Compression not supported'],
    ];
    for (const [q, msg] of bad) {
      const r = await teacher.req('GET', `/v2/images/${ov2Id}/export?${q}`);
      expect(r.status, q).toBe(400);
      expect(r.text, q).toContain(msg);
    }
  });

  it('a client that goes away stops the export and leaves nothing behind; the server carries on', async () => {
    const work = join(ts.dir, 'data', 'work');
    // A streamed format, and one that goes through a temporary file (vhdx).
    for (const q of ['disk_format=raw', 'disk_format=vhdx']) {
      const ac = new AbortController();
      const r = await fetch(`${teacher.url}/v2/images/${ov2Id}/export?${q}`, {
        headers: { 'X-Auth-Token': teacher.token },
        signal: ac.signal,
      });
      const reader = r.body!.getReader();
      await reader.read();
      ac.abort();
      await reader.read().catch(() => {});
      // The server notices, stops, and removes what the export held.
      for (let i = 0; i < 100 && readdirSync(work).length > 0; i++)
        await new Promise((res) => setTimeout(res, 50));
      expect(readdirSync(work), q).toEqual([]);
    }
    const again = await download(teacher, `/v2/images/${ov2Id}/export?disk_format=raw`);
    expect(again.status).toBe(200);
    expect(again.body.length).toBe(28 * MiB);
  });
});

describe('download tickets (browser downloads without a token in the URL)', () => {
  it('a ticket downloads the original bytes or an export once authorised, without a token', async () => {
    const t1 = await teacher.req('POST', `/v2/images/${ov2Id}/download-ticket`);
    expect(t1.status, t1.text).toBe(200);
    expect(t1.json.url).toMatch(/^\/v2\/download\/[\w-]+\.[\w-]+$/);
    expect(t1.json.url).not.toContain(teacher.token);
    const own = await fetch(`${ts.url}${t1.json.url}`);
    expect(own.status).toBe(200);
    expect(own.headers.get('content-disposition')).toMatch(/^attachment; filename="ov2\.qcow2"/);
    expect(md5(Buffer.from(await own.arrayBuffer()))).toBe(md5(readFileSync(p('ov2.qcow2'))));
    const t2 = await teacher.req('POST', `/v2/images/${ov2Id}/download-ticket`, {
      disk_format: 'vmdk',
      subformat: 'streamOptimized',
    });
    const ex = await fetch(`${ts.url}${t2.json.url}`);
    expect(ex.status).toBe(200);
    expect(ex.headers.get('content-disposition')).toMatch(/filename="ov2\.vmdk"/);
    writeFileSync(p('ticket.vmdk'), Buffer.from(await ex.arrayBuffer()));
    expect(qemuImg(['compare', '-F', 'vmdk', p('ov2.qcow2'), p('ticket.vmdk')]).stdout).toContain(
      'Images are identical',
    );
  });

  it('refuses what the caller may not read, a forged ticket, and a revoked token', async () => {
    expect((await student.req('POST', `/v2/images/${ov2Id}/download-ticket`)).status).toBe(404);
    const t = await teacher.req('POST', `/v2/images/${ov2Id}/download-ticket`);
    const [payload, mac] = (t.json.url as string).slice('/v2/download/'.length).split('.') as [
      string,
      string,
    ];
    const other = Buffer.from(
      JSON.stringify({ ...JSON.parse(Buffer.from(payload, 'base64url').toString()), i: masterId }),
    );
    const forged = await fetch(`${ts.url}/v2/download/${other.toString('base64url')}.${mac}`);
    expect(forged.status).toBe(401);
    expect((await fetch(`${ts.url}/v2/download/garbage`)).status).toBe(401);
    const api = await Api.login(ts.url, 'teacher', 'pw-t', 'teachers');
    const t3 = await api.req('POST', `/v2/images/${ov2Id}/download-ticket`, { disk_format: 'raw' });
    expect(
      (await api.req('DELETE', '/v3/auth/tokens', undefined, { 'X-Subject-Token': api.token })).status,
    ).toBe(204);
    const revoked = await fetch(`${ts.url}${t3.json.url}`);
    expect(revoked.status).toBe(401);
    expect(await revoked.text()).toContain('start the download again');
  });
});

describe('allocation map', () => {
  it('the picture of an overlay two levels deep agrees with qemu-img map of the local chain', async () => {
    const r = await teacher.req('GET', `/v2/images/${ov2Id}/map?buckets=28`);
    expect(r.status, r.text).toBe(200);
    expect(r.json.bucket_size).toBe(MiB);
    expect(r.json.kinds).toEqual(['data', 'compressed', 'zero', 'master']);
    expect(r.json.chain.map((l: { id: string }) => l.id)).toEqual([ov2Id, ov1Id, masterId]);
    // The same picture from qemu-img map of the same chain on disk.
    const entries = JSON.parse(qemuImgOk(['map', '--output=json', p('ov2.qcow2')])) as {
      start: number;
      length: number;
      depth: number;
      present: boolean;
      zero: boolean;
      data: boolean;
    }[];
    const want = Array.from({ length: 28 }, () => [0, 0, 0, 0]);
    for (const e of entries) {
      const kind = e.depth > 0 && e.present ? 3 : e.present && e.data ? 0 : e.present && e.zero ? 2 : -1;
      if (kind < 0) continue;
      for (let at = e.start; at < e.start + e.length; ) {
        const b = Math.floor(at / MiB);
        const stop = Math.min(e.start + e.length, (b + 1) * MiB);
        want[b]![kind]! += (stop - at) / MiB;
        at = stop;
      }
    }
    expect(r.json.buckets).toEqual(want.map((b) => b.map((v) => Math.round(v * 1000) / 1000)));
    // What the picture shows: ov2's own data at 26 MiB, zeros over the master at 13 MiB.
    expect(r.json.buckets[26]).toEqual([1, 0, 0, 0]);
    expect(r.json.buckets[13]).toEqual([0, 0, 0.5, 0.5]);
    expect(r.json.buckets[7]).toEqual([0, 0, 0, 0]);
    expect(r.json.totals.data).toBe(64 * 1024 + MiB);
  });

  it('stays cheap on a huge sparse image, and checks its arguments', async () => {
    qemuImgOk(['create', '-f', 'qcow2', p('huge.qcow2'), '64T']);
    qemuIo(p('huge.qcow2'), ['write -P 0x11 0 64k', `write -P 0x22 ${32 * 2 ** 40} 64k`], 'qcow2');
    const id = await upload(teacher, 'huge.qcow2', { disk_format: 'qcow2', name: 'huge' });
    const t0 = performance.now();
    const r = await teacher.req('GET', `/v2/images/${id}/map?buckets=4096`);
    expect(r.status).toBe(200);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(r.json.virtual_size).toBe(64 * 2 ** 40);
    expect(r.json.buckets).toHaveLength(4096);
    expect(r.json.extents).toBeLessThan(20);
    expect(r.json.totals.data).toBe(128 * 1024);
    expect((await teacher.req('GET', `/v2/images/${id}/map?buckets=0`)).status).toBe(400);
    expect((await teacher.req('GET', `/v2/images/${id}/map?buckets=x`)).status).toBe(400);
    expect((await student.req('GET', `/v2/images/${id}/map`)).status).toBe(404);
  });
});

/**
 * The image once its task has ended: no longer importing and its lock dropped. A failed task
 * puts the image back to queued first and drops the lock last (import.ts, fail), so status
 * alone can be seen a moment before the lock goes (a clean-clone CI run did).
 */
async function waitActive(api: Api, id: string): Promise<Record<string, unknown>> {
  for (let i = 0; i < 600; i++) {
    const r = await api.req('GET', `/v2/images/${id}`);
    if (r.json.status !== 'importing' && r.json.os_glance_import_task === undefined) return r.json;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`image ${id} still importing`);
}

describe('flatten', () => {
  it('makes a new standalone master owned by the caller, under a task; the source stays', async () => {
    const r = await teacher.req('POST', `/v2/images/${ov2Id}/actions/flatten`, {
      name: 'master v2',
      visibility: 'private',
      course: 'os-101',
    });
    expect(r.status, r.text).toBe(202);
    expect(r.json.status).toBe('importing');
    const img = await waitActive(teacher, r.json.id);
    expect(img['status']).toBe('active');
    expect(img['owner']).toBe(teacher.projectId);
    expect(img['disk_format']).toBe('qcow2');
    expect(img['course']).toBe('os-101');
    expect(img['backing_image_id']).toBeUndefined();
    expect(img['virtual_size']).toBe(28 * MiB);
    const file = await download(teacher, `/v2/images/${r.json.id}/file`);
    expect(md5(file.body)).toBe(img['checksum']);
    writeFileSync(p('flat.qcow2'), file.body);
    expect(qemuImg(['check', p('flat.qcow2')]).code).toBe(0);
    expect(
      JSON.parse(qemuImgOk(['info', '--output=json', p('flat.qcow2')]))['backing-filename'],
    ).toBeUndefined();
    expect(qemuImg(['compare', p('ov2.qcow2'), p('flat.qcow2')]).stdout).toContain('Images are identical');
    const tasks = await teacher.req('GET', `/v2/images/${r.json.id}/tasks`);
    expect(tasks.json.tasks).toHaveLength(1);
    expect(tasks.json.tasks[0].status).toBe('success');
    expect((await teacher.req('GET', `/v2/images/${ov2Id}`)).json.status).toBe('active');
  });

  it('onto another master: an overlay of it holding only what differs', async () => {
    const r = await teacher.req('POST', `/v2/images/${ov2Id}/actions/flatten`, {
      name: 'ov2 on master',
      backing_image_id: masterId,
    });
    expect(r.status, r.text).toBe(202);
    const img = await waitActive(teacher, r.json.id);
    expect(img['status']).toBe('active');
    expect(img['backing_image_id']).toBe(masterId);
    // Only ov1's and ov2's changes: much less than the 28 MiB image.
    expect(img['size'] as number).toBeLessThan(6 * MiB);
    const out = await download(teacher, `/v2/images/${r.json.id}/export?disk_format=raw`);
    writeFileSync(p('rebased.raw'), out.body);
    expect(qemuImg(['compare', '-F', 'raw', p('ov2.qcow2'), p('rebased.raw')]).stdout).toContain(
      'Images are identical',
    );
  });

  it('reports a failure on the task and leaves the image queued without data', async () => {
    // A quota that holds the master but not a second copy of it.
    const quota = await startTestServer({ settings: { userStorageQuota: 12 * MiB } });
    try {
      const a = await Api.login(quota.url, 'admin', ADMIN_PASSWORD, 'admin');
      const m = await upload(a, 'master.qcow2', { disk_format: 'qcow2' });
      const r = await a.req('POST', `/v2/images/${m}/actions/flatten`, { name: 'too big' });
      expect(r.status).toBe(202);
      const img = await waitActive(a, r.json.id);
      expect(img['status']).toBe('queued');
      expect(img['size']).toBeNull();
      expect(img['os_glance_import_task']).toBeUndefined();
      const tasks = await a.req('GET', `/v2/images/${r.json.id}/tasks`);
      expect(tasks.json.tasks[0].status).toBe('failure');
      expect(tasks.json.tasks[0].message).toContain('exceeds the quota');
    } finally {
      await quota.stop();
    }
  });

  it('a server killed during a flatten leaves no half image: after restart it is queued, the task failed, no blob', async () => {
    const data = join(dir, 'crash');
    const bin = join(process.cwd(), 'bin', 'vdisk');
    const start = () => {
      const child = spawn(
        process.execPath,
        [bin, 'serve', '--port', '0', '--data-dir', data, '--admin-password', 'k'],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      return new Promise<{ child: typeof child; url: string; err: () => string }>((resolve, reject) => {
        let err = '';
        child.stderr.on('data', (d: Buffer) => {
          err += d.toString();
          const m = /listening on (http:\/\/\S+)/.exec(err);
          if (m) resolve({ child, url: m[1]!, err: () => err });
        });
        child.on('exit', (code) => reject(new Error(`serve exited ${code}: ${err}`)));
      });
    };
    // Enough incompressible data that the flatten is still running when the server dies.
    const big = randomBytes(256 * MiB);
    big.fill(0, 510, 512);
    let s = await start();
    let a = await Api.login(s.url, 'admin', 'k', 'admin');
    const m = await a.createImage({ disk_format: 'raw', container_format: 'bare' });
    expect(await a.upload(m.id, big)).toBe(204);
    const f = await a.req('POST', `/v2/images/${m.id}/actions/flatten`, { name: 'half' });
    expect(f.status).toBe(202);
    // Killed while its task runs (a moment after the 202: the job has started).
    await new Promise((r) => setTimeout(r, 50));
    expect((await a.req('GET', `/v2/images/${f.json.id}`)).json.status).toBe('importing');
    s.child.kill('SIGKILL');
    await new Promise((r) => s.child.once('exit', r));
    s = await start();
    try {
      expect(s.err()).toMatch(/recovered 1 interrupted import/);
      a = await Api.login(s.url, 'admin', 'k', 'admin');
      const img = (await a.req('GET', `/v2/images/${f.json.id}`)).json;
      expect(img.status).toBe('queued');
      expect(img.size).toBeNull();
      expect(img.os_glance_import_task).toBeUndefined();
      const tasks = (await a.req('GET', `/v2/images/${f.json.id}/tasks`)).json.tasks;
      expect(tasks[0].status).toBe('failure');
      // The store holds the master and nothing else: no blob, no temporary of the flatten.
      expect(readdirSync(join(data, 'images')).filter((n) => n !== '.tmp')).toEqual([m.id]);
      expect(readdirSync(join(data, 'images', '.tmp'))).toEqual([]);
      // And the same flatten runs to the end on the restarted server.
      const again = await a.req('POST', `/v2/images/${m.id}/actions/flatten`, { name: 'whole' });
      expect((await waitActive(a, again.json.id))['status']).toBe('active');
    } finally {
      s.child.kill('SIGTERM');
      await new Promise((r) => s.child.once('exit', r));
    }
  });
});
