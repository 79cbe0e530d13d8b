/**
 * The metadef JSON schemas served at /v2/schemas/metadefs/* and used to validate request
 * bodies, as Glance 25 builds them (glance/api/v2/metadef_*.py get_schema() and
 * get_collection_schema(), glance/schema.py Schema/CollectionSchema/DictCollectionSchema
 * raw()). Equal to Glance's answers (src/server/metadefs/side-by-side.test.ts compares them).
 */
import type { Schema } from './validate.js';

const TYPES = ['array', 'boolean', 'integer', 'number', 'object', 'string', null];

/** metadef_namespaces.get_schema_definitions(): shared by namespace and object. */
function namespaceDefinitions(): Schema {
  return {
    positiveInteger: { type: 'integer', minimum: 0 },
    positiveIntegerDefault0: { allOf: [{ $ref: '#/definitions/positiveInteger' }, { default: 0 }] },
    stringArray: { type: 'array', items: { type: 'string' }, uniqueItems: true },
    property: {
      type: 'object',
      additionalProperties: {
        type: 'object',
        required: ['title', 'type'],
        properties: propertyProperties(),
      },
    },
  };
}

/** The attributes of one property definition (PropertyType). */
function propertyProperties(): Record<string, Schema> {
  return {
    name: { type: 'string', maxLength: 80 },
    title: { type: 'string' },
    description: { type: 'string' },
    operators: { type: 'array', items: { type: 'string' } },
    type: { type: 'string', enum: TYPES },
    required: { $ref: '#/definitions/stringArray' },
    minimum: { type: 'number' },
    maximum: { type: 'number' },
    maxLength: { $ref: '#/definitions/positiveInteger' },
    minLength: { $ref: '#/definitions/positiveIntegerDefault0' },
    pattern: { type: 'string', format: 'regex' },
    enum: { type: 'array' },
    readonly: { type: 'boolean' },
    default: {},
    items: {
      type: 'object',
      properties: { type: { type: 'string', enum: TYPES }, enum: { type: 'array' } },
    },
    maxItems: { $ref: '#/definitions/positiveInteger' },
    minItems: { $ref: '#/definitions/positiveIntegerDefault0' },
    uniqueItems: { type: 'boolean', default: false },
    additionalItems: { type: 'boolean' },
  };
}

const timestamps = (what: string, modification: string): Record<string, Schema> => ({
  created_at: {
    type: 'string',
    readOnly: true,
    description: `Date and time of ${what}`,
    format: 'date-time',
  },
  updated_at: {
    type: 'string',
    readOnly: true,
    description: `Date and time of the last ${modification}`,
    format: 'date-time',
  },
});

/** glance.schema.Schema.raw(). */
function raw(
  name: string,
  properties: Record<string, Schema>,
  required: string[] | null,
  definitions: Schema | null,
): Schema {
  const s: Schema = { name, properties, additionalProperties: false };
  if (definitions !== null) s['definitions'] = definitions;
  if (required !== null && required.length > 0) s['required'] = required;
  return s;
}

const collectionLinks = [
  { rel: 'first', href: '{first}' },
  { rel: 'next', href: '{next}' },
  { rel: 'describedby', href: '{schema}' },
];

/** CollectionSchema / DictCollectionSchema .raw(): the item schema's definitions move up. */
function collection(name: string, item: Schema, dict = false): Schema {
  const { definitions, ...itemRaw } = item;
  const s: Schema = {
    name,
    properties: {
      [name]: dict ? { type: 'object', additionalProperties: itemRaw } : { type: 'array', items: itemRaw },
      first: { type: 'string' },
      next: { type: 'string' },
      schema: { type: 'string' },
    },
    links: collectionLinks,
  };
  if (definitions !== undefined) s['definitions'] = definitions;
  return s;
}

