import { describe, expect, it } from 'vitest';
import { filtersFrom, listQuery, parseSort, rowsOf } from './query.js';
import type { Image } from './types.js';

describe('image list queries', () => {
  it('each tab is one server-side query with limit and sort', () => {
    expect(listQuery('own', {}, 'p1').toString()).toBe('owner=p1&sort=created_at%3Adesc&limit=50');
    expect(listQuery('shared', {}, 'p1').toString()).toBe(
      'visibility=shared&member_status=all&sort=created_at%3Adesc&limit=50',
    );
    expect(listQuery('shared', { member_status: 'pending' }, 'p1').get('member_status')).toBe('pending');
    expect(listQuery('public', {}, 'p1').get('visibility')).toBe('public');
    expect(listQuery('community', {}, 'p1').get('visibility')).toBe('community');
    expect(listQuery('all', {}, 'p1').get('visibility')).toBe('all');
  });
  it('filters and sort', () => {
    const q = listQuery(
      'own',
      { name: ' debian ', status: 'active', disk_format: 'qcow2', tag: 'lab', sort: 'name:asc', limit: 1000 },
      'p',
    );
    expect(Object.fromEntries(q)).toEqual({
      owner: 'p',
      name: 'debian',
      status: 'active',
      disk_format: 'qcow2',
      tag: 'lab',
      sort: 'name:asc',
      limit: '1000',
    });
    expect(parseSort('virtual_size:asc')).toEqual({ key: 'created_at', dir: 'desc' });
    expect(parseSort('size:asc')).toEqual({ key: 'size', dir: 'asc' });
  });
  it('shared with me leaves out the own images', () => {
    const imgs = [
      { id: 'a', owner: 'p' },
      { id: 'b', owner: 'q' },
    ] as Image[];
    expect(rowsOf('shared', imgs, 'p').map((i) => i.id)).toEqual(['b']);
    expect(rowsOf('own', imgs, 'p')).toHaveLength(2);
  });
  it('reads filters from the hash', () => {
    expect(filtersFrom(new URLSearchParams('name=x&limit=1000&foo=1&status='))).toEqual({
      name: 'x',
      limit: 1000,
    });
    expect(filtersFrom(new URLSearchParams('limit=7'))).toEqual({});
  });
});
