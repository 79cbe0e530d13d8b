/** QED magic "QED\0" (little-endian 0x00444551), as QEMU's bdrv_qed_probe. */
export function probeQed(head: Uint8Array): number {
  if (head.length < 64) return 0;
  return head[0] === 0x51 && head[1] === 0x45 && head[2] === 0x44 && head[3] === 0 ? 100 : 0;
}
