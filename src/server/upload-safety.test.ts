/**
 * Upload safety: hostile uploads made by the real qemu-img (qcow2 with a backing file
 * /etc/passwd, qcow2 with an external data file, vmdk monolithicFlat/twoGbMaxExtentFlat,
 * vmdk with an embedded descriptor naming a host file, qed, format mismatches, truncated
 * headers, malformed MBR/GPT) are refused with 415 through raw HTTP (sized and chunked) and
 * through the real `openstack` client, and leave nothing behind: the image stays `queued`
 * without size or checksum, and the blob store holds no file, not even a temporary one.
 * Images that are what they claim (qemu-img's qcow2, vmdk monolithicSparse and
 * streamOptimized, vdi, vhdx, fixed and dynamic vhd, raw with MBR/GPT) are accepted, with
 * the virtual size the engine reads, and download byte for byte.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgLuks } from '../test/oracle.js';
import { ADMIN_PASSWORD, Api, runClient, startTestServer, type TestServer } from './test/harness.js';

let ts: TestServer;
let admin: Api;
let work: string;

beforeAll(async () => {
  ts = await startTestServer();
  admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
  work = await mkdtemp(join(tmpdir(), 'vdisk-hostile-'));
});
afterAll(async () => {
  await ts?.stop();
  if (work !== undefined) await rm(work, { recursive: true, force: true });
});

const qemuImg = (...args: string[]) => execFileSync('qemu-img', args, { cwd: work, stdio: 'pipe' });

const qemuVirtualSize = (name: string, fmt: string): number =>
  JSON.parse(qemuImg('info', '--output=json', '-f', fmt, join(work, name)).toString())['virtual-size'];

async function made(name: string, ...createArgs: string[]): Promise<Buffer> {
  // qemu-img's LUKS create times PBKDF2 with a coarse clock: qemuImgLuks tries again.
  const r = qemuImgLuks(['create', ...createArgs, join(work, name), '1M'], work);
  if (r.code !== 0) throw new Error(r.stderr);
  return readFile(join(work, name));
}

/** Every file of the blob store, temporary ones included. */
async function blobs(): Promise<string[]> {
  const dir = join(ts.dir, 'data', 'images');
  const top = (await readdir(dir)).filter((n) => n !== '.tmp');
  const tmp = (await readdir(join(dir, '.tmp'))).map((n) => `.tmp/${n}`);
  return [...top, ...tmp];
}

