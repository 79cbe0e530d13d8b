import { describe, expect, it } from 'vitest';
import { apiErrorText } from './errors.js';

describe('API error text', () => {
  it("reads webob's plain-text page (Glance)", () => {
    const body =
      '403 Forbidden\n\nYou are not authorized to perform the requested action: modify_image.\n\n   ';
    expect(apiErrorText(403, 'text/plain; charset=UTF-8', body)).toBe(
      'You are not authorized to perform the requested action: modify_image.',
    );
    expect(
      apiErrorText(
        409,
        'text/plain',
        '409 Conflict\n\nProject abc cannot see image M, a master of image O: share image M with it first.\n\n   ',
      ),
    ).toBe('Project abc cannot see image M, a master of image O: share image M with it first.');
  });
  it("reads Keystone's JSON error", () => {
    const body = JSON.stringify({
      error: {
        code: 401,
        message: 'The request you have made requires authentication.',
        title: 'Unauthorized',
      },
    });
    expect(apiErrorText(401, 'application/json', body)).toBe(
      'The request you have made requires authentication.',
    );
  });
  it('reads an HTML error page without its tags', () => {
    const body =
      '<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1><p>upstream went away</p></body></html>';
    expect(apiErrorText(502, 'text/html', body)).toBe('upstream went away');
  });
  it('falls back to the status', () => {
    expect(apiErrorText(500, null, '')).toBe('500 Internal Server Error');
    expect(apiErrorText(418, 'text/plain', '   ')).toBe('418 Error');
    expect(apiErrorText(400, 'text/plain', '400 Bad Request')).toBe('400 Bad Request');
    expect(apiErrorText(400, 'text/plain', 'just a line')).toBe('just a line');
  });
});
