/**
 * What the `vdisk image` tests share (image.test.ts, image-layers.test.ts): the OS_*
 * environment of a user on a test server, and `vdisk image` run in-process as the CLI runs it
 * (errors as `vdisk: …` lines and exit statuses).
 */
import { ADMIN_PASSWORD, type CliResult } from '../../server/test/harness.js';
import { reportError } from '../errors.js';
import { bufferIo } from '../io.js';
import { runImage } from './image.js';

export interface User {
  user: string;
  password: string;
  project: string;
}

export const ADMIN_USER: User = { user: 'admin', password: ADMIN_PASSWORD, project: 'admin' };

export function imageEnv(url: string, as: User = ADMIN_USER): Record<string, string> {
  return {
    OS_AUTH_URL: `${url}/v3`,
    OS_USERNAME: as.user,
    OS_PASSWORD: as.password,
    OS_PROJECT_NAME: as.project,
    OS_USER_DOMAIN_NAME: 'Default',
    OS_PROJECT_DOMAIN_NAME: 'Default',
  };
}

export async function runVdiskImage(args: string[], env: Record<string, string>): Promise<CliResult> {
  const io = bufferIo();
  let code: number;
  try {
    code = await runImage(args, io, env);
  } catch (err) {
    code = reportError(io, err);
  }
  return { code, stdout: io.stdout, stderr: io.stderr };
}
