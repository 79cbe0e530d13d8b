/**
 * The schema checks against Glance's own: each body is validated here and by Glance 25's
 * code (glance.api.v2.metadef_*.get_schema().validate, Debian's python3-glance and
 * jsonschema), and the texts of the 400s must be equal, byte for byte.
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { pformat, pyRepr, quotePlus } from './pyrepr.js';
import {
  namespaceSchema,
  objectSchema,
  propertySchema,
  resourceTypeSchema,
  tagSchema,
  tagsBodySchema,
} from './schemas.js';
import { check, type Schema } from './validate.js';

const long = (n: number) => 'x'.repeat(n);
const prop = { type: 'string', title: 'T' };

const CASES: [string, unknown][] = [
  ['namespace', { namespace: 'ok' }],
  ['namespace', {}],
  ['namespace', { namespace: 5 }],
  ['namespace', { namespace: long(81) }],
  ['namespace', { namespace: 'a', x: 1 }],
  ['namespace', { namespace: 5, x: 1, y: 2 }],
  ['namespace', { namespace: 'a', visibility: 'shared' }],
  ['namespace', { namespace: 'a', protected: 'yes' }],
  ['namespace', { namespace: 'a', description: long(501) }],
  ['namespace', { namespace: 'a', display_name: `it's "quoted" ${long(90)}` }],
  ['namespace', { namespace: 'a', owner: null }],
  ['namespace', { namespace: 'a', resource_type_associations: {} }],
  ['namespace', { namespace: 'a', resource_type_associations: [{ name: 5 }] }],
  ['namespace', { namespace: 'a', resource_type_associations: [{ prefix: ['x'] }] }],
  ['namespace', { namespace: 'a', properties: { p: { type: 'string' } } }],
  ['namespace', { namespace: 'a', properties: { p: { type: 'str', title: 'T' } } }],
  ['namespace', { namespace: 'a', properties: { p: { ...prop, minLength: -1 } } }],
  ['namespace', { namespace: 'a', properties: { p: { ...prop, maxLength: 1.5 } } }],
  ['namespace', { namespace: 'a', properties: { p: { ...prop, required: ['a', 'a'] } } }],
  ['namespace', { namespace: 'a', properties: { p: { ...prop, items: { type: 'x' } } } }],
  ['namespace', { namespace: 'a', properties: { p: { ...prop, uniqueItems: 1 } } }],
  ['namespace', { namespace: 'a', properties: { p: { ...prop, minimum: true } } }],
  ['namespace', { namespace: 'a', properties: [] }],
  ['namespace', { namespace: 'a', objects: [{ name: 'o', required: 'x' }] }],
  ['namespace', { namespace: 'a', objects: [{ name: 'o', properties: { q: { title: 'Q' } } }] }],
  ['namespace', { namespace: 'a', tags: [{ name: 1 }, 'x'] }],
  ['namespace', { namespace: 'a', properties: { p: { ...prop, description: `a\nb ${long(100)}` } } }],
  ['namespace', { namespace: 'unicode ☃ é \u0001 \u2028' }],
  ['namespace', { namespace: long(40), description: 'é'.repeat(501) }],
  ['namespace', { namespace: 'a', properties: { p: { ...prop, minimum: 1.5e300, maximum: 1e-7 } }, x: 0.1 }],
  ['object', { name: 'o' }],
  ['object', {}],
  ['object', { name: long(81), properties: { p: prop } }],
  ['object', { name: 'o', required: [] }],
  ['object', { name: 'o', properties: { p: { title: 'x', type: 'string', enum: 'a' } } }],
  ['property', { name: 'p', ...prop }],
  ['property', { name: 'p' }],
  ['property', { name: 'p', ...prop, required: [] }],
  ['property', { name: 'p', ...prop, confidential: true }],
  ['property', { name: 'p', ...prop, minItems: -3, items: { enum: 5 } }],
  ['property_noname', { ...prop, operators: ['<or>', 1] }],
  ['resource_type', { name: 'r' }],
  ['resource_type', { prefix: long(81) }],
  ['resource_type', { name: 'r', created_at: 'x', z: 1 }],
  ['tag', { name: long(81) }],
  ['tag', { name: null }],
  ['tags', { tags: [{ name: 'a' }, { name: 'b', x: 1 }] }],
  ['tags', { tags: [{}] }],
  ['tags', { tags: 'a', other: [] }],
  ['tags', {}],
];

const SCHEMAS: Record<string, Schema> = {
  namespace: namespaceSchema(),
  object: objectSchema(),
  property: propertySchema(),
  property_noname: propertySchema(false),
  resource_type: resourceTypeSchema(),
  tag: tagSchema(),
  tags: tagsBodySchema(),
};

/** Glance's answers for every case: null when valid, else InvalidObject's text. */
function glanceAnswers(): (string | null)[] {
  const py = `
import json, sys
from glance.api.v2 import metadef_namespaces, metadef_objects, metadef_properties
from glance.api.v2 import metadef_resource_types, metadef_tags
from glance.common import exception
schemas = {
  'namespace': metadef_namespaces.get_schema(),
  'object': metadef_objects.get_schema(),
  'property': metadef_properties.get_schema(),
  'property_noname': metadef_properties.get_schema(require_name=False),
  'resource_type': metadef_resource_types.get_schema(),
  'tag': metadef_tags.get_schema(),
  'tags': metadef_tags.get_schema_for_list(),
}
out = []
for name, body in json.load(sys.stdin):
    try:
        schemas[name].validate(body)
        out.append(None)
    except exception.InvalidObject as e:
        out.append(e.msg)
json.dump(out, sys.stdout)
`;
  const text = execFileSync('/usr/bin/python3', ['-c', py], {
    input: JSON.stringify(CASES),
    encoding: 'utf8',
  });
  return JSON.parse(text) as (string | null)[];
}

