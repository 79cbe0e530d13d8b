/**
 * vpc (VHD) probe, as QEMU's vpc_probe: the footer copy that starts a dynamic VHD. A fixed VHD
 * has its footer only at the end of the file, which a probe of the head cannot see, so it
 * probes as raw (as qemu-img does); `-f vpc` opens it.
 */
export function probeVpc(head: Uint8Array): number {
  if (head.length < 8) return 0;
  return Buffer.from(head.buffer, head.byteOffset, 8).toString('latin1') === 'conectix' ? 100 : 0;
}
