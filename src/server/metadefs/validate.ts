/**
 * The part of Python's jsonschema (4.10, Draft 2020-12: what Glance's schemas get, having no
 * `$schema`) that Glance's metadef schemas use, with its error selection (best_match) and
 * its error text, so that a 400 reads as Glance's: `Provided object does not match schema
 * 'namespace': 5 is not of type 'string'\n\nFailed validating 'type' in
 * schema['properties']['namespace']:\n    {…}\n\nOn instance['namespace']:\n    5`.
 *
 * Keywords: type, enum, maxLength, minLength, minimum, maximum, required, properties,
 * additionalProperties (false or a schema), items, minItems, uniqueItems, allOf, $ref (local
 * JSON pointers). Annotations (description, default, readOnly, format, name…) are ignored, as
 * jsonschema does without a format checker.
 */
import { pformat, pyRepr } from './pyrepr.js';

export type Schema = Record<string, unknown>;

interface VError {
  message: string;
  keyword: string;
  /** Where in the instance (keys and indexes). */
  path: (string | number)[];
  /** Where in the schema, down to the keyword. */
  schemaPath: (string | number)[];
  /** The (sub)schema holding the keyword, and the instance it judged. */
  schema: Schema;
  instance: unknown;
}

const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function isType(v: unknown, t: string): boolean {
  switch (t) {
    case 'string':
      return typeof v === 'string';
    case 'integer':
      return typeof v === 'number' && Number.isInteger(v);
    case 'number':
      return typeof v === 'number';
    case 'boolean':
      return typeof v === 'boolean';
    case 'null':
      return v === null;
    case 'array':
      return Array.isArray(v);
    case 'object':
      return isObj(v);
    default:
      return false;
  }
}

/** Python equality of JSON values (True == 1 too, as jsonschema's enum/unique see them). */
function pyEqual(a: unknown, b: unknown): boolean {
  const num = (x: unknown) => (typeof x === 'boolean' ? Number(x) : x);
  const x = num(a);
  const y = num(b);
  if (typeof x === 'number' || typeof y === 'number') return x === y;
  if (Array.isArray(x) && Array.isArray(y))
    return x.length === y.length && x.every((e, i) => pyEqual(e, y[i]));
  if (isObj(x) && isObj(y)) {
    const kx = Object.keys(x);
    return kx.length === Object.keys(y).length && kx.every((k) => Object.hasOwn(y, k) && pyEqual(x[k], y[k]));
  }
  return x === y;
}

/** jsonschema's enum: 0/1 and False/True are told apart, other values compare as Python's ==. */
function inEnum(v: unknown, en: unknown[]): boolean {
  const boolish = (x: unknown) => typeof x === 'boolean' || x === 0 || x === 1;
  if (boolish(v)) return en.some((e) => boolish(e) && typeof e === typeof v && e === v);
  return en.some((e) => pyEqual(v, e));
}

const cpLen = (s: string): number => [...s].length;

export class Validator {
  constructor(private readonly root: Schema) {}

  private resolve(ref: string): Schema {
    if (!ref.startsWith('#')) throw new Error(`unsupported $ref ${ref}`);
    let node: unknown = this.root;
    for (const part of ref
      .slice(1)
      .split('/')
      .filter((p) => p !== '')) {
      const key = part.replaceAll('~1', '/').replaceAll('~0', '~');
      node = isObj(node) ? node[key] : undefined;
    }
    if (!isObj(node)) throw new Error(`unresolvable $ref ${ref}`);
    return node;
  }

  /** Every error, in jsonschema's order (schema keywords in their order). */
  *errors(instance: unknown, schema: Schema = this.root): Generator<VError> {
    for (const [kw, value] of Object.entries(schema)) {
      for (const e of this.keyword(kw, value, instance, schema)) {
        if (kw !== '$ref') e.schemaPath.unshift(kw);
        yield e;
      }
    }
  }

  private *descend(
    instance: unknown,
    schema: Schema,
    path?: string | number,
    schemaPath?: string | number,
  ): Generator<VError> {
    for (const e of this.errors(instance, schema)) {
      if (path !== undefined) e.path.unshift(path);
      if (schemaPath !== undefined) e.schemaPath.unshift(schemaPath);
      yield e;
    }
  }

