/**
 * The image list tabs as API queries. Every tab is one server-side query with `limit` and
 * `marker` (keyset pagination): the page never fetches more than one page of images.
 */
import type { Image } from './types.js';

export type Tab = 'own' | 'shared' | 'public' | 'community' | 'all';

export const TABS: { id: Tab; label: string; adminOnly?: boolean }[] = [
  { id: 'own', label: 'Project' },
  { id: 'shared', label: 'Shared with me' },
  { id: 'public', label: 'Public' },
  { id: 'community', label: 'Community' },
  { id: 'all', label: 'All images', adminOnly: true },
];

export const isTab = (t: string): t is Tab => TABS.some((x) => x.id === t);

export const DISK_FORMATS = [
  'raw',
  'qcow2',
  'qed',
  'vmdk',
  'vdi',
  'vhd',
  'vhdx',
  'iso',
  'ploop',
  'ami',
  'ari',
  'aki',
];
export const CONTAINER_FORMATS = ['bare', 'ovf', 'ova', 'ami', 'ari', 'aki', 'docker', 'compressed'];
export const STATUSES = [
  'active',
  'queued',
  'saving',
  'uploading',
  'importing',
  'deactivated',
  'killed',
  'pending_delete',
];
export const PAGE_SIZES = [25, 50, 100, 200, 500, 1000];
export const DEFAULT_PAGE_SIZE = 50;

/** Columns the API sorts on (sort_key), by column id. */
export const SORTABLE: Record<string, string> = {
  name: 'name',
  status: 'status',
  disk_format: 'disk_format',
  size: 'size',
  created_at: 'created_at',
};

export interface ListFilters {
  name?: string;
  status?: string;
  disk_format?: string;
  tag?: string;
  /** `key:dir`, e.g. `name:asc`; default `created_at:desc`. */
  sort?: string;
  /** Shared tab: pending, accepted, rejected or all (default all). */
  member_status?: string;
  limit?: number;
}

export function parseSort(sort: string | undefined): { key: string; dir: 'asc' | 'desc' } {
  const [k, d] = (sort ?? '').split(':');
  if (k === undefined || !Object.values(SORTABLE).includes(k)) return { key: 'created_at', dir: 'desc' };
  return { key: k, dir: d === 'asc' ? 'asc' : 'desc' };
}

/** The GET /v2/images query of a tab's first page. */
export function listQuery(tab: Tab, f: ListFilters, projectId: string): URLSearchParams {
  const q = new URLSearchParams();
  switch (tab) {
    case 'own':
      q.set('owner', projectId);
      break;
    case 'shared':
      q.set('visibility', 'shared');
      q.set(
        'member_status',
        f.member_status !== undefined && f.member_status !== '' ? f.member_status : 'all',
      );
      break;
    case 'public':
      q.set('visibility', 'public');
      break;
    case 'community':
      q.set('visibility', 'community');
      break;
    case 'all':
      q.set('visibility', 'all');
      break;
  }
  if (f.name !== undefined && f.name.trim() !== '') q.set('name', f.name.trim());
  if (f.status !== undefined && f.status !== '') q.set('status', f.status);
  if (f.disk_format !== undefined && f.disk_format !== '') q.set('disk_format', f.disk_format);
  if (f.tag !== undefined && f.tag.trim() !== '') q.set('tag', f.tag.trim());
  const s = parseSort(f.sort);
  q.set('sort', `${s.key}:${s.dir}`);
  q.set('limit', String(f.limit ?? DEFAULT_PAGE_SIZE));
  return q;
}

/** The rows a tab shows from a page: "shared with me" leaves out the project's own images. */
export function rowsOf(tab: Tab, images: Image[], projectId: string): Image[] {
  return tab === 'shared' ? images.filter((i) => i.owner !== projectId) : images;
}

/** Filters from the hash's query. */
export function filtersFrom(q: URLSearchParams): ListFilters {
  const f: ListFilters = {};
  for (const k of ['name', 'status', 'disk_format', 'tag', 'sort', 'member_status'] as const) {
    const v = q.get(k);
    if (v !== null && v !== '') f[k] = v;
  }
  const limit = Number(q.get('limit'));
  if (PAGE_SIZES.includes(limit)) f.limit = limit;
  return f;
}

export function filtersToQuery(f: ListFilters): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(f)) if (v !== undefined && v !== '') out[k] = String(v);
  return out;
}
