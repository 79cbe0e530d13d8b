/**
 * The JSON patch (application/openstack-images-v2.1-json-patch) from an edit form: only what
 * changed, `replace` for the base attributes, `add`/`replace`/`remove` for custom properties.
 */
import { BASE_FIELDS, type Image, isReservedProperty } from './types.js';

export interface EditForm {
  name: string;
  min_disk: number;
  min_ram: number;
  protected: boolean;
  visibility: string;
  tags: string[];
  /** Custom properties, in the order shown. */
  properties: [string, string][];
}

export type Op = { op: 'add' | 'replace'; path: string; value: unknown } | { op: 'remove'; path: string };

/** JSON pointer escaping of a property name. */
const pointer = (k: string) => `/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`;

export function formOf(img: Image): EditForm {
  const properties: [string, string][] = [];
  for (const [k, v] of Object.entries(img)) {
    if (BASE_FIELDS.has(k) || k.startsWith('os_glance')) continue;
    properties.push([k, typeof v === 'string' ? v : JSON.stringify(v)]);
  }
  properties.sort(([a], [b]) => (a < b ? -1 : 1));
  return {
    name: img.name ?? '',
    min_disk: img.min_disk,
    min_ram: img.min_ram,
    protected: img.protected,
    visibility: img.visibility,
    tags: [...img.tags],
    properties,
  };
}

/** Problems with the form, in words (empty when it can be sent). */
export function validate(f: EditForm): string[] {
  const out: string[] = [];
  if (!Number.isInteger(f.min_disk) || f.min_disk < 0)
    out.push('Min disk must be a whole number of GiB, 0 or more.');
  if (!Number.isInteger(f.min_ram) || f.min_ram < 0)
    out.push('Min RAM must be a whole number of MiB, 0 or more.');
  if (f.name.length > 255) out.push('The name is longer than 255 characters.');
  const seen = new Set<string>();
  for (const [k] of f.properties) {
    const key = k.trim();
    if (key === '') out.push('A property has no name.');
    else if (isReservedProperty(key)) out.push(`"${key}" is not a custom property: it cannot be set here.`);
    else if (seen.has(key)) out.push(`The property "${key}" is there twice.`);
    seen.add(key);
  }
  for (const t of f.tags)
    if (t.length > 255) out.push(`The tag "${t.slice(0, 20)}…" is longer than 255 characters.`);
  return out;
}

export function diff(img: Image, f: EditForm): Op[] {
  const ops: Op[] = [];
  if ((img.name ?? '') !== f.name)
    ops.push({ op: 'replace', path: '/name', value: f.name === '' ? null : f.name });
  if (img.min_disk !== f.min_disk) ops.push({ op: 'replace', path: '/min_disk', value: f.min_disk });
  if (img.min_ram !== f.min_ram) ops.push({ op: 'replace', path: '/min_ram', value: f.min_ram });
  if (img.protected !== f.protected) ops.push({ op: 'replace', path: '/protected', value: f.protected });
  if (img.visibility !== f.visibility) ops.push({ op: 'replace', path: '/visibility', value: f.visibility });
  const tags = [...new Set(f.tags.map((t) => t.trim()).filter((t) => t !== ''))];
  const oldTags = [...img.tags];
  if (tags.length !== oldTags.length || tags.some((t) => !oldTags.includes(t)))
    ops.push({ op: 'replace', path: '/tags', value: tags });
  const before = new Map(formOf(img).properties);
  const after = new Map(f.properties.map(([k, v]) => [k.trim(), v] as const));
  for (const k of before.keys()) if (!after.has(k)) ops.push({ op: 'remove', path: pointer(k) });
  for (const [k, v] of after) {
    const old = before.get(k);
    if (old === undefined) ops.push({ op: 'add', path: pointer(k), value: v });
    else if (old !== v) ops.push({ op: 'replace', path: pointer(k), value: v });
  }
  return ops;
}
