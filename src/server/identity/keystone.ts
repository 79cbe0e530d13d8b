/**
 * An embedded Keystone v3 subset: version discovery, password and token authentication with
 * project scope, token validation and revocation, and the admin calls that `openstack
 * project|user|role` make. Tokens are 32 random bytes; only their sha256 is stored, with an
 * expiry. Validation is cached in memory for a few seconds (revocation in this process
 * clears the cache at once).
 */
import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { sql } from 'kysely';
import type { AuthContext, Services } from '../context.js';
import { type Ctx, HttpError, isObject, type Router, readJson, sendEmpty, sendJson } from '../http.js';
import { hexId, keystoneTime } from '../util.js';
import { hashPassword, verifyPassword } from './passwords.js';

export const DEFAULT_DOMAIN = { id: 'default', name: 'Default' };
const UNAUTHORIZED = 'The request you have made requires authentication.';

const tokenHash = (t: string): string => createHash('sha256').update(t).digest('hex');

function forbidden(action: string): HttpError {
  return new HttpError(403, `You are not authorized to perform the requested action: ${action}.`);
}

export function baseUrl(svc: Services, req: IncomingMessage): string {
  if (svc.settings.publicUrl !== undefined) return svc.settings.publicUrl.replace(/\/+$/, '');
  const host = req.headers.host ?? '127.0.0.1';
  return `http://${host}`;
}

interface CacheEntry {
  ctx: AuthContext;
  until: number;
}

export class Identity {
  private cache = new Map<string, CacheEntry>();

  constructor(private readonly svc: Services) {}

  private get db() {
    return this.svc.db;
  }

  /** First start: the default domain (implicit), project and user `admin`, the three roles. */
  /**
   * `adminHash`: hashPassword(adminPassword), when the caller started it early (the server,
   * while its database opens: scrypt takes ~100 ms of a thread-pool thread).
   */
  async bootstrap(adminPassword: string | undefined, adminHash?: Promise<string>): Promise<string | null> {
    const db = this.db;
    for (const name of ['admin', 'member', 'reader']) {
      await db
        .insertInto('roles')
        .values({ id: hexId(), name })
        .onConflict((oc) => oc.column('name').doNothing())
        .execute();
    }
    const generated = adminPassword === undefined;
    const password = adminPassword ?? randomBytes(18).toString('base64url');
    // Nodes starting together on one database: one of them creates the admin (the lock is
    // the transaction's); the others find it.
    const created = await db.transaction().execute(async (tx) => {
      await sql`SELECT pg_advisory_xact_lock(7462)`.execute(tx);
      const existing = await tx
        .selectFrom('users')
        .select('id')
        .where('name', '=', 'admin')
        .executeTakeFirst();
      if (existing !== undefined) {
        if (!generated)
          await tx
            .updateTable('users')
            .set({ password_hash: await (adminHash ?? hashPassword(password)) })
            .where('id', '=', existing.id)
            .execute();
        return false;
      }
      const projectId = hexId();
      const userId = hexId();
      await tx
        .insertInto('projects')
        .values({
          id: projectId,
          name: 'admin',
          domain_id: 'default',
          description: 'Bootstrap project',
          enabled: true,
          created_at: new Date(),
        })
        .onConflict((oc) => oc.columns(['domain_id', 'name']).doNothing())
        .execute();
      const project = await tx
        .selectFrom('projects')
        .select('id')
        .where('name', '=', 'admin')
        .where('domain_id', '=', 'default')
        .executeTakeFirstOrThrow();
      await tx
        .insertInto('users')
        .values({
          id: userId,
          name: 'admin',
          domain_id: 'default',
          password_hash: await (adminHash ?? hashPassword(password)),
          default_project_id: project.id,
          email: null,
          description: null,
          enabled: true,
          created_at: new Date(),
        })
        .execute();
      const roles = await tx.selectFrom('roles').select(['id', 'name']).execute();
      for (const r of roles) {
        await tx
          .insertInto('assignments')
          .values({ user_id: userId, project_id: project.id, role_id: r.id })
          .execute();
      }
      return true;
    });
    return created && generated ? password : null;
  }

