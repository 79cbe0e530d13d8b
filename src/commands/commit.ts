/** `commit`: write an overlay's data into its backing file (or a base further down). */
import { realpath } from 'node:fs/promises';
import { commitChain } from '../chain/commit.js';
import { type OpenContext, openContext, openImage } from '../chain/open.js';
import { VdiskError } from '../core/errors.js';
import type { Image } from '../core/image.js';

export interface CommitCommandOptions extends OpenContext {
  filename: string;
  format?: string | undefined;
  /** -b: the image of the chain to commit into; the immediate backing by default. */
  base?: string | undefined;
  /** -d: do not empty the top image. (-b implies it.) */
  drop?: boolean;
  /** Percent done (0..100). */
  onProgress?: (percent: number) => void;
  /** Warnings printed while opening the chain (chain/open.ts onWarning), whole lines. */
  onOpenWarning?: (message: string) => void;
}

async function real(p: string): Promise<string> {
  try {
    return await realpath(p);
  } catch {
    return p;
  }
}

/** The depth of `base` in top's chain, matched by path as given, stored name or real path. */
async function findBase(top: Image, base: string): Promise<number> {
  const want = await real(base);
  let depth = 1;
  for (
    let layer = top.backing, above: Image = top;
    layer !== null;
    above = layer, layer = layer.backing, depth++
  ) {
    if (layer.path === base || above.driver.backing?.filename === base || (await real(layer.path)) === want)
      return depth;
  }
  return -1;
}

export async function commitCommand(o: CommitCommandOptions): Promise<void> {
  // First a read-only look at the chain to find the base, then the real open with the top and
  // the base writable (QEMU reopens its base read-write the same way).
  // The probe prints the open warnings: qemu-img opens the chain once.
  const probe = await openImage(o.filename, {
    ...openContext(o),
    format: o.format,
    backing: 'follow',
    allowDataFile: true,
    onWarning: o.onOpenWarning,
  });
  let depth: number;
  try {
    if (probe.backing === null)
      throw new VdiskError('INVALID_ARGUMENT', 'Image does not have a backing file');
    depth = o.base === undefined ? 1 : await findBase(probe, o.base);
    if (depth < 0) {
      throw new VdiskError(
        'INVALID_ARGUMENT',
        `Did not find '${o.base}' in the backing chain of '${o.filename}'`,
      );
    }
  } finally {
    await probe.close();
  }
  const top = await openImage(o.filename, {
    ...openContext(o),
    format: o.format,
    backing: 'follow',
    allowDataFile: true,
    writable: true,
    writableBackingDepths: [depth],
  });
  try {
    let base: Image = top;
    for (let i = 0; i < depth; i++) base = base.backing!;
    // -b implies -d: the images between base and top become invalid, so the top keeps its data.
    const drop = o.drop === true || o.base !== undefined;
    await commitChain(top, base, { drop, ...(o.onProgress ? { onProgress: o.onProgress } : {}) });
  } finally {
    await top.close();
  }
}
