/** Glance's JSON views of images, members and tasks (ResponseSerializer._format_*). */

import { type StoreSet, storesOf } from '../store/stores.js';
import { isotime } from '../util.js';
import type { ImageRow, MemberRow } from './policy.js';

/**
 * With several stores (`stores` not null), Glance's `stores` attribute: the stores that hold
 * the image's data, comma-separated (left out while there are none, as Glance). The ids are
 * sorted, which is also what tempest compares against.
 */
export function imageView(img: ImageRow, stores: StoreSet | null = null): Record<string, unknown> {
  const v: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(img.properties)) v[k] = val;
  v['name'] = img.name;
  v['disk_format'] = img.disk_format;
  v['container_format'] = img.container_format;
  v['visibility'] = img.visibility;
  v['size'] = img.size;
  v['virtual_size'] = img.virtual_size;
  v['status'] = img.status;
  v['checksum'] = img.checksum;
  v['protected'] = img.protected;
  v['min_ram'] = img.min_ram;
  v['min_disk'] = img.min_disk;
  v['owner'] = img.owner;
  v['os_hidden'] = img.os_hidden;
  v['os_hash_algo'] = img.os_hash_algo;
  v['os_hash_value'] = img.os_hash_value;
  v['id'] = img.id;
  v['created_at'] = isotime(img.created_at);
  v['updated_at'] = isotime(img.updated_at);
  v['tags'] = [...img.tags];
  v['self'] = `/v2/images/${img.id}`;
  v['file'] = `/v2/images/${img.id}/file`;
  v['schema'] = '/v2/schemas/image';
  if (stores !== null) {
    const ids = storesOf(stores, img).sort();
    if (ids.length > 0) v['stores'] = ids.join(',');
  }
  return v;
}

export function memberView(m: MemberRow): Record<string, unknown> {
  return {
    member_id: m.member,
    image_id: m.image_id,
    status: m.status,
    created_at: isotime(m.created_at),
    updated_at: isotime(m.updated_at),
    schema: '/v2/schemas/member',
  };
}