describe('schema validation against Glance 25', () => {
  it('gives the same 400 texts as glance.schema.Schema.validate', () => {
    const glance = glanceAnswers();
    expect(glance.length).toBe(CASES.length);
    CASES.forEach(([name, body], i) => {
      expect({ i, text: check(SCHEMAS[name]!['name'] as string, SCHEMAS[name]!, body) }).toEqual({
        i,
        text: glance[i],
      });
    });
    // Not vacuous: most cases are refused.
    expect(glance.filter((g) => g !== null).length).toBeGreaterThan(40);
  });
});

describe('Python text forms', () => {
  it('repr, pformat and quote_plus as Python 3.11 prints them', () => {
    const values: unknown[] = [
      'plain',
      "it's",
      'both \' and "',
      'tab\tnl\ncr\r\\ \u0000 \u007f \u0085 \u00a0 é ☃ \u200b 😀',
      [1, -2.5, 1e16, 1e-5, 0.0001, 123456789.125, true, false, null],
      { b: 1, a: [{ z: 'y'.repeat(80) }, 'short'], c: { nested: 'words '.repeat(30) } },
      'long words '.repeat(20),
      'line one\nline two '.repeat(8),
      Array.from({ length: 30 }, (_, i) => `item${i}`),
    ];
    const py = `
import json, sys, pprint, urllib.parse
vals = json.load(sys.stdin)
json.dump([[repr(v), pprint.pformat(v, width=72)] for v in vals] + [urllib.parse.quote_plus("a b:c/d?e=f&g~h_i.j-k!*'()é")], sys.stdout)
`;
    const out = JSON.parse(
      execFileSync('/usr/bin/python3', ['-c', py], { input: JSON.stringify(values), encoding: 'utf8' }),
    ) as unknown[];
    values.forEach((v, i) => {
      expect([pyRepr(v), pformat(v)]).toEqual(out[i]);
    });
    expect(quotePlus("a b:c/d?e=f&g~h_i.j-k!*'()é")).toBe(out[values.length]);
  });
});
