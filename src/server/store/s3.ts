/**
 * The S3 blob store (AWS S3, Ceph RGW, MinIO…) over @aws-sdk/client-s3 with path-style URLs.
 *
 * A write buffers one part at a time (8 MiB parts, growing past 1000 and 5000 parts so that
 * 10,000 parts hold more than 1 TiB) and uploads several parts in flight while the next
 * fills, so memory per upload is bounded (a few parts) whatever the image size. The object
 * appears under its key only when CompleteMultipartUpload succeeds (S3 never shows a
 * partial multipart object); a blob smaller than one part is sent with one PutObject at
 * commit, which is atomic too. Abort is AbortMultipartUpload. `cleanup` lists the multipart
 * uploads under our prefix that this process is not writing and aborts them (what a crash
 * left behind).
 *
 * URL: `s3://ACCESS:SECRET@host:port/bucket[/prefix]` (http) or `s3+https://…` (https);
 * without credentials in the URL, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. `?region=R`
 * (default us-east-1). Keys and secrets are percent-decoded. The bucket is created when it
 * does not exist.
 */
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { S3Client } from '@aws-sdk/client-s3';
import { VdiskError } from '../../core/errors.js';
import type { ReadSource } from '../../core/host-file.js';
import { cachedSource } from '../../protocols/cached-source.js';
import { tlsAgentOption } from '../../protocols/tls-ca.js';
import type { BlobEntry, BlobStore, BlobWriter, CleanupOptions } from './store.js';

const KEY_RE = /^[A-Za-z0-9._-]+$/;
const MIB = 1 << 20;
/** Bytes of parts in flight per upload beyond the one being filled. */
const INFLIGHT_BYTES = 24 * MIB;
const MAX_PARTS = 10_000;

function checkKey(key: string): string {
  if (!KEY_RE.test(key) || key.startsWith('.')) throw new Error(`invalid blob key '${key}'`);
  return key;
}

/** Size of part number n (1-based): 8 MiB × 1000, then 64 MiB × 4000, then 256 MiB. */
export function partSize(n: number): number {
  if (n <= 1000) return 8 * MIB;
  if (n <= 5000) return 64 * MIB;
  return 256 * MIB;
}

export interface S3Location {
  endpoint: string;
  bucket: string;
  /** '' or ending with '/'. */
  prefix: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
}

/** Parse `s3://[ACCESS:SECRET@]host[:port]/bucket[/prefix][?region=R]`. */
export function parseS3Url(spec: string, env: NodeJS.ProcessEnv = process.env): S3Location {
  const bad = (why: string) =>
    new VdiskError(
      'INVALID_ARGUMENT',
      `Invalid S3 store URL '${spec.replace(/\/\/[^@/]*@/, '//***@')}': ${why} (expected s3://ACCESS:SECRET@host:port/bucket)`,
    );
  let u: URL;
  try {
    u = new URL(spec);
  } catch {
    throw bad('not a URL');
  }
  const scheme = u.protocol === 's3:' ? 'http' : u.protocol === 's3+https:' ? 'https' : null;
  if (scheme === null) throw bad('the scheme must be s3:// or s3+https://');
  if (u.hostname === '') throw bad('no host');
  const parts = u.pathname.split('/').filter((p) => p !== '');
  const bucket = parts.shift();
  if (bucket === undefined) throw bad('no bucket');
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw bad(`invalid bucket name '${bucket}'`);
  const prefix = parts.length > 0 ? `${parts.map(decodeURIComponent).join('/')}/` : '';
  let accessKeyId = decodeURIComponent(u.username);
  let secretAccessKey = decodeURIComponent(u.password);
  if (accessKeyId === '') {
    accessKeyId = env['AWS_ACCESS_KEY_ID'] ?? '';
    secretAccessKey = env['AWS_SECRET_ACCESS_KEY'] ?? '';
  }
  if (accessKeyId === '' || secretAccessKey === '')
    throw bad('no credentials (in the URL or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)');
  return {
    endpoint: `${scheme}://${u.host}`,
    bucket,
    prefix,
    region: u.searchParams.get('region') ?? env['AWS_REGION'] ?? 'us-east-1',
    accessKeyId,
    secretAccessKey,
  };
}

type S3 = typeof import('@aws-sdk/client-s3');

