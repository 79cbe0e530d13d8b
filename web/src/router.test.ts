import { describe, expect, it } from 'vitest';
import { href, parseHash } from './router.js';

describe('hash routes', () => {
  it('parses the path and the query', () => {
    expect(parseHash('#/images/own?name=debian&sort=name%3Aasc')).toMatchObject({
      parts: ['images', 'own'],
      hash: 'images/own?name=debian&sort=name%3Aasc',
    });
    expect(parseHash('#/images/own?name=debian').query.get('name')).toBe('debian');
    expect(parseHash('#/image/a%2Fb/map').parts).toEqual(['image', 'a/b', 'map']);
    expect(parseHash('').parts).toEqual([]);
    expect(parseHash('#/bad/%E0%A4%A').parts).toEqual(['bad', '%E0%A4%A']);
  });
  it('builds hashes', () => {
    expect(href('images/own')).toBe('#/images/own');
    expect(href('/create', { from: 'url' })).toBe('#/create?from=url');
    expect(href('images/own', {})).toBe('#/images/own');
  });
});
