/**
 * The Image API v2: versions, images (create/show/list/update/delete), PATCH with both
 * JSON-patch media types and Glance's rules, tags, data, deactivate/reactivate, members
 * and schemas. Behaviour follows Glance 25 (glance/api/v2/*.py and its domain proxies).
 */
import { sql } from 'kysely';
import { type AuthContext, beginWrite, type Services } from '../context.js';
import {
  type Ctx,
  HttpError,
  isObject,
  mediaType,
  type Router,
  readJson,
  sendEmpty,
  sendJson,
} from '../http.js';
import type { Identity } from '../identity/keystone.js';
import { baseUrl } from '../identity/keystone.js';
import type { BlobStore } from '../store/store.js';
import { UUID_RE, uuid } from '../util.js';
import { finishUpload, receiveData, sendData, settleUpload } from './data.js';
import type { InspectorFactory } from './inspect.js';
import {
  BACKING_PROP,
  backingOf,
  checkMasterOnSet,
  dependentCount,
  hiddenMasterFor,
  isVisible,
  loadChain,
  masterForUpload,
} from './layers.js';
import { listImages } from './list.js';
import { allowed, canModify, enforce, type ImageRow } from './policy.js';
import {
  type AllowedFormats,
  collectionSchema,
  imageProperties,
  imageSchema,
  memberSchema,
  taskSchema,
  validateImage,
  validateValue,
} from './schemas.js';
import { deleteImageData } from './store-ops.js';
import { imageView, memberView } from './views.js';

const DISALLOWED = ['direct_url', 'self', 'file', 'schema', 'stores'];
const READONLY = [
  'created_at',
  'updated_at',
  'status',
  'checksum',
  'size',
  'virtual_size',
  'direct_url',
  'self',
  'file',
  'schema',
  'id',
  'os_hash_algo',
  'os_hash_value',
];
const RESERVED = ['location', 'deleted', 'deleted_at'];
const RESERVED_NS = 'os_glance';
/** Attributes of the domain Image object (hasattr(image, x) in Glance). */
const BASE_ATTRS = new Set([
  'name',
  'visibility',
  'protected',
  'os_hidden',
  'min_disk',
  'min_ram',
  'disk_format',
  'container_format',
  'owner',
  'tags',
  'status',
  'checksum',
  'size',
  'virtual_size',
  'created_at',
  'updated_at',
  'locations',
  'os_hash_algo',
  'os_hash_value',
  'id',
]);

const VERSIONS: [string, string][] = [
  ['v2.16', 'CURRENT'],
  ['v2.15', 'SUPPORTED'],
  ['v2.14', 'SUPPORTED'],
  ['v2.13', 'SUPPORTED'],
  ['v2.12', 'SUPPORTED'],
  ['v2.11', 'SUPPORTED'],
  ['v2.10', 'SUPPORTED'],
  ['v2.9', 'SUPPORTED'],
  ['v2.8', 'SUPPORTED'],
  ['v2.7', 'SUPPORTED'],
  ['v2.6', 'SUPPORTED'],
  ['v2.5', 'SUPPORTED'],
  ['v2.4', 'SUPPORTED'],
  ['v2.3', 'SUPPORTED'],
  ['v2.2', 'SUPPORTED'],
  ['v2.1', 'SUPPORTED'],
  ['v2.0', 'SUPPORTED'],
];

export interface ImageApiOptions {
  inspect?: InspectorFactory;
}

export class ImageApi {
  constructor(
    private readonly svc: Services,
    private readonly identity: Identity,
    private readonly opts: ImageApiOptions = {},
  ) {}

  private get db() {
    return this.svc.db;
  }

  /** An image's JSON view (with `stores` when the server has several). */
  view(img: ImageRow): Record<string, unknown> {
    return imageView(img, this.svc.stores);
  }

  /** The image if the caller may see it, else 404 (never 403: no existence leak). */
  async visibleImage(ctx: AuthContext, id: string): Promise<ImageRow> {
    const img = await this.db.selectFrom('images').selectAll().where('id', '=', id).executeTakeFirst();
    if (img === undefined || !(await isVisible(this.db, ctx, img)))
      throw new HttpError(404, `No image found with ID ${id}`);
    return img;
  }

  private async mutableImage(ctx: AuthContext, id: string, what = 'modify'): Promise<ImageRow> {
    const img = await this.visibleImage(ctx, id);
    if (!canModify(ctx, img)) throw new HttpError(403, `You are not permitted to ${what} this image.`);
    return img;
  }

