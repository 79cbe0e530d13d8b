/**
 * The JSON schemas at /v2/schemas/*, as Glance 25 builds them (glance/api/v2/images.py
 * get_base_properties + etc/schema-image.json, image_members.py, tasks.py), and a validator
 * for the subset of JSON Schema they use.
 *
 * One deliberate difference: no `stores` property. Glance lists it, and Debian's glanceclient
 * 4.1.0 caches the schema and then turns every property into a command-line option, where
 * `--stores` collides with its own option and every later `glance` command fails.
 */
import { HttpError } from '../http.js';

export const DISK_FORMATS = [
  'ami',
  'ari',
  'aki',
  'vhd',
  'vhdx',
  'vmdk',
  'raw',
  'qcow2',
  'vdi',
  'iso',
  'ploop',
  // Beyond Glance: the engine's qed (see formats.ts).
  'qed',
];
export const CONTAINER_FORMATS = ['ami', 'ari', 'aki', 'bare', 'ovf', 'ova', 'docker', 'compressed'];
export const IMAGE_STATUSES = [
  'queued',
  'saving',
  'active',
  'killed',
  'deleted',
  'uploading',
  'importing',
  'pending_delete',
  'deactivated',
];

const UUID_PATTERN =
  '^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$';

export type JsonSchema = Record<string, unknown>;

/** The formats an operator allows ([image_format] disk_formats, container_formats). */
export interface AllowedFormats {
  diskFormats: readonly string[];
  containerFormats: readonly string[];
}

const ALL_FORMATS: AllowedFormats = { diskFormats: DISK_FORMATS, containerFormats: CONTAINER_FORMATS };

export function imageProperties(formats: AllowedFormats = ALL_FORMATS): Record<string, JsonSchema> {
  return {
    id: { type: 'string', description: 'An identifier for the image', pattern: UUID_PATTERN },
    name: { type: ['null', 'string'], description: 'Descriptive name for the image', maxLength: 255 },
    status: { type: 'string', readOnly: true, description: 'Status of the image', enum: IMAGE_STATUSES },
    visibility: {
      type: 'string',
      description: 'Scope of image accessibility',
      enum: ['community', 'public', 'private', 'shared'],
    },
    protected: { type: 'boolean', description: 'If true, image will not be deletable.' },
    os_hidden: {
      type: 'boolean',
      description: 'If true, image will not appear in default image list response.',
    },
    checksum: {
      type: ['null', 'string'],
      readOnly: true,
      description: 'md5 hash of image contents.',
      maxLength: 32,
    },
    os_hash_algo: {
      type: ['null', 'string'],
      readOnly: true,
      description: 'Algorithm to calculate the os_hash_value',
      maxLength: 64,
    },
    os_hash_value: {
      type: ['null', 'string'],
      readOnly: true,
      description: 'Hexdigest of the image contents using the algorithm specified by the os_hash_algo',
      maxLength: 128,
    },
    owner: { type: ['null', 'string'], description: 'Owner of the image', maxLength: 255 },
    size: { type: ['null', 'integer'], readOnly: true, description: 'Size of image file in bytes' },
    virtual_size: {
      type: ['null', 'integer'],
      readOnly: true,
      description: 'Virtual size of image in bytes',
    },
    container_format: {
      type: ['null', 'string'],
      description: 'Format of the container',
      enum: [null, ...formats.containerFormats],
    },
    disk_format: {
      type: ['null', 'string'],
      description: 'Format of the disk',
      enum: [null, ...formats.diskFormats],
    },
    created_at: { type: 'string', readOnly: true, description: 'Date and time of image registration' },
    updated_at: {
      type: 'string',
      readOnly: true,
      description: 'Date and time of the last image modification',
    },
    tags: {
      type: 'array',
      description: 'List of strings related to the image',
      items: { type: 'string', maxLength: 255 },
    },
    direct_url: {
      type: 'string',
      readOnly: true,
      description: 'URL to access the image file kept in external store',
    },
    min_ram: { type: 'integer', description: 'Amount of ram (in MB) required to boot image.' },
    min_disk: { type: 'integer', description: 'Amount of disk space (in GB) required to boot image.' },
    self: { type: 'string', readOnly: true, description: 'An image self url' },
    file: { type: 'string', readOnly: true, description: 'An image file url' },
    schema: { type: 'string', readOnly: true, description: 'An image schema url' },
    locations: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          url: { type: 'string', maxLength: 255 },
          metadata: { type: 'object' },
          validation_data: {
            description:
              "Values to be used to populate the corresponding image properties. If the image status is not 'queued', values must exactly match those already contained in the image properties.",
            type: 'object',
            writeOnly: true,
            additionalProperties: false,
            properties: {
              checksum: { type: 'string', minLength: 32, maxLength: 32 },
              os_hash_algo: { type: 'string', maxLength: 64 },
              os_hash_value: { type: 'string', maxLength: 128 },
            },
            required: ['os_hash_algo', 'os_hash_value'],
          },
        },
        required: ['url', 'metadata'],
      },
      description: 'A set of URLs to access the image file kept in external store',
    },
    // etc/schema-image.json (Debian installs it as /etc/glance/schema-image.json).
    kernel_id: {
      type: ['null', 'string'],
      pattern: UUID_PATTERN,
      description:
        'ID of image stored in Glance that should be used as the kernel when booting an AMI-style image.',
      is_base: false,
    },
    ramdisk_id: {
      type: ['null', 'string'],
      pattern: UUID_PATTERN,
      description:
        'ID of image stored in Glance that should be used as the ramdisk when booting an AMI-style image.',
      is_base: false,
    },
    instance_uuid: {
      type: 'string',
      description:
        'Metadata which can be used to record which instance this image is associated with. (Informational only, does not create an instance snapshot.)',
      is_base: false,
    },
    architecture: {
      description:
        'Operating system architecture as specified in https://docs.openstack.org/python-glanceclient/latest/cli/property-keys.html',
      type: 'string',
      is_base: false,
    },
    os_distro: {
      description:
        'Common name of operating system distribution as specified in https://docs.openstack.org/python-glanceclient/latest/cli/property-keys.html',
      type: 'string',
      is_base: false,
    },
    os_version: {
      description: 'Operating system version as specified by the distributor.',
      type: 'string',
      is_base: false,
    },
    description: {
      description: 'A human-readable string describing this image.',
      type: 'string',
      is_base: false,
    },
  };
}

