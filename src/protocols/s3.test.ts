/**
 * s3://bucket/key sources (vdisk's own: qemu-img has none) against the real Ceph RGW the
 * registry's tests start: info reads as qemu-img's info of the same file (but for its name and
 * the unknown disk size), convert makes the same image, a missing object and writes fail in
 * one line.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type S3Server, startCeph } from '../server/test/servers.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';

const BUCKET = 'vdisk-s3-source';
let ceph: S3Server;
let tmp: ReturnType<typeof tempDir>;
const saved: Record<string, string | undefined> = {};
const ENV = ['AWS_ENDPOINT_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION'];

beforeAll(async () => {
  tmp = tempDir('vdisk-s3src-');
  ceph = await startCeph();
  for (const k of ENV) saved[k] = process.env[k];
  process.env['AWS_ENDPOINT_URL'] = ceph.endpoint;
  process.env['AWS_ACCESS_KEY_ID'] = ceph.accessKey;
  process.env['AWS_SECRET_ACCESS_KEY'] = ceph.secretKey;
  process.env['AWS_REGION'] = 'us-east-1';
  const raw = join(tmp.dir, 'disk.raw');
  qemuImgOk(['create', '-f', 'raw', raw, '40M']);
  qemuIo(raw, ['write -P 0x11 1M 3M', 'write -P 0x22 20M 9M', 'write -P 0x33 39M 1M'], 'raw');
  qemuImgOk(['convert', '-f', 'raw', '-O', 'qcow2', raw, join(tmp.dir, 'disk.qcow2')]);
  qemuImgOk(['convert', '-f', 'raw', '-O', 'vpc', raw, join(tmp.dir, 'disk.vhd')]);
  const s3 = await import('@aws-sdk/client-s3');
  const client = new s3.S3Client({
    endpoint: ceph.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: ceph.accessKey, secretAccessKey: ceph.secretKey },
  });
  await client.send(new s3.CreateBucketCommand({ Bucket: BUCKET }));
  for (const name of ['disk.qcow2', 'disk.vhd']) {
    await client.send(
      new s3.PutObjectCommand({
        Bucket: BUCKET,
        Key: `images/${name}`,
        Body: readFileSync(join(tmp.dir, name)),
      }),
    );
  }
  client.destroy();
}, 300_000);

afterAll(async () => {
  for (const k of ENV) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
  await ceph?.stop();
  tmp?.cleanup();
});

describe('s3:// sources on Ceph RGW', () => {
  it.each(['disk.qcow2', 'disk.vhd'])('info of %s reads as qemu-img info of the file', async (name) => {
    const url = `s3://${BUCKET}/images/${name}`;
    for (const json of [false, true]) {
      const args = json ? ['info', '--output=json'] : ['info'];
      const v = await vdisk([...args, url]);
      expect(v.code, v.stderr).toBe(0);
      const q = qemuImgOk([...args, join(tmp.dir, name)]);
      const norm = (s: string, n: string) =>
        s
          .replaceAll(n, 'NAME')
          .replace(/^disk size: .*\n/m, '')
          .replace(/^ {4}"actual-size": \d+,\n/m, '');
      expect(norm(v.stdout, url)).toBe(norm(q, join(tmp.dir, name)));
    }
  });

  it('convert to raw and qcow2 makes the image the file holds', async () => {
    for (const fmt of ['raw', 'qcow2']) {
      const out = join(tmp.dir, `s3.${fmt}`);
      const v = await vdisk(['convert', '-O', fmt, `s3://${BUCKET}/images/disk.qcow2`, out]);
      expect(v, v.stderr).toMatchObject({ code: 0, stderr: '' });
      expect(qemuImg(['compare', '-F', fmt, join(tmp.dir, 'disk.raw'), out]).code).toBe(0);
    }
    const v = await vdisk(['compare', `s3://${BUCKET}/images/disk.vhd`, join(tmp.dir, 'disk.raw')]);
    // The vhd's size is rounded up to its geometry: qemu-img warns of it too, on the file.
    const q = qemuImg(['compare', join(tmp.dir, 'disk.vhd'), join(tmp.dir, 'disk.raw')]);
    expect(v).toMatchObject({ code: q.code, stdout: q.stdout });
  });

  it('a missing object and writes fail in one line', async () => {
    const missing = await vdisk(['info', `s3://${BUCKET}/images/nope.qcow2`]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe(
      `vdisk: Could not open 's3://${BUCKET}/images/nope.qcow2': S3: Error opening file s3://${BUCKET}/images/nope.qcow2: No such object\n`,
    );
    const w = await vdisk(['resize', `s3://${BUCKET}/images/disk.qcow2`, '+1M']);
    expect(w.stderr).toBe(
      `vdisk: Could not open 's3://${BUCKET}/images/disk.qcow2': s3 driver does not support writes\n`,
    );
    const c = await vdisk(['create', '-f', 'raw', `s3://${BUCKET}/x.raw`, '1M']);
    expect(c.stderr).toBe(
      `vdisk: s3://${BUCKET}/x.raw: Protocol driver 's3' does not support image creation\n`,
    );
  });
});
