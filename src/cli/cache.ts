/**
 * Cache modes (-t / -T), as bdrv_parse_cache_mode() accepts them. vdisk validates them with
 * qemu-img's wording; what they change: 'unsafe' (convert's default) never flushes, every
 * other mode flushes the target before it is closed. vdisk reads and writes through the page
 * cache in every mode (no O_DIRECT).
 */
export const CACHE_MODES = ['none', 'off', 'writeback', 'writethrough', 'directsync', 'unsafe'] as const;

export function checkCacheMode(mode: string): boolean {
  return (CACHE_MODES as readonly string[]).includes(mode);
}
