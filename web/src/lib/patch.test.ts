import { describe, expect, it } from 'vitest';
import { diff, formOf, validate } from './patch.js';
import type { Image } from './types.js';

const img = {
  id: 'i',
  name: 'debian',
  status: 'active',
  disk_format: 'qcow2',
  container_format: 'bare',
  visibility: 'shared',
  size: 1,
  virtual_size: 2,
  checksum: null,
  os_hash_algo: null,
  os_hash_value: null,
  protected: false,
  min_ram: 0,
  min_disk: 0,
  owner: 'p',
  os_hidden: false,
  created_at: '',
  updated_at: '',
  tags: ['a', 'b'],
  os_distro: 'debian',
  'hw/disk': 'virtio',
  backing_image_id: 'm',
} as Image;

describe('edit form → json patch', () => {
  it('no change, no ops', () => {
    expect(diff(img, formOf(img))).toEqual([]);
  });
  it('only what changed', () => {
    const f = formOf(img);
    f.name = 'debian-12';
    f.min_disk = 10;
    f.protected = true;
    f.visibility = 'private';
    f.tags = ['b', 'c', 'c', ' '];
    f.properties = f.properties
      .filter(([k]) => k !== 'os_distro')
      .map(([k, v]) => [k, k === 'hw/disk' ? 'scsi' : v]);
    f.properties.push(['owner_note', 'for lab 3']);
    expect(diff(img, f)).toEqual([
      { op: 'replace', path: '/name', value: 'debian-12' },
      { op: 'replace', path: '/min_disk', value: 10 },
      { op: 'replace', path: '/protected', value: true },
      { op: 'replace', path: '/visibility', value: 'private' },
      { op: 'replace', path: '/tags', value: ['b', 'c'] },
      { op: 'remove', path: '/os_distro' },
      { op: 'replace', path: '/hw~1disk', value: 'scsi' },
      { op: 'add', path: '/owner_note', value: 'for lab 3' },
    ]);
  });
  it('validates', () => {
    const f = formOf(img);
    f.min_ram = -1;
    f.properties.push(['status', 'x'], ['', 'y'], ['os_distro', 'z']);
    expect(validate(f)).toEqual([
      'Min RAM must be a whole number of MiB, 0 or more.',
      '"status" is not a custom property: it cannot be set here.',
      'A property has no name.',
      'The property "os_distro" is there twice.',
    ]);
  });
});