function errName(err: unknown): string {
  return (err as { name?: string }).name ?? '';
}

function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

export class S3Store implements BlobStore {
  readonly kind = 's3';
  /** Upload ids this process is writing (cleanup leaves them alone). */
  private readonly active = new Set<string>();

  private constructor(
    private readonly s3: S3,
    private readonly client: S3Client,
    readonly location: S3Location,
  ) {}

  /**
   * `timeoutSeconds` (default 60, `vdisk serve --s3-timeout`): a request fails once its socket
   * has been idle that long (nothing sent, nothing received), and a connection that takes that
   * long to open fails too; the SDK retries (three attempts in all). The SDK's default is no
   * timeout at all: a gateway that accepts a connection and never answers would hold the
   * upload forever.
   */
  static async open(spec: string | S3Location, opts: { timeoutSeconds?: number } = {}): Promise<S3Store> {
    const loc = typeof spec === 'string' ? parseS3Url(spec) : spec;
    // The SDK warns once per process that releases after January 2027 need Node 22.
    process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';
    const s3 = await import('@aws-sdk/client-s3');
    const timeoutMs = Math.max(1, opts.timeoutSeconds ?? 60) * 1000;
    const client = new s3.S3Client({
      endpoint: loc.endpoint,
      region: loc.region,
      forcePathStyle: true,
      credentials: { accessKeyId: loc.accessKeyId, secretAccessKey: loc.secretAccessKey },
      // Ceph RGW 16 and other S3 servers do not know the flexible checksums (CRC32 trailers)
      // that recent SDKs send by default; the upload path computes md5/sha512 itself.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 3,
      requestHandler: { connectionTimeout: timeoutMs, socketTimeout: timeoutMs, ...tlsAgentOption() },
    });
    const store = new S3Store(s3, client, loc);
    try {
      await store.ensureBucket();
    } catch (err) {
      client.destroy();
      if (err instanceof VdiskError) throw err;
      throw new VdiskError(
        'EIO',
        `Could not open the S3 store ${loc.endpoint}/${loc.bucket}: ${(err as Error).message || errName(err)}`,
        { cause: err },
      );
    }
    return store;
  }

  private async ensureBucket(): Promise<void> {
    const { bucket } = this.location;
    try {
      await this.client.send(new this.s3.HeadBucketCommand({ Bucket: bucket }));
      return;
    } catch (err) {
      if (httpStatus(err) !== 404) throw err;
    }
    try {
      await this.client.send(new this.s3.CreateBucketCommand({ Bucket: bucket }));
    } catch (err) {
      // Another server created it meanwhile.
      if (errName(err) !== 'BucketAlreadyOwnedByYou') throw err;
    }
  }

  private key(key: string): string {
    return `${this.location.prefix}${checkKey(key)}`;
  }

