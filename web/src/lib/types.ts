/** The API's shapes as the dashboard reads them (Glance v2 image view, members, tasks; vdisk's map). */

export type ImageStatus =
  | 'queued'
  | 'saving'
  | 'uploading'
  | 'importing'
  | 'active'
  | 'deactivated'
  | 'killed'
  | 'deleted'
  | 'pending_delete';

export type Visibility = 'public' | 'community' | 'shared' | 'private';

export interface Image {
  id: string;
  name: string | null;
  status: ImageStatus | string;
  disk_format: string | null;
  container_format: string | null;
  visibility: Visibility | string;
  size: number | null;
  virtual_size: number | null;
  checksum: string | null;
  os_hash_algo: string | null;
  os_hash_value: string | null;
  protected: boolean;
  min_ram: number;
  min_disk: number;
  owner: string | null;
  os_hidden: boolean;
  created_at: string;
  updated_at: string;
  tags: string[];
  backing_image_id?: string;
  /** Custom properties and everything else the view carries. */
  [key: string]: unknown;
}

/** The fields of Glance's image view that are not custom properties. */
export const BASE_FIELDS = new Set([
  'id',
  'name',
  'status',
  'disk_format',
  'container_format',
  'visibility',
  'size',
  'virtual_size',
  'checksum',
  'os_hash_algo',
  'os_hash_value',
  'protected',
  'min_ram',
  'min_disk',
  'owner',
  'os_hidden',
  'created_at',
  'updated_at',
  'tags',
  'self',
  'file',
  'schema',
  'locations',
  'direct_url',
]);

/** Properties a client may not set or change (read-only or reserved). */
export const isReservedProperty = (k: string) =>
  BASE_FIELDS.has(k) || k.startsWith('os_glance') || k === 'stores' || k === 'deleted' || k === 'location';

export interface ImageList {
  images: Image[];
  next?: string;
  first?: string;
}

export type MemberStatus = 'pending' | 'accepted' | 'rejected';

export interface Member {
  member_id: string;
  image_id: string;
  status: MemberStatus;
  created_at: string;
  updated_at: string;
}

export interface Task {
  id: string;
  type: string;
  status: 'pending' | 'processing' | 'success' | 'failure' | string;
  message: string;
  result: Record<string, unknown> | null;
  input?: Record<string, unknown> | null;
  created_at: string;
  updated_at: string;
}

export type MapKind = 'data' | 'compressed' | 'zero' | 'master';

export interface AllocationMap {
  id: string;
  virtual_size: number;
  bucket_size: number;
  kinds: MapKind[];
  totals: Record<MapKind, number>;
  extents: number;
  chain: { id: string; name: string | null; disk_format: string | null; size: number | null }[];
  /** Per bucket, the fraction of each kind (kinds order); the rest is unallocated. */
  buckets: number[][];
}

export interface Project {
  id: string;
  name: string;
  domain_id?: string;
  enabled?: boolean;
  description?: string | null;
}
