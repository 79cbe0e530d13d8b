/**
 * The metadata schema (one set of tables for identity and images) and its migrations. Plain
 * PostgreSQL DDL: it runs unchanged on PGlite and on PostgreSQL 15.
 */
import { type ColumnType, type Generated, type Kysely, sql } from 'kysely';

export interface ProjectTable {
  id: string;
  name: string;
  domain_id: string;
  description: string;
  enabled: boolean;
  created_at: Date;
}

export interface UserTable {
  id: string;
  name: string;
  domain_id: string;
  password_hash: string | null;
  default_project_id: string | null;
  email: string | null;
  description: string | null;
  enabled: boolean;
  created_at: Date;
}

export interface RoleTable {
  id: string;
  name: string;
}

export interface AssignmentTable {
  user_id: string;
  project_id: string;
  role_id: string;
}

export interface TokenTable {
  /** sha256 of the token text (the token itself is never stored). */
  id: string;
  user_id: string;
  project_id: string | null;
  audit_id: string;
  issued_at: Date;
  expires_at: Date;
}

export interface ImageTable {
  id: string;
  name: string | null;
  status: string;
  visibility: string;
  protected: boolean;
  os_hidden: boolean;
  owner: string | null;
  disk_format: string | null;
  container_format: string | null;
  size: number | null;
  virtual_size: number | null;
  checksum: string | null;
  os_hash_algo: string | null;
  os_hash_value: string | null;
  min_disk: number;
  min_ram: number;
  created_at: Date;
  updated_at: Date;
  /** Free-form properties: a JSON object of strings. */
  properties: Record<string, string>;
  /** Tags: a JSON array of strings. */
  tags: string[];
  /** The key of the image's data in the blob store, once uploaded. */
  blob: string | null;
  /** Upload in progress: the id of the server/process that is writing it. */
  writer: string | null;
  /**
   * Multiple stores: the ids of the stores that hold the data under `blob` (a JSON array;
   * always empty in single-store mode). See src/server/store/stores.ts.
   */
  stores: Generated<string[]>;
}

export interface MemberTable {
  image_id: string;
  member: string;
  status: string;
  created_at: Date;
  updated_at: Date;
}

export interface TaskTable {
  id: string;
  type: string;
  status: string;
  owner: string;
  image_id: string | null;
  input: unknown;
  result: unknown;
  message: string;
  created_at: Date;
  updated_at: Date;
  expires_at: Date | null;
  /** The user and request that made the task (Glance's user_id, request_id). */
  user_id: string | null;
  request_id: string | null;
}

/** Metadata definitions (src/server/metadefs/): Glance's metadef_* tables. */
export interface MetadefNamespaceTable {
  id: Generated<number>;
  namespace: string;
  display_name: string | null;
  description: string | null;
  /** NULL when a definition file names none (shown as `private`). */
  visibility: string | null;
  protected: boolean | null;
  owner: string;
  created_at: Date;
  /** NULL for what the definition files loaded, as in Glance. */
  updated_at: Date | null;
}

export interface MetadefObjectTable {
  id: Generated<number>;
  namespace_id: number;
  name: string;
  description: string | null;
  /** A JSON array of property names, or NULL. */
  required: ColumnType<string[] | null, string | null, string | null>;
  /** A JSON object: property name → its definition. */
  properties: ColumnType<Record<string, unknown>, string, string>;
  created_at: Date;
  updated_at: Date | null;
}

export interface MetadefPropertyTable {
  id: Generated<number>;
  namespace_id: number;
  name: string;
  /** The property's definition (a JSON object). */
  schema: ColumnType<Record<string, unknown>, string, string>;
  created_at: Date;
  updated_at: Date | null;
}

export interface MetadefTagTable {
  id: Generated<number>;
  namespace_id: number;
  name: string;
  created_at: Date;
  updated_at: Date | null;
}

export interface MetadefResourceTypeTable {
  id: Generated<number>;
  name: string;
  protected: boolean;
  created_at: Date;
  updated_at: Date | null;
}

export interface MetadefAssociationTable {
  id: Generated<number>;
  namespace_id: number;
  resource_type_id: number;
  prefix: string | null;
  properties_target: string | null;
  created_at: Date;
  updated_at: Date | null;
}

