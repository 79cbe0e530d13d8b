/**
 * bzip2 chunks through seek-bzip (pure JavaScript, checks block and stream CRCs). As QEMU's
 * dmg-bz2 module requires, the first stream must decompress to exactly `size` bytes; output
 * past `size` stops the decoder at once (a hostile chunk cannot make it run long).
 */
import Bunzip from 'seek-bzip';

export function bunzip2Exact(src: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  let pos = 0;
  Bunzip.decode(src, {
    writeByte(byte: number) {
      if (pos >= size) throw new Error('bzip2 chunk decompresses past its size');
      out[pos++] = byte;
    },
  });
  if (pos !== size) throw new Error('bzip2 chunk decompresses short of its size');
  return out;
}
