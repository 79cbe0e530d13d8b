/**
 * The operator's switches, as Glance has them: format-match enforcement, the disk and
 * container formats allowed, the import methods offered.
 */

import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qemuImgOk, tempDir } from '../test/oracle.js';
import { ADMIN_PASSWORD, Api, startTestServer, type TestServer } from './test/harness.js';

const { dir, cleanup } = tempDir('vdisk-operator-');
const servers: TestServer[] = [];
afterAll(async () => {
  for (const s of servers) await s.stop();
  cleanup();
});

async function serve(settings: Record<string, unknown>): Promise<Api> {
  const ts = await startTestServer({ settings });
  servers.push(ts);
  return Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
}

describe('require_image_format_match', () => {
  it('off: data in another format than declared is accepted (no virtual size), hostile data still refused', async () => {
    const api = await serve({ requireImageFormatMatch: false });
    const random = randomBytes(3000);
    random.fill(0, 510, 512);
    for (const disk_format of ['qcow2', 'vmdk', 'vhd', 'vdi']) {
      const img = await api.createImage({ disk_format, container_format: 'bare' });
      expect(await api.upload(img.id, random), disk_format).toBe(204);
      const got = (await api.req('GET', `/v2/images/${img.id}`)).json;
      expect([got.status, got.size, got.virtual_size]).toEqual(['active', 3000, null]);
    }
    // A real qcow2 declared raw: accepted too, but a qcow2 naming a host file is refused as qcow2.
    qemuImgOk(['create', '-f', 'qcow2', join(dir, 'plain.qcow2'), '1M']);
    const plain = await api.createImage({ disk_format: 'raw', container_format: 'bare' });
    expect(await api.upload(plain.id, readFileSync(join(dir, 'plain.qcow2')))).toBe(204);
    qemuImgOk([
      'create',
      '-f',
      'qcow2',
      '-u',
      '-b',
      '/etc/passwd',
      '-F',
      'raw',
      join(dir, 'evil.qcow2'),
      '1M',
    ]);
    const evil = await api.createImage({ disk_format: 'raw', container_format: 'bare' });
    const r = await api.req('PUT', `/v2/images/${evil.id}/file`, readFileSync(join(dir, 'evil.qcow2')));
    expect(r.status).toBe(415);
    expect(r.text).toContain('names a backing file "/etc/passwd"');
  });

  it('on (the default): a mismatch is refused', async () => {
    const api = await serve({});
    const img = await api.createImage({ disk_format: 'qcow2', container_format: 'bare' });
    const r = await api.req('PUT', `/v2/images/${img.id}/file`, new Uint8Array(3000).fill(1));
    expect(r.status).toBe(415);
    expect(r.text).toContain('the data is not in disk_format qcow2 (it is raw)');
  });
});

describe('engine and host errors, as Glance answers them', () => {
  it('a full store: 413 "Image storage media is full", the image back to queued, nothing kept', async () => {
    // A real full file system: a 4 MiB tmpfs for the store (the tests run as root, as CI does).
    const store = join(dir, 'small-store');
    mkdirSync(store);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', store], { encoding: 'utf8' });
    expect(m.status, `mount a 4 MiB tmpfs (needs root): ${m.stderr}`).toBe(0);
    try {
      const ts = await startTestServer({ store });
      servers.push(ts);
      const api = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
      const img = await api.createImage({ disk_format: 'raw', container_format: 'bare' });
      const data = randomBytes(8 << 20);
      data.fill(0, 510, 512);
      const r = await api.req('PUT', `/v2/images/${img.id}/file`, data);
      expect(r.status).toBe(413);
      expect(r.text).toContain('Image storage media is full: No space left on device');
      const got = (await api.req('GET', `/v2/images/${img.id}`)).json;
      expect([got.status, got.size]).toEqual(['queued', null]);
      expect(readdirSync(store).filter((n) => n !== '.tmp')).toEqual([]);
      expect(readdirSync(join(store, '.tmp'))).toEqual([]);
      // And the store works again for what fits.
      const small = await api.createImage({ disk_format: 'raw', container_format: 'bare' });
      expect(await api.upload(small.id, data.subarray(0, 1 << 20))).toBe(204);
    } finally {
      for (const s of servers.splice(0)) await s.stop();
      spawnSync('umount', [store]);
    }
  });
});

describe('formats and import methods', () => {
  it('only the disk and container formats allowed, in the schema too', async () => {
    const api = await serve({ diskFormats: ['raw', 'qcow2'], containerFormats: ['bare'] });
    expect((await api.req('POST', '/v2/images', { disk_format: 'vmdk' })).status).toBe(400);
    expect((await api.req('POST', '/v2/images', { container_format: 'ovf' })).status).toBe(400);
    expect(
      (await api.req('POST', '/v2/images', { disk_format: 'qcow2', container_format: 'bare' })).status,
    ).toBe(201);
    const schema = (await api.req('GET', '/v2/schemas/image')).json;
    expect(schema.properties.disk_format.enum).toEqual([null, 'raw', 'qcow2']);
    expect(schema.properties.container_format.enum).toEqual([null, 'bare']);
    const img = (await api.req('POST', '/v2/images', { name: 'x' })).json;
    expect((await api.patch(img.id, [{ op: 'add', path: '/disk_format', value: 'vdi' }])).status).toBe(400);
  });

  it('only the import methods offered', async () => {
    const api = await serve({ importMethods: ['glance-direct'] });
    expect((await api.req('GET', '/v2/info/import')).json['import-methods'].value).toEqual(['glance-direct']);
    const c = await api.req('POST', '/v2/images', { disk_format: 'raw', container_format: 'bare' });
    expect(c.headers.get('openstack-image-import-methods')).toBe('glance-direct');
    const r = await api.req('POST', `/v2/images/${c.json.id}/import`, {
      method: { name: 'web-download', uri: 'http://example.com/x' },
    });
    expect(r.status).toBe(400);
    expect(r.text).toContain("Unknown import method name 'web-download'.");
    const none = await serve({ importMethods: [] });
    const c2 = await none.req('POST', '/v2/images', { name: 'y' });
    expect(c2.headers.get('openstack-image-import-methods')).toBeNull();
  });
});
