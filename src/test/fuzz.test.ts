/**
 * A short run of `npm run fuzz` in the test suite: a few mutants of every seed, so that the
 * fuzzer keeps working and the cases it once found stay fixed. Findings fail the test with the
 * fuzzer's own report (seed, case, mutation, command, problem); the full campaign is
 * `npm run fuzz` (docs/decisions.md, "Mutation fuzzing").
 */
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { TSX_LOADER } from './oracle.js';

it('mutants of every format give vdisk errors or results, never internal errors, crashes or hangs', async () => {
  // Asynchronously: a synchronous child would stall the test worker's heartbeat for a minute.
  const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(
      process.execPath,
      ['--import', TSX_LOADER, join(dirname(fileURLToPath(import.meta.url)), 'fuzz.ts')],
      {
        encoding: 'utf8',
        maxBuffer: 1 << 26,
        env: {
          ...process.env,
          FUZZ_ITER: '12',
          FUZZ_RNG: '7',
          // Generous: only a command that hangs, not a busy machine, should fail this.
          FUZZ_SLOW_MS: '20000',
        },
      },
      (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
  expect(r.stdout, r.stderr).toBe('');
  expect(r.code, r.stderr).toBe(0);
  expect(r.stderr).toMatch(/fuzz: bochs: 12 mutants, 0 findings/);
  // ~45 s of CPU alone (luks and qcow2-luks derive keys for every mutant: 7 s each); the
  // suite's other worker shares the two cores. Each command has its own limit (FUZZ_SLOW_MS).
}, 300_000);
