/** Bochs growing redolog: magic, type "Redolog", subtype "Growing", version 1 or 2 (QEMU's bochs_probe). */
const MAGIC = 'Bochs Virtual HD Image';

function cstr(head: Uint8Array, at: number, len: number): string {
  const s = head.subarray(at, at + len);
  const nul = s.indexOf(0);
  return Buffer.from(nul < 0 ? s : s.subarray(0, nul)).toString('latin1');
}

export function probeBochs(head: Uint8Array): number {
  if (head.length < 512) return 0;
  if (cstr(head, 0, 32) !== MAGIC || cstr(head, 32, 16) !== 'Redolog' || cstr(head, 48, 16) !== 'Growing')
    return 0;
  const version = new DataView(head.buffer, head.byteOffset).getUint32(64, true);
  return version === 0x00020000 || version === 0x00010000 ? 100 : 0;
}
