/** VDI signature 0xbeda107f (little endian) at offset 0x40, as QEMU's vdi_probe (needs a whole header). */
export const VDI_SIGNATURE = 0xbeda107f;
export const VDI_HEADER_SIZE = 512;

export function probeVdi(head: Uint8Array): number {
  if (head.length < VDI_HEADER_SIZE) return 0;
  const sig = (head[0x40]! | (head[0x41]! << 8) | (head[0x42]! << 16) | (head[0x43]! << 24)) >>> 0;
  return sig === VDI_SIGNATURE ? 100 : 0;
}
