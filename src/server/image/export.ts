/**
 * Beyond Glance: images handed out in the format each user needs, and differential images
 * turned into new masters, both done by the engine on the registry's own blobs.
 *
 * - `GET /v2/images/{id}/export?disk_format=F[&subformat=S][&flatten=true|false][&compress=true]`
 *   streams the image (its whole chain by default) converted to F, as it is produced
 *   (src/commands/export.ts): no temporary copy for the formats with a sequential writer,
 *   Content-Length when the length is known up front, Content-Disposition with a file name.
 *   The client going away stops the conversion. `flatten=false` on an overlay gives the
 *   overlay alone in F, naming its master by image id.
 * - `POST /v2/images/{id}/actions/flatten` makes a new standalone image (owned by the caller)
 *   from an image and its chain, as an import makes one: 202, the new image `importing` under a
 *   task until it is `active` (or `queued` with the task's message on failure). With
 *   `backing_image_id` in the body the result is instead an overlay of that other master
 *   holding only what differs (qemu-img rebase semantics).
 *
 * Reading a chain needs every master to be visible to the caller (403 naming the one that is
 * not) and none deactivated (403, admins excepted), as the chain's data is what goes out.
 */
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { type ExportStream, exportDiff, exportImage } from '../../commands/export.js';
import { allocationPicture, PICTURE_KINDS } from '../../commands/picture.js';
import type { Image } from '../../core/image.js';
import type { AuthContext, Services } from '../context.js';
import { type Ctx, HttpError, isObject, type Router, readJson, sendJson } from '../http.js';
import type { Identity } from '../identity/keystone.js';
import { baseUrl } from '../identity/keystone.js';
import { isotime } from '../util.js';
import type { ImageApi } from './api.js';
import { receiveData } from './data.js';
import { ENGINE_FORMAT, engineFormatOf } from './formats.js';
import { asBody, type ImportApi, taskLockProperties } from './import.js';
import type { InspectorFactory } from './inspect.js';
import { BACKING_PROP, checkChainReadable, loadChain, masterIdOf, openChain } from './layers.js';
import { enforce, type ImageRow } from './policy.js';
import { createTask } from './tasks.js';
import { Tickets } from './tickets.js';

/** disk_format values an export can produce → the engine's format (qcow: beyond Glance's list). */
const EXPORT_FORMATS: Record<string, string> = { ...ENGINE_FORMAT, vpc: 'vpc', qcow: 'qcow' };
const SUBFORMATS: Record<string, string[]> = {
  vmdk: ['monolithicSparse', 'streamOptimized'],
  vpc: ['dynamic', 'fixed'],
  vhdx: ['dynamic', 'fixed'],
};
const EXTENSION: Record<string, string> = { vpc: 'vhd' };
const MiB = 1 << 20;

function parseBool(v: string | null, name: string, dflt: boolean): boolean {
  if (v === null) return dflt;
  const s = v.trim().toLowerCase();
  if (['1', 't', 'true', 'on', 'y', 'yes'].includes(s)) return true;
  if (['0', 'f', 'false', 'off', 'n', 'no'].includes(s)) return false;
  throw new HttpError(400, `Invalid value '${v}' for ${name}: use true or false.`);
}

