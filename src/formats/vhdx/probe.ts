/** vhdx probe, as QEMU's vhdx_probe: the "vhdxfile" signature that starts the file. */
export function probeVhdx(head: Uint8Array): number {
  if (head.length < 8) return 0;
  return Buffer.from(head.buffer, head.byteOffset, 8).toString('latin1') === 'vhdxfile' ? 100 : 0;
}
