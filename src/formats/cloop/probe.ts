/** cloop: the V2.0 shell preamble QEMU's cloop_probe looks for. */
export const CLOOP_MAGIC =
  '#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n';

export function probeCloop(head: Uint8Array): number {
  if (head.length < CLOOP_MAGIC.length) return 0;
  return Buffer.from(head.subarray(0, CLOOP_MAGIC.length)).toString('latin1') === CLOOP_MAGIC ? 2 : 0;
}
