/**
 * How the CLI's process ends once its command is done (issue 16).
 *
 * Node's own exit first joins V8's worker threads, which waits for a TurboFan compilation
 * still running (a convert's last hot function: 5-12 ms), then unmaps the heap page by page:
 * a qcow2 → raw convert of the Debian disk spent 11-14 ms between its last write and its exit,
 * qemu-img 1 ms. Where that teardown has nothing to do for the command, the process ends at
 * once with _exit (the native addon's exitNow) and the same status.
 */
import { native } from '../native/index.js';

/** What decides whether the teardown can be skipped. */
export interface ExitState {
  /** Node's own flags (process.execArgv). */
  execArgv: readonly string[];
  env: Readonly<Record<string, string | undefined>>;
  /** process.listenerCount('exit'). */
  exitListeners: number;
  /** process.getActiveResourcesInfo(), once the loop ran what was due. */
  resources: readonly string[];
}

/**
 * True when ending the process now loses nothing:
 * - nothing is left in the event loop: no handle or request (output still queued on a full
 *   pipe behind `-`, a server's socket, a child process, a timer…) and no 'exit' listener;
 * - no Node flag, NODE_OPTIONS or NODE_V8_COVERAGE: profiles (--cpu-prof, --heap-prof) and
 *   coverage are written during the teardown.
 * Text the CLI prints is already with the kernel (writeSync, src/cli/io.ts), as are the images'
 * writes (every command awaits its closes).
 */
export function mayExitNow(s: ExitState): boolean {
  return (
    s.execArgv.length === 0 &&
    !s.env['NODE_OPTIONS'] &&
    s.env['NODE_V8_COVERAGE'] === undefined &&
    s.exitListeners === 0 &&
    s.resources.length === 0
  );
}

/**
 * Ends the process with `status` once the event loop has run the callbacks that were due
 * (setImmediate), if mayExitNow; otherwise Node ends it as usual (bin/vdisk sets exitCode).
 */
export function exitWhenIdle(status: number): void {
  const exitNow = native?.exitNow;
  if (exitNow === undefined || !Number.isInteger(status) || status < 0 || status > 255) return;
  setImmediate(() => {
    const state: ExitState = {
      execArgv: process.execArgv,
      env: process.env,
      exitListeners: process.listenerCount('exit'),
      resources: process.getActiveResourcesInfo(),
    };
    if (mayExitNow(state)) exitNow(status);
  });
}