  async create(key: string): Promise<BlobWriter> {
    const { s3, client } = this;
    const Bucket = this.location.bucket;
    const Key = this.key(key);
    let uploadId: string | null = null;
    const parts: { PartNumber: number; ETag: string }[] = [];
    let partNo = 1;
    let buf: Buffer | null = null;
    // Buffers of parts already sent, reused for the next parts of the same size.
    const free: Buffer[] = [];
    let used = 0;
    // Parts in flight and their sizes; the first failure is kept and rethrown.
    const inflight = new Map<Promise<void>, number>();
    let inflightBytes = 0;
    let failure: unknown = null;
    let done = false;
    const active = this.active;

    const start = async (): Promise<string> => {
      if (uploadId === null) {
        const r = await client.send(new s3.CreateMultipartUploadCommand({ Bucket, Key }));
        if (r.UploadId === undefined) throw new Error('CreateMultipartUpload returned no UploadId');
        uploadId = r.UploadId;
        active.add(uploadId);
      }
      return uploadId;
    };

    const sendPart = async (): Promise<void> => {
      if (buf === null || used === 0) return;
      if (partNo > MAX_PARTS) throw new Error(`the blob needs more than ${MAX_PARTS} parts`);
      const full = buf;
      const body = full.subarray(0, used);
      const n = partNo++;
      buf = null;
      used = 0;
      const id = await start();
      // Bounded memory: at most INFLIGHT_BYTES (or one part when parts are larger) in flight.
      while (inflight.size > 0 && inflightBytes + body.length > Math.max(INFLIGHT_BYTES, body.length)) {
        await Promise.race(inflight.keys());
      }
      if (failure !== null) throw failure;
      const upload = async () => {
        try {
          const r = await client.send(
            new s3.UploadPartCommand({ Bucket, Key, UploadId: id, PartNumber: n, Body: body }),
          );
          if (r.ETag === undefined) throw new Error(`UploadPart ${n} returned no ETag`);
          parts.push({ PartNumber: n, ETag: r.ETag });
        } catch (err) {
          failure ??= err;
        } finally {
          inflight.delete(p);
          inflightBytes -= body.length;
          if (!done && full.length === partSize(partNo)) free.push(full);
        }
      };
      const p: Promise<void> = upload();
      inflight.set(p, body.length);
      inflightBytes += body.length;
    };

    const settle = async () => {
      while (inflight.size > 0) await Promise.allSettled(inflight.keys());
    };
    // A store failure, whatever the SDK threw (a 5xx after its retries, a timeout, a reset
    // connection): one EIO, which the API answers as Glance does (503).
    const failed = (err: unknown) =>
      err instanceof VdiskError
        ? err
        : new VdiskError('EIO', `S3 upload of ${Key} failed: ${(err as Error).message || errName(err)}`, {
            cause: err,
          });

    return {
      async write(chunk: Buffer) {
        if (done) throw new Error('write after commit or abort');
        if (failure !== null) throw failed(failure);
        let off = 0;
        while (off < chunk.length) {
          const size = partSize(partNo);
          if (buf === null) {
            let b = free.pop();
            while (b !== undefined && b.length !== size) b = free.pop();
            buf = b ?? Buffer.allocUnsafe(size);
          }
          const n = Math.min(chunk.length - off, size - used);
          chunk.copy(buf, used, off, off + n);
          used += n;
          off += n;
          if (used === size) await sendPart().catch((err) => Promise.reject(failed(err)));
        }
      },
      async commit() {
        if (done) throw new Error('commit after commit or abort');
        try {
          if (uploadId === null) {
            // Smaller than one part: one atomic PutObject.
            const body = buf === null ? Buffer.alloc(0) : buf.subarray(0, used);
            await client.send(new s3.PutObjectCommand({ Bucket, Key, Body: body }));
            done = true;
            return;
          }
          await sendPart();
          await settle();
          if (failure !== null) throw failure;
          parts.sort((a, b) => a.PartNumber - b.PartNumber);
          await client.send(
            new s3.CompleteMultipartUploadCommand({
              Bucket,
              Key,
              UploadId: uploadId,
              MultipartUpload: { Parts: parts },
            }),
          );
          active.delete(uploadId);
          done = true;
        } catch (err) {
          throw failed(err);
        }
      },
      async abort() {
        if (done) return;
        done = true;
        buf = null;
        free.length = 0;
        await settle();
        if (uploadId !== null) {
          await client
            .send(new s3.AbortMultipartUploadCommand({ Bucket, Key, UploadId: uploadId }))
            .catch(() => {
              // Left for cleanup (listed as a stale multipart upload on the next start).
            });
          active.delete(uploadId);
        }
      },
    };
  }

  async read(key: string, start?: number, end?: number): Promise<Readable> {
    let Range: string | undefined;
    if (start !== undefined || end !== undefined) Range = `bytes=${start ?? 0}-${end ?? ''}`;
    const r = await this.client.send(
      new this.s3.GetObjectCommand({
        Bucket: this.location.bucket,
        Key: this.key(key),
        ...(Range !== undefined ? { Range } : {}),
      }),
    );
    if (r.Body === undefined) throw new Error(`GetObject ${key} returned no body`);
    // A plain stream, as the filesystem store gives: the SDK's body is the HTTP response
    // itself (an IncomingMessage, whose `complete`/`headers` callers must not see or change).
    const out = new PassThrough({ highWaterMark: 1 << 20 });
    pipeline(r.Body as Readable, out).catch(() => {
      // pipeline destroys `out` with the error: the reader sees it
    });
    return out;
  }