  private async reload(id: string): Promise<ImageRow> {
    const img = await this.db.selectFrom('images').selectAll().where('id', '=', id).executeTakeFirst();
    if (img === undefined) throw new HttpError(404, `No image found with ID ${id}`);
    return img;
  }

  routes(router: Router): void {
    const auth = (c: Ctx) => this.identity.authenticate(c.req);
    const versions = (c: Ctx) => {
      const base = baseUrl(this.svc, c.req);
      return {
        versions: VERSIONS.map(([id, status]) => ({
          id,
          status,
          links: [{ rel: 'self', href: `${base}/v2/` }],
        })),
      };
    };
    router.on('GET', '/', async (c) => sendJson(c.res, 300, versions(c)));
    router.on('GET', '/versions', async (c) => sendJson(c.res, 200, versions(c)));
    router.on('GET', '/v2', async (c) => sendJson(c.res, 300, versions(c)));

    // Schemas (no token needed in Glance either? it needs one; keep it authenticated).
    const schemas: Record<string, () => unknown> = {
      image: () => imageSchema(this.svc.settings),
      images: () => collectionSchema('images', imageSchema(this.svc.settings)),
      member: memberSchema,
      members: () => collectionSchema('members', memberSchema()),
      task: taskSchema,
      tasks: () => collectionSchema('tasks', taskSchema()),
    };
    router.on('GET', '/v2/schemas/:name', async (c) => {
      await auth(c);
      const s = schemas[c.params['name']!];
      if (s === undefined) throw new HttpError(404, 'The resource could not be found.');
      sendJson(c.res, 200, s());
    });

    router.on('GET', '/v2/info/import', async (c) => {
      await auth(c);
      sendJson(c.res, 200, {
        'import-methods': {
          description: 'Import methods available.',
          type: 'array',
          value: this.svc.settings.importMethods,
        },
      });
    });

    router.on('POST', '/v2/images', async (c) => this.create(c, await auth(c)));
    router.on('GET', '/v2/images', async (c) => {
      const ctx = await auth(c);
      const r = await listImages(this.svc, ctx, c.query);
      const params = new URLSearchParams(c.query);
      params.delete('marker');
      const qs = params.toString();
      const body: Record<string, unknown> = {
        images: r.images.map((i) => this.view(i)),
        first: qs === '' ? '/v2/images' : `/v2/images?${qs}`,
        schema: '/v2/schemas/images',
      };
      if (r.nextMarker !== undefined) {
        params.set('marker', r.nextMarker);
        body['next'] = `/v2/images?${params.toString()}`;
      }
      sendJson(c.res, 200, body);
    });
    router.on('GET', '/v2/images/:id', async (c) => {
      const ctx = await auth(c);
      sendJson(c.res, 200, this.view(await this.visibleImage(ctx, c.params['id']!)));
    });
    router.on('PATCH', '/v2/images/:id', async (c) => this.update(c, await auth(c)));
    router.on('DELETE', '/v2/images/:id', async (c) => this.remove(c, await auth(c)));

    router.on('PUT', '/v2/images/:id/file', async (c) => {
      const done = beginWrite(this.svc, c.params['id']!);
      try {
        await this.upload(c, await auth(c));
      } finally {
        done();
      }
    });
    router.on('GET', '/v2/images/:id/file', async (c) => this.download(c, await auth(c)));

    router.on('POST', '/v2/images/:id/actions/deactivate', async (c) => {
      const ctx = await auth(c);
      const img = await this.mutableImage(ctx, c.params['id']!, 'deactivate');
      if (img.status === 'deactivated') return sendEmpty(c.res, 204);
      if (img.status !== 'active')
        throw new HttpError(403, `Not allowed to deactivate image in status '${img.status}'`);
      await this.db
        .updateTable('images')
        .set({ status: 'deactivated', updated_at: new Date() })
        .where('id', '=', img.id)
        .where('status', '=', 'active')
        .execute();
      sendEmpty(c.res, 204);
    });
    router.on('POST', '/v2/images/:id/actions/reactivate', async (c) => {
      const ctx = await auth(c);
      const img = await this.mutableImage(ctx, c.params['id']!, 'reactivate');
      if (img.status === 'active') return sendEmpty(c.res, 204);
      if (img.status !== 'deactivated')
        throw new HttpError(403, `Not allowed to reactivate image in status '${img.status}'`);
      await this.db
        .updateTable('images')
        .set({ status: 'active', updated_at: new Date() })
        .where('id', '=', img.id)
        .where('status', '=', 'deactivated')
        .execute();
      sendEmpty(c.res, 204);
    });

    router.on('PUT', '/v2/images/:id/tags/:tag', async (c) => {
      const ctx = await auth(c);
      const tag = c.params['tag']!;
      await this.modify(ctx, c.params['id']!, async (img) => {
        if (!canModify(ctx, img)) throw new HttpError(403, 'You are not permitted to modify this image.');
        const err = validateValue({ type: 'string', maxLength: 255 }, tag, 'tag');
        if (err !== null) throw new HttpError(400, `Provided object does not match schema 'image': ${err}`);
        if (img.tags.includes(tag)) return null;
        if (img.tags.length + 1 > this.svc.settings.imageTagQuota)
          throw new HttpError(
            413,
            `Maximum tag count exceeded: ${img.tags.length + 1} > ${this.svc.settings.imageTagQuota}`,
          );
        return { tags: [...img.tags, tag] };
      });
      sendEmpty(c.res, 204);
    });
    router.on('DELETE', '/v2/images/:id/tags/:tag', async (c) => {
      const ctx = await auth(c);
      const tag = c.params['tag']!;
      await this.modify(ctx, c.params['id']!, async (img) => {
        if (!canModify(ctx, img)) throw new HttpError(403, 'You are not permitted to modify this image.');
        if (!img.tags.includes(tag)) throw new HttpError(404, `Tag ${tag} not found`);
        return { tags: img.tags.filter((t) => t !== tag) };
      });
      sendEmpty(c.res, 204);
    });

    this.memberRoutes(router, auth);
  }

