/** qcow (version 1): magic "QFI\xfb" and version 1, as QEMU's qcow_probe. */
export function probeQcow(head: Uint8Array): number {
  if (head.length < 8) return 0;
  const magic = head[0] === 0x51 && head[1] === 0x46 && head[2] === 0x49 && head[3] === 0xfb;
  return magic && head[4] === 0 && head[5] === 0 && head[6] === 0 && head[7] === 1 ? 100 : 0;
}