/** A file name for Content-Disposition: the image's name (or id) with the format's extension. */
function fileName(img: ImageRow, engine: string): { ascii: string; utf8: string } {
  const base = (img.name ?? '').trim() || img.id;
  const ext = EXTENSION[engine] ?? engine;
  const stem = base.replace(new RegExp(`\\.${ext}$`, 'i'), '');
  const utf8 = `${stem}.${ext}`.replace(/[/\\\0-\x1f\x7f]/g, '_');
  const ascii = utf8.replace(/[^A-Za-z0-9._ -]/g, '_').replace(/"/g, '_');
  return { ascii, utf8 };
}

const dispositionOf = (name: { ascii: string; utf8: string }) =>
  `attachment; filename="${name.ascii}"; filename*=UTF-8''${encodeURIComponent(name.utf8)}`;

/** Write a stream to the response with backpressure; false when the client went away. */
async function sendStream(res: import('node:http').ServerResponse, out: ExportStream): Promise<boolean> {
  const closed = once(res, 'close').then(() => false);
  for await (const chunk of out.chunks()) {
    if (res.destroyed) return false;
    if (!res.write(chunk)) {
      const go = await Promise.race([once(res, 'drain').then(() => true), closed]);
      if (!go) return false;
    }
  }
  res.end();
  return true;
}

export interface ExportApiOptions {
  inspect?: InspectorFactory | undefined;
}

export class ExportApi {
  private readonly tickets: Tickets;

  constructor(
    private readonly svc: Services,
    private readonly identity: Identity,
    private readonly images: ImageApi,
    private readonly imports: ImportApi,
    private readonly opts: ExportApiOptions = {},
  ) {
    this.tickets = new Tickets(svc);
  }

  routes(router: Router): void {
    const auth = (c: Ctx) => this.identity.authenticate(c.req);
    router.on('GET', '/v2/images/:id/export', async (c) => this.export(c, await auth(c)));
    router.on('POST', '/v2/images/:id/actions/flatten', async (c) => this.flatten(c, await auth(c)));
    router.on('GET', '/v2/images/:id/map', async (c) => this.map(c, await auth(c)));
    router.on('POST', '/v2/images/:id/download-ticket', async (c) => this.ticket(c, await auth(c)));
    // No X-Auth-Token: the ticket names the caller (tickets.ts).
    router.on('GET', '/v2/download/:ticket', async (c) => this.ticketDownload(c));
  }

  /**
   * `POST /v2/images/{id}/download-ticket` with an optional JSON body `{disk_format,
   * subformat, flatten, compress}` (an export) or none (the original bytes): a URL valid for
   * 60 s that a browser can download from without a token (tickets.ts).
   */
  private async ticket(c: Ctx, ctx: AuthContext): Promise<void> {
    const body = await readJson(c.req).catch((e: unknown) => {
      if (e instanceof HttpError && e.message === 'Body expected in request.') return {};
      throw e;
    });
    if (!isObject(body)) throw new HttpError(400, 'The ticket request must be a JSON object.');
    const q = new URLSearchParams();
    for (const k of ['disk_format', 'subformat', 'flatten', 'compress']) {
      const v = body[k];
      if (v === undefined || v === null) continue;
      if (typeof v !== 'string' && typeof v !== 'boolean') throw new HttpError(400, `Invalid ${k}.`);
      q.set(k, String(v));
    }
    if (q.size > 0 && !q.has('disk_format')) throw new HttpError(400, 'An export needs a disk_format.');
    // The checks of the download itself, now (a clear answer to the page) and again on use.
    const id = c.params['id']!;
    if (q.size > 0) await this.readableChain(ctx, id);
    else {
      const img = await this.images.visibleImage(ctx, id);
      if (img.status === 'deactivated')
        enforce(
          'download_deactivated',
          ctx,
          { image: img },
          'The requested image has been deactivated. Image data download is forbidden.',
        );
    }
    const t = await this.tickets.issue(ctx, id, q.toString());
    sendJson(c.res, 200, { url: `/v2/download/${t.ticket}`, expires_at: isotime(t.expiresAt) });
  }

  private async ticketDownload(c: Ctx): Promise<void> {
    const t = await this.tickets.open(c.params['ticket']!);
    const ctx = await this.identity.validateId(t.t);
    if (ctx === null)
      throw new HttpError(401, 'This download link is invalid or has expired: start the download again.');
    const sub: Ctx = { ...c, params: { id: t.i }, query: new URLSearchParams(t.q) };
    if (t.q !== '') return this.export(sub, ctx);
    const img = await this.images.visibleImage(ctx, t.i);
    const name = fileName(img, engineFormatOf(img.disk_format));
    await this.images.download(sub, ctx, dispositionOf(name));
  }

  /**
   * `GET /v2/images/{id}/map?buckets=N` (beyond Glance): the allocation picture of the image
   * and its chain (src/commands/picture.ts), N parts of the virtual disk (default 1024, at most
   * 65536), each with the fraction of its bytes that the image stores, stores compressed,
   * declares zero, or reads from its masters; the rest is unallocated.
   */
  private async map(c: Ctx, ctx: AuthContext): Promise<void> {
    const chain = await this.readableChain(ctx, c.params['id']!);
    const raw = c.query.get('buckets') ?? '1024';
    if (!/^\d+$/.test(raw) || Number(raw) < 1 || Number(raw) > 65536)
      throw new HttpError(400, `Invalid buckets '${raw}': a number from 1 to 65536.`);
    const image = await openChain(this.svc, chain);
    try {
      const pic = await allocationPicture(image, Number(raw));
      const r3 = (x: number) => Math.round(x * 1000) / 1000;
      sendJson(c.res, 200, {
        id: chain[0]!.id,
        virtual_size: pic.virtualSize,
        bucket_size: pic.bucketSize,
        kinds: PICTURE_KINDS,
        totals: pic.totals,
        extents: pic.extents,
        chain: chain.map((r) => ({ id: r.id, name: r.name, disk_format: r.disk_format, size: r.size })),
        buckets: pic.buckets.map((b, i) => {
          const len = Math.min(pic.bucketSize, pic.virtualSize - i * pic.bucketSize);
          return b.map((v) => r3(v / len));
        }),
      });
    } finally {
      await image.close().catch(() => {});
    }
  }

  /** The image and its chain, checked readable by the caller. */
  private async readableChain(ctx: AuthContext, id: string): Promise<ImageRow[]> {
    const img = await this.images.visibleImage(ctx, id);
    const chain = await loadChain(this.svc, img);
    await checkChainReadable(this.svc, ctx, chain);
    return chain;
  }

  private async export(c: Ctx, ctx: AuthContext): Promise<void> {
    const chain = await this.readableChain(ctx, c.params['id']!);
    const img = chain[0]!;
    const q = c.query;
    const requested = q.get('disk_format') ?? img.disk_format ?? 'raw';
    const engine = EXPORT_FORMATS[requested];
    if (engine === undefined)
      throw new HttpError(
        400,
        `Cannot export to disk_format '${requested}': choose one of ${Object.keys(EXPORT_FORMATS).join(', ')}.`,
      );
    const options: Record<string, string> = {};
    const sub = q.get('subformat');
    if (sub !== null) {
      const allowed = SUBFORMATS[engine];
      if (allowed === undefined) throw new HttpError(400, `disk_format ${requested} has no subformat.`);
      if (!allowed.includes(sub))
        throw new HttpError(
          400,
          `Invalid subformat '${sub}' for ${requested}: choose one of ${allowed.join(', ')}.`,
        );
      options['subformat'] = sub;
    }
    const flatten = parseBool(q.get('flatten'), 'flatten', true);
    const compress = parseBool(q.get('compress'), 'compress', false);
    // Azure wants a fixed VHD whose size is a whole number of MiB, exactly (no CHS rounding).
    const azure = engine === 'vpc' && sub === 'fixed';
    if (azure) options['force_size'] = 'on';

    const image = await openChain(this.svc, chain);
    let out: ExportStream | undefined;
    try {
      out = await exportImage({
        image,
        format: engine,
        options,
        flatten,
        backing: img.properties[BACKING_PROP] !== undefined ? backingOf(chain[1]!) : undefined,
        scanZeros: chain.some((r) => engineFormatOf(r.disk_format) === 'raw'),
        compressed: compress,
        tmpDir: this.svc.workDir,
        ...(azure ? { alignSize: MiB } : {}),
      });
      const headers: Record<string, string> = {
        'Content-Type': 'application/octet-stream',
        'Content-Disposition': dispositionOf(fileName(img, engine)),
      };
      if (out.length !== null) headers['Content-Length'] = String(out.length);
      c.res.writeHead(200, headers);
      if (c.req.method === 'HEAD') {
        c.res.end();
        return;
      }
      await sendStream(c.res, out);
    } finally {
      await out?.close().catch(() => {});
      await image.close().catch(() => {});
    }
  }

  private async flatten(c: Ctx, ctx: AuthContext): Promise<void> {
    const body = await readJson(c.req).catch((e: unknown) => {
      // An empty body is fine: every field has a default.
      if (e instanceof HttpError && e.message === 'Body expected in request.') return {};
      throw e;
    });
    if (!isObject(body)) throw new HttpError(400, 'The flatten request must be a JSON object.');
    const chain = await this.readableChain(ctx, c.params['id']!);
    const src = chain[0]!;
    if (ctx.projectId === null) throw new HttpError(403, 'Flattening needs a project-scoped token.');
    const fields: Record<string, unknown> = {
      name: src.name,
      disk_format: 'qcow2',
      container_format: 'bare',
      min_disk: src.min_disk,
      min_ram: src.min_ram,
      ...body,
    };
    const diskFormat = fields['disk_format'];
    if (typeof diskFormat !== 'string' || ENGINE_FORMAT[diskFormat] === undefined)
      throw new HttpError(
        400,
        `Cannot flatten to disk_format '${String(diskFormat)}': choose one of ${Object.keys(ENGINE_FORMAT).join(', ')}.`,
      );
    // The new image: every rule of POST /v2/images (it checks a master named in the body too).
    const row = await this.images.newImageRow(ctx, fields);
    const rebaseOnto = masterIdOf(row);
    let base: ImageRow[] | null = null;
    if (rebaseOnto !== undefined) {
      base = await this.readableChain(ctx, rebaseOnto);
      if (base.some((r) => r.id === src.id))
        throw new HttpError(409, `Image ${src.id} is a master of image ${rebaseOnto}: flatten it instead.`);
    }
    const task = await createTask(this.svc, {
      type: 'api_image_import',
      owner: ctx.projectId,
      imageId: row.id,
      input: {
        image_id: row.id,
        import_req: {
          method: {
            name: 'flatten',
            image_id: src.id,
            ...(rebaseOnto !== undefined ? { backing_image_id: rebaseOnto } : {}),
          },
        },
        backend: [null],
      },
      userId: ctx.userId,
      requestId: (c.res.getHeader('x-openstack-request-id') as string | undefined) ?? null,
    });
    const created: ImageRow = {
      ...row,
      status: 'importing',
      writer: this.svc.instanceId,
      properties: { ...row.properties, ...taskLockProperties(task.id) },
    };
    try {
      await this.images.insertImage(created);
    } catch (err) {
      await this.svc.db.deleteFrom('tasks').where('id', '=', task.id).execute();
      throw err;
    }
    const engine = ENGINE_FORMAT[diskFormat]!;
    const baseChain = base;
    this.imports.startJob(task, created.id, async (signal, progress) => {
      const image = await openChain(this.svc, chain);
      let baseImage: Image | null = null;
      let out: ExportStream | undefined;
      try {
        if (baseChain !== null) baseImage = await openChain(this.svc, baseChain);
        out =
          baseChain !== null && baseImage !== null
            ? await exportDiff({ image, base: baseImage, backing: backingOf(baseChain[0]!), format: engine })
            : await exportImage({
                image,
                format: engine,
                flatten: true,
                scanZeros: chain.some((r) => engineFormatOf(r.disk_format) === 'raw'),
                tmpDir: this.svc.workDir,
              });
        const stream = Readable.from(counting(out.chunks(), progress, signal), { objectMode: false });
        return await receiveData(this.svc, ctx, created, asBody(stream, out.length), this.opts.inspect, {
          fromStatus: 'importing',
          toStatus: 'importing',
          finalStatus: 'importing',
          master: base !== null ? { id: base[0]!.id, virtualSize: base[0]!.virtual_size } : null,
        });
      } finally {
        await out?.close().catch(() => {});
        await image.close().catch(() => {});
        await baseImage?.close().catch(() => {});
      }
    });
    sendJson(c.res, 202, this.images.view(created), {
      Location: `${baseUrl(this.svc, c.req)}/v2/images/${created.id}`,
    });
  }
}

/** How an output names a master: by its image id, with its format. */
function backingOf(master: ImageRow): { filename: string; format: string } {
  return { filename: master.id, format: engineFormatOf(master.disk_format) };
}

/** Count bytes on the way (progress) and stop when the server shuts down. */
async function* counting(
  chunks: AsyncIterable<Uint8Array>,
  progress: (bytes: number) => void,
  signal: AbortSignal,
): AsyncGenerator<Uint8Array> {
  let n = 0;
  for await (const c of chunks) {
    if (signal.aborted) throw new Error('The server is shutting down.');
    n += c.length;
    progress(n);
    yield c;
  }
}
