/** The process entry: run the CLI on argv and exit with its status. */
import { main } from './main.js';

process.exitCode = await main(process.argv.slice(2));
