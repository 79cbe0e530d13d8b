/** dmg has no magic at the start: QEMU's dmg_probe scores a name ending in ".dmg" (2 of 100). */
/** (An empty file is raw to qemu, whatever its name.) */
export function probeDmg(head: Uint8Array, filename: string): number {
  return head.length > 0 && filename.length > 4 && filename.endsWith('.dmg') ? 2 : 0;
}
