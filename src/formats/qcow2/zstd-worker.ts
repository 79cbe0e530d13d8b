/** A worker thread that compresses clusters with zstd (wasm), off the main thread. */
import { createRequire } from 'node:module';
import { parentPort } from 'node:worker_threads';

interface ZstdWasm {
  init(): Promise<void>;
  compress(buf: Uint8Array, level?: number): Uint8Array;
}

const require = createRequire(import.meta.url);
const z = require('@bokuweb/zstd-wasm') as ZstdWasm;
await z.init();
parentPort!.on('message', (m: { id: number; data: Uint8Array; level: number }) => {
  try {
    const out = z.compress(m.data, m.level);
    parentPort!.postMessage({ id: m.id, out }, [out.buffer as ArrayBuffer]);
  } catch (err) {
    parentPort!.postMessage({ id: m.id, error: (err as Error).message });
  }
});
parentPort!.postMessage({ ready: true });