const imageLinks = [
  { rel: 'self', href: '{self}' },
  { rel: 'enclosure', href: '{file}' },
  { rel: 'describedby', href: '{schema}' },
];

/** PermissiveSchema.raw(): extra properties must be strings. */
export function imageSchema(formats: AllowedFormats = ALL_FORMATS): JsonSchema {
  return {
    name: 'image',
    properties: imageProperties(formats),
    additionalProperties: { type: 'string' },
    links: imageLinks,
  };
}

export function collectionSchema(name: string, item: JsonSchema): JsonSchema {
  return {
    name,
    properties: {
      [name]: { type: 'array', items: item },
      first: { type: 'string' },
      next: { type: 'string' },
      schema: { type: 'string' },
    },
    links: [
      { rel: 'first', href: '{first}' },
      { rel: 'next', href: '{next}' },
      { rel: 'describedby', href: '{schema}' },
    ],
  };
}

export function memberSchema(): JsonSchema {
  return {
    name: 'member',
    properties: {
      member_id: { type: 'string', description: 'An identifier for the image member (tenantId)' },
      image_id: { type: 'string', description: 'An identifier for the image', pattern: UUID_PATTERN },
      created_at: { type: 'string', description: 'Date and time of image member creation' },
      updated_at: { type: 'string', description: 'Date and time of last modification of image member' },
      status: {
        type: 'string',
        description: 'The status of this image member',
        enum: ['pending', 'accepted', 'rejected'],
      },
      schema: { readOnly: true, type: 'string' },
    },
    additionalProperties: false,
  };
}