  /** The caller of a request, from X-Auth-Token; throws 401. */
  async authenticate(req: IncomingMessage): Promise<AuthContext> {
    const token = req.headers['x-auth-token'];
    if (typeof token !== 'string' || token === '') throw new HttpError(401, UNAUTHORIZED);
    const ctx = await this.validate(token);
    if (ctx === null) throw new HttpError(401, UNAUTHORIZED);
    return ctx;
  }

  async validate(token: string): Promise<AuthContext | null> {
    return this.validateId(tokenHash(token));
  }

  /** validate() by the token's stored id (its sha256), for credentials that carry only that. */
  async validateId(id: string): Promise<AuthContext | null> {
    const now = Date.now();
    const hit = this.cache.get(id);
    if (hit !== undefined && hit.until > now && hit.ctx.expiresAt.getTime() > now) return hit.ctx;
    this.cache.delete(id);
    const row = await this.db
      .selectFrom('tokens')
      .innerJoin('users', 'users.id', 'tokens.user_id')
      .leftJoin('projects', 'projects.id', 'tokens.project_id')
      .select([
        'tokens.id',
        'tokens.user_id',
        'tokens.project_id',
        'tokens.audit_id',
        'tokens.issued_at',
        'tokens.expires_at',
        'users.name as user_name',
        'users.enabled as user_enabled',
        'projects.name as project_name',
        'projects.enabled as project_enabled',
      ])
      .where('tokens.id', '=', id)
      .executeTakeFirst();
    if (row === undefined || row.expires_at.getTime() <= now || !row.user_enabled) return null;
    if (row.project_id !== null && row.project_enabled !== true) return null;
    const roles =
      row.project_id === null
        ? []
        : await this.db
            .selectFrom('assignments')
            .innerJoin('roles', 'roles.id', 'assignments.role_id')
            .select(['roles.id', 'roles.name'])
            .where('assignments.user_id', '=', row.user_id)
            .where('assignments.project_id', '=', row.project_id)
            .execute();
    if (row.project_id !== null && roles.length === 0) return null;
    const ctx: AuthContext = {
      tokenId: id,
      userId: row.user_id,
      userName: row.user_name,
      projectId: row.project_id,
      projectName: row.project_name ?? null,
      roles,
      isAdmin: roles.some((r) => r.name === 'admin'),
      auditId: row.audit_id,
      issuedAt: row.issued_at,
      expiresAt: row.expires_at,
    };
    if (this.cache.size > 10000) this.cache.clear();
    this.cache.set(id, { ctx, until: now + 5000 });
    return ctx;
  }

  private tokenBody(ctx: AuthContext, methods: string[], base: string): unknown {
    const token: Record<string, unknown> = {
      methods,
      user: { domain: DEFAULT_DOMAIN, id: ctx.userId, name: ctx.userName, password_expires_at: null },
      audit_ids: [ctx.auditId],
      expires_at: keystoneTime(ctx.expiresAt),
      issued_at: keystoneTime(ctx.issuedAt),
    };
    if (ctx.projectId !== null) {
      token['project'] = { domain: DEFAULT_DOMAIN, id: ctx.projectId, name: ctx.projectName };
      token['is_domain'] = false;
      token['roles'] = ctx.roles.map((r) => ({ id: r.id, name: r.name }));
      token['catalog'] = catalog(base);
    }
    return { token };
  }

  private async findUser(spec: unknown) {
    if (!isObject(spec)) throw new HttpError(400, 'Invalid input for field identity/password/user.');
    let q = this.db.selectFrom('users').selectAll();
    if (typeof spec['id'] === 'string') q = q.where('id', '=', spec['id']);
    else if (typeof spec['name'] === 'string') {
      q = q.where('name', '=', spec['name']).where('domain_id', '=', domainIdOf(spec['domain']));
    } else throw new HttpError(400, 'Expecting to find id or name in user.');
    return q.executeTakeFirst();
  }