/** PUT a body with Transfer-Encoding: chunked; the status and the response text. */
function putChunked(id: string, chunks: Buffer[]): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${ts.url}/v2/images/${id}/file`, {
      method: 'PUT',
      headers: {
        'X-Auth-Token': admin.token,
        'Content-Type': 'application/octet-stream',
        'Transfer-Encoding': 'chunked',
      },
    });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        text += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    for (const c of chunks) req.write(c);
    req.end();
  });
}

function split(b: Buffer, n: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < b.length; i += n) out.push(b.subarray(i, i + n));
  return out;
}

/** Upload sized and chunked; both must be refused with 415 and leave a bare queued image. */
async function expectRefused(data: Buffer, diskFormat: string, words: RegExp): Promise<void> {
  const before = await blobs();
  for (const chunked of [false, true]) {
    const img = await admin.createImage({
      name: 'hostile',
      disk_format: diskFormat,
      container_format: 'bare',
    });
    const r = chunked
      ? await putChunked(img.id, split(data, 65536))
      : await admin.req('PUT', `/v2/images/${img.id}/file`, new Uint8Array(data));
    expect(r.status, `${diskFormat} ${chunked ? 'chunked' : 'sized'}: ${r.text}`).toBe(415);
    expect(r.text).toMatch(words);
    const show = await admin.req('GET', `/v2/images/${img.id}`);
    expect(show.json.status).toBe('queued');
    expect(show.json.size).toBeNull();
    expect(show.json.checksum).toBeNull();
    expect((await admin.req('GET', `/v2/images/${img.id}/file`)).status).toBe(204);
    expect(await blobs()).toEqual(before);
    // the image can still take good data afterwards
  }
}

async function expectAccepted(data: Buffer, diskFormat: string, virtualSize: number | null): Promise<void> {
  for (const chunked of [false, true]) {
    const img = await admin.createImage({ name: 'good', disk_format: diskFormat, container_format: 'bare' });
    const r = chunked
      ? await putChunked(img.id, split(data, 100_000))
      : await admin.req('PUT', `/v2/images/${img.id}/file`, new Uint8Array(data));
    expect(r.status, `${diskFormat}: ${r.text}`).toBe(204);
    const show = await admin.req('GET', `/v2/images/${img.id}`);
    expect(show.json.status).toBe('active');
    expect(show.json.size).toBe(data.length);
    expect(show.json.virtual_size).toBe(virtualSize);
    expect(show.json.checksum).toBe(createHash('md5').update(data).digest('hex'));
    const back = await fetch(`${ts.url}/v2/images/${img.id}/file`, {
      headers: { 'X-Auth-Token': admin.token },
    });
    expect(Buffer.from(await back.arrayBuffer()).equals(data)).toBe(true);
  }
}

/** A raw disk with an MBR whose four entries are given as [boot flag, type]. */
function mbrDisk(entries: Array<[number, number]>, gptAt?: number): Buffer {
  const b = Buffer.alloc(1 << 20);
  entries.forEach(([boot, type], i) => {
    const e = 446 + 16 * i;
    b[e] = boot;
    b[e + 4] = type;
    b.writeUInt32LE(2048 * (i + 1), e + 8);
    b.writeUInt32LE(type === 0xee ? 2047 : 100, e + 12);
  });
  b[510] = 0x55;
  b[511] = 0xaa;
  if (gptAt !== undefined) b.write('EFI PART', gptAt, 'latin1');
  return b;
}

describe('hostile uploads are refused with 415 and leave nothing behind', () => {
  it('qcow2 with a backing file (/etc/passwd)', async () => {
    const data = await made('back.qcow2', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw');
    await expectRefused(
      data,
      'qcow2',
      /disallowed configuration: the qcow2 image names a backing file "\/etc\/passwd"/,
    );
  });

  it('qcow2 with an external data file', async () => {
    const data = await made('df.qcow2', '-f', 'qcow2', '-o', `data_file=${join(work, 'df.raw')}`);
    await expectRefused(data, 'qcow2', /names an external data file/);
  });

  it('qcow2 with a backing file uploaded as raw (a format mismatch)', async () => {
    const data = await made('back2.qcow2', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw');
    await expectRefused(
      data,
      'raw',
      /Image format detection failed: the data is not in disk_format raw \(it is qcow2\)/,
    );
  });

  it('vmdk monolithicFlat and twoGbMaxExtentFlat (descriptor files naming host files)', async () => {
    const flat = await made('flat.vmdk', '-f', 'vmdk', '-o', 'subformat=monolithicFlat');
    await expectRefused(
      flat,
      'vmdk',
      /only monolithicSparse and streamOptimized .*\(this is monolithicFlat\)/,
    );
    const split2g = await made('split.vmdk', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentFlat');
    await expectRefused(split2g, 'vmdk', /\(this is twoGbMaxExtentFlat\)/);
  });

  it('vmdk whose embedded descriptor names a host file, or has another createType', async () => {
    const good = await made('ms.vmdk', '-f', 'vmdk');
    const text = good.subarray(512, 1024).toString('latin1');
    expect(text).toContain('RW 2048 SPARSE "ms.vmdk"');
    const host = Buffer.from(good);
    host.write(
      text.replace('RW 2048 SPARSE "ms.vmdk"', 'RW 2048 FLAT "/etc/passwd" 0').slice(0, 512),
      512,
      'latin1',
    );
    await expectRefused(host, 'vmdk', /names a host file: "RW 2048 FLAT \\"\/etc\/passwd\\" 0"/);
    const relative = Buffer.from(good);
    relative.write(text.replace('"ms.vmdk"', '"../x.vmdk"').slice(0, 512), 512, 'latin1');
    await expectRefused(relative, 'vmdk', /names a host file/);
    const ct = Buffer.from(good);
    ct.write(text.replace('"monolithicSparse"', '"vmfs"').slice(0, 512), 512, 'latin1');
    await expectRefused(ct, 'vmdk', /\(this is vmfs\)/);
    // capacity 0: QEMU would open the embedded descriptor as a descriptor file
    const zero = Buffer.from(good);
    zero.writeBigUInt64LE(0n, 12);
    await expectRefused(zero, 'vmdk', /capacity 0/);
  });

  it('qed under another disk_format, and a qed naming a backing file without a master', async () => {
    const data = await made('q.qed', '-f', 'qed');
    await expectRefused(data, 'qcow2', /not in disk_format qcow2 \(it is qed\)/);
    await expectRefused(data, 'raw', /not in disk_format raw \(it is qed\)/);
    const overlay = await made('o.qed', '-f', 'qed', '-b', '/etc/passwd', '-F', 'raw');
    await expectRefused(
      overlay,
      'qed',
      /the qed image names a backing file "\/etc\/passwd"; to upload an overlay/,
    );
  });

  it('vmdk naming a parent file', async () => {
    await made('parent.vmdk', '-f', 'vmdk');
    const child = await made('child.vmdk', '-f', 'vmdk', '-b', 'parent.vmdk', '-F', 'vmdk');
    await expectRefused(child, 'vmdk', /the vmdk descriptor names a parent file "parent.vmdk"/);
  });

  it('format mismatches', async () => {
    const qcow2 = await made('plain.qcow2', '-f', 'qcow2');
    await expectRefused(qcow2, 'vmdk', /not in disk_format vmdk \(it is qcow2\)/);
    await expectRefused(qcow2, 'iso', /not in disk_format iso \(it is qcow2\)/);
    const raw = Buffer.alloc(1 << 20, 7);
    await expectRefused(raw, 'qcow2', /not in disk_format qcow2 \(it is raw\)/);
    await expectRefused(raw, 'vhd', /not in disk_format vhd \(no VHD footer\)/);
    const vmdk = await made('m.vmdk', '-f', 'vmdk');
    await expectRefused(vmdk, 'vdi', /not in disk_format vdi \(it is vmdk\)/);
  });

  it('truncated headers and tables', async () => {
    const qcow2 = await made('t.qcow2', '-f', 'qcow2');
    await expectRefused(qcow2.subarray(0, 90), 'qcow2', /invalid qcow2 data: qcow2 header too short/);
    // header complete, but the refcount table and L1 lie past the end of the data
    await expectRefused(qcow2.subarray(0, 65536), 'qcow2', /invalid qcow2 data: .*runs past the end/);
    const vmdk = await made('t.vmdk', '-f', 'vmdk');
    await expectRefused(vmdk.subarray(0, 700), 'vmdk', /invalid vmdk data: truncated descriptor/);
    await expectRefused(vmdk.subarray(0, 200), 'vmdk', /invalid vmdk data: truncated header/);
  });

  it('raw disks with a malformed MBR or GPT', async () => {
    await expectRefused(mbrDisk([[0x12, 0x83]]), 'raw', /MBR partition entry 0 has an invalid boot flag/);
    await expectRefused(
      mbrDisk([
        [0, 0xee],
        [0, 0x83],
      ]),
      'raw',
      /protective MBR defines other partitions/,
    );
    await expectRefused(mbrDisk([[0, 0xee]]), 'raw', /not followed by a GPT header/);
  });

  it('a big hostile upload is refused as soon as its head is seen, and the client gets the 415', async () => {
    const head = await made('big.qcow2', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw');
    const data = Buffer.concat([head, Buffer.alloc(24 << 20, 1)]);
    await expectRefused(data, 'qcow2', /names a backing file/);
  });

  it('through the real openstack and glance clients: refused, no blob', async () => {
    await made('cli-back.qcow2', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw');
    await made('cli-flat.vmdk', '-f', 'vmdk', '-o', 'subformat=monolithicFlat');
    const before = await blobs();
    const file = join(work, 'cli-back.qcow2');
    const r = await runClient(ts, 'openstack', [
      'image',
      'create',
      '--disk-format',
      'qcow2',
      '--container-format',
      'bare',
      '--file',
      file,
      'evil-backing',
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/415|disallowed configuration/);
    // openstacksdk deletes the image it created when the upload fails; nothing is left
    expect((await admin.req('GET', '/v2/images?name=evil-backing')).json.images).toEqual([]);
    expect(await blobs()).toEqual(before);
    const g = await runClient(ts, 'glance', [
      'image-create',
      '--disk-format',
      'vmdk',
      '--container-format',
      'bare',
      '--file',
      join(work, 'cli-flat.vmdk'),
      '--name',
      'evil-flat',
    ]);
    expect(g.code).not.toBe(0);
    expect(g.stderr).toMatch(/415|disallowed configuration/);
    // glanceclient leaves the image it created, queued and without data (as with Glance)
    const left = (await admin.req('GET', '/v2/images?name=evil-flat')).json.images;
    expect(left.map((i: { status: string; size: unknown }) => [i.status, i.size])).toEqual([
      ['queued', null],
    ]);
    expect(await blobs()).toEqual(before);
  });
});

describe('honest images are accepted with their virtual size', () => {
  it('qemu-img qcow2, vmdk (monolithicSparse, streamOptimized), vdi, vhdx, vhd', async () => {
    await expectAccepted(await made('ok.qcow2', '-f', 'qcow2'), 'qcow2', 1 << 20);
    await expectAccepted(await made('ok.vmdk', '-f', 'vmdk'), 'vmdk', 1 << 20);
    await expectAccepted(
      await made('so.vmdk', '-f', 'vmdk', '-o', 'subformat=streamOptimized'),
      'vmdk',
      1 << 20,
    );
    await expectAccepted(await made('ok.vdi', '-f', 'vdi'), 'vdi', 1 << 20);
    await expectAccepted(await made('ok.vhdx', '-f', 'vhdx'), 'vhdx', null);
    const fixed = await made('fixed.vhd', '-f', 'vpc', '-o', 'subformat=fixed');
    await expectAccepted(fixed, 'vhd', qemuVirtualSize('fixed.vhd', 'vpc'));
    const dyn = await made('dyn.vhd', '-f', 'vpc');
    await expectAccepted(dyn, 'vhd', qemuVirtualSize('dyn.vhd', 'vpc'));
  });

  it('an encrypted qcow2 is stored as it is', async () => {
    const data = await made(
      'enc.qcow2',
      '-f',
      'qcow2',
      '--object',
      'secret,id=s0,data=pw',
      '-o',
      'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10',
    );
    await expectAccepted(data, 'qcow2', 1 << 20);
  });

  it('raw disks: plain data, a valid MBR, a GPT (512 and 4096-byte sectors), a FAT boot sector', async () => {
    await expectAccepted(Buffer.alloc(3 << 20, 9), 'raw', 3 << 20);
    await expectAccepted(
      mbrDisk([
        [0x80, 0x83],
        [0, 0x82],
      ]),
      'raw',
      1 << 20,
    );
    await expectAccepted(mbrDisk([[0, 0xee]], 512), 'raw', 1 << 20);
    await expectAccepted(mbrDisk([[0, 0xee]], 4096), 'raw', 1 << 20);
    const fat = Buffer.alloc(1 << 20);
    fat[0] = 0xeb;
    fat.writeUInt16LE(512, 11);
    fat[16] = 2;
    fat[21] = 0xf8;
    fat[446] = 0x33; // boot code, not a partition entry
    fat[510] = 0x55;
    fat[511] = 0xaa;
    await expectAccepted(fat, 'raw', 1 << 20);
  });

  it('a qcow2 header refused once does not stop the next good upload of the same image', async () => {
    const img = await admin.createImage({ name: 'retry', disk_format: 'qcow2', container_format: 'bare' });
    const bad = await made('r1.qcow2', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw');
    expect(await admin.upload(img.id, new Uint8Array(bad))).toBe(415);
    const good = await made('r2.qcow2', '-f', 'qcow2');
    expect(await admin.upload(img.id, new Uint8Array(good))).toBe(204);
    expect((await admin.req('GET', `/v2/images/${img.id}`)).json.status).toBe('active');
  });
});
