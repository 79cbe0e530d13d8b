/** luks: "LUKS\xba\xbe" and version 1 (qcrypto_block_luks_has_format); LUKS2 probes as raw, as in QEMU 7.2. */
export function probeLuks(head: Uint8Array): number {
  if (head.length < 8) return 0;
  const magic = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe].every((b, i) => head[i] === b);
  return magic && head[6] === 0 && head[7] === 1 ? 100 : 0;
}