  async issue(body: unknown, base: string, res: Ctx['res']): Promise<void> {
    const auth = isObject(body) ? body['auth'] : undefined;
    if (!isObject(auth) || !isObject(auth['identity']))
      throw new HttpError(400, 'Expecting to find auth in request body.');
    const identity = auth['identity'];
    const methods = identity['methods'];
    if (!Array.isArray(methods) || methods.length === 0)
      throw new HttpError(400, 'Expecting to find methods.');
    let userId: string;
    if (methods.includes('password')) {
      const pw = identity['password'];
      const spec = isObject(pw) ? pw['user'] : undefined;
      const user = await this.findUser(spec);
      const password = isObject(spec) ? spec['password'] : undefined;
      if (user === undefined || typeof password !== 'string' || !user.enabled)
        throw new HttpError(401, UNAUTHORIZED);
      if (!(await verifyPassword(password, user.password_hash))) throw new HttpError(401, UNAUTHORIZED);
      userId = user.id;
    } else if (methods.includes('token')) {
      const t = identity['token'];
      const old = isObject(t) && typeof t['id'] === 'string' ? await this.validate(t['id']) : null;
      if (old === null) throw new HttpError(401, UNAUTHORIZED);
      userId = old.userId;
    } else {
      throw new HttpError(401, 'Attempted to authenticate with an unsupported method.');
    }
    const user = await this.db
      .selectFrom('users')
      .selectAll()
      .where('id', '=', userId)
      .executeTakeFirstOrThrow();

    let projectId: string | null = null;
    const scope = auth['scope'];
    if (isObject(scope)) {
      const p = scope['project'];
      if (isObject(p)) {
        let q = this.db.selectFrom('projects').selectAll();
        if (typeof p['id'] === 'string') q = q.where('id', '=', p['id']);
        else if (typeof p['name'] === 'string')
          q = q.where('name', '=', p['name']).where('domain_id', '=', domainIdOf(p['domain']));
        else throw new HttpError(400, 'Expecting to find id or name in project.');
        const project = await q.executeTakeFirst();
        if (project === undefined || !project.enabled) throw new HttpError(401, UNAUTHORIZED);
        projectId = project.id;
      } else if (scope['domain'] !== undefined || scope['system'] !== undefined) {
        throw new HttpError(401, 'Only project-scoped tokens are supported by this server.');
      }
    } else if (scope === 'unscoped' || scope === undefined) {
      projectId = null;
    }
    if (projectId !== null) {
      const any = await this.db
        .selectFrom('assignments')
        .select('role_id')
        .where('user_id', '=', user.id)
        .where('project_id', '=', projectId)
        .executeTakeFirst();
      if (any === undefined) throw new HttpError(401, UNAUTHORIZED);
    }
    const token = randomBytes(32).toString('base64url');
    const issuedAt = new Date();
    const expiresAt = new Date(issuedAt.getTime() + this.svc.settings.tokenTtl * 1000);
    await this.db
      .insertInto('tokens')
      .values({
        id: tokenHash(token),
        user_id: user.id,
        project_id: projectId,
        audit_id: randomBytes(16).toString('base64url').slice(0, 22),
        issued_at: issuedAt,
        expires_at: expiresAt,
      })
      .execute();
    // Expired tokens are dropped now and then (a cheap indexed delete).
    if (Math.random() < 0.05)
      await this.db.deleteFrom('tokens').where('expires_at', '<', new Date()).execute();
    const ctx = await this.validate(token);
    if (ctx === null) throw new HttpError(401, UNAUTHORIZED);
    sendJson(
      res,
      201,
      this.tokenBody(
        ctx,
        methods.filter((m): m is string => typeof m === 'string'),
        base,
      ),
      {
        'X-Subject-Token': token,
      },
    );
  }

  async revoke(token: string): Promise<boolean> {
    const id = tokenHash(token);
    this.cache.delete(id);
    const r = await this.db.deleteFrom('tokens').where('id', '=', id).executeTakeFirst();
    return r.numDeletedRows > 0n;
  }

  /** Drop every cached token of a user or project (after a delete or role change). */
  forget(): void {
    this.cache.clear();
  }

