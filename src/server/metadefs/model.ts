/**
 * The shapes of metadef documents as Glance's WSME models make them (glance/api/v2/model/
 * metadef_*.py through wsme.rest.json fromjson/tojson): attributes in the models' order,
 * values converted as WSME converts them (`default` becomes a string, `minimum`/`maximum`/
 * lengths become integers, booleans accept "yes"/1…), unknown or mistyped attributes refused.
 *
 * Where WSME raises (an unknown attribute, a missing mandatory one, a value of the wrong type
 * that the JSON schema let through) Glance answers 500; here it is a 400 with WSME's own
 * message (the difference is listed in docs/registry.md).
 */
import { HttpError } from '../http.js';
import { pyRepr } from './pyrepr.js';

export type Doc = Record<string, unknown>;

const isObj = (v: unknown): v is Doc => typeof v === 'object' && v !== null && !Array.isArray(v);

/** obj[k] = v that also works for k = '__proto__' (a property name is any string). */
export function setKey(obj: Doc, k: string, v: unknown): void {
  Object.defineProperty(obj, k, { value: v, enumerable: true, writable: true, configurable: true });
}

/** wsme.exc.InvalidInput. */
const invalid = (field: string, value: unknown, why: string) =>
  new HttpError(400, `Invalid input for field/attribute ${field}. Value: '${pyRepr(value)}'. ${why}`);

const pyType = (v: unknown): string =>
  v === null
    ? 'NoneType'
    : typeof v === 'string'
      ? 'str'
      : typeof v === 'boolean'
        ? 'bool'
        : typeof v === 'number'
          ? Number.isInteger(v)
            ? 'int'
            : 'float'
          : Array.isArray(v)
            ? 'list'
            : 'dict';

type Kind = 'text' | 'int' | 'bool' | 'bytes' | 'texts' | 'itemtype' | 'properties';

interface Attr {
  name: string;
  kind: Kind;
  mandatory?: boolean;
}

const ENUM_TRUE = ['true', 't', 'yes', 'y', 'on', '1'];
const ENUM_FALSE = ['false', 'f', 'no', 'n', 'off', '0'];

/** str() of a JSON scalar as Python prints it (WSME's bytes conversion of `default`). */
function pyStr(v: number | boolean): string {
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  return pyRepr(v);
}

function convert(attr: Attr, v: unknown, field: string): unknown {
  if (v === null) return null;
  switch (attr.kind) {
    case 'text':
      if (typeof v !== 'string')
        throw invalid(field, v, `Wrong type. Expected '<class 'str'>', got '<class '${pyType(v)}'>'`);
      return v;
    case 'int': {
      let n: number;
      if (typeof v === 'number') n = Math.trunc(v);
      else if (typeof v === 'boolean') n = Number(v);
      else if (typeof v === 'string' && /^\s*[-+]?\d+\s*$/.test(v)) n = Number.parseInt(v, 10);
      else throw invalid(field, v, `invalid literal for int() with base 10: ${pyRepr(v)}`);
      if (!Number.isSafeInteger(n)) throw invalid(field, v, 'integer out of range');
      return n;
    }
    case 'bool':
      if (typeof v === 'boolean') return v;
      if (typeof v === 'number' && Number.isInteger(v)) return v !== 0;
      if (typeof v === 'string' && ENUM_TRUE.includes(v)) return true;
      if (typeof v === 'string' && ENUM_FALSE.includes(v)) return false;
      throw invalid(field, v, `Value not an unambiguous boolean: ${typeof v === 'string' ? v : pyRepr(v)}`);
    case 'bytes':
      // str/int/float → their str(); anything else → None (wsme's str_fromjson).
      if (typeof v === 'string') return v;
      if (typeof v === 'number' || typeof v === 'boolean') return pyStr(v);
      return null;
    case 'texts':
      if (!Array.isArray(v)) throw invalid(field, v, `Value not a valid list: ${pyRepr(v)}`);
      for (const item of v)
        if (item !== null && typeof item !== 'string')
          throw invalid(field, v, `Wrong type. Expected '<class 'str'>', got '<class '${pyType(item)}'>'`);
      return [...v];
    case 'itemtype':
      return fromJson(ITEM_TYPE, v, field);
    case 'properties': {
      if (!isObj(v)) throw invalid(field, v, `Value not a valid dict: ${pyRepr(v)}`);
      const out: Doc = {};
      for (const [k, p] of Object.entries(v)) setKey(out, k, p === null ? null : propertyType(p, field));
      return out;
    }
  }
}

