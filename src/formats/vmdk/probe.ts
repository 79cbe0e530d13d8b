/**
 * vmdk probe, as QEMU's vmdk_probe: a sparse extent's magic ("KDMV" hosted sparse, "COWD"
 * VMFS sparse) or a text descriptor whose first line that is not a comment or blank is
 * "version=1", "version=2" or "version=3".
 */
export function probeVmdk(head: Uint8Array): number {
  if (head.length < 4) return 0;
  const magic = String.fromCharCode(head[0]!, head[1]!, head[2]!, head[3]!);
  if (magic === 'KDMV' || magic === 'COWD') return 100;
  let p = 0;
  const end = head.length;
  const at = (s: string) => {
    if (end - p < s.length) return false;
    for (let i = 0; i < s.length; i++) if (head[p + i] !== s.charCodeAt(i)) return false;
    return true;
  };
  while (p < end) {
    if (head[p] === 0x23 /* # */) {
      while (p < end && head[p] !== 0x0a) p++;
      p++;
      continue;
    }
    if (head[p] === 0x20) {
      while (p < end && head[p] === 0x20) p++;
      if (p < end && head[p] === 0x0d) p++;
      if (p === end || head[p] !== 0x0a) return 0;
      p++;
      continue;
    }
    for (const v of ['1', '2', '3']) {
      if (at(`version=${v}\n`) || at(`version=${v}\r\n`)) return 100;
    }
    return 0;
  }
  return 0;
}