  /** Bytes [start, end) of a blob in one ranged GetObject, read into one buffer. */
  async readRange(key: string, start: number, end: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(end - start);
    if (end <= start) return out;
    const r = await this.client.send(
      new this.s3.GetObjectCommand({
        Bucket: this.location.bucket,
        Key: this.key(key),
        Range: `bytes=${start}-${end - 1}`,
      }),
    );
    if (r.Body === undefined) throw new Error(`GetObject ${key} returned no body`);
    let got = 0;
    for await (const chunk of r.Body as Readable) {
      const b = chunk as Buffer;
      if (got + b.length > out.length) throw new Error(`GetObject ${key}: more bytes than the range asked`);
      b.copy(out, got);
      got += b.length;
    }
    if (got !== out.length)
      throw new Error(`GetObject ${key}: ${got} bytes of the ${out.length} asked at ${start}`);
    return out;
  }

  async openRandom(key: string): Promise<ReadSource> {
    const size = await this.size(key);
    if (size === null) throw new Error(`blob '${key}' does not exist`);
    return cachedSource({ size, fetch: (start, end) => this.readRange(key, start, end) });
  }

  async size(key: string): Promise<number | null> {
    try {
      const r = await this.client.send(
        new this.s3.HeadObjectCommand({ Bucket: this.location.bucket, Key: this.key(key) }),
      );
      return r.ContentLength ?? null;
    } catch (err) {
      if (httpStatus(err) === 404) return null;
      throw err;
    }
  }

  async delete(key: string): Promise<void> {
    await this.client.send(
      new this.s3.DeleteObjectCommand({ Bucket: this.location.bucket, Key: this.key(key) }),
    );
  }

  async *list(): AsyncIterable<BlobEntry> {
    const { bucket, prefix } = this.location;
    let token: string | undefined;
    do {
      const r = await this.client.send(
        new this.s3.ListObjectsV2Command({
          Bucket: bucket,
          Prefix: prefix,
          ...(token !== undefined ? { ContinuationToken: token } : {}),
        }),
      );
      for (const o of r.Contents ?? []) {
        const name = o.Key?.slice(prefix.length);
        // Only our own keys: nothing from a deeper prefix.
        if (name !== undefined && KEY_RE.test(name) && !name.startsWith('.'))
          yield { key: name, modified: o.LastModified ?? new Date(0) };
      }
      token = r.IsTruncated === true ? r.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  /** Multipart uploads under our prefix that this process is not writing. */
  async *pendingUploads(): AsyncIterable<{ key: string; name: string; uploadId: string; initiated: Date }> {
    const { bucket, prefix } = this.location;
    let keyMarker: string | undefined;
    let idMarker: string | undefined;
    for (;;) {
      const r = await this.client.send(
        new this.s3.ListMultipartUploadsCommand({
          Bucket: bucket,
          Prefix: prefix,
          ...(keyMarker !== undefined ? { KeyMarker: keyMarker } : {}),
          ...(idMarker !== undefined ? { UploadIdMarker: idMarker } : {}),
        }),
      );
      for (const u of r.Uploads ?? []) {
        const name = u.Key?.slice(prefix.length);
        if (u.Key === undefined || u.UploadId === undefined || name === undefined) continue;
        if (!KEY_RE.test(name) || this.active.has(u.UploadId)) continue;
        yield { key: u.Key, name, uploadId: u.UploadId, initiated: u.Initiated ?? new Date(0) };
      }
      if (r.IsTruncated !== true) break;
      keyMarker = r.NextKeyMarker;
      idMarker = r.NextUploadIdMarker;
      if (keyMarker === undefined && idMarker === undefined) break;
    }
  }

  private async abortUploads(pick: (u: { name: string; initiated: Date }) => boolean): Promise<number> {
    const stale: { key: string; uploadId: string }[] = [];
    for await (const u of this.pendingUploads()) if (pick(u)) stale.push(u);
    for (const u of stale)
      await this.client
        .send(
          new this.s3.AbortMultipartUploadCommand({
            Bucket: this.location.bucket,
            Key: u.key,
            UploadId: u.uploadId,
          }),
        )
        .catch((err) => {
          if (httpStatus(err) !== 404) throw err;
        });
    return stale.length;
  }

  cleanup(opts: CleanupOptions = {}): Promise<number> {
    return this.abortUploads(
      (u) => opts.keep?.(u.name) !== true && (opts.before === undefined || u.initiated < opts.before),
    );
  }

  abortPending(key: string): Promise<number> {
    return this.abortUploads((u) => u.name === key);
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
