import { type TreeNode, treeCommand } from '../../commands/tree.js';
import { VdiskError } from '../../core/errors.js';
import { sizeToStr } from '../format.js';
import { getopt } from '../getopt.js';
import type { CliCommand } from '../main.js';

const command: CliCommand = {
  syntax: 'tree [--output=ofmt] [--dependents FILE] [DIR|FILE...]',
  help: [
    'Show the masters and copy-on-write overlays found under DIR (default: the current directory)',
    'or among FILEs, as a forest: each overlay under the image it is based on, with its format,',
    'virtual size, the data it holds itself and its size on disk. Overlays whose backing file is',
    'missing, or was modified after the overlay was last written, are marked with "!".',
    '  --dependents FILE  list every image that needs FILE (what breaks if FILE changes or goes)',
    '  --output=ofmt      human (default) or json',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args } = getopt(argv, {
      short: 'h',
      long: { output: { value: true }, dependents: { value: true } },
    });
    let output = 'human';
    let dependentsOf: string | undefined;
    for (const [k, v] of opts) {
      if (k === 'output') output = v;
      else if (k === 'dependents') dependentsOf = v;
    }
    if (output !== 'human' && output !== 'json') {
      throw new VdiskError('INVALID_ARGUMENT', '--output must be used with human or json as argument.');
    }
    const paths = [...args];
    if (dependentsOf !== undefined && paths.length === 0) paths.push('.');
    const r = await treeCommand({ paths, dependentsOf });
    if (output === 'json') {
      io.out(
        `${JSON.stringify(dependentsOf !== undefined ? { images: r.roots, dependents: r.dependents } : r.roots, null, 2)}\n`,
      );
      return 0;
    }
    if (dependentsOf !== undefined) {
      const deps = r.dependents ?? [];
      if (deps.length === 0)
        io.out(`No image depends on ${dependentsOf}: changing or deleting it breaks nothing found here.\n`);
      else {
        io.out(
          `${deps.length} image${deps.length > 1 ? 's' : ''} depend${deps.length > 1 ? '' : 's'} on ${dependentsOf}; changing or deleting it breaks:\n`,
        );
        for (const d of deps) io.out(`  ${d}\n`);
      }
      return 0;
    }
    if (r.roots.length === 0) {
      io.out('No disk images found.\n');
      return 0;
    }
    const lines: string[] = [];
    const walk = (n: TreeNode, prefix: string, last: boolean, top: boolean) => {
      const branch = top ? '' : last ? '└── ' : '├── ';
      lines.push(`${prefix}${branch}${describe(n)}`);
      const childPrefix = top ? '' : prefix + (last ? '    ' : '│   ');
      for (const w of n.warnings) lines.push(`${childPrefix}${n.children.length > 0 ? '│ ' : '  '} ! ${w}`);
      for (const [i, c] of n.children.entries()) walk(c, childPrefix, i === n.children.length - 1, false);
    };
    for (const root of r.roots) walk(root, '', true, true);
    io.out(`${lines.join('\n')}\n`);
    return 0;
  },
};

function describe(n: TreeNode): string {
  const role = n.backingFile === undefined ? (n.children.length > 0 ? 'master' : 'standalone') : 'overlay';
  return `${n.path}  [${n.format}, ${role}] virtual ${sizeToStr(n.virtualSize)}, holds ${sizeToStr(n.allocatedSize)}, on disk ${sizeToStr(n.actualSize)}`;
}

export default command;