  routes(router: Router): void {
    const version = (base: string) => ({
      id: 'v3.14',
      status: 'stable',
      updated: '2020-04-07T00:00:00Z',
      links: [{ rel: 'self', href: `${base}/v3/` }],
      'media-types': [{ base: 'application/json', type: 'application/vnd.openstack.identity-v3+json' }],
    });
    router.on('GET', '/v3', async (c) =>
      sendJson(c.res, 200, { version: version(baseUrl(this.svc, c.req)) }),
    );

    router.on('POST', '/v3/auth/tokens', async (c) => {
      await this.issue(await readJson(c.req), baseUrl(this.svc, c.req), c.res);
    });
    const subject = async (c: Ctx) => {
      const caller = await this.authenticate(c.req);
      const t = c.req.headers['x-subject-token'];
      if (typeof t !== 'string') throw new HttpError(404, 'Could not find token.');
      const ctx = await this.validate(t);
      if (ctx === null) throw new HttpError(404, `Could not find token: ${t}.`);
      if (!caller.isAdmin && ctx.userId !== caller.userId) throw forbidden('identity:validate_token');
      return { t, ctx };
    };
    router.on('GET', '/v3/auth/tokens', async (c) => {
      const { t, ctx } = await subject(c);
      sendJson(c.res, 200, this.tokenBody(ctx, ['password'], baseUrl(this.svc, c.req)), {
        'X-Subject-Token': t,
      });
    });
    router.on('DELETE', '/v3/auth/tokens', async (c) => {
      const { t } = await subject(c);
      await this.revoke(t);
      sendEmpty(c.res, 204);
    });
    router.on('GET', '/v3/auth/catalog', async (c) => {
      await this.authenticate(c.req);
      sendJson(c.res, 200, { catalog: catalog(baseUrl(this.svc, c.req)), links: {} });
    });
    router.on('GET', '/v3/auth/projects', async (c) => {
      const caller = await this.authenticate(c.req);
      const rows = await this.db
        .selectFrom('projects')
        .selectAll()
        .where('id', 'in', (eb) =>
          eb.selectFrom('assignments').select('project_id').where('user_id', '=', caller.userId),
        )
        .orderBy('name')
        .execute();
      const base = baseUrl(this.svc, c.req);
      sendJson(c.res, 200, { projects: rows.map((p) => projectView(p, base)), links: {} });
    });

    // Domains: only Default.
    const domainView = (base: string) => ({
      ...DEFAULT_DOMAIN,
      description: 'The default domain',
      enabled: true,
      tags: [],
      options: {},
      links: { self: `${base}/v3/domains/default` },
    });
    router.on('GET', '/v3/domains', async (c) => {
      await this.authenticate(c.req);
      const name = c.query.get('name');
      const base = baseUrl(this.svc, c.req);
      const list = name === null || name === 'Default' ? [domainView(base)] : [];
      sendJson(c.res, 200, {
        domains: list,
        links: { self: `${base}/v3/domains`, next: null, previous: null },
      });
    });
    router.on('GET', '/v3/domains/:id', async (c) => {
      await this.authenticate(c.req);
      if (c.params['id'] !== 'default') throw new HttpError(404, `Could not find domain: ${c.params['id']}.`);
      sendJson(c.res, 200, { domain: domainView(baseUrl(this.svc, c.req)) });
    });

    this.projectRoutes(router);
    this.userRoutes(router);
    this.roleRoutes(router);
  }

  private async admin(c: Ctx, action: string): Promise<AuthContext> {
    const caller = await this.authenticate(c.req);
    if (!caller.isAdmin) throw forbidden(action);
    return caller;
  }

