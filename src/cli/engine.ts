/**
 * The entry of dist/cli/vdisk.cjs, the CLI as one script that bin/vdisk compiles with V8's code
 * cache (scripts/build-cli.mjs; docs/decisions.md, "The CLI script and its code cache").
 * src/cli/bin.ts is the same entry for tsc's output, run when the script is absent.
 */
import { native } from '../native/index.js';
import { bufferIo } from './io.js';
import { main } from './main.js';

/** Runs one command line as the process's command: its status is the process's exit status. */
export async function run(argv: string[]): Promise<number> {
  // V8 running out of memory ends the process as any other failure does: one line, status 1.
  native?.installOomHandler?.();
  // TurboFan takes a function after 4× V8's default interrupt budget: most commands are over
  // in under a second, and compiling what they hardly run afterwards cost them ~0.1 CPU-s on
  // the two cores their I/O uses (docs/decisions.md, "V8's tier-up for commands"). Set here,
  // after bin/vdisk compiled the script with its code cache, which V8 checks against the
  // flags of that moment; the build's warm-up (warm) runs with V8's defaults.
  native?.setV8Flags?.(`--interrupt-budget=${4 * 66 * 1024}`);
  return main(argv);
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
