/**
 * The rows of the image list as HTML text, for pages of up to 1000 images: the browser's
 * parser builds 14,000 elements several times faster than a virtual DOM does one by one.
 * Every value from the API goes through escapeHtml (text and attribute values); the markup
 * around them is fixed. The same rows as the Preact ones (classes, roles, words, names).
 */
import { formatBytes, formatDate } from './sizes.js';
import type { Image } from './types.js';
import { statusTone, statusWord, visibilityWord } from './words.js';

const ENTITIES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
};

/** Text or attribute value → HTML: & < > " ' escaped (attributes are always double-quoted here). */
export const escapeHtml = (v: unknown): string => String(v).replace(/[&<>"']/g, (c) => ENTITIES[c]!);

export interface RowsOptions {
  /** A selection checkbox first (with the ids of the checked rows). */
  selected?: ReadonlySet<string> | undefined;
  /** An owner column, with the owner's name or short id. */
  owner?: ((id: string | null) => string) | undefined;
}

export function rowHtml(img: Image, opts: RowsOptions): string {
  const name = img.name !== null && img.name !== '' ? img.name : img.id;
  const n = escapeHtml(name);
  let h = '<div role="row" class="image-row">';
  if (opts.selected !== undefined)
    h += `<div role="cell" class="select-cell"><input type="checkbox" data-id="${escapeHtml(img.id)}" aria-label="Select ${n}"${
      opts.selected.has(img.id) ? ' checked' : ''
    }></div>`;
  h += `<div role="cell" class="name-cell"><a href="#/image/${escapeHtml(encodeURIComponent(img.id))}" title="${n}">${n}</a>`;
  if (typeof img.backing_image_id === 'string') h += '<span class="chip chip-overlay">overlay</span>';
  if (img.protected) h += '<span class="chip">protected</span>';
  h += '</div>';
  h += `<div role="cell"><span class="badge badge-${escapeHtml(statusTone(img.status))}">${escapeHtml(statusWord(img.status))}</span></div>`;
  h += `<div role="cell">${escapeHtml(img.disk_format ?? '—')}</div>`;
  h += `<div role="cell"><span class="vis vis-${escapeHtml(img.visibility)}">${escapeHtml(visibilityWord(img.visibility))}</span></div>`;
  h += `<div role="cell" class="num">${escapeHtml(formatBytes(img.size))}</div>`;
  h += `<div role="cell" class="num">${escapeHtml(formatBytes(img.virtual_size))}</div>`;
  h += `<div role="cell">${escapeHtml(formatDate(img.created_at))}</div>`;
  if (opts.owner !== undefined)
    h += `<div role="cell" class="owner-cell" title="${escapeHtml(img.owner ?? '')}">${escapeHtml(opts.owner(img.owner))}</div>`;
  return `${h}</div>`;
}

export function rowsHtml(images: readonly Image[], opts: RowsOptions = {}): string {
  let h = '';
  for (const img of images) h += rowHtml(img, opts);
  return h;
}