  private projectRoutes(router: Router): void {
    const db = this.db;
    const get = async (id: string) => {
      const p = await db.selectFrom('projects').selectAll().where('id', '=', id).executeTakeFirst();
      if (p === undefined) throw new HttpError(404, `Could not find project: ${id}.`);
      return p;
    };
    router.on('GET', '/v3/projects', async (c) => {
      const caller = await this.authenticate(c.req);
      let q = db.selectFrom('projects').selectAll().orderBy('name');
      const name = c.query.get('name');
      if (name !== null) q = q.where('name', '=', name);
      const dom = c.query.get('domain_id');
      if (dom !== null) q = q.where('domain_id', '=', dom);
      if (!caller.isAdmin) {
        // Keystone lets a user list only through /v3/users/{self}/projects; keep it to admin.
        throw forbidden('identity:list_projects');
      }
      const base = baseUrl(this.svc, c.req);
      const rows = await q.execute();
      sendJson(c.res, 200, {
        projects: rows.map((p) => projectView(p, base)),
        links: { self: `${base}/v3/projects`, next: null, previous: null },
      });
    });
    router.on('GET', '/v3/projects/:id', async (c) => {
      const caller = await this.authenticate(c.req);
      const id = c.params['id']!;
      if (!caller.isAdmin && caller.projectId !== id) {
        // Keystone answers 403 whether or not the project exists.
        throw forbidden('identity:get_project');
      }
      sendJson(c.res, 200, { project: projectView(await get(id), baseUrl(this.svc, c.req)) });
    });
    router.on('POST', '/v3/projects', async (c) => {
      await this.admin(c, 'identity:create_project');
      const body = await readJson(c.req);
      const p = isObject(body) ? body['project'] : undefined;
      if (!isObject(p) || typeof p['name'] !== 'string' || p['name'].trim() === '')
        throw new HttpError(400, "Invalid input for field 'name': None is not of type 'string'");
      const domainId = typeof p['domain_id'] === 'string' ? p['domain_id'] : 'default';
      if (domainId !== 'default') throw new HttpError(404, `Could not find domain: ${domainId}.`);
      const row = {
        id: hexId(),
        name: p['name'],
        domain_id: domainId,
        description: typeof p['description'] === 'string' ? p['description'] : '',
        enabled: p['enabled'] !== false,
        created_at: new Date(),
      };
      const r = await db
        .insertInto('projects')
        .values(row)
        .onConflict((oc) => oc.columns(['domain_id', 'name']).doNothing())
        .executeTakeFirst();
      if (r.numInsertedOrUpdatedRows === 0n)
        throw new HttpError(
          409,
          `Conflict occurred attempting to store project - it is not permitted to have two projects with the same name in the same domain : ${row.name}.`,
        );
      sendJson(c.res, 201, { project: projectView(row, baseUrl(this.svc, c.req)) });
    });
    router.on('PATCH', '/v3/projects/:id', async (c) => {
      await this.admin(c, 'identity:update_project');
      const cur = await get(c.params['id']!);
      const body = await readJson(c.req);
      const p = isObject(body) && isObject(body['project']) ? body['project'] : {};
      const set: { name?: string; description?: string; enabled?: boolean } = {};
      if (typeof p['name'] === 'string') set.name = p['name'];
      if (typeof p['description'] === 'string') set.description = p['description'];
      if (typeof p['enabled'] === 'boolean') set.enabled = p['enabled'];
      if (Object.keys(set).length > 0)
        await db.updateTable('projects').set(set).where('id', '=', cur.id).execute();
      this.forget();
      sendJson(c.res, 200, { project: projectView(await get(cur.id), baseUrl(this.svc, c.req)) });
    });
    router.on('DELETE', '/v3/projects/:id', async (c) => {
      await this.admin(c, 'identity:delete_project');
      const cur = await get(c.params['id']!);
      await db.deleteFrom('projects').where('id', '=', cur.id).execute();
      this.forget();
      sendEmpty(c.res, 204);
    });
  }

