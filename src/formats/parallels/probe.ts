/** Parallels: "WithoutFreeSpace" or "WithouFreSpacExt" and version 2 (QEMU's parallels_probe). */
export const MAGIC_OLD = 'WithoutFreeSpace';
export const MAGIC_EXT = 'WithouFreSpacExt';
export const HEADER_VERSION = 2;

export function probeParallels(head: Uint8Array): number {
  if (head.length < 64) return 0;
  const magic = Buffer.from(head.buffer, head.byteOffset, 16).toString('latin1');
  if (magic !== MAGIC_OLD && magic !== MAGIC_EXT) return 0;
  const version = new DataView(head.buffer, head.byteOffset, 64).getUint32(16, true);
  return version === HEADER_VERSION ? 100 : 0;
}
