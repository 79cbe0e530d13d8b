#!/usr/bin/env node
// Builds dist/server/db/pgdata.tar.gz: a new, migrated PGlite data directory that a first
// `vdisk serve` unpacks instead of running initdb (src/server/db/template.ts). Runs after tsc
// (it uses dist/). Usage: node scripts/pglite-template.mjs [--out FILE]
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const at = args.indexOf('--out');
const out = at >= 0 ? args[at + 1] : join(root, 'dist', 'server', 'db', 'pgdata.tar.gz');
const { makeTemplate } = await import(join(root, 'dist', 'server', 'db', 'template.js'));
const { PGLITE_PARAMS } = await import(join(root, 'dist', 'server', 'db', 'connect.js'));
const work = await mkdtemp(join(tmpdir(), 'vdisk-pgdata-'));
try {
  await makeTemplate(join(work, 'db'), out, PGLITE_PARAMS);
} finally {
  await rm(work, { recursive: true, force: true });
}
