import { randomBytes, randomUUID } from 'node:crypto';

/** Keystone's ids: 32 hex digits. */
export const hexId = (): string => randomBytes(16).toString('hex');
export const uuid = (): string => randomUUID();

/** Glance's timeutils.isotime: seconds precision, `Z`. */
export function isotime(d: Date): string {
  const s = d.toISOString();
  // 'YYYY-MM-DDTHH:mm:ss.sssZ' for years 0–9999 (every list row formats two of these).
  return s.length === 24 ? `${s.slice(0, 19)}Z` : s.replace(/\.\d{3}Z$/, 'Z');
}

/** Keystone's token times: microseconds, `Z`. */
export function keystoneTime(d: Date): string {
  return d.toISOString().replace(/Z$/, '000Z');
}

export const UUID_RE =
  /^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$/;