  private userRoutes(router: Router): void {
    const db = this.db;
    const get = async (id: string) => {
      const u = await db.selectFrom('users').selectAll().where('id', '=', id).executeTakeFirst();
      if (u === undefined) throw new HttpError(404, `Could not find user: ${id}.`);
      return u;
    };
    router.on('GET', '/v3/users', async (c) => {
      await this.admin(c, 'identity:list_users');
      let q = db.selectFrom('users').selectAll().orderBy('name');
      const name = c.query.get('name');
      if (name !== null) q = q.where('name', '=', name);
      const base = baseUrl(this.svc, c.req);
      sendJson(c.res, 200, {
        users: (await q.execute()).map((u) => userView(u, base)),
        links: { self: `${base}/v3/users`, next: null, previous: null },
      });
    });
    router.on('GET', '/v3/users/:id', async (c) => {
      const caller = await this.authenticate(c.req);
      const id = c.params['id']!;
      if (!caller.isAdmin && caller.userId !== id) throw forbidden('identity:get_user');
      sendJson(c.res, 200, { user: userView(await get(id), baseUrl(this.svc, c.req)) });
    });
    router.on('GET', '/v3/users/:id/projects', async (c) => {
      const caller = await this.authenticate(c.req);
      const id = c.params['id']!;
      if (!caller.isAdmin && caller.userId !== id) throw forbidden('identity:list_user_projects');
      const rows = await db
        .selectFrom('projects')
        .selectAll()
        .where('id', 'in', (eb) =>
          eb.selectFrom('assignments').select('project_id').where('user_id', '=', id),
        )
        .orderBy('name')
        .execute();
      const base = baseUrl(this.svc, c.req);
      sendJson(c.res, 200, { projects: rows.map((p) => projectView(p, base)), links: {} });
    });
    router.on('POST', '/v3/users', async (c) => {
      await this.admin(c, 'identity:create_user');
      const body = await readJson(c.req);
      const u = isObject(body) ? body['user'] : undefined;
      if (!isObject(u) || typeof u['name'] !== 'string' || u['name'].trim() === '')
        throw new HttpError(400, "Invalid input for field 'name': None is not of type 'string'");
      const domainId = typeof u['domain_id'] === 'string' ? u['domain_id'] : 'default';
      if (domainId !== 'default') throw new HttpError(404, `Could not find domain: ${domainId}.`);
      const defaultProject = typeof u['default_project_id'] === 'string' ? u['default_project_id'] : null;
      if (defaultProject !== null) {
        const p = await db
          .selectFrom('projects')
          .select('id')
          .where('id', '=', defaultProject)
          .executeTakeFirst();
        if (p === undefined) throw new HttpError(400, `Could not find project: ${defaultProject}.`);
      }
      const row = {
        id: hexId(),
        name: u['name'],
        domain_id: domainId,
        password_hash: typeof u['password'] === 'string' ? await hashPassword(u['password']) : null,
        default_project_id: defaultProject,
        email: typeof u['email'] === 'string' ? u['email'] : null,
        description: typeof u['description'] === 'string' ? u['description'] : null,
        enabled: u['enabled'] !== false,
        created_at: new Date(),
      };
      const r = await db
        .insertInto('users')
        .values(row)
        .onConflict((oc) => oc.columns(['domain_id', 'name']).doNothing())
        .executeTakeFirst();
      if (r.numInsertedOrUpdatedRows === 0n)
        throw new HttpError(
          409,
          `Conflict occurred attempting to store user - Duplicate entry found with name ${row.name} at domain ID default.`,
        );
      sendJson(c.res, 201, { user: userView(row, baseUrl(this.svc, c.req)) });
    });
    router.on('PATCH', '/v3/users/:id', async (c) => {
      await this.admin(c, 'identity:update_user');
      const cur = await get(c.params['id']!);
      const body = await readJson(c.req);
      const u = isObject(body) && isObject(body['user']) ? body['user'] : {};
      const set: Record<string, unknown> = {};
      if (typeof u['name'] === 'string') set['name'] = u['name'];
      if (typeof u['enabled'] === 'boolean') set['enabled'] = u['enabled'];
      if (typeof u['email'] === 'string') set['email'] = u['email'];
      if (typeof u['description'] === 'string') set['description'] = u['description'];
      if (typeof u['default_project_id'] === 'string') set['default_project_id'] = u['default_project_id'];
      if (typeof u['password'] === 'string') set['password_hash'] = await hashPassword(u['password']);
      if (Object.keys(set).length > 0)
        await db.updateTable('users').set(set).where('id', '=', cur.id).execute();
      this.forget();
      sendJson(c.res, 200, { user: userView(await get(cur.id), baseUrl(this.svc, c.req)) });
    });
    router.on('DELETE', '/v3/users/:id', async (c) => {
      await this.admin(c, 'identity:delete_user');
      const cur = await get(c.params['id']!);
      await db.deleteFrom('users').where('id', '=', cur.id).execute();
      this.forget();
      sendEmpty(c.res, 204);
    });
  }

