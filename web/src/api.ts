/**
 * The public API, as the page calls it: Keystone v3 (`/v3`) for the session and Glance v2
 * (`/v2`) for images, with the user's token in `X-Auth-Token` and nowhere else (never a URL,
 * never storage). Errors become ApiError with the API's own words.
 */
import { ApiError, apiErrorText } from './lib/errors.js';
import type { AllocationMap, Image, ImageList, Member, MemberStatus, Project, Task } from './lib/types.js';

export interface Session {
  token: string;
  user: { id: string; name: string };
  project: { id: string; name: string };
  roles: string[];
  isAdmin: boolean;
  expiresAt: string;
}

interface TokenBody {
  token: {
    user: { id: string; name: string };
    project?: { id: string; name: string };
    roles?: { id: string; name: string }[];
    expires_at: string;
  };
}

async function failure(r: Response): Promise<ApiError> {
  const text = await r.text().catch(() => '');
  return new ApiError(r.status, apiErrorText(r.status, r.headers.get('content-type'), text));
}

async function issueToken(auth: unknown): Promise<{ token: string; body: TokenBody }> {
  const r = await fetch('/v3/auth/tokens', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ auth }),
    credentials: 'omit',
    cache: 'no-store',
  });
  if (r.status !== 201) {
    const e = await failure(r);
    if (r.status === 401)
      throw new ApiError(
        401,
        'The user name, password or project is not right (or the project is not yours).',
      );
    throw e;
  }
  const token = r.headers.get('X-Subject-Token');
  if (token === null) throw new ApiError(r.status, 'The identity service answered without a token.');
  return { token, body: (await r.json()) as TokenBody };
}

function sessionOf(token: string, body: TokenBody): Session {
  const t = body.token;
  if (t.project === undefined) throw new ApiError(401, 'The token is not scoped to a project.');
  const roles = (t.roles ?? []).map((r) => r.name);
  return {
    token,
    user: { id: t.user.id, name: t.user.name },
    project: { id: t.project.id, name: t.project.name },
    roles,
    isAdmin: roles.includes('admin'),
    expiresAt: t.expires_at,
  };
}

const passwordIdentity = (user: string, password: string) => ({
  methods: ['password'],
  password: { user: { name: user, domain: { name: 'Default' }, password } },
});

/**
 * Password login. With a project name: a token scoped to it. Without: an unscoped token, the
 * user's projects, then a token scoped to the first of them (the unscoped one is revoked).
 */
export async function login(user: string, password: string, project: string): Promise<Session> {
  if (project.trim() !== '') {
    const { token, body } = await issueToken({
      identity: passwordIdentity(user, password),
      scope: { project: { name: project.trim(), domain: { name: 'Default' } } },
    });
    return sessionOf(token, body);
  }
  const { token } = await issueToken({ identity: passwordIdentity(user, password) });
  try {
    const projects = await myProjects(token);
    const first = projects[0];
    if (first === undefined) throw new ApiError(401, `User ${user} has no role on any project.`);
    return await rescope(token, first.id);
  } finally {
    await revoke(token).catch(() => {});
  }
}

/** A token of the same user scoped to another project (the `token` method). */
export async function rescope(token: string, projectId: string): Promise<Session> {
  const r = await issueToken({
    identity: { methods: ['token'], token: { id: token } },
    scope: { project: { id: projectId } },
  });
  return sessionOf(r.token, r.body);
}

/** The projects the user has a role on (GET /v3/auth/projects). */
export async function myProjects(token: string): Promise<Project[]> {
  const r = await fetch('/v3/auth/projects', { headers: { 'X-Auth-Token': token }, cache: 'no-store' });
  if (!r.ok) throw await failure(r);
  return ((await r.json()) as { projects: Project[] }).projects;
}

/** Log out: DELETE /v3/auth/tokens revokes the token (its download tickets with it). */
export async function revoke(token: string): Promise<void> {
  const r = await fetch('/v3/auth/tokens', {
    method: 'DELETE',
    headers: { 'X-Auth-Token': token, 'X-Subject-Token': token },
  });
  if (!r.ok && r.status !== 404) throw await failure(r);
}

export const PATCH_TYPE = 'application/openstack-images-v2.1-json-patch';

export type PatchOp =
  | { op: 'add' | 'replace'; path: string; value: unknown }
  | { op: 'remove'; path: string };

export interface FlattenRequest {
  name: string;
  disk_format: string;
  visibility?: string;
  backing_image_id?: string;
}

export interface TicketRequest {
  disk_format?: string;
  subformat?: string;
  flatten?: boolean;
  compress?: boolean;
}

export interface Upload {
  done: Promise<void>;
  abort(): void;
}

/** Calls with the session's token; a 401 ends the session (onUnauthorized). */
export class Api {
  constructor(
    private readonly token: string,
    private readonly onUnauthorized: () => void,
  ) {}

  async request(
    method: string,
    path: string,
    opts: { json?: unknown; contentType?: string } = {},
  ): Promise<Response> {
    const headers: Record<string, string> = { 'X-Auth-Token': this.token };
    let body: string | undefined;
    if (opts.json !== undefined) {
      body = JSON.stringify(opts.json);
      headers['Content-Type'] = opts.contentType ?? 'application/json';
    }
    const r = await fetch(path, {
      method,
      headers,
      body: body ?? null,
      cache: 'no-store',
      credentials: 'omit',
    });
    if (!r.ok) {
      const e = await failure(r);
      if (r.status === 401) this.onUnauthorized();
      throw e;
    }
    return r;
  }