export interface MetaTable {
  key: string;
  value: string;
}

/** The serving nodes and their leases (src/server/nodes.ts). */
export interface NodeTable {
  /** The instance id (an image's `writer`). */
  id: string;
  /** The data directory's node key (its instances replace each other). */
  node: string;
  host: string;
  pid: number;
  url: string;
  started_at: ColumnType<Date, unknown, unknown>;
  heartbeat_at: ColumnType<Date, unknown, unknown>;
  expires_at: ColumnType<Date, unknown, unknown>;
}

export interface Database {
  nodes: NodeTable;
  projects: ProjectTable;
  users: UserTable;
  roles: RoleTable;
  assignments: AssignmentTable;
  tokens: TokenTable;
  images: ImageTable;
  image_members: MemberTable;
  tasks: TaskTable;
  vdisk_meta: MetaTable;
  metadef_namespaces: MetadefNamespaceTable;
  metadef_objects: MetadefObjectTable;
  metadef_properties: MetadefPropertyTable;
  metadef_tags: MetadefTagTable;
  metadef_resource_types: MetadefResourceTypeTable;
  metadef_namespace_resource_types: MetadefAssociationTable;
}

const MIGRATIONS: string[] = [
  `
  CREATE TABLE vdisk_meta (key text PRIMARY KEY, value text NOT NULL);
  CREATE TABLE projects (
    id text PRIMARY KEY, name text NOT NULL, domain_id text NOT NULL,
    description text NOT NULL DEFAULT '', enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (domain_id, name));
  CREATE TABLE users (
    id text PRIMARY KEY, name text NOT NULL, domain_id text NOT NULL, password_hash text,
    default_project_id text, email text, description text, enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (domain_id, name));
  CREATE TABLE roles (id text PRIMARY KEY, name text NOT NULL UNIQUE);
  CREATE TABLE assignments (
    user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    project_id text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    role_id text NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, project_id, role_id));
  CREATE TABLE tokens (
    id text PRIMARY KEY, user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    project_id text REFERENCES projects(id) ON DELETE CASCADE, audit_id text NOT NULL,
    issued_at timestamptz NOT NULL, expires_at timestamptz NOT NULL);
  CREATE INDEX tokens_expires ON tokens (expires_at);
  CREATE TABLE images (
    id text PRIMARY KEY, name text, status text NOT NULL, visibility text NOT NULL,
    protected boolean NOT NULL DEFAULT false, os_hidden boolean NOT NULL DEFAULT false,
    owner text, disk_format text, container_format text, size bigint, virtual_size bigint,
    checksum text, os_hash_algo text, os_hash_value text,
    min_disk integer NOT NULL DEFAULT 0, min_ram integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
    properties jsonb NOT NULL DEFAULT '{}', tags jsonb NOT NULL DEFAULT '[]',
    blob text, writer text);
  CREATE INDEX images_owner ON images (owner);
  CREATE INDEX images_created ON images (created_at DESC, id DESC);
  CREATE INDEX images_visibility ON images (visibility);
  CREATE TABLE image_members (
    image_id text NOT NULL REFERENCES images(id) ON DELETE CASCADE, member text NOT NULL,
    status text NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
    PRIMARY KEY (image_id, member));
  CREATE INDEX image_members_member ON image_members (member);
  CREATE TABLE tasks (
    id text PRIMARY KEY, type text NOT NULL, status text NOT NULL, owner text NOT NULL,
    image_id text, input jsonb, result jsonb, message text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, expires_at timestamptz);
  `,
  // Image import (src/server/image/import.ts): who made a task, and tasks by image.
  `
  ALTER TABLE tasks ADD COLUMN user_id text;
  ALTER TABLE tasks ADD COLUMN request_id text;
  CREATE INDEX tasks_image ON tasks (image_id);
  CREATE INDEX tasks_owner_created ON tasks (owner, created_at DESC, id DESC);
  `,
  // Layered images (src/server/image/layers.ts): dependents of a master, by backing_image_id.
  `
  CREATE INDEX images_backing ON images ((properties->>'backing_image_id'));
  `,
  // Metadata definitions (src/server/metadefs/): Glance's metadef_* tables. JSON as `json`
  // (not jsonb): the order of a definition's keys and properties is kept, as Glance keeps it.
  `
  CREATE TABLE metadef_namespaces (
    id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, namespace text NOT NULL UNIQUE,
    display_name text, description text, visibility text, protected boolean,
    owner text NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz);
  CREATE INDEX metadef_namespaces_owner ON metadef_namespaces (owner);
  CREATE TABLE metadef_resource_types (
    id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text NOT NULL UNIQUE,
    protected boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL, updated_at timestamptz);
  CREATE TABLE metadef_namespace_resource_types (
    id integer GENERATED BY DEFAULT AS IDENTITY UNIQUE,
    namespace_id integer NOT NULL REFERENCES metadef_namespaces(id) ON DELETE CASCADE,
    resource_type_id integer NOT NULL REFERENCES metadef_resource_types(id),
    prefix text, properties_target text,
    created_at timestamptz NOT NULL, updated_at timestamptz,
    PRIMARY KEY (namespace_id, resource_type_id));
  CREATE INDEX metadef_ns_rt_resource_type ON metadef_namespace_resource_types (resource_type_id);
  CREATE TABLE metadef_objects (
    id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    namespace_id integer NOT NULL REFERENCES metadef_namespaces(id) ON DELETE CASCADE,
    name text NOT NULL, description text, required json, properties json NOT NULL,
    created_at timestamptz NOT NULL, updated_at timestamptz, UNIQUE (namespace_id, name));
  CREATE TABLE metadef_properties (
    id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    namespace_id integer NOT NULL REFERENCES metadef_namespaces(id) ON DELETE CASCADE,
    name text NOT NULL, schema json NOT NULL,
    created_at timestamptz NOT NULL, updated_at timestamptz, UNIQUE (namespace_id, name));
  CREATE TABLE metadef_tags (
    id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    namespace_id integer NOT NULL REFERENCES metadef_namespaces(id) ON DELETE CASCADE,
    name text NOT NULL,
    created_at timestamptz NOT NULL, updated_at timestamptz, UNIQUE (namespace_id, name));
  `,
  // Multiple stores (src/server/store/stores.ts): the stores that hold an image's data.
  `
  ALTER TABLE images ADD COLUMN stores jsonb NOT NULL DEFAULT '[]';
  `,
  // Several nodes (src/server/nodes.ts): their leases, and the images being written.
  `
  CREATE TABLE nodes (
    id text PRIMARY KEY, node text NOT NULL, host text NOT NULL, pid integer NOT NULL,
    url text NOT NULL, started_at timestamptz NOT NULL, heartbeat_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL);
  CREATE INDEX nodes_node ON nodes (node);
  CREATE INDEX images_writer ON images (writer) WHERE writer IS NOT NULL;
  `,
];