/** wsme fromjson of a complex type: known attributes only, mandatory ones present. */
function fromJson(attrs: Attr[], v: unknown, field: string): Doc {
  if (!isObj(v)) throw invalid(field, v, `Value not a valid dict: ${pyRepr(v)}`);
  const known = new Set(attrs.map((a) => a.name));
  const unknown = Object.keys(v).filter((k) => !known.has(k));
  if (unknown.length > 0)
    throw new HttpError(400, `Unknown attribute for argument ${field}: ${unknown.sort().join(', ')}`);
  const out: Doc = {};
  for (const a of attrs) {
    if (Object.hasOwn(v, a.name)) out[a.name] = convert(a, v[a.name], a.name);
    else if (a.mandatory) throw invalid(a.name, null, 'Mandatory field missing.');
  }
  return out;
}

const ITEM_TYPE: Attr[] = [
  { name: 'type', kind: 'text', mandatory: true },
  { name: 'enum', kind: 'texts' },
];

const PROPERTY_TYPE: Attr[] = [
  { name: 'name', kind: 'text' },
  { name: 'type', kind: 'text', mandatory: true },
  { name: 'title', kind: 'text', mandatory: true },
  { name: 'description', kind: 'text' },
  { name: 'operators', kind: 'texts' },
  { name: 'default', kind: 'bytes' },
  { name: 'readonly', kind: 'bool' },
  { name: 'minimum', kind: 'int' },
  { name: 'maximum', kind: 'int' },
  { name: 'enum', kind: 'texts' },
  { name: 'pattern', kind: 'text' },
  { name: 'minLength', kind: 'int' },
  { name: 'maxLength', kind: 'int' },
  { name: 'confidential', kind: 'bool' },
  { name: 'items', kind: 'itemtype' },
  { name: 'uniqueItems', kind: 'bool' },
  { name: 'minItems', kind: 'int' },
  { name: 'maxItems', kind: 'int' },
  { name: 'additionalItems', kind: 'bool' },
];

/** A property definition (PropertyType), normalised; its JSON is also what is stored. */
export function propertyType(v: unknown, field = 'property_type'): Doc {
  return fromJson(PROPERTY_TYPE, v, field);
}

/** A stored property definition as Glance shows it (fromjson of the stored JSON). */
export function storedProperty(schema: unknown): Doc {
  return propertyType(schema);
}

/** A properties map of stored definitions. */
export function storedProperties(map: unknown): Doc {
  const out: Doc = {};
  if (isObj(map))
    for (const [k, v] of Object.entries(map)) setKey(out, k, v === null ? null : storedProperty(v));
  return out;
}

const ASSOCIATION: Attr[] = [
  { name: 'name', kind: 'text', mandatory: true },
  { name: 'prefix', kind: 'text' },
  { name: 'properties_target', kind: 'text' },
  { name: 'created_at', kind: 'text' },
  { name: 'updated_at', kind: 'text' },
];

const OBJECT: Attr[] = [
  { name: 'name', kind: 'text', mandatory: true },
  { name: 'required', kind: 'texts' },
  { name: 'description', kind: 'text' },
  { name: 'properties', kind: 'properties' },
  { name: 'created_at', kind: 'text' },
  { name: 'updated_at', kind: 'text' },
  { name: 'self', kind: 'text' },
  { name: 'schema', kind: 'text' },
];

