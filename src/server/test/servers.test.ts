/**
 * The test servers clean up after a runner that dies without running its exit hooks: a real
 * PostgreSQL started by a process that is then killed with SIGKILL stops by itself.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { TSX_LOADER } from '../../test/oracle.js';

const SERVERS = fileURLToPath(new URL('./servers.ts', import.meta.url));

const listening = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

describe('test servers', () => {
  it('a PostgreSQL whose runner was SIGKILLed stops and its directory goes', async () => {
    const script = `
      const { startPostgres } = await import(${JSON.stringify(SERVERS)});
      const pg = await startPostgres();
      console.log(JSON.stringify({ port: pg.port, dir: pg.dir }));
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--import', TSX_LOADER, '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const nl = out.indexOf('\n');
        if (nl >= 0) resolve(out.slice(0, nl));
      });
      child.once('exit', (code) => reject(new Error(`runner exited (${code}) before PostgreSQL started`)));
    });
    const { port, dir } = JSON.parse(line) as { port: number; dir: string };
    expect(await listening(port)).toBe(true);
    expect(existsSync(dir)).toBe(true);
    child.kill('SIGKILL');
    const deadline = Date.now() + 20_000;
    while ((await listening(port)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
    expect(await listening(port)).toBe(false);
    // Then its directory is removed.
    while (existsSync(dir) && Date.now() < deadline + 10_000) await new Promise((r) => setTimeout(r, 250));
    expect(existsSync(dir)).toBe(false);
  }, 90_000);
});
