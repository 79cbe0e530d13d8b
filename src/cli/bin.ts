/** The process entry: run the CLI on argv and exit with its status. */
import { native } from '../native/index.js';
import { main } from './main.js';

// V8 running out of memory ends the process as any other failure does: one line, status 1.
native?.installOomHandler?.();

process.exitCode = await main(process.argv.slice(2));