  /**
   * The store an upload goes to: `X-Image-Meta-Store` with several stores (400 with Glance's
   * message when it names no store), else the default store; the header is ignored with one
   * store, as Glance ignores it without enabled_backends.
   */
  private uploadStore(c: Ctx): { id: string | null; store: BlobStore } {
    const set = this.svc.stores;
    if (set === null) return { id: null, store: this.svc.store };
    const h = c.req.headers['x-image-meta-store'];
    const id = typeof h === 'string' ? h : set.defaultId;
    const named = set.get(id);
    if (named === undefined) throw new HttpError(400, `Store for identifier ${id} not found`);
    return { id, store: named.store };
  }

  /** GET /file: the image's own bytes; `attachment` adds Content-Disposition (browser downloads). */
  async download(c: Ctx, ctx: AuthContext, attachment?: string): Promise<void> {
    const img = await this.visibleImage(ctx, c.params['id']!);
    if (img.status === 'deactivated')
      enforce(
        'download_deactivated',
        ctx,
        { image: img },
        'The requested image has been deactivated. Image data download is forbidden.',
      );
    if (attachment !== undefined) c.res.setHeader('Content-Disposition', attachment);
    await sendData(this.svc, img, c.req, c.res);
  }

  /**
   * Read-modify-write of one image with no lost update, whichever requests and nodes race:
   * `apply` computes the change from the row as read (throwing to refuse it, null for none),
   * and the UPDATE holds only while the row is unchanged since it was read (PostgreSQL's
   * `xmin`, the transaction that last wrote the row; PGlite is PostgreSQL too). When another
   * write came between, `apply` runs again on the new row, as a serial execution would.
   */
  private async modify(
    ctx: AuthContext,
    id: string,
    apply: (img: ImageRow) => Promise<Partial<Omit<ImageRow, 'id' | 'created_at'>> | null>,
  ): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const r = await this.db
        .selectFrom('images')
        .selectAll()
        .select(sql<string>`xmin::text`.as('row_version'))
        .where('id', '=', id)
        .executeTakeFirst();
      if (r === undefined || !(await isVisible(this.db, ctx, r)))
        throw new HttpError(404, `No image found with ID ${id}`);
      const { row_version, ...img } = r;
      const set = await apply(img);
      if (set === null) return;
      const row: Record<string, unknown> = { ...set, updated_at: new Date() };
      if (set.tags !== undefined) row['tags'] = JSON.stringify(set.tags);
      if (set.properties !== undefined) row['properties'] = JSON.stringify(set.properties);
      const u = await this.db
        .updateTable('images')
        .set(row)
        .where('id', '=', id)
        .where(sql<boolean>`xmin::text = ${row_version}`)
        .executeTakeFirst();
      if (u.numUpdatedRows > 0n) return;
      if (attempt >= 100)
        throw new HttpError(409, `Image ${id} is being changed by other requests; try again.`);
    }
  }

  private async create(c: Ctx, ctx: AuthContext): Promise<void> {
    const row = await this.newImageRow(ctx, await readJson(c.req));
    await this.insertImage(row);
    // Glance leaves the header out without methods (RFC 7230: no empty field values).
    const methods = this.svc.settings.importMethods;
    const stores = this.svc.stores;
    sendJson(c.res, 201, this.view(row), {
      Location: `${baseUrl(this.svc, c.req)}/v2/images/${row.id}`,
      ...(methods.length > 0 ? { 'OpenStack-image-import-methods': methods.join(',') } : {}),
      ...(stores !== null ? { 'OpenStack-image-store-ids': stores.ids().join(',') } : {}),
    });
  }

  /**
   * A new image's row (status queued) from a create request's body, with every check of
   * POST /v2/images (schema, read-only and reserved attributes, quotas, owner, publicize,
   * the master of a layered image). Not stored yet: see insertImage.
   */
  async newImageRow(ctx: AuthContext, body: unknown): Promise<ImageRow> {
    if (!isObject(body))
      throw new HttpError(400, "Provided object does not match schema 'image': not an object");
    for (const k of DISALLOWED) if (k in body) throw new HttpError(403, `Attribute '${k}' is read-only.`);
    validateImage(body, this.svc.settings);
    for (const k of READONLY)
      if (k in body && k !== 'id') throw new HttpError(403, `Attribute '${k}' is read-only.`);
    if ('locations' in body) throw new HttpError(403, "Attribute 'locations' is reserved.");
    const props: Record<string, string> = {};
    const base = imageProperties();
    for (const [k, v] of Object.entries(body)) {
      if (k in base && base[k]!['is_base'] !== false) continue;
      if (k.length > 255)
        throw new HttpError(400, 'Custom property should not be greater than 255 characters.');
      if (RESERVED.includes(k) || k.startsWith(RESERVED_NS))
        throw new HttpError(403, `Attribute '${k}' is reserved.`);
      if (v !== null) props[k] = v as string;
    }
    if (Object.keys(props).length > this.svc.settings.imagePropertyQuota)
      throw new HttpError(
        413,
        `Maximum number of properties exceeded: ${Object.keys(props).length} > ${this.svc.settings.imagePropertyQuota}`,
      );
    const tags = [...new Set((body['tags'] as string[] | undefined) ?? [])];
    if (tags.length > this.svc.settings.imageTagQuota)
      throw new HttpError(
        413,
        `Maximum tag count exceeded: ${tags.length} > ${this.svc.settings.imageTagQuota}`,
      );
    const owner = 'owner' in body ? (body['owner'] as string | null) : ctx.projectId;
    if (owner !== ctx.projectId)
      enforce('set_image_owner', ctx, {}, `You are not permitted to create images owned by '${owner}'.`);
    const visibility = (body['visibility'] as string | undefined) ?? 'shared';
    if (visibility === 'public') enforce('publicize_image', ctx, {});
    if (this.svc.settings.imageCountQuota >= 0 && owner !== null) {
      const n = await this.db
        .selectFrom('images')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .where('owner', '=', owner)
        .executeTakeFirstOrThrow();
      if (Number(n.n) >= this.svc.settings.imageCountQuota)
        throw new HttpError(413, `Maximum number of images exceeded: ${this.svc.settings.imageCountQuota}`);
    }
    const now = new Date();
    const id = (body['id'] as string | undefined) ?? uuid();
    const row: ImageRow = {
      id,
      name: (body['name'] as string | null | undefined) ?? null,
      status: 'queued',
      visibility,
      protected: (body['protected'] as boolean | undefined) ?? false,
      os_hidden: (body['os_hidden'] as boolean | undefined) ?? false,
      owner,
      disk_format: (body['disk_format'] as string | null | undefined) ?? null,
      container_format: (body['container_format'] as string | null | undefined) ?? null,
      size: null,
      virtual_size: null,
      checksum: null,
      os_hash_algo: null,
      os_hash_value: null,
      min_disk: (body['min_disk'] as number | undefined) ?? 0,
      min_ram: (body['min_ram'] as number | undefined) ?? 0,
      created_at: now,
      updated_at: now,
      properties: props,
      tags,
      blob: null,
      writer: null,
      stores: [],
    };
    if (row.min_disk < 0 || row.min_ram < 0)
      throw new HttpError(
        400,
        `Invalid value for ${row.min_disk < 0 ? 'min_disk' : 'min_ram'}: must be >= 0`,
      );
    if (props[BACKING_PROP] !== undefined) await checkMasterOnSet(this.svc, ctx, row, props[BACKING_PROP]);
    return row;
  }

  /** Store a new image's row; 409 when the id is taken. */
  async insertImage(row: ImageRow): Promise<void> {
    const r = await this.db
      .insertInto('images')
      .values({
        ...row,
        properties: JSON.stringify(row.properties) as never,
        tags: JSON.stringify(row.tags) as never,
        stores: JSON.stringify(row.stores) as never,
      })
      .onConflict((oc) => oc.column('id').doNothing())
      .executeTakeFirst();
    if (r.numInsertedOrUpdatedRows === 0n)
      throw new HttpError(409, `Image with identifier ${row.id} already exists!`);
  }

  /** PUT /file: the image's data, into the store its X-Image-Meta-Store names. */
  private async upload(c: Ctx, ctx: AuthContext): Promise<void> {
    // With several stores: X-Image-Meta-Store names the store (checked before the image, as Glance).
    const target = this.uploadStore(c);
    const img = await this.mutableImage(ctx, c.params['id']!, 'upload data to');
    const mt = mediaType(c.req);
    if (mt !== 'application/octet-stream' && mt !== '')
      throw new HttpError(415, `Content-Type must be application/octet-stream; got ${mt}.`);
    if (img.status !== 'queued') {
      throw new HttpError(409, `Image status transition from ${img.status} to saving is not allowed`);
    }
    if (img.disk_format === null || img.container_format === null)
      throw new HttpError(400, 'Properties container_format, disk_format must be set prior to saving data.');
    // An overlay: its master must be there (active, visible) before any byte is taken.
    const master = await masterForUpload(this.svc, ctx, img);
    const out = await receiveData(this.svc, ctx, img, c.req, this.opts.inspect, {
      fromStatus: 'queued',
      toStatus: 'saving',
      finalStatus: 'active',
      master: master === null ? null : { id: master.id, virtualSize: master.virtual_size },
      store: target.store,
    });
    if (master !== null) {
      // The master may have gone while the data arrived (deleted, deactivated).
      try {
        await masterForUpload(this.svc, ctx, img);
      } catch (err) {
        await target.store.delete(img.id);
        await this.db
          .updateTable('images')
          .set({ status: 'queued', writer: null, updated_at: new Date() })
          .where('id', '=', img.id)
          .where('status', '=', 'saving')
          .execute();
        throw err;
      }
    }
    try {
      await finishUpload(this.svc, img, out, 'saving', 'active', img.id, target.id);
    } catch (err) {
      if (err instanceof HttpError || !(await settleUpload(this.svc, img, out, 'saving', target.store)))
        throw err;
    }
    sendEmpty(c.res, 204);
  }

  private async update(c: Ctx, ctx: AuthContext): Promise<void> {
    const types: Record<string, 4 | 10> = {
      'application/openstack-images-v2.0-json-patch': 4,
      'application/openstack-images-v2.1-json-patch': 10,
    };
    const draft = types[mediaType(c.req)];
    if (draft === undefined)
      throw new HttpError(415, 'The request has media type not supported by this service.', {
        'Accept-Patch': Object.keys(types).sort().join(', '),
      });
    const id = c.params['id']!;
    // The image must be visible before its body is read (404 first, as Glance).
    await this.visibleImage(ctx, id);
    const body = await readJson(c.req);
    if (!Array.isArray(body))
      throw new HttpError(400, 'Request body must be a JSON array of operation objects.');
    const changes = body.map((raw) => parseChange(raw, draft, this.svc.settings));
    await this.modify(ctx, id, async (img) => {
      if (changes.length > 0 && !canModify(ctx, img)) {
        const root = changes[0]!.path[0]!;
        throw new HttpError(403, `You are not permitted to modify '${root}' on this image.`);
      }

      const next = { ...img, properties: { ...img.properties }, tags: [...img.tags] };
      for (const ch of changes) {
        const root = ch.path[0]!;
        if (root === 'locations')
          throw new HttpError(403, "It's not allowed to update locations if locations are invisible.");
        // With several stores `stores` is the image's (Glance's schema has it read-only then).
        if (root === 'stores' && this.svc.stores !== null)
          throw new HttpError(403, "Attribute 'stores' is read-only.");
        const isBase = BASE_ATTRS.has(root);
        if (ch.op === 'remove') {
          if (isBase) throw new HttpError(403, `Property ${root} may not be removed.`);
          if (!(root in next.properties)) throw new HttpError(409, `Property ${root} does not exist.`);
          delete next.properties[root];
          continue;
        }
        if (ch.op === 'replace' && !isBase && !(root in next.properties))
          throw new HttpError(409, `Property ${root} does not exist.`);
        if (ch.op === 'add' && draft === 4 && (isBase || root in next.properties))
          throw new HttpError(409, `Property ${root} already present.`);
        const v = ch.value;
        if (!isBase) {
          next.properties[root] = v as string;
          continue;
        }
        switch (root) {
          case 'name':
            next.name = v as string | null;
            break;
          case 'visibility':
            if (v === 'public' && next.visibility !== 'public') enforce('publicize_image', ctx, {});
            next.visibility = v as string;
            break;
          case 'protected':
            next.protected = v as boolean;
            break;
          case 'os_hidden':
            next.os_hidden = v as boolean;
            break;
          case 'min_disk':
          case 'min_ram':
            if ((v as number) < 0) throw new HttpError(400, `Invalid value for ${root}: must be >= 0`);
            next[root] = v as number;
            break;
          case 'disk_format':
          case 'container_format':
            if (next[root] !== v && next.status !== 'queued')
              throw new HttpError(403, `Attribute ${root} can be only replaced for a queued image.`);
            next[root] = v as string | null;
            break;
          case 'owner':
            if (v !== next.owner)
              enforce('set_image_owner', ctx, {}, "You are not permitted to modify 'owner' on this image.");
            next.owner = v as string | null;
            break;
          case 'tags': {
            const tags = [...new Set(v as string[])];
            if (tags.length > this.svc.settings.imageTagQuota)
              throw new HttpError(
                413,
                `Maximum tag count exceeded: ${tags.length} > ${this.svc.settings.imageTagQuota}`,
              );
            next.tags = tags;
            break;
          }
          default:
            throw new HttpError(403, `Attribute '${root}' is read-only.`);
        }
      }
      if (Object.keys(next.properties).length > this.svc.settings.imagePropertyQuota)
        throw new HttpError(
          413,
          `Maximum number of properties exceeded: ${Object.keys(next.properties).length} > ${this.svc.settings.imagePropertyQuota}`,
        );
      // The master of a layered image: named while queued (the data is uploaded against it).
      const master = next.properties[BACKING_PROP];
      if (master !== img.properties[BACKING_PROP]) {
        if (img.status !== 'queued')
          throw new HttpError(403, `Attribute ${BACKING_PROP} can be only replaced for a queued image.`);
        if (master !== undefined) await checkMasterOnSet(this.svc, ctx, next, master);
      } else if (master !== undefined && next.disk_format !== img.disk_format) {
        await checkMasterOnSet(this.svc, ctx, next, master);
      }
      if (changes.length === 0) return null;
      return {
        name: next.name,
        visibility: next.visibility,
        protected: next.protected,
        os_hidden: next.os_hidden,
        min_disk: next.min_disk,
        min_ram: next.min_ram,
        disk_format: next.disk_format,
        container_format: next.container_format,
        owner: next.owner,
        tags: next.tags,
        properties: next.properties,
      };
    });
    sendJson(c.res, 200, this.view(await this.reload(id)));
  }

  private async remove(c: Ctx, ctx: AuthContext): Promise<void> {
    const img = await this.visibleImage(ctx, c.params['id']!);
    enforce('delete_image', ctx, { image: img }, 'You are not permitted to delete this image.');
    if (img.protected) throw new HttpError(403, `Image ${img.id} is protected and cannot be deleted.`);
    // A master stays while images name it (one statement: no dependent can slip in between).
    const r = await this.db
      .deleteFrom('images')
      .where('id', '=', img.id)
      .where(({ not, exists, selectFrom }) =>
        not(
          exists(
            selectFrom('images as d')
              .select('d.id')
              .where(sql<boolean>`${backingOf('d')} = ${img.id}`),
          ),
        ),
      )
      .executeTakeFirst();
    if (r.numDeletedRows === 0n) {
      const n = await dependentCount(this.db, img.id);
      if (n > 0)
        throw new HttpError(
          409,
          `Image ${img.id} is the master of ${n} image${n === 1 ? '' : 's'} (${BACKING_PROP}); delete or flatten ${n === 1 ? 'it' : 'them'} first (GET /v2/images?${BACKING_PROP}=${img.id} lists them).`,
        );
      throw new HttpError(404, `Failed to find image ${img.id} to delete`);
    }
    await deleteImageData(this.svc, img);
    await this.svc.cache?.drop(img.id);
    // A concurrent upload notices the missing row at commit and drops its blob.
    sendEmpty(c.res, 204);
  }

  private memberRoutes(router: Router, auth: (c: Ctx) => Promise<AuthContext>): void {
    const db = this.db;
    const sharedOnly = (img: ImageRow) => {
      if (img.visibility !== 'shared')
        throw new HttpError(
          403,
          `Error fetching members of image ${img.id}: Only shared images have members.`,
        );
    };
    const findMember = async (img: ImageRow, ctx: AuthContext, memberId: string) => {
      const m = await db
        .selectFrom('image_members')
        .selectAll()
        .where('image_id', '=', img.id)
        .where('member', '=', memberId)
        .executeTakeFirst();
      // A non-owner sees only its own membership.
      if (m === undefined || (!allowed('get_members', ctx, { image: img }) && memberId !== ctx.projectId))
        throw new HttpError(404, `${memberId} not found in the member list of the image ${img.id}.`);
      return m;
    };

    router.on('GET', '/v2/images/:id/members', async (c) => {
      const ctx = await auth(c);
      const img = await this.visibleImage(ctx, c.params['id']!);
      sharedOnly(img);
      let q = db.selectFrom('image_members').selectAll().where('image_id', '=', img.id).orderBy('created_at');
      if (!allowed('get_members', ctx, { image: img })) q = q.where('member', '=', ctx.projectId ?? '');
      const rows = await q.execute();
      sendJson(c.res, 200, { members: rows.map(memberView), schema: '/v2/schemas/members' });
    });
    router.on('POST', '/v2/images/:id/members', async (c) => {
      const ctx = await auth(c);
      const img = await this.visibleImage(ctx, c.params['id']!);
      const body = await readJson(c.req);
      if (!isObject(body) || !('member' in body))
        throw new HttpError(400, 'Member to be added not specified');
      const member = body['member'];
      if (typeof member !== 'string' || member === '') throw new HttpError(400, "Member can't be empty");
      enforce('add_member', ctx, { image: img }, `Not allowed to create members for image ${img.id}.`);
      sharedOnly(img);
      // A member of an overlay must be able to see its masters (else its exports fail).
      if (img.properties[BACKING_PROP] !== undefined) {
        const hidden = await hiddenMasterFor(this.svc, await loadChain(this.svc, img), member);
        if (hidden !== undefined)
          throw new HttpError(
            409,
            `Project ${member} cannot see image ${hidden.id}, a master of image ${img.id}: share image ${hidden.id} with it first.`,
          );
      }
      const count = await db
        .selectFrom('image_members')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .where('image_id', '=', img.id)
        .executeTakeFirstOrThrow();
      if (Number(count.n) >= this.svc.settings.imageMemberQuota)
        throw new HttpError(
          413,
          `Image member limit exceeded for image ${img.id}: The limit has been exceeded: ${this.svc.settings.imageMemberQuota}`,
        );
      const now = new Date();
      const row = { image_id: img.id, member, status: 'pending', created_at: now, updated_at: now };
      const r = await db
        .insertInto('image_members')
        .values(row)
        .onConflict((oc) => oc.columns(['image_id', 'member']).doNothing())
        .executeTakeFirst();
      if (r.numInsertedOrUpdatedRows === 0n)
        throw new HttpError(409, `Member ${member} is duplicated for image ${img.id}`);
      sendJson(c.res, 200, memberView(row));
    });
    router.on('GET', '/v2/images/:id/members/:member', async (c) => {
      const ctx = await auth(c);
      const img = await this.visibleImage(ctx, c.params['id']!);
      if (img.visibility !== 'shared')
        throw new HttpError(
          404,
          `Error fetching members of image ${img.id}: Only shared images have members.`,
        );
      sendJson(c.res, 200, memberView(await findMember(img, ctx, c.params['member']!)));
    });
    router.on('PUT', '/v2/images/:id/members/:member', async (c) => {
      const ctx = await auth(c);
      const img = await this.visibleImage(ctx, c.params['id']!);
      const body = await readJson(c.req);
      if (!isObject(body) || !('status' in body)) throw new HttpError(400, 'Status not specified');
      const status = body['status'];
      sharedOnly(img);
      const m = await findMember(img, ctx, c.params['member']!);
      enforce(
        'modify_member',
        ctx,
        { member: m.member },
        `Not allowed to update members for image ${img.id}.`,
      );
      if (status !== 'pending' && status !== 'accepted' && status !== 'rejected')
        throw new HttpError(
          400,
          `Incorrect request: Status must be one of 'pending', 'accepted', 'rejected'; got '${String(status)}'.`,
        );
      const now = new Date();
      await db
        .updateTable('image_members')
        .set({ status, updated_at: now })
        .where('image_id', '=', img.id)
        .where('member', '=', m.member)
        .execute();
      sendJson(c.res, 200, memberView({ ...m, status, updated_at: now }));
    });
    router.on('DELETE', '/v2/images/:id/members/:member', async (c) => {
      const ctx = await auth(c);
      const img = await this.visibleImage(ctx, c.params['id']!);
      sharedOnly(img);
      const m = await findMember(img, ctx, c.params['member']!);
      enforce('delete_member', ctx, { image: img }, `Not allowed to delete members for image ${img.id}.`);
      await db
        .deleteFrom('image_members')
        .where('image_id', '=', img.id)
        .where('member', '=', m.member)
        .execute();
      sendEmpty(c.res, 204);
    });
  }
}