  private *keyword(kw: string, value: unknown, instance: unknown, schema: Schema): Generator<VError> {
    const err = (message: string): VError => ({
      message,
      keyword: kw,
      path: [],
      schemaPath: [],
      schema,
      instance,
    });
    switch (kw) {
      case '$ref':
        yield* this.descend(instance, this.resolve(value as string));
        return;
      case 'allOf':
        for (const [i, sub] of (value as Schema[]).entries())
          yield* this.descend(instance, sub, undefined, i);
        return;
      case 'type': {
        const types = Array.isArray(value) ? (value as string[]) : [value as string];
        if (!types.some((t) => isType(instance, t)))
          yield err(`${pyRepr(instance)} is not of type ${types.map((t) => pyRepr(t)).join(', ')}`);
        return;
      }
      case 'enum':
        if (!inEnum(instance, value as unknown[]))
          yield err(`${pyRepr(instance)} is not one of ${pyRepr(value)}`);
        return;
      case 'maxLength':
        if (typeof instance === 'string' && cpLen(instance) > (value as number))
          yield err(`${pyRepr(instance)} is too long`);
        return;
      case 'minLength':
        if (typeof instance === 'string' && cpLen(instance) < (value as number))
          yield err(`${pyRepr(instance)} is too short`);
        return;
      case 'minimum':
        if (typeof instance === 'number' && instance < (value as number))
          yield err(`${pyRepr(instance)} is less than the minimum of ${pyRepr(value)}`);
        return;
      case 'maximum':
        if (typeof instance === 'number' && instance > (value as number))
          yield err(`${pyRepr(instance)} is greater than the maximum of ${pyRepr(value)}`);
        return;
      case 'minItems':
        if (Array.isArray(instance) && instance.length < (value as number))
          yield err(`${pyRepr(instance)} is too short`);
        return;
      case 'uniqueItems':
        if (value === true && Array.isArray(instance)) {
          // unbool(): True and 1 are different items here.
          const same = (a: unknown, b: unknown) =>
            (typeof a === 'boolean') === (typeof b === 'boolean') && pyEqual(a, b);
          const dup = instance.some((a, i) => instance.slice(i + 1).some((b) => same(a, b)));
          if (dup) yield err(`${pyRepr(instance)} has non-unique elements`);
        }
        return;
      case 'required':
        if (isObj(instance))
          for (const p of value as string[])
            if (!Object.hasOwn(instance, p)) yield err(`${pyRepr(p)} is a required property`);
        return;
      case 'properties':
        if (isObj(instance))
          for (const [p, sub] of Object.entries(value as Record<string, Schema>))
            if (Object.hasOwn(instance, p)) yield* this.descend(instance[p], sub, p, p);
        return;
      case 'additionalProperties': {
        if (!isObj(instance)) return;
        const props = isObj(schema['properties']) ? schema['properties'] : {};
        const extras = Object.keys(instance).filter((k) => !Object.hasOwn(props, k));
        if (isObj(value)) {
          for (const k of extras) yield* this.descend(instance[k], value, k);
        } else if (value === false && extras.length > 0) {
          const sorted = [...extras].sort();
          yield err(
            `Additional properties are not allowed (${sorted.map((k) => pyRepr(k)).join(', ')} ${sorted.length === 1 ? 'was' : 'were'} unexpected)`,
          );
        }
        return;
      }
      case 'items':
        if (Array.isArray(instance) && isObj(value))
          for (const [i, item] of instance.entries()) yield* this.descend(item, value, i);
        return;
      default:
        return;
    }
  }

  /** jsonschema.exceptions.best_match: the shallowest error, type mismatches first. */
  best(instance: unknown): VError | null {
    let best: VError | null = null;
    let bestKey: number[] = [];
    for (const e of this.errors(instance)) {
      const key = relevance(e);
      if (best === null || compareKeys(key, bestKey) > 0) {
        best = e;
        bestKey = key;
      }
    }
    return best;
  }
}

function relevance(e: VError): number[] {
  const t = e.schema['type'];
  let matches = false;
  if (typeof t === 'string') matches = isType(e.instance, t);
  else if (Array.isArray(t)) matches = t.some((x) => isType(e.instance, x as string));
  // (-len(path), keyword not in {anyOf, oneOf}, keyword in {}, not matches_type)
  return [-e.path.length, 1, 0, matches ? 0 : 1];
}

function compareKeys(a: number[], b: number[]): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
}

const index = (word: string, parts: (string | number)[]): string =>
  parts.length === 0 ? word : `${word}[${parts.map((p) => pyRepr(p)).join('][')}]`;

const indentLines = (s: string): string => s.split('\n').join(`\n${' '.repeat(4)}`);

/** str(ValidationError): the message, the failing schema and the instance. */
export function describe(e: VError): string {
  return [
    e.message,
    '',
    `Failed validating ${pyRepr(e.keyword)} in ${index('schema', e.schemaPath.slice(0, -1))}:`,
    `    ${indentLines(pformat(e.schema))}`,
    '',
    `On ${index('instance', e.path)}:`,
    `    ${indentLines(pformat(e.instance))}`,
  ].join('\n');
}

/** glance.schema.Schema.validate: null when valid, else the text of InvalidObject. */
export function check(name: string, schema: Schema, body: unknown): string | null {
  const e = new Validator(schema).best(body);
  return e === null ? null : `Provided object does not match schema '${name}': ${describe(e)}`;
}
