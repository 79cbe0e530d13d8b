/**
 * `bench`: qemu-img bench — `count` read (or write) requests of `bufferSize` bytes, `depth` of
 * them in flight, the first at `offset` and each next one `step` bytes further (wrapping at the
 * image's end), optionally a flush every `flushInterval` requests (draining the queue first
 * unless `drain` is false). The request loop follows qemu-img's bench_cb.
 */
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import { strerror, VdiskError } from '../core/errors.js';
import type { Image } from '../core/image.js';

export interface BenchOptions extends OpenContext {
  filename: string;
  format?: string | undefined;
  count: number;
  depth: number;
  offset: number;
  bufferSize: number;
  /** 0: the buffer size (qemu: `step ?: bufsize`). */
  step: number;
  write: boolean;
  /** The byte written (every buffer is filled with it). */
  pattern: number;
  flushInterval: number;
  drain: boolean;
  forceShare?: boolean;
  /** cache=unsafe: flushes do nothing. */
  noFlush?: boolean;
  /** Warnings printed while opening the images (chain/open.ts onWarning), whole lines. */
  onOpenWarning?: ((message: string) => void) | undefined;
}

/** What qemu-img bench prints before it starts. */
export interface BenchPlan {
  count: number;
  write: boolean;
  bufferSize: number;
  depth: number;
  offset: number;
  step: number;
  flushInterval: number;
}

export interface BenchResult {
  seconds: number;
}

/** A request failed: qemu-img says "Failed request: <strerror>" and exits 1. */
export class BenchRequestError extends VdiskError {}

export async function benchCommand(
  o: BenchOptions,
  onStart?: (plan: BenchPlan) => void,
): Promise<BenchResult> {
  if (o.write && o.forceShare === true) {
    throw new VdiskError(
      'INVALID_ARGUMENT',
      `Could not open '${o.filename}': force-share=on can only be used with read-only images`,
    );
  }
  const image = await openImage(o.filename, {
    ...openContext(o),
    format: o.format,
    writable: o.write,
    forceShare: o.forceShare === true,
    backing: 'follow',
    allowDataFile: true,
    onWarning: o.onOpenWarning,
    ...(o.noFlush === true ? { noFlush: true } : {}),
  });
  try {
    const plan: BenchPlan = {
      count: o.count,
      write: o.write,
      bufferSize: o.bufferSize,
      depth: o.depth,
      offset: o.offset,
      step: o.step !== 0 ? o.step : o.bufferSize,
      flushInterval: o.flushInterval,
    };
    onStart?.(plan);
    const buf = new Uint8Array(o.bufferSize).fill(o.pattern);
    const start = process.hrtime.bigint();
    await run(image, plan, buf, o.drain);
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    if (o.write) await image.flush();
    return { seconds };
  } finally {
    await image.close();
  }
}

/** qemu-img's bench_cb loop, with promises for AIO completions. */
function run(img: Image, plan: BenchPlan, buf: Uint8Array, drain: boolean): Promise<void> {
  const size = img.size;
  return new Promise<void>((resolve, reject) => {
    let n = plan.count;
    let inFlight = 0;
    let inFlush = false;
    let offset = plan.offset;
    let failed = false;
    let flushing: Promise<void> = Promise.resolve();
    const fail = (err: unknown) => {
      if (failed) return;
      failed = true;
      const why =
        err instanceof VdiskError && err.code === 'OUT_OF_RANGE' ? 'Input/output error' : strerror(err);
      reject(new BenchRequestError('EIO', `Failed request: ${why}`, { cause: err }));
    };
    const finish = () => {
      flushing.then(() => resolve(), fail);
    };
    const cb = (): void => {
      if (failed) return;
      if (inFlush) {
        // A flush with the queue drained finished: start the next requests.
        inFlush = false;
      } else if (inFlight > 0) {
        const remaining = n - inFlight;
        n--;
        inFlight--;
        if (plan.flushInterval !== 0 && remaining % plan.flushInterval === 0) {
          if (inFlight === 0 || !drain) {
            const f = img.flush();
            if (drain) {
              inFlush = true;
              f.then(cb, fail);
            } else {
              flushing = flushing.then(() => f);
              f.catch(fail);
            }
          }
          if (drain) {
            if (n === 0 && !inFlush) finish();
            return;
          }
        }
      }
      if (n === 0) {
        if (!inFlush) finish();
        return;
      }
      while (n > inFlight && inFlight < plan.depth) {
        const at = offset;
        inFlight++;
        offset += plan.step;
        if (size > 0) offset %= size;
        const req = plan.write ? img.writeAt(buf, at) : img.readAt(buf, at);
        req.then(cb, fail);
      }
    };
    cb();
  });
}
