/**
 * The entry of dist/cli/vdisk.cjs, the CLI as one script that bin/vdisk compiles with V8's code
 * cache (scripts/build-cli.mjs; docs/decisions.md, "The CLI script and its code cache").
 * src/cli/bin.ts is the same entry for tsc's output, run when the script is absent.
 */
import { native } from '../native/index.js';
import { exitWhenIdle } from './exit.js';
import { bufferIo } from './io.js';
import { main } from './main.js';

/** Runs one command line as the process's command: its status is the process's exit status. */
export async function run(argv: string[]): Promise<number> {
  // V8 running out of memory ends the process as any other failure does: one line, status 1.
  native?.installOomHandler?.();
  // V8 as commands want it (docs/decisions.md, "V8's tier-up and young generation for
  // commands"), set here, after bin/vdisk compiled the script with its code cache, which V8
  // checks against the flags of that moment (the build's warm-up, `warm`, runs with V8's
  // defaults):
  // - TurboFan takes a function after 4× the default interrupt budget: most commands are over
  //   in under a second, and compiling what they hardly run afterwards cost them ~0.1 CPU-s
  //   on the two cores their I/O uses;
  // - the young generation keeps its initial size instead of growing to 2 × 16 MiB, which
  //   it kept to the end: a command's data is in buffers outside V8's heap, and what it
  //   allocates in the heap dies young.
  native?.setV8Flags?.(`--interrupt-budget=${4 * 66 * 1024} --semi-space-growth-factor=1`);
  const status = await main(argv);
  exitWhenIdle(status);
  return status;
}

/**
 * The build's warm-up (scripts/build-cli.mjs): runs each command line in this process with its
 * output kept apart, so that the functions they use are compiled when the code cache is made.
 * A command that fails is a broken build: its message is the error.
 */
export async function warm(commands: readonly string[][]): Promise<void> {
  for (const argv of commands) {
    const io = bufferIo();
    const status = await main(argv, io);
    if (status !== 0) throw new Error(`vdisk ${argv.join(' ')}: exit ${status}: ${io.stderr.trim()}`);
  }
}
