#!/usr/bin/env node
// Bundles the CLI (src/cli/bin.ts) into dist/cli/vdisk.mjs, which bin/vdisk loads: Node then
// reads a handful of files at start-up instead of resolving and loading ~150 ES modules one by
// one (docs/decisions.md, "The CLI bundle"). Code splitting keeps what only some commands use
// (each command's module, `vdisk serve`'s server, the NBD server) in chunks loaded by the
// dynamic imports that already load them. The native addon and npm packages stay external
// (node_modules, loaded as before); files found relative to a module (the zstd worker, the
// database template, dist/web) are looked up from dist/cli/ as well (see their modules).
// Usage: node scripts/build-cli.mjs
import { readdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outdir = join(root, 'dist', 'cli');

// Only the bundle's own files (*.mjs): tsc's dist/cli/*.js stay.
for (const f of await readdir(outdir).catch(() => [])) {
  if (f.endsWith('.mjs') || f.endsWith('.mjs.map')) await rm(join(outdir, f));
}
await build({
  entryPoints: { vdisk: join(root, 'src', 'cli', 'bin.ts') },
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  outdir,
  outExtension: { '.js': '.mjs' },
  // Chunks beside the entry: modules that find files relative to import.meta.url see the
  // same directory from all of them.
  chunkNames: 'vdisk-[hash]',
  packages: 'external',
  sourcemap: true,
  legalComments: 'none',
  logLevel: 'warning',
});
