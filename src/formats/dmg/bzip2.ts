/**
 * bzip2 chunks through @foxglove/wasm-bz2: libbz2 compiled to WebAssembly (shipped in the npm
 * package, no native build), so chunks decode as QEMU's dmg-bz2 module decodes them, at close
 * to native speed. As that module requires, the first stream must decompress to exactly
 * `size` bytes: more is BZ_OUTBUFF_FULL, less is refused here. The decoder loads on the first
 * bzip2 chunk.
 */
import Bzip2 from '@foxglove/wasm-bz2';

let decoder: Promise<Bzip2> | null = null;

export async function bunzip2Exact(src: Uint8Array, size: number): Promise<Uint8Array> {
  decoder ??= Bzip2.init();
  const out = (await decoder).decompress(src, size);
  if (out.length !== size) throw new Error('bzip2 chunk decompresses short of its size');
  return out;
}