  private roleRoutes(router: Router): void {
    const db = this.db;
    const roleView = (r: { id: string; name: string }, base: string) => ({
      id: r.id,
      name: r.name,
      domain_id: null,
      description: null,
      options: {},
      links: { self: `${base}/v3/roles/${r.id}` },
    });
    router.on('GET', '/v3/roles', async (c) => {
      await this.authenticate(c.req);
      let q = db.selectFrom('roles').selectAll().orderBy('name');
      const name = c.query.get('name');
      if (name !== null) q = q.where('name', '=', name);
      const base = baseUrl(this.svc, c.req);
      sendJson(c.res, 200, {
        roles: (await q.execute()).map((r) => roleView(r, base)),
        links: { self: `${base}/v3/roles`, next: null, previous: null },
      });
    });
    router.on('GET', '/v3/roles/:id', async (c) => {
      await this.authenticate(c.req);
      const r = await db.selectFrom('roles').selectAll().where('id', '=', c.params['id']!).executeTakeFirst();
      if (r === undefined) throw new HttpError(404, `Could not find role: ${c.params['id']}.`);
      sendJson(c.res, 200, { role: roleView(r, baseUrl(this.svc, c.req)) });
    });
    router.on('POST', '/v3/roles', async (c) => {
      await this.admin(c, 'identity:create_role');
      const body = await readJson(c.req);
      const r = isObject(body) ? body['role'] : undefined;
      if (!isObject(r) || typeof r['name'] !== 'string')
        throw new HttpError(400, "Invalid input for field 'name'");
      const row = { id: hexId(), name: r['name'] };
      const res = await db
        .insertInto('roles')
        .values(row)
        .onConflict((oc) => oc.column('name').doNothing())
        .executeTakeFirst();
      if (res.numInsertedOrUpdatedRows === 0n)
        throw new HttpError(
          409,
          `Conflict occurred attempting to store role - Duplicate entry found with name ${row.name}.`,
        );
      sendJson(c.res, 201, { role: roleView(row, baseUrl(this.svc, c.req)) });
    });

    const triple = async (c: Ctx) => {
      const { pid, uid, rid } = c.params as { pid: string; uid: string; rid: string };
      const p = await db.selectFrom('projects').select('id').where('id', '=', pid).executeTakeFirst();
      if (p === undefined) throw new HttpError(404, `Could not find project: ${pid}.`);
      const u = await db.selectFrom('users').select('id').where('id', '=', uid).executeTakeFirst();
      if (u === undefined) throw new HttpError(404, `Could not find user: ${uid}.`);
      const r = await db.selectFrom('roles').select('id').where('id', '=', rid).executeTakeFirst();
      if (r === undefined) throw new HttpError(404, `Could not find role: ${rid}.`);
      return { pid, uid, rid };
    };
    const path = '/v3/projects/:pid/users/:uid/roles/:rid';
    router.on('PUT', path, async (c) => {
      await this.admin(c, 'identity:create_grant');
      const { pid, uid, rid } = await triple(c);
      await db
        .insertInto('assignments')
        .values({ user_id: uid, project_id: pid, role_id: rid })
        .onConflict((oc) => oc.columns(['user_id', 'project_id', 'role_id']).doNothing())
        .execute();
      this.forget();
      sendEmpty(c.res, 204);
    });
    router.on('GET', path, async (c) => {
      await this.admin(c, 'identity:check_grant');
      const { pid, uid, rid } = await triple(c);
      const a = await db
        .selectFrom('assignments')
        .select('role_id')
        .where('user_id', '=', uid)
        .where('project_id', '=', pid)
        .where('role_id', '=', rid)
        .executeTakeFirst();
      if (a === undefined)
        throw new HttpError(
          404,
          `Could not find role assignment with role: ${rid}, user or group: ${uid}, project, domain, or system: ${pid}.`,
        );
      sendEmpty(c.res, 204);
    });
    router.on('DELETE', path, async (c) => {
      await this.admin(c, 'identity:revoke_grant');
      const { pid, uid, rid } = await triple(c);
      const r = await db
        .deleteFrom('assignments')
        .where('user_id', '=', uid)
        .where('project_id', '=', pid)
        .where('role_id', '=', rid)
        .executeTakeFirst();
      if (r.numDeletedRows === 0n)
        throw new HttpError(
          404,
          `Could not find role assignment with role: ${rid}, user or group: ${uid}, project, domain, or system: ${pid}.`,
        );
      this.forget();
      sendEmpty(c.res, 204);
    });
    router.on('GET', '/v3/projects/:pid/users/:uid/roles', async (c) => {
      await this.admin(c, 'identity:list_grants');
      const rows = await db
        .selectFrom('assignments')
        .innerJoin('roles', 'roles.id', 'assignments.role_id')
        .select(['roles.id', 'roles.name'])
        .where('assignments.user_id', '=', c.params['uid']!)
        .where('assignments.project_id', '=', c.params['pid']!)
        .execute();
      const base = baseUrl(this.svc, c.req);
      sendJson(c.res, 200, { roles: rows.map((r) => roleView(r, base)), links: {} });
    });
    router.on('GET', '/v3/role_assignments', async (c) => {
      await this.admin(c, 'identity:list_role_assignments');
      let q = db
        .selectFrom('assignments')
        .innerJoin('roles', 'roles.id', 'assignments.role_id')
        .select(['assignments.user_id', 'assignments.project_id', 'roles.id', 'roles.name']);
      const uid = c.query.get('user.id');
      if (uid !== null) q = q.where('assignments.user_id', '=', uid);
      const pid = c.query.get('scope.project.id');
      if (pid !== null) q = q.where('assignments.project_id', '=', pid);
      const rid = c.query.get('role.id');
      if (rid !== null) q = q.where('assignments.role_id', '=', rid);
      const base = baseUrl(this.svc, c.req);
      const rows = await q.execute();
      sendJson(c.res, 200, {
        role_assignments: rows.map((a) => ({
          role: { id: a.id, name: a.name },
          user: { id: a.user_id },
          scope: { project: { id: a.project_id } },
          links: { assignment: `${base}/v3/projects/${a.project_id}/users/${a.user_id}/roles/${a.id}` },
        })),
        links: { self: `${base}/v3/role_assignments`, next: null, previous: null },
      });
    });
  }
}

