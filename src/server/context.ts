/** What every handler shares: the database, the blob store, settings, and the caller. */
import { statSync } from 'node:fs';
import type { Kysely } from 'kysely';
import type { Database } from './db/schema.js';
import type { ImageCache } from './image/cache.js';
import { CONTAINER_FORMATS, DISK_FORMATS } from './image/schemas.js';
import type { BlobStore } from './store/store.js';
import type { StoreSet } from './store/stores.js';

export interface ServerSettings {
  /** Largest image accepted, bytes (Glance's image_size_cap, default 1 TiB). */
  imageSizeCap: number;
  /** Total bytes of image data one project may hold (-1: unlimited). */
  userStorageQuota: number;
  /** Images one project may own (-1: unlimited). */
  imageCountQuota: number;
  /** Members per image (Glance's image_member_quota, default 128). */
  imageMemberQuota: number;
  /** Tags per image (Glance's image_tag_quota, default 128). */
  imageTagQuota: number;
  /** Properties per image (Glance's image_property_quota, default 128). */
  imagePropertyQuota: number;
  /** Token lifetime, seconds (Keystone's default: 3600). */
  tokenTtl: number;
  /** Base URL put in the catalog; when absent, derived from each request's Host header. */
  publicUrl: string | undefined;
  /**
   * web-download filtering, as Glance's [import_filtering_opts] (an allowed list, when not
   * empty, wins over its disallowed list). Hosts named in `importAllowedHosts` may also be
   * internal addresses (loopback, private…), which are refused otherwise.
   */
  importAllowedHosts: string[];
  importDisallowedHosts: string[];
  importAllowedSchemes: string[];
  importDisallowedSchemes: string[];
  importAllowedPorts: number[];
  importDisallowedPorts: number[];
  /** Convert imported images to this disk_format (Glance's image_conversion output_format). */
  importConvertTo: 'raw' | 'qcow2' | null;
  /** Masters below an overlay at most (backing_image_id chains). */
  maxChainDepth: number;
  /**
   * Seconds a node's lease lasts (src/server/nodes.ts): what a node that stopped renewing it
   * was writing is recovered by another node this long after its last renewal.
   */
  nodeLeaseSeconds: number;
  /**
   * Seconds an S3 store's request may go without any byte sent or received, and a connection
   * may take to open, before it fails (and is retried by the SDK, three attempts in all). The
   * SDK's own default is no timeout: a gateway that accepts and never answers would hold an
   * upload, and its client, forever.
   */
  s3TimeoutSeconds: number;
  /**
   * Uploads must be in the format their disk_format names (Glance's [image_format]
   * require_image_format_match). Off: a mismatch is accepted (hostile content is still refused).
   */
  requireImageFormatMatch: boolean;
  /** The disk_format / container_format values allowed ([image_format] in Glance). */
  diskFormats: string[];
  containerFormats: string[];
  /** The interoperable import methods offered (Glance's enabled_import_methods). */
  importMethods: string[];
  /** Where this node caches whole images (Glance's image_cache_dir); null: no cache. */
  imageCacheDir: string | null;
  /** Bytes the cache holds at most (Glance's image_cache_max_size). */
  imageCacheMaxSize: number;
  /**
   * Metadata definition files (Glance's metadefs/*.json) loaded into an empty database on
   * start (src/server/metadefs/loader.ts); null: none.
   */
  metadefsDir: string | null;
}

const isDir = (path: string): boolean => {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
};

/** Glance's definitions where Debian installs them: /etc/glance/metadefs, else glance-common's copy. */
export function defaultMetadefsDir(): string | null {
  for (const d of ['/etc/glance/metadefs', '/usr/share/glance-common/metadefs']) if (isDir(d)) return d;
  return null;
}

export const defaultSettings = (): ServerSettings => ({
  imageSizeCap: 1099511627776,
  userStorageQuota: -1,
  imageCountQuota: -1,
  imageMemberQuota: 128,
  imageTagQuota: 128,
  imagePropertyQuota: 128,
  tokenTtl: 3600,
  publicUrl: undefined,
  importAllowedHosts: [],
  importDisallowedHosts: [],
  importAllowedSchemes: ['http', 'https'],
  importDisallowedSchemes: [],
  importAllowedPorts: [80, 443],
  importDisallowedPorts: [],
  importConvertTo: null,
  maxChainDepth: 16,
  nodeLeaseSeconds: 30,
  s3TimeoutSeconds: 60,
  requireImageFormatMatch: true,
  diskFormats: [...DISK_FORMATS],
  containerFormats: [...CONTAINER_FORMATS],
  importMethods: ['glance-direct', 'web-download', 'copy-image'],
  imageCacheDir: null,
  imageCacheMaxSize: 10 * 2 ** 30,
  metadefsDir: defaultMetadefsDir(),
});

export interface AuthContext {
  tokenId: string;
  userId: string;
  userName: string;
  projectId: string | null;
  projectName: string | null;
  roles: { id: string; name: string }[];
  isAdmin: boolean;
  auditId: string;
  issuedAt: Date;
  expiresAt: Date;
}

export interface Services {
  db: Kysely<Database>;
  /** The store (single-store mode), or the default store of several (also the staging store). */
  store: BlobStore;
  /** Multiple stores (Glance's enabled_backends); null in single-store mode. */
  stores: StoreSet | null;
  settings: ServerSettings;
  /** A unique id of this server process (marks the uploads it is writing). */
  instanceId: string;
  /**
   * A local directory for this server's temporary files (conversions on import, exports of
   * formats without a sequential writer): DATA_DIR/work, emptied at start.
   */
  workDir: string;
  /** This node's image cache, when imageCacheDir is set (image/cache.ts). */
  cache: ImageCache | null;
  /**
   * The images this process is writing now (id → nesting count): an image whose row names this
   * node as its writer but that is not here (a write whose last UPDATE was lost with the
   * database connection) is recovered as a dead node's would be (recovery.ts).
   */
  writing: Map<string, number>;
}

/** Mark `id` as being written by this process until the returned function is called. */
export function beginWrite(svc: Services, id: string): () => void {
  svc.writing.set(id, (svc.writing.get(id) ?? 0) + 1);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    const n = (svc.writing.get(id) ?? 1) - 1;
    if (n <= 0) svc.writing.delete(id);
    else svc.writing.set(id, n);
  };
}