export interface Change {
  op: 'add' | 'remove' | 'replace';
  path: string[];
  value?: unknown;
}

const OPS = ['add', 'remove', 'replace'] as const;

/** RequestDeserializer.update for one operation: both drafts, JSON pointers, schema check. */
export function parseChange(raw: unknown, draft: 4 | 10, formats: AllowedFormats): Change {
  if (!isObject(raw)) throw new HttpError(400, 'Operations must be JSON objects.');
  let op: Change['op'];
  let pointer: unknown;
  if (draft === 10) {
    const o = raw['op'];
    if (o === undefined)
      throw new HttpError(
        400,
        `Unable to find \`op\` in JSON Schema change. It must be one of the following: ${OPS.join(', ')}.`,
      );
    if (typeof o !== 'string' || !(OPS as readonly string[]).includes(o))
      throw new HttpError(
        400,
        `Invalid operation: \`${String(o)}\`. It must be one of the following: ${OPS.join(', ')}.`,
      );
    op = o as Change['op'];
    if (!('path' in raw)) throw new HttpError(400, "Unable to find 'path' in JSON Schema change");
    pointer = raw['path'];
  } else {
    const present = OPS.filter((k) => k in raw);
    if (present.length > 1)
      throw new HttpError(
        400,
        'Operation objects must contain only one member named "add", "remove", or "replace".',
      );
    if (present.length === 0)
      throw new HttpError(
        400,
        'Operation objects must contain exactly one member named "add", "remove", or "replace".',
      );
    op = present[0]!;
    pointer = raw[op];
  }
  if (typeof pointer !== 'string')
    throw new HttpError(400, `Pointer \`${String(pointer)}\` does not start with "/".`);
  const path = decodePointer(pointer);
  const root = path[0]!;
  const depth = root === 'locations' ? (op === 'replace' ? 1 : 2) : 1;
  if (path.length !== depth)
    throw new HttpError(400, `Invalid JSON pointer for this resource: '/${path.join('/')}'`);
  const change: Change = { op, path };
  if (op !== 'remove') {
    if (!('value' in raw)) throw new HttpError(400, `Operation "${op}" requires a member named "value".`);
    change.value = raw['value'];
  }
  if (READONLY.includes(root)) throw new HttpError(403, `Attribute '${root}' is read-only.`);
  if (RESERVED.includes(root) || root.startsWith(RESERVED_NS))
    throw new HttpError(403, `Attribute '${root}' is reserved.`);
  if (op !== 'remove' && path.length === 1) validateImage({ [root]: change.value }, formats);
  return change;
}

function decodePointer(pointer: string): string[] {
  if (!pointer.startsWith('/')) throw new HttpError(400, `Pointer \`${pointer}\` does not start with "/".`);
  if (/\/\s*?\//.test(pointer.slice(1)))
    throw new HttpError(400, `Pointer \`${pointer}\` contains adjacent "/".`);
  if (pointer.length > 1 && pointer.endsWith('/'))
    throw new HttpError(400, `Pointer \`${pointer}\` end with "/".`);
  if (pointer.slice(1).trim() === '/')
    throw new HttpError(400, `Pointer \`${pointer}\` does not contains valid token.`);
  if (/~[^01]/.test(pointer) || pointer.endsWith('~'))
    throw new HttpError(400, `Pointer \`${pointer}\` contains "~" not part of a recognized escape sequence.`);
  return pointer
    .replace(/^\/+/, '')
    .split('/')
    .map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~').trim());
}

export { UUID_RE };
