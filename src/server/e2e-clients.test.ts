/**
 * End to end with the real, unmodified Debian clients (python3-openstackclient 6.0.0,
 * python3-glanceclient 4.1.0) against `vdisk serve`: the flows of seeds 001 (upload, list,
 * show, save and byte-compare, properties, sharing with another project that accepts and
 * rejects, member lists from both sides, delete) and 004 (kernel/ramdisk/ami images with
 * container formats, --public, --property kernel_id/ramdisk_id, show, set, delete).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runClient, startTestServer, type TestServer } from './test/harness.js';

let ts: TestServer;
const alice = { user: 'alice', password: 'alice-pw', project: 'alpha' };
const bob = { user: 'bob', password: 'bob-pw', project: 'beta' };
const carol = { user: 'carol', password: 'carol-pw', project: 'gamma' };
let betaId = '';

beforeAll(async () => {
  ts = await startTestServer();
});
afterAll(async () => {
  await ts?.stop();
});

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

describe('identity through openstack', () => {
  it('creates projects, users and roles as the admin calls of openstackclient', async () => {
    for (const who of [alice, bob, carol]) {
      let r = await runClient(ts, 'openstack', ['project', 'create', who.project]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      r = await runClient(ts, 'openstack', [
        'user',
        'create',
        '--project',
        who.project,
        '--password',
        who.password,
        who.user,
      ]);
      expect(r.code).toBe(0);
      r = await runClient(ts, 'openstack', [
        'role',
        'add',
        '--project',
        who.project,
        '--user',
        who.user,
        'member',
      ]);
      expect(r.code).toBe(0);
    }
    const list = await runClient(ts, 'openstack', ['project', 'list', '-f', 'json']);
    const projects = JSON.parse(list.stdout) as { ID: string; Name: string }[];
    expect(projects.map((p) => p.Name).sort()).toEqual(['admin', 'alpha', 'beta', 'gamma']);
    betaId = projects.find((p) => p.Name === 'beta')!.ID;
    // A member is not an admin: openstackclient falls back to the user's own projects.
    const own = await runClient(ts, 'openstack', ['project', 'list', '-f', 'value', '-c', 'Name'], alice);
    expect(own.stdout.trim()).toBe('alpha');
    const denied = await runClient(ts, 'openstack', ['project', 'create', 'mine'], alice);
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toMatch(/403|not authorized/i);
    // Wrong password: 401.
    const bad = await runClient(ts, 'openstack', ['image', 'list'], { ...alice, password: 'nope' });
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/401|authentication/i);
    // project delete works and the project goes away.
    expect((await runClient(ts, 'openstack', ['project', 'create', 'doomed'])).code).toBe(0);
    expect((await runClient(ts, 'openstack', ['project', 'delete', 'doomed'])).code).toBe(0);
    const after = await runClient(ts, 'openstack', ['project', 'list', '-f', 'value', '-c', 'Name']);
    expect(after.stdout.split('\n')).not.toContain('doomed');
  });
});

describe('seed 001: upload, download, properties, sharing', () => {
  let imgId = '';
  let qcow = Buffer.alloc(0);

  it('uploads a qcow2 made by qemu-img with openstack image create --file --disk-format', async () => {
    const file = join(ts.dir, 'disk.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, '64M']);
    execFileSync('qemu-io', ['-c', 'write -P 0x5a 1M 2M', file], { stdio: 'ignore' });
    qcow = await readFile(file);
    const r = await runClient(
      ts,
      'openstack',
      ['image', 'create', '--file', file, '--disk-format', 'qcow2', 'debian-base', '-f', 'json'],
      alice,
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    imgId = JSON.parse(r.stdout).id;
    expect(imgId).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('lists it (short and --long) and shows it with checksum, size, virtual size', async () => {
    const list = await runClient(ts, 'openstack', ['image', 'list'], alice);
    expect(list.stdout).toMatch(new RegExp(`\\| ${imgId} \\| debian-base \\| active \\|`));
    const long = await runClient(ts, 'openstack', ['image', 'list', '--long', '-f', 'json'], alice);
    const row = (JSON.parse(long.stdout) as Record<string, unknown>[]).find((i) => i['ID'] === imgId)!;
    expect(row['Disk Format']).toBe('qcow2');
    expect(row['Container Format']).toBe('bare');
    expect(row['Size']).toBe(qcow.length);
    const show = JSON.parse(
      (await runClient(ts, 'openstack', ['image', 'show', imgId, '-f', 'json'], alice)).stdout,
    );
    expect(show.status).toBe('active');
    expect(show.size).toBe(qcow.length);
    expect(show.checksum).toBe(md5(qcow));
    expect(show.properties.os_hash_algo).toBe('sha512');
    expect(show.properties.os_hash_value).toBe(createHash('sha512').update(qcow).digest('hex'));
    expect(show.visibility).toBe('shared');
    expect(show.virtual_size).toBe(64 << 20);
  });

  it('saves it back byte for byte (openstack image save, glance image-download)', async () => {
    const out = join(ts.dir, 'saved.qcow2');
    const r = await runClient(ts, 'openstack', ['image', 'save', '--file', out, imgId], alice);
    expect(r.code).toBe(0);
    expect((await readFile(out)).equals(qcow)).toBe(true);
    const out2 = join(ts.dir, 'saved2.qcow2');
    const g = await runClient(ts, 'glance', ['image-download', '--file', out2, imgId], alice);
    expect(g.stderr).toBe('');
    expect((await readFile(out2)).equals(qcow)).toBe(true);
    // and qemu-img agrees that what came back is the image.
    expect(
      execFileSync('qemu-img', [
        'compare',
        '-f',
        'qcow2',
        '-F',
        'qcow2',
        out,
        join(ts.dir, 'disk.qcow2'),
      ]).toString(),
    ).toMatch(/identical/);
  });

  it('sets properties', async () => {
    const r = await runClient(
      ts,
      'openstack',
      [
        'image',
        'set',
        '--property',
        'os_distro=debian',
        '--property',
        'hw_disk_bus=virtio',
        '--min-disk',
        '1',
        imgId,
      ],
      alice,
    );
    expect(r.code).toBe(0);
    const show = JSON.parse(
      (await runClient(ts, 'openstack', ['image', 'show', imgId, '-f', 'json'], alice)).stdout,
    );
    expect(show.properties.os_distro).toBe('debian');
    expect(show.properties.hw_disk_bus).toBe('virtio');
    expect(show.min_disk).toBe(1);
    const unset = await runClient(
      ts,
      'openstack',
      ['image', 'unset', '--property', 'hw_disk_bus', imgId],
      alice,
    );
    expect(unset.code).toBe(0);
    const again = JSON.parse(
      (await runClient(ts, 'openstack', ['image', 'show', imgId, '-f', 'json'], alice)).stdout,
    );
    expect(again.properties.hw_disk_bus).toBeUndefined();
  });

  it('shares with another project: pending, accepted, rejected, as seen from both sides', async () => {
    const create = await runClient(ts, 'glance', ['member-create', imgId, betaId], alice);
    expect(create.stderr).toBe('');
    expect(create.stdout).toMatch(new RegExp(`\\| ${imgId} \\| ${betaId} \\| pending \\|`));

    const ids = async (who: typeof bob, extra: string[] = []) =>
      (await runClient(ts, 'openstack', ['image', 'list', '-f', 'value', '-c', 'ID', ...extra], who)).stdout
        .split('\n')
        .filter((l) => l !== '');
    // Pending: not in bob's default list, but visible with member_status pending.
    expect(await ids(bob)).not.toContain(imgId);
    expect(await ids(bob, ['--shared', '--member-status', 'pending'])).toContain(imgId);

    const acc = await runClient(ts, 'glance', ['member-update', imgId, betaId, 'accepted'], bob);
    expect(acc.stderr).toBe('');
    expect(acc.stdout).toMatch(new RegExp(`\\| ${imgId} \\| ${betaId} \\| accepted \\|`));
    expect(await ids(bob)).toContain(imgId);
    for (const who of [alice, bob]) {
      const ml = await runClient(ts, 'glance', ['member-list', '--image-id', imgId], who);
      expect(ml.stdout).toMatch(new RegExp(`\\| ${imgId} \\| ${betaId} \\| accepted \\|`));
    }
    // The member downloads it.
    const out = join(ts.dir, 'bob.qcow2');
    expect((await runClient(ts, 'openstack', ['image', 'save', '--file', out, imgId], bob)).code).toBe(0);
    expect((await readFile(out)).equals(qcow)).toBe(true);
    // The member cannot change the image, nor add members.
    const set = await runClient(ts, 'openstack', ['image', 'set', '--name', 'stolen', imgId], bob);
    expect(set.code).not.toBe(0);
    expect(set.stderr).toMatch(/403|Forbidden/);
    const add = await runClient(ts, 'glance', ['member-create', imgId, 'someone'], bob);
    expect(add.code).not.toBe(0);
    // The owner cannot accept on the member's behalf.
    const forge = await runClient(ts, 'glance', ['member-update', imgId, betaId, 'rejected'], alice);
    expect(forge.code).not.toBe(0);

    const rej = await runClient(ts, 'openstack', ['image', 'set', '--reject', imgId], bob);
    expect(rej.code).toBe(0);
    expect(await ids(bob)).not.toContain(imgId);
    expect(await ids(bob, ['--shared', '--member-status', 'rejected'])).toContain(imgId);
    const ml = await runClient(ts, 'openstack', ['image', 'member', 'list', imgId, '-f', 'json'], alice);
    expect(JSON.parse(ml.stdout)).toEqual([{ 'Image ID': imgId, 'Member ID': betaId, Status: 'rejected' }]);

    // openstackclient 6.0.0 `image set --accept --project P` also PATCHes /owner (a client bug):
    // Glance accepts the membership, then refuses the owner change with 403; so do we.
    const acc2 = await runClient(
      ts,
      'openstack',
      ['image', 'set', '--accept', '--project', betaId, imgId],
      bob,
    );
    expect(acc2.code).toBe(1);
    expect(acc2.stderr).toMatch(/403/);
    expect(await ids(bob)).toContain(imgId);

    // A third project sees nothing.
    expect(await ids(carol, ['--shared', '--member-status', 'all'])).not.toContain(imgId);
    const show = await runClient(ts, 'openstack', ['image', 'show', imgId], carol);
    expect(show.code).not.toBe(0);
    const gl = await runClient(ts, 'glance', ['member-list', '--image-id', imgId], carol);
    expect(gl.code).not.toBe(0);
  });

  it('deletes it: gone for the owner and the member', async () => {
    const r = await runClient(ts, 'openstack', ['image', 'delete', imgId], alice);
    expect(r.code).toBe(0);
    for (const who of [alice, bob]) {
      const show = await runClient(ts, 'openstack', ['image', 'show', imgId], who);
      expect(show.code).not.toBe(0);
    }
  });
});

describe('seed 004: kernel, ramdisk and AMI images', () => {
  it('creates aki/ari/ami images with --public, properties, then show, set, delete', async () => {
    const kernel = join(ts.dir, 'vmlinuz');
    const initrd = join(ts.dir, 'initramfs');
    const rootfs = join(ts.dir, 'rootfs.img');
    await writeFile(kernel, randomBytes(300_000));
    await writeFile(initrd, randomBytes(200_000));
    await writeFile(rootfs, randomBytes(1_000_000));
    const mk = async (args: string[], who?: typeof alice) =>
      runClient(ts, 'openstack', ['image', 'create', ...args, '-f', 'json'], who);

    // --public needs the admin role (publicize_image).
    const denied = await mk(
      ['k', '--disk-format', 'aki', '--container-format', 'aki', '--public', '--file', kernel],
      alice,
    );
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toMatch(/403/);

    const k = await mk([
      'cirros-threepart-kernel',
      '--disk-format',
      'aki',
      '--container-format',
      'aki',
      '--public',
      '--file',
      kernel,
    ]);
    expect(k.stderr).toBe('');
    const kid = JSON.parse(k.stdout).id as string;
    const r = await mk([
      'cirros-threepart-ramdisk',
      '--disk-format',
      'ari',
      '--container-format',
      'ari',
      '--public',
      '--file',
      initrd,
    ]);
    const rid = JSON.parse(r.stdout).id as string;
    // kernel_id must be an image id (the schema's uuid pattern): the seed's typo is refused.
    const typo = await mk([
      'bad',
      '--disk-format',
      'ami',
      '--container-format',
      'ami',
      '--property',
      `kernel_id=${kid}-property`,
    ]);
    expect(typo.code).not.toBe(0);
    expect(typo.stderr).toMatch(/400|does not match/);

    const ami = await mk([
      'cirros-threepart',
      '--disk-format',
      'ami',
      '--container-format',
      'ami',
      '--public',
      '--property',
      `kernel_id=${kid}`,
      '--property',
      `ramdisk_id=${rid}`,
      '--file',
      rootfs,
    ]);
    expect(ami.stderr).toBe('');
    const aid = JSON.parse(ami.stdout).id as string;

    const show = JSON.parse((await runClient(ts, 'openstack', ['image', 'show', aid, '-f', 'json'])).stdout);
    expect(show.container_format).toBe('ami');
    expect(show.disk_format).toBe('ami');
    expect(show.visibility).toBe('public');
    expect(show.status).toBe('active');
    expect(show.properties.kernel_id).toBe(kid);
    expect(show.properties.ramdisk_id).toBe(rid);

    // Public images are listed for everyone.
    const bobs = await runClient(ts, 'openstack', ['image', 'list', '-f', 'value', '-c', 'Name'], bob);
    expect(bobs.stdout.split('\n')).toEqual(
      expect.arrayContaining(['cirros-threepart', 'cirros-threepart-kernel', 'cirros-threepart-ramdisk']),
    );

    const set = await runClient(ts, 'openstack', [
      'image',
      'set',
      '--name',
      'cirros-ami',
      '--property',
      'os_distro=cirros',
      aid,
    ]);
    expect(set.code).toBe(0);
    const shown = JSON.parse(
      (await runClient(ts, 'openstack', ['image', 'show', 'cirros-ami', '-f', 'json'])).stdout,
    );
    expect(shown.id).toBe(aid);
    expect(shown.properties.os_distro).toBe('cirros');

    for (const id of [aid, rid, kid])
      expect((await runClient(ts, 'openstack', ['image', 'delete', id])).code).toBe(0);
    const left = await runClient(ts, 'openstack', ['image', 'list', '-f', 'value', '-c', 'ID']);
    expect(left.stdout.trim()).toBe('');
  });
});

describe('glanceclient 4.1.0 schema cache', () => {
  it('works twice in a row (the second run builds options from the cached schema)', async () => {
    const file = join(ts.dir, 'g.raw');
    await writeFile(file, randomBytes(100_000));
    for (let i = 0; i < 2; i++) {
      const c = await runClient(
        ts,
        'glance',
        [
          'image-create',
          '--name',
          `g${i}`,
          '--disk-format',
          'raw',
          '--container-format',
          'bare',
          '--file',
          file,
        ],
        alice,
      );
      expect(c.stderr).toBe('');
      expect(c.stdout).toMatch(/\| status +\| active/);
      const l = await runClient(ts, 'glance', ['image-list'], alice);
      expect(l.stderr).toBe('');
      expect(l.stdout).toMatch(new RegExp(`\\| g${i} +\\|`));
    }
    const id = (
      await runClient(ts, 'glance', ['image-list', '--property-filter', 'name=g0'], alice)
    ).stdout.match(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/)![0];
    const upd = await runClient(
      ts,
      'glance',
      ['image-update', '--property', 'color=blue', '--os-distro', 'debian', id],
      alice,
    );
    expect(upd.stderr).toBe('');
    expect(upd.stdout).toMatch(/\| color +\| blue/);
    expect(upd.stdout).toMatch(/\| os_distro +\| debian/);
    const tag = await runClient(ts, 'glance', ['image-tag-update', id, 'gold'], alice);
    expect(tag.code).toBe(0);
    const show = await runClient(ts, 'glance', ['image-show', id], alice);
    expect(show.stdout).toMatch(/\| tags +\| .*gold/);
    const del = await runClient(ts, 'glance', ['image-delete', id], alice);
    expect(del.code).toBe(0);
  });
});