const TAG: Attr[] = [
  { name: 'name', kind: 'text', mandatory: true },
  { name: 'created_at', kind: 'text' },
  { name: 'updated_at', kind: 'text' },
];

const list = (attrs: Attr[], v: unknown, field: string): Doc[] | null => {
  if (v === null) return null;
  if (!Array.isArray(v)) throw invalid(field, v, `Value not a valid list: ${pyRepr(v)}`);
  return v.map((item) => fromJson(attrs, item, field));
};

const NAMESPACE: Attr[] = [
  { name: 'namespace', kind: 'text', mandatory: true },
  { name: 'display_name', kind: 'text' },
  { name: 'description', kind: 'text' },
  { name: 'visibility', kind: 'text' },
  { name: 'protected', kind: 'bool' },
  { name: 'owner', kind: 'text' },
  { name: 'created_at', kind: 'text' },
  { name: 'updated_at', kind: 'text' },
];

/** A namespace body (create, update): its own attributes and the contents it carries. */
export interface NamespaceBody {
  attrs: Doc;
  resourceTypes: Doc[] | null;
  properties: Doc | null;
  objects: Doc[] | null;
  tags: Doc[] | null;
}

export function namespaceBody(body: Doc): NamespaceBody {
  const rest: Doc = {};
  for (const [k, v] of Object.entries(body))
    if (!['resource_type_associations', 'properties', 'objects', 'tags', 'self', 'schema'].includes(k))
      setKey(rest, k, v);
  const attrs = fromJson(NAMESPACE, rest, 'namespace');
  const has = (k: string) => Object.hasOwn(body, k);
  return {
    attrs,
    resourceTypes: has('resource_type_associations')
      ? list(ASSOCIATION, body['resource_type_associations'], 'resource_type_associations')
      : null,
    properties: has('properties')
      ? (convert({ name: 'properties', kind: 'properties' }, body['properties'], 'properties') as Doc | null)
      : null,
    objects: has('objects') ? list(OBJECT, body['objects'], 'objects') : null,
    tags: has('tags') ? list(TAG, body['tags'], 'tags') : null,
  };
}

/** An object body (create, update). */
export const objectBody = (body: Doc): Doc => fromJson(OBJECT, body, 'metadata_object');

/** A resource type association body. */
export const associationBody = (body: Doc): Doc => fromJson(ASSOCIATION, body, 'resource_type');

/** A tag body (PUT …/tags/{name}). */
export const tagBody = (body: Doc): Doc => fromJson(TAG, body, 'metadata_tag');

/** The body of POST …/tags: {"tags": [{"name": …}]} (null: no `tags`). */
export function tagsBody(body: Doc): Doc[] | null {
  return Object.hasOwn(body, 'tags') ? list(TAG, body['tags'], 'tags') : null;
}

/**
 * Glance's no_4byte_params (a MySQL limit it applies everywhere): no character beyond the
 * BMP in the values (nor keys) of what is written; nested dicts are looked into, lists not.
 */
export function check4Byte(values: Doc): string | null {
  const astral = (s: unknown) => typeof s === 'string' && /[\u{10000}-\u{10FFFF}]/u.test(s);
  const walk = (d: Doc): string | null => {
    for (const [k, v] of Object.entries(d)) {
      if (isObj(v)) {
        const r = walk(v);
        if (r !== null) return r;
      } else {
        if (astral(k)) return "Property names can't contain 4 byte unicode.";
        if (astral(v)) return `${pyTitle(k)} can't contain 4 byte unicode characters.`;
      }
    }
    return null;
  };
  return walk(values);
}

/** Python's str.title() for ASCII keys. */
function pyTitle(s: string): string {
  return s.toLowerCase().replace(/(^|[^A-Za-z])([a-z])/g, (_, a: string, b: string) => a + b.toUpperCase());
}