function domainIdOf(spec: unknown): string {
  if (!isObject(spec)) return 'default';
  if (typeof spec['id'] === 'string') return spec['id'];
  if (typeof spec['name'] === 'string')
    return spec['name'] === DEFAULT_DOMAIN.name ? 'default' : `!${spec['name']}`;
  return 'default';
}

function projectView(
  p: { id: string; name: string; domain_id: string; description: string; enabled: boolean },
  base: string,
) {
  return {
    id: p.id,
    name: p.name,
    domain_id: p.domain_id,
    description: p.description,
    enabled: p.enabled,
    parent_id: p.domain_id,
    is_domain: false,
    tags: [],
    options: {},
    links: { self: `${base}/v3/projects/${p.id}` },
  };
}

function userView(
  u: {
    id: string;
    name: string;
    domain_id: string;
    default_project_id: string | null;
    email: string | null;
    description: string | null;
    enabled: boolean;
  },
  base: string,
) {
  const v: Record<string, unknown> = {
    id: u.id,
    name: u.name,
    domain_id: u.domain_id,
    enabled: u.enabled,
    password_expires_at: null,
    options: {},
    links: { self: `${base}/v3/users/${u.id}` },
  };
  if (u.default_project_id !== null) v['default_project_id'] = u.default_project_id;
  if (u.email !== null) v['email'] = u.email;
  if (u.description !== null) v['description'] = u.description;
  return v;
}

export function catalog(base: string): unknown[] {
  const eps = (svc: string, url: string) =>
    ['public', 'internal', 'admin'].map((iface) => ({
      id: createHash('md5').update(`${svc}:${iface}`).digest('hex'),
      interface: iface,
      region: 'RegionOne',
      region_id: 'RegionOne',
      url,
    }));
  return [
    { endpoints: eps('image', base), id: 'a4d3c8b1e0f94f3a9d3f0c1b2e3d4f51', type: 'image', name: 'glance' },
    {
      endpoints: eps('identity', `${base}/v3`),
      id: 'b5e4d9c2f1a05a4b0e4a1d2c3f4e5a62',
      type: 'identity',
      name: 'keystone',
    },
  ];
}