export function namespaceSchema(): Schema {
  return raw(
    'namespace',
    {
      namespace: { type: 'string', description: 'The unique namespace text.', maxLength: 80 },
      display_name: {
        type: 'string',
        description: 'The user friendly name for the namespace. Used by UI if available.',
        maxLength: 80,
      },
      description: {
        type: 'string',
        description: 'Provides a user friendly description of the namespace.',
        maxLength: 500,
      },
      visibility: {
        type: 'string',
        description: 'Scope of namespace accessibility.',
        enum: ['public', 'private'],
      },
      protected: { type: 'boolean', description: 'If true, namespace will not be deletable.' },
      owner: { type: 'string', description: 'Owner of the namespace.', maxLength: 255 },
      ...timestamps('namespace creation', 'namespace modification'),
      schema: { readOnly: true, type: 'string' },
      self: { readOnly: true, type: 'string' },
      resource_type_associations: {
        type: 'array',
        items: {
          type: 'object',
          properties: {
            name: { type: 'string' },
            prefix: { type: 'string' },
            properties_target: { type: 'string' },
          },
        },
      },
      properties: { $ref: '#/definitions/property' },
      objects: {
        type: 'array',
        items: {
          type: 'object',
          properties: {
            name: { type: 'string' },
            description: { type: 'string' },
            required: { $ref: '#/definitions/stringArray' },
            properties: { $ref: '#/definitions/property' },
          },
        },
      },
      tags: {
        type: 'array',
        items: { type: 'object', properties: { name: { type: 'string' } } },
      },
    },
    ['namespace'],
    namespaceDefinitions(),
  );
}

export function objectSchema(): Schema {
  return raw(
    'object',
    {
      name: { type: 'string', maxLength: 80 },
      description: { type: 'string' },
      required: { $ref: '#/definitions/stringArray' },
      properties: { $ref: '#/definitions/property' },
      schema: { readOnly: true, type: 'string' },
      self: { readOnly: true, type: 'string' },
      ...timestamps('object creation', 'object modification'),
    },
    ['name'],
    namespaceDefinitions(),
  );
}

/** metadef_properties.get_schema(): its own definitions (stringArray has minItems here). */
export function propertySchema(requireName = true): Schema {
  return raw('property', propertyProperties(), requireName ? ['type', 'title', 'name'] : ['type', 'title'], {
    positiveInteger: { type: 'integer', minimum: 0 },
    positiveIntegerDefault0: { allOf: [{ $ref: '#/definitions/positiveInteger' }, { default: 0 }] },
    stringArray: { type: 'array', items: { type: 'string' }, minItems: 1, uniqueItems: true },
  });
}

export function resourceTypeSchema(): Schema {
  return raw(
    'resource_type_association',
    {
      name: {
        type: 'string',
        description:
          'Resource type names should be aligned with Heat resource types whenever possible: https://docs.openstack.org/heat/latest/template_guide/openstack.html',
        maxLength: 80,
      },
      prefix: {
        type: 'string',
        description:
          'Specifies the prefix to use for the given resource type. Any properties in the namespace should be prefixed with this prefix when being applied to the specified resource type. Must include prefix separator (e.g. a colon :).',
        maxLength: 80,
      },
      properties_target: {
        type: 'string',
        description:
          'Some resource types allow more than one key / value pair per instance.  For example, Cinder allows user and image metadata on volumes. Only the image properties metadata is evaluated by Nova (scheduling or drivers). This property allows a namespace target to remove the ambiguity.',
        maxLength: 80,
      },
      ...timestamps('resource type association', 'resource type association modification'),
    },
    ['name'],
    null,
  );
}

export function tagSchema(): Schema {
  return raw(
    'tag',
    { name: { type: 'string', maxLength: 80 }, ...timestamps('tag creation', 'tag modification') },
    ['name'],
    null,
  );
}

/** metadef_tags.get_schema_for_list(): the body of POST …/tags. */
export function tagsBodySchema(): Schema {
  return raw(
    'tags',
    {
      tags: {
        type: 'array',
        items: {
          type: 'object',
          properties: { name: { type: 'string' } },
          required: ['name'],
          additionalProperties: false,
        },
      },
    },
    null,
    null,
  );
}

/** GET /v2/schemas/metadefs/{name}. */
export const METADEF_SCHEMAS: Record<string, () => Schema> = {
  namespace: namespaceSchema,
  namespaces: () => collection('namespaces', namespaceSchema()),
  object: objectSchema,
  objects: () => collection('objects', objectSchema()),
  property: () => propertySchema(),
  properties: () => collection('properties', propertySchema(false), true),
  resource_type: resourceTypeSchema,
  resource_types: () => collection('resource_type_associations', resourceTypeSchema()),
  tag: tagSchema,
  tags: () => collection('tags', tagSchema()),
};
