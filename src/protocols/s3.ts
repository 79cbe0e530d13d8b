/**
 * s3://bucket/key sources: vdisk's own protocol (qemu-img has no S3 driver). An object read by
 * ranged GetObject through the same block cache as http(s) sources (cached-source.ts), with
 * several requests in flight when reads walk forward. Read-only.
 *
 * Configured as the AWS tools are, from the environment: credentials by the SDK's default
 * chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, …),
 * AWS_REGION (or AWS_DEFAULT_REGION; us-east-1 by default), AWS_ENDPOINT_URL_S3 or
 * AWS_ENDPOINT_URL for another S3 server (Ceph RGW, MinIO), and AWS_S3_FORCE_PATH_STYLE=true
 * (the default when an endpoint is set) for path-style URLs.
 */
import type { Readable } from 'node:stream';
import { VdiskError } from '../core/errors.js';
import type { ReadSource } from '../core/host-file.js';
import { cachedSource } from './cached-source.js';
import { tlsAgentOption } from './tls-ca.js';

const MiB = 1 << 20;

export interface S3SourceOptions {
  env?: NodeJS.ProcessEnv;
  /** Requests in flight at once for read-ahead (default 4). */
  parallel?: number;
}

/** Bucket and key of `s3://bucket/key`. */
export function parseS3Name(name: string): { bucket: string; key: string } {
  const m = /^s3:\/\/([^/]+)\/(.+)$/i.exec(name);
  if (m === null) {
    throw new VdiskError('INVALID_ARGUMENT', `Invalid S3 name '${name}' (expected s3://bucket/key)`);
  }
  return { bucket: m[1]!, key: decodeURIComponent(m[2]!) };
}

function s3Message(err: unknown): string {
  const e = err as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  const status = e.$metadata?.httpStatusCode;
  if (status === 404 || e.name === 'NotFound' || e.name === 'NoSuchKey') return 'No such object';
  if (status === 403) return 'Access denied';
  return e.message || e.name || String(err);
}

export async function openS3Source(name: string, opts: S3SourceOptions = {}): Promise<ReadSource> {
  const { bucket, key } = parseS3Name(name);
  const env = opts.env ?? process.env;
  const endpoint = env['AWS_ENDPOINT_URL_S3'] ?? env['AWS_ENDPOINT_URL'];
  const pathStyle = env['AWS_S3_FORCE_PATH_STYLE'];
  const forcePathStyle =
    pathStyle !== undefined ? /^(1|true|yes|on)$/i.test(pathStyle) : endpoint !== undefined;
  const s3 = await import('@aws-sdk/client-s3');
  const parallel = Math.max(1, opts.parallel ?? 4);
  const agent = tlsAgentOption(env);
  const client = new s3.S3Client({
    ...(endpoint !== undefined ? { endpoint } : {}),
    region: env['AWS_REGION'] ?? env['AWS_DEFAULT_REGION'] ?? 'us-east-1',
    forcePathStyle,
    // Ceph RGW and other S3 servers do not know the flexible checksums of recent SDKs.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 5,
    ...(agent.httpsAgent !== undefined ? { requestHandler: agent } : {}),
  });
  const fail = (what: string, err: unknown) =>
    new VdiskError('EIO', `S3: Error ${what} s3://${bucket}/${key}: ${s3Message(err)}`, { cause: err });
  let size: number;
  try {
    const head = await client.send(new s3.HeadObjectCommand({ Bucket: bucket, Key: key }));
    if (head.ContentLength === undefined) throw new Error("Server didn't report file size.");
    size = head.ContentLength;
  } catch (err) {
    client.destroy();
    const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    if (status === 404) {
      throw new VdiskError('ENOENT', `S3: Error opening file s3://${bucket}/${key}: No such object`, {
        cause: err,
      });
    }
    throw fail('opening file', err);
  }
  const fetch = async (start: number, end: number): Promise<Buffer> => {
    const out = Buffer.allocUnsafe(end - start);
    if (end <= start) return out;
    try {
      const r = await client.send(
        new s3.GetObjectCommand({ Bucket: bucket, Key: key, Range: `bytes=${start}-${end - 1}` }),
      );
      if (r.Body === undefined) throw new Error('GetObject returned no body');
      let got = 0;
      for await (const chunk of r.Body as Readable) {
        const b = chunk as Buffer;
        if (got + b.length > out.length) throw new Error('more bytes than the range asked');
        b.copy(out, got);
        got += b.length;
      }
      if (got !== out.length) throw new Error(`${got} bytes of the ${out.length} asked`);
      return out;
    } catch (err) {
      throw fail(`reading at byte ${start} of`, err);
    }
  };
  return cachedSource(
    { size, fetch, close: async () => client.destroy() },
    { readAhead: parallel * 4 * MiB, aheadRequest: 4 * MiB, maxRequest: 16 * MiB, cacheBlocks: 8 },
  );
}