  async json<T>(
    method: string,
    path: string,
    opts: { json?: unknown; contentType?: string } = {},
  ): Promise<T> {
    const r = await this.request(method, path, opts);
    return (await r.json()) as T;
  }

  listImages(query: URLSearchParams | string): Promise<ImageList> {
    const qs = typeof query === 'string' ? query : query.toString();
    return this.json('GET', qs === '' ? '/v2/images' : `/v2/images?${qs}`);
  }

  /** A `next` link from a list (a path on this server). */
  listNext(next: string): Promise<ImageList> {
    if (!next.startsWith('/v2/images')) throw new ApiError(0, `Unexpected next link: ${next}`);
    return this.json('GET', next);
  }

  image(id: string): Promise<Image> {
    return this.json('GET', `/v2/images/${encodeURIComponent(id)}`);
  }

  createImage(body: Record<string, unknown>): Promise<Image> {
    return this.json('POST', '/v2/images', { json: body });
  }

  patchImage(id: string, ops: PatchOp[]): Promise<Image> {
    return this.json('PATCH', `/v2/images/${encodeURIComponent(id)}`, { json: ops, contentType: PATCH_TYPE });
  }

  async deleteImage(id: string): Promise<void> {
    await this.request('DELETE', `/v2/images/${encodeURIComponent(id)}`);
  }

  async action(id: string, action: 'deactivate' | 'reactivate'): Promise<void> {
    await this.request('POST', `/v2/images/${encodeURIComponent(id)}/actions/${action}`);
  }

  async members(id: string): Promise<Member[]> {
    return (await this.json<{ members: Member[] }>('GET', `/v2/images/${encodeURIComponent(id)}/members`))
      .members;
  }

  member(id: string, project: string): Promise<Member> {
    return this.json('GET', `/v2/images/${encodeURIComponent(id)}/members/${encodeURIComponent(project)}`);
  }

  addMember(id: string, project: string): Promise<Member> {
    return this.json('POST', `/v2/images/${encodeURIComponent(id)}/members`, { json: { member: project } });
  }

  async removeMember(id: string, project: string): Promise<void> {
    await this.request(
      'DELETE',
      `/v2/images/${encodeURIComponent(id)}/members/${encodeURIComponent(project)}`,
    );
  }

  setMemberStatus(id: string, project: string, status: MemberStatus): Promise<Member> {
    return this.json('PUT', `/v2/images/${encodeURIComponent(id)}/members/${encodeURIComponent(project)}`, {
      json: { status },
    });
  }

  async tasks(id: string): Promise<Task[]> {
    return (await this.json<{ tasks: Task[] }>('GET', `/v2/images/${encodeURIComponent(id)}/tasks`)).tasks;
  }

  async webDownload(id: string, uri: string): Promise<void> {
    await this.request('POST', `/v2/images/${encodeURIComponent(id)}/import`, {
      json: { method: { name: 'web-download', uri } },
    });
  }

  map(id: string, buckets: number): Promise<AllocationMap> {
    return this.json('GET', `/v2/images/${encodeURIComponent(id)}/map?buckets=${buckets}`);
  }

  flatten(id: string, body: FlattenRequest): Promise<Image> {
    return this.json('POST', `/v2/images/${encodeURIComponent(id)}/actions/flatten`, { json: body });
  }

  /** A download URL valid 60 s, without the token in it. */
  async downloadTicket(id: string, body: TicketRequest): Promise<string> {
    const r = await this.json<{ url: string }>(
      'POST',
      `/v2/images/${encodeURIComponent(id)}/download-ticket`,
      {
        json: body,
      },
    );
    if (!r.url.startsWith('/v2/download/')) throw new ApiError(0, `Unexpected download URL: ${r.url}`);
    return r.url;
  }

  /** Every project (admin only: 403 otherwise). */
  async projects(): Promise<Project[]> {
    return (await this.json<{ projects: Project[] }>('GET', '/v3/projects')).projects;
  }

  myProjects(): Promise<Project[]> {
    return myProjects(this.token);
  }

  /**
   * PUT the File to /v2/images/{id}/file with XMLHttpRequest: the browser streams the file
   * from disk (no copy in page memory, any size), and reports upload progress.
   */
  upload(id: string, file: Blob, onProgress: (sent: number, total: number) => void): Upload {
    const xhr = new XMLHttpRequest();
    const done = new Promise<void>((resolve, reject) => {
      xhr.open('PUT', `/v2/images/${encodeURIComponent(id)}/file`);
      xhr.setRequestHeader('X-Auth-Token', this.token);
      xhr.setRequestHeader('Content-Type', 'application/octet-stream');
      xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) resolve();
        else {
          if (xhr.status === 401) this.onUnauthorized();
          reject(
            new ApiError(
              xhr.status,
              apiErrorText(xhr.status, xhr.getResponseHeader('content-type'), xhr.responseText),
            ),
          );
        }
      };
      xhr.onerror = () =>
        reject(new ApiError(0, 'The upload failed: the connection to the registry was lost.'));
      xhr.onabort = () => reject(new UploadCancelled());
      xhr.send(file);
    });
    return { done, abort: () => xhr.abort() };
  }
}

export class UploadCancelled extends Error {
  constructor() {
    super('The upload was cancelled.');
    this.name = 'UploadCancelled';
  }
}

/** Start a browser download of a same-origin URL (the server's Content-Disposition names the file). */
export function startDownload(url: string): void {
  const a = document.createElement('a');
  a.href = url;
  a.download = '';
  a.rel = 'noopener';
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
}