export function taskSchema(): JsonSchema {
  return {
    name: 'task',
    properties: {
      id: { type: 'string', description: 'An identifier for the task', pattern: UUID_PATTERN },
      type: {
        type: 'string',
        description: 'The type of task represented by this content',
        enum: ['import', 'api_image_import', 'location_import'],
      },
      status: {
        type: 'string',
        description: 'The current status of this task',
        enum: ['pending', 'processing', 'success', 'failure'],
      },
      input: { type: ['null', 'object'], description: 'The parameters required by task, JSON blob' },
      result: { type: ['null', 'object'], description: 'The result of current task, JSON blob' },
      owner: { type: 'string', description: 'An identifier for the owner of this task' },
      message: {
        type: 'string',
        description: 'Human-readable informative message only included when appropriate (usually on failure)',
      },
      image_id: { type: 'string', description: 'Image associated with the task', readOnly: true },
      request_id: { type: 'string', description: 'Human-readable informative request-id', readOnly: true },
      user_id: { type: 'string', description: 'User associated with the task', readOnly: true },
      expires_at: {
        type: ['null', 'string'],
        description: 'Datetime when this resource would be subject to removal',
      },
      created_at: { type: 'string', description: 'Datetime when this resource was created' },
      updated_at: { type: 'string', description: 'Datetime when this resource was updated' },
      self: { type: 'string' },
      schema: { type: 'string' },
    },
    // No `required`: Glance's get_task_schema() has none, and glanceclient validates the
    // task stubs of `GET /v2/tasks` (no input) against this schema.
    additionalProperties: false,
    links: [
      { rel: 'self', href: '{self}' },
      { rel: 'describedby', href: '{schema}' },
    ],
  };
}

function typeOk(t: string, v: unknown): boolean {
  switch (t) {
    case 'null':
      return v === null;
    case 'string':
      return typeof v === 'string';
    case 'boolean':
      return typeof v === 'boolean';
    case 'integer':
      return typeof v === 'number' && Number.isInteger(v);
    case 'number':
      return typeof v === 'number';
    case 'array':
      return Array.isArray(v);
    case 'object':
      return typeof v === 'object' && v !== null && !Array.isArray(v);
    default:
      return true;
  }
}

const pyRepr = (v: unknown): string =>
  typeof v === 'string'
    ? `'${v}'`
    : v === null
      ? 'None'
      : v === true
        ? 'True'
        : v === false
          ? 'False'
          : JSON.stringify(v);

/** Validate a value against one schema node; the message reads like jsonschema's. */
export function validateValue(schema: JsonSchema, v: unknown, path: string): string | null {
  const type = schema['type'];
  if (type !== undefined) {
    const types = Array.isArray(type) ? (type as string[]) : [type as string];
    if (!types.some((t) => typeOk(t, v))) {
      const want = types.length === 1 ? `'${types[0]}'` : `[${types.map((t) => `'${t}'`).join(', ')}]`;
      return `${pyRepr(v)} is not of type ${want}`;
    }
  }
  const en = schema['enum'];
  if (Array.isArray(en) && !en.includes(v)) {
    return `${pyRepr(v)} is not one of [${en.map(pyRepr).join(', ')}]`;
  }
  if (typeof v === 'string') {
    const max = schema['maxLength'];
    if (typeof max === 'number' && [...v].length > max) return `${pyRepr(v)} is too long`;
    const min = schema['minLength'];
    if (typeof min === 'number' && [...v].length < min) return `${pyRepr(v)} is too short`;
    const pattern = schema['pattern'];
    if (typeof pattern === 'string' && !new RegExp(pattern).test(v))
      return `${pyRepr(v)} does not match '${pattern}'`;
  }
  if (Array.isArray(v) && typeof schema['items'] === 'object') {
    for (let i = 0; i < v.length; i++) {
      const e = validateValue(schema['items'] as JsonSchema, v[i], `${path}/${i}`);
      if (e !== null) return e;
    }
  }
  return null;
}

/** Validate an image body (create, or one PATCH value) against the image schema: 400 on failure. */
export function validateImage(body: Record<string, unknown>, formats: AllowedFormats = ALL_FORMATS): void {
  const props = imageProperties(formats);
  for (const [k, v] of Object.entries(body)) {
    const s = props[k] ?? { type: 'string' };
    const err = validateValue(s, v, k);
    if (err !== null) {
      throw new HttpError(
        400,
        `Provided object does not match schema 'image': ${err}\n\nFailed validating '${describeFailure(s, v)}' in schema['properties']['${k}']`,
      );
    }
  }
}

function describeFailure(s: JsonSchema, v: unknown): string {
  const type = s['type'];
  const types = Array.isArray(type) ? (type as string[]) : type === undefined ? [] : [type as string];
  if (types.length > 0 && !types.some((t) => typeOk(t, v))) return 'type';
  if (Array.isArray(s['enum']) && !(s['enum'] as unknown[]).includes(v)) return 'enum';
  if (typeof v === 'string' && typeof s['pattern'] === 'string' && !new RegExp(s['pattern']).test(v))
    return 'pattern';
  return 'maxLength';
}
