import { describe, expect, it } from 'vitest';
import { escapeHtml, rowsHtml } from './rows-html.js';
import type { Image } from './types.js';

const img = (over: Partial<Image>): Image =>
  ({
    id: 'id-1',
    name: 'debian',
    status: 'active',
    disk_format: 'qcow2',
    container_format: 'bare',
    visibility: 'shared',
    size: 1536,
    virtual_size: 64 << 20,
    protected: false,
    owner: 'p1',
    created_at: '2026-12-05T14:03:00Z',
    tags: [],
    ...over,
  }) as Image;

describe('list rows as HTML', () => {
  it('escapes text and attribute values', () => {
    expect(escapeHtml(`<img src=x onerror="alert(1)">&'`)).toBe(
      '&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&#39;',
    );
  });
  it('a hostile name stays text, everywhere it appears', () => {
    const h = rowsHtml([img({ name: '"><img src=x onerror=alert(1)>', id: 'a"b' })], {
      selected: new Set(),
      owner: () => '<b>o</b>',
    });
    expect(h).not.toContain('<img');
    expect(h).not.toContain('<b>');
    expect(h).toContain('aria-label="Select &quot;&gt;&lt;img src=x onerror=alert(1)&gt;"');
    expect(h).toContain('href="#/image/a%22b"');
    expect(h).toContain('data-id="a&quot;b"');
  });
  it('the cells of a row: name, marks, status, format, visibility, sizes, date, owner', () => {
    const h = rowsHtml([img({ backing_image_id: 'm', protected: true })], {
      selected: new Set(['id-1']),
      owner: () => 'course',
    });
    expect(h).toContain('<input type="checkbox" data-id="id-1" aria-label="Select debian" checked>');
    expect(h).toContain(
      '<a href="#/image/id-1" title="debian">debian</a><span class="chip chip-overlay">overlay</span><span class="chip">protected</span>',
    );
    expect(h).toContain('<span class="badge badge-ok">Active</span>');
    expect(h).toContain('<span class="vis vis-shared">Shared</span>');
    expect(h).toContain(
      '<div role="cell" class="num">1.5 KiB</div><div role="cell" class="num">64 MiB</div>',
    );
    expect(h).toMatch(/<div role="cell">2026-12-0[45] \d\d:03<\/div>/);
    expect(h).toContain('title="p1">course</div>');
    expect(rowsHtml([img({ name: null })])).toContain('>id-1</a>');
    expect(rowsHtml([])).toBe('');
  });
});