/** Bring the schema up to date (idempotent; concurrent starters serialize on an advisory lock). */
export async function migrate(db: Kysely<Database>): Promise<void> {
  await db.connection().execute(async (c) => {
    await sql`SELECT pg_advisory_lock(7461)`.execute(c);
    try {
      await sql`CREATE TABLE IF NOT EXISTS vdisk_schema (version integer NOT NULL)`.execute(c);
      const r = await sql<{ version: number }>`SELECT version FROM vdisk_schema`.execute(c);
      let version = r.rows[0]?.version ?? 0;
      if (r.rows.length === 0) await sql`INSERT INTO vdisk_schema VALUES (0)`.execute(c);
      while (version < MIGRATIONS.length) {
        const statements = MIGRATIONS[version]!.split(';')
          .map((s) => s.trim())
          .filter((s) => s !== '');
        await sql`BEGIN`.execute(c);
        try {
          for (const st of statements) await sql.raw(st).execute(c);
          await sql`UPDATE vdisk_schema SET version = ${version + 1}`.execute(c);
          await sql`COMMIT`.execute(c);
        } catch (err) {
          await sql`ROLLBACK`.execute(c);
          throw err;
        }
        version++;
      }
    } finally {
      await sql`SELECT pg_advisory_unlock(7461)`.execute(c);
    }
  });
}
