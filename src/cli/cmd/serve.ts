/**
 * `vdisk serve`: the image registry. Its options come from one table (src/server/settings.ts:
 * flag, environment variable, config-file key, default, help), loaded only when the command runs.
 */
import { setFlagsFromString } from 'node:v8';
import { VdiskError } from '../../core/errors.js';
import { resolveConfig, settingsHelp, settingsOptions } from '../../server/settings.js';
import { getopt } from '../getopt.js';
import type { CliCommand } from '../main.js';

const HELP_HEAD = [
  'Run the image registry: an OpenStack Image API v2 (Glance) service with an embedded',
  'Keystone v3 subset, so that `openstack image …` and `glance …` work against it.',
  'Each setting is a flag, an environment variable or a key of --config FILE (an INI file as',
  "glance-api.conf, with Glance's names where Glance has the setting); flags win, then the",
  'environment, then the file:',
];

const command: CliCommand = {
  syntax:
    'serve [--config FILE] [--host HOST] [--port PORT] [--data-dir DIR] [--database-url URL] [--store [NAME=]URL…] [options]',
  // This module loads only for `vdisk serve` (and its --help): the table costs nothing elsewhere.
  help: [...HELP_HEAD, ...settingsHelp()].join('\n'),
  async run(argv, io) {
    // The server's young generation stays at V8's initial 1 MiB (it doubles up to 16 MiB when
    // many objects survive, and stays grown): what bin/vdisk's `--max-semi-space-size=1` did
    // for every command until issue 16, now for this process only. V8 reads the growth factor
    // each time it would grow; set before the server allocates anything. The server also
    // shrinks it once idle (memoryPressure in server.ts). docs/decisions.md, "Start-up of the CLI".
    setFlagsFromString('--semi-space-growth-factor=1');
    const { opts, args } = getopt(argv, { short: '', long: settingsOptions() });
    // Repeatable flags (--store, --store-description) keep every value, in order.
    const flags = new Map<string, string | string[]>();
    for (const [k, v] of opts) {
      const prev = flags.get(k);
      flags.set(k, prev === undefined ? v : [...(typeof prev === 'string' ? [prev] : prev), v]);
    }
    if (args.length > 0) throw new VdiskError('INVALID_ARGUMENT', `Unexpected argument: ${args[0]}`);
    const cfg = await resolveConfig(flags, process.env, (line) => io.err(`vdisk serve: ${line}\n`));
    const { startServer } = await import('../../server/server.js');
    // json: one object per line, for log collectors; the node's messages and its requests.
    const json = cfg.logFormat === 'json';
    const say = (line: string, level = 'info') =>
      json
        ? io.err(`${JSON.stringify({ time: new Date().toISOString(), level, msg: line })}\n`)
        : io.err(`vdisk serve: ${line}\n`);
    const server = await startServer({
      host: cfg.host,
      port: cfg.port,
      dataDir: cfg.dataDir,
      ...(cfg.databaseUrl !== undefined ? { databaseUrl: cfg.databaseUrl } : {}),
      ...(cfg.store !== undefined ? { store: cfg.store } : {}),
      ...(cfg.stores !== undefined ? { stores: cfg.stores } : {}),
      ...(cfg.adminPassword !== undefined ? { adminPassword: cfg.adminPassword } : {}),
      settings: cfg.settings,
      log: (line) => say(line, /^(warning|error)\b/.exec(line)?.[1] ?? 'info'),
      ...(json
        ? { accessLog: (e) => io.err(`${JSON.stringify({ ...e, level: 'info', msg: 'request' })}\n`) }
        : {}),
    });
    if (server.generatedPassword !== null)
      say(`created user admin in project admin with password: ${server.generatedPassword}`);
    say(`listening on ${server.url} (identity: ${server.url}/v3, data: ${cfg.dataDir})`);
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off('SIGTERM', stop);
        process.off('SIGINT', stop);
        say('shutting down');
        server.close().then(resolve, resolve);
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    });
    return 0;
  },
};

export default command;
