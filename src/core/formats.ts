/**
 * The format registry. Drivers load lazily (start-up stays lean); probing reads the first
 * bytes once and asks every driver that has a probe, highest score wins, raw is the last
 * resort as in QEMU. An explicit format always wins over probing.
 */
import type { FormatDriver } from './driver.js';
import { VdiskError } from './errors.js';
import type { HostFile } from './host-file.js';

interface Entry {
  name: string;
  load: () => Promise<FormatDriver>;
  /** Probe that runs without loading the whole driver. */
  probe?: (head: Uint8Array, filename: string) => number;
}

const entries = new Map<string, Entry>();

export function registerFormat(entry: Entry): void {
  entries.set(entry.name, entry);
}

export function formatNames(): string[] {
  return [...entries.keys()].sort();
}

export async function getDriver(name: string): Promise<FormatDriver> {
  const e = entries.get(name);
  if (e === undefined) throw new VdiskError('UNKNOWN_FORMAT', `Unknown file format '${name}'`);
  return e.load();
}

export function hasFormat(name: string): boolean {
  return entries.has(name);
}

export const PROBE_BYTES = 2048;

/** Probe a file's format; 'raw' when nothing else matches. */
export async function probeFormat(file: HostFile): Promise<string> {
  const head = new Uint8Array(PROBE_BYTES);
  await file.read(head, 0).catch((err: unknown) => {
    // qemu's words (block.c: find_image_format), for a remote file (an NBD export) whose
    // error is the server's; a local file's error already names the file and offset.
    throw err instanceof VdiskError && file.remote
      ? new VdiskError(err.code, `Could not read image for determining its format: ${err.message}`, {
          path: file.path,
          cause: err,
        })
      : err;
  });
  const size = await file.size();
  const view = head.subarray(0, Math.min(PROBE_BYTES, size));
  return probeBytes(view, file.path);
}

export function probeBytes(head: Uint8Array, filename: string): string {
  let best = 'raw';
  let bestScore = 0;
  for (const e of entries.values()) {
    if (e.probe === undefined) continue;
    const score = e.probe(head, filename);
    if (score > bestScore) {
      best = e.name;
      bestScore = score;
    }
  }
  return best;
}
