import { describe, expect, it } from 'vitest';
import { formatFromName, guessMaster, nameFromPath } from './suggest.js';
import type { Image } from './types.js';

describe('create form suggestions', () => {
  it('a format from a URL', () => {
    expect(formatFromName('https://cloud.example/debian-12-generic.qcow2')).toBe('qcow2');
    expect(formatFromName('http://h/x/disk.VMDK?sig=1')).toBe('vmdk');
    expect(formatFromName('http://h/x/cd.iso')).toBe('iso');
    expect(formatFromName('http://h/x/readme')).toBeUndefined();
  });
  it('a name from a path or URL', () => {
    expect(nameFromPath('https://h/a/b/debian%2012.qcow2?x=1')).toBe('debian 12.qcow2');
    expect(nameFromPath('C:\\fakepath\\lab1.qcow2')).toBe('lab1.qcow2');
  });
  it('a master from the backing file name, own project first', () => {
    const imgs = [
      { id: '1', name: 'course.qcow2', status: 'active', owner: 'other' },
      { id: '2', name: 'course.qcow2', status: 'active', owner: 'me' },
      { id: '3', name: 'debian', status: 'active', owner: 'other' },
      { id: '4', name: 'queued.qcow2', status: 'queued', owner: 'me' },
    ] as Image[];
    expect(guessMaster('../masters/course.qcow2', imgs, 'me')?.id).toBe('2');
    expect(guessMaster('/var/lib/debian.qcow2', imgs, 'me')?.id).toBe('3');
    expect(guessMaster('queued.qcow2', imgs, 'me')).toBeUndefined();
    expect(guessMaster('', imgs, 'me')).toBeUndefined();
  });
});
