/**
 * `vdisk image …` against a running `vdisk serve`, cross-checked with the real Debian
 * `openstack` client on the same server: identical list/show/member-list output (table and
 * json), uploads and downloads byte for byte, sharing with accept/reject from the member's
 * side, set/unset, delete, OS_TOKEN + OS_IMAGE_URL without Keystone, and errors.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ADMIN_PASSWORD,
  Api,
  addProjectUser,
  runClient,
  startTestServer,
  type TestServer,
} from '../../server/test/harness.js';
import { imageEnv, runVdiskImage, type User } from './image-testkit.js';

let ts: TestServer;
let admin: Api;
const bob = { user: 'bob', password: 'bob-pw', project: 'beta' };

beforeAll(async () => {
  ts = await startTestServer();
  admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
  await addProjectUser(admin, bob.project, bob.user, bob.password);
});
afterAll(async () => {
  await ts?.stop();
});

const env = (as?: User) => imageEnv(ts.url, as);
const vdisk = (args: string[], e: Record<string, string> = env()) => runVdiskImage(args, e);

const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');

describe('vdisk image', () => {
  it('create --file with progress, save byte for byte, and the same output as openstack', async () => {
    const data = randomBytes(3_000_000);
    const file = join(ts.dir, 'disk.raw');
    await writeFile(file, data);
    const c = await vdisk([
      'create',
      '--file',
      file,
      '--disk-format',
      'raw',
      '--container-format',
      'bare',
      '--property',
      'color=red',
      '--tag',
      't1',
      '--progress',
      'disk-one',
      '-f',
      'json',
    ]);
    expect(c.stderr).toContain('(100.00/100%)');
    expect(c.code).toBe(0);
    const created = JSON.parse(c.stdout);
    expect(created.status).toBe('active');
    expect(created.checksum).toBe(md5(data));
    expect(created.properties.color).toBe('red');
    expect(created.tags).toEqual(['t1']);

    const out = join(ts.dir, 'saved.raw');
    expect((await vdisk(['save', '--file', out, 'disk-one'])).code).toBe(0);
    expect((await readFile(out)).equals(data)).toBe(true);

    // a second image made by openstack itself, for the cross-check
    const o = await runClient(ts, 'openstack', [
      'image',
      'create',
      '--file',
      file,
      '--disk-format',
      'raw',
      '--container-format',
      'bare',
      'disk-two',
    ]);
    expect(o.code).toBe(0);
    for (const args of [
      ['list'],
      ['list', '-f', 'json'],
      ['list', '--long'],
      ['list', '--long', '-f', 'json'],
      ['list', '-f', 'value'],
      ['list', '--long', '-c', 'Name', '-c', 'Size', '-c', 'Tags'],
      ['show', 'disk-one'],
      ['show', 'disk-one', '-f', 'json'],
      ['show', 'disk-two'],
      ['show', 'disk-two', '-f', 'json'],
      ['show', '--human-readable', 'disk-one'],
      ['show', 'disk-one', '-c', 'name', '-c', 'size', '-f', 'value'],
    ]) {
      const mine = await vdisk(args);
      const theirs = await runClient(ts, 'openstack', ['image', ...args]);
      expect(theirs.code).toBe(0);
      expect(mine.stdout, args.join(' ')).toBe(theirs.stdout);
    }
  });

  it('sharing: add project, the member accepts and rejects, member list from both sides', async () => {
    const img = await admin.createImage({ name: 'shared-img', disk_format: 'raw', container_format: 'bare' });
    const add = await vdisk(['add', 'project', 'shared-img', bob.project, '-f', 'json']);
    expect(add.code).toBe(0);
    const m = JSON.parse(add.stdout);
    expect(m.status).toBe('pending');
    expect(m.image_id).toBe(img.id);
    const asBob = env(bob);
    // bob does not list it while pending
    expect((await vdisk(['list', '-f', 'value'], asBob)).stdout).not.toContain(img.id);
    expect((await vdisk(['set', '--accept', img.id], asBob)).code).toBe(0);
    expect((await vdisk(['list', '-f', 'value'], asBob)).stdout).toContain(img.id);
    for (const who of [env(), asBob]) {
      const mine = await vdisk(['member', 'list', 'shared-img'], who);
      const as = who === asBob ? bob : undefined;
      const theirs = await runClient(ts, 'openstack', ['image', 'member', 'list', 'shared-img'], as);
      expect(mine.stdout).toBe(theirs.stdout);
      expect(mine.stdout).toContain('accepted');
    }
    expect((await vdisk(['set', '--reject', img.id], asBob)).code).toBe(0);
    expect((await vdisk(['list', '-f', 'value'], asBob)).stdout).not.toContain(img.id);
    const pend = await vdisk(['set', '--pending', img.id], asBob);
    expect(pend.code).toBe(0);
    expect(JSON.parse((await vdisk(['member', 'list', img.id, '-f', 'json'])).stdout)[0].Status).toBe(
      'pending',
    );
    // bob may not add members to somebody else's image
    const denied = await vdisk(['add', 'project', img.id, 'admin'], asBob);
    expect(denied.code).toBe(1);
    expect(denied.stderr).toMatch(/^vdisk: HttpException: 403: Client Error/);
    expect((await vdisk(['remove', 'project', 'shared-img', bob.project])).code).toBe(0);
    expect(JSON.parse((await vdisk(['member', 'list', img.id, '-f', 'json'])).stdout)).toEqual([]);
  });

  it('set / unset / delete, and OS_TOKEN + OS_IMAGE_URL', async () => {
    const img = await admin.createImage({
      name: 'editable',
      disk_format: 'raw',
      container_format: 'bare',
      a: '1',
    });
    expect(
      (
        await vdisk([
          'set',
          '--name',
          'edited',
          '--min-ram',
          '512',
          '--min-disk',
          '2',
          '--property',
          'b=2',
          '--tag',
          'x',
          '--protected',
          '--private',
          'editable',
        ])
      ).code,
    ).toBe(0);
    let shown = JSON.parse((await vdisk(['show', img.id, '-f', 'json'])).stdout);
    expect([shown.name, shown.min_ram, shown.min_disk, shown.protected, shown.visibility]).toEqual([
      'edited',
      512,
      2,
      true,
      'private',
    ]);
    expect(shown.properties).toMatchObject({ a: '1', b: '2' });
    expect(shown.tags).toEqual(['x']);
    expect((await vdisk(['unset', '--property', 'a', '--tag', 'x', 'edited'])).code).toBe(0);
    const missing = await vdisk(['unset', '--property', 'nope', 'edited']);
    expect(missing.code).toBe(1);
    shown = JSON.parse((await vdisk(['show', img.id, '-f', 'json'])).stdout);
    expect(shown.properties.a).toBeUndefined();
    expect(shown.tags).toEqual([]);
    // protected: delete refused, as Glance
    const prot = await vdisk(['delete', 'edited']);
    expect(prot.code).toBe(1);
    expect(prot.stderr).toContain("Failed to delete image with name or ID 'edited'");
    expect(prot.stderr).toContain('vdisk: Failed to delete 1 of 1 images.');
    expect((await vdisk(['set', '--unprotected', 'edited'])).code).toBe(0);
    // token + endpoint, no Keystone round trip
    const tokenEnv = { OS_TOKEN: admin.token, OS_IMAGE_URL: ts.url };
    expect((await vdisk(['show', 'edited', '-f', 'value', '-c', 'id'], tokenEnv)).stdout).toBe(`${img.id}\n`);
    expect((await vdisk(['delete', 'edited'], tokenEnv)).code).toBe(0);
    expect((await admin.req('GET', `/v2/images/${img.id}`)).status).toBe(404);
  });

  it('errors: unknown image, bad password, unknown option, hostile upload refused and not kept', async () => {
    const nf = await vdisk(['show', 'no-such-image']);
    expect([nf.code, nf.stderr]).toEqual([1, 'vdisk: No Image found for no-such-image\n']);
    const bad = await vdisk(['list'], { ...env(), OS_PASSWORD: 'wrong' });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('(HTTP 401)');
    const opt = await vdisk(['list', '--bogus']);
    expect([opt.code, opt.stderr]).toEqual([1, 'vdisk: image: error: unrecognized arguments: --bogus\n']);
    const noAuth = await vdisk(['list'], {});
    expect(noAuth.stderr).toContain('auth-url');
    // a qcow2 header claiming a backing file, uploaded as qcow2: refused, image deleted (as openstacksdk)
    const h = Buffer.alloc(512);
    h.write('QFI\xfb', 0, 'latin1');
    h.writeUInt32BE(3, 4);
    const file = join(ts.dir, 'evil.qcow2');
    await writeFile(file, h);
    const r = await vdisk(['create', '--file', file, '--disk-format', 'qcow2', 'evil']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^vdisk: HttpException: 415: Client Error for url: .*Image format detection failed/,
    );
    expect((await admin.req('GET', '/v2/images?name=evil')).json.images).toEqual([]);
  });
});
