/**
 * `backing` and `backing.*` in --image-opts and json:{…} names, against qemu-img 7.2: the
 * backing opened with the options given (its format, its file, its own options, and its
 * backing's in turn), `backing` null or empty for no backing, and QEMU's words for what it
 * refuses. Every command but info, bitmap and rebase -u opens the backing so; those three open
 * the image alone and refuse the options as unknown ones.
 */
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;

beforeAll(() => {
  ({ dir, cleanup } = tempDir());
  qemuImgOk(['create', '-q', '-f', 'qcow2', 'base.qcow2', '1M'], dir);
  qemuIo(join(dir, 'base.qcow2'), ['write -P 0xaa 0 64k'], 'qcow2');
  // bo: an overlay on base.qcow2; bb: a qcow2 without a backing file; other.raw: a raw file.
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'bo.qcow2'], dir);
  qemuIo(join(dir, 'bo.qcow2'), ['write -P 0xcc 256k 128k'], 'qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', 'bb.qcow2', '1M'], dir);
  qemuImgOk(['create', '-q', '-f', 'raw', 'other.raw', '1M'], dir);
  qemuIo(join(dir, 'other.raw'), ['write -P 0xbb 0 64k'], 'raw');
  // Overlays whose backing is missing or has another format than the header says.
  qemuImgOk(
    ['create', '-q', '-f', 'qcow2', '-u', '-b', 'missing.qcow2', '-F', 'qcow2', 'mo.qcow2', '1M'],
    dir,
  );
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-u', '-b', 'other.raw', '-F', 'qcow2', 'wf.qcow2', '1M'], dir);
});
afterAll(() => cleanup());

/** Both tools on the same arguments in `dir`: exit code, standard output and error alike. */
async function same(args: string[], restore?: string): Promise<void> {
  const save = restore !== undefined ? join(dir, `${restore}.save`) : undefined;
  if (restore !== undefined && save !== undefined) copyFileSync(join(dir, restore), save);
  const q = qemuImg(args, dir);
  if (restore !== undefined && save !== undefined) copyFileSync(save, join(dir, restore));
  const v = await vdisk(args, dir);
  if (restore !== undefined && save !== undefined) copyFileSync(save, join(dir, restore));
  const what = args.join(' ');
  expect(v.stderr, what).toBe(q.stderr.replaceAll('qemu-img:', 'vdisk:'));
  expect(v.code, what).toBe(q.code);
  expect(v.stdout, what).toBe(q.stdout);
}

const OPTIONS = [
  'backing=null',
  'backing=',
  'backing=foo',
  'backing.foo=1',
  'backing.driver=qcow2',
  'backing.driver=raw',
  'backing.file.filename=other.raw',
  'backing.driver=raw,backing.file.filename=other.raw',
  'backing.driver=qcow2,backing.file.filename=base.qcow2',
  'backing.backing.foo=1',
  'backing.backing=',
  'backing.backing=null',
  'backing.file.foo=1',
  'backing.file.locking=off',
  'backing.file.driver=file',
  'backing.node-name=x',
  'backing.read-only=on',
  'backing=,backing.driver=raw',
];

describe('backing options on map, as qemu-img 7.2', () => {
  for (const image of ['bo', 'bb']) {
    it.each(OPTIONS)(`${image}: %s`, async (o) => {
      await same(['map', '--output=json', '--image-opts', `driver=qcow2,file.filename=${image}.qcow2,${o}`]);
    });
  }
});

describe('backing in json:{…} names', () => {
  it.each([
    ['bo', '"backing": null'],
    ['bo', '"backing": ""'],
    ['bo', '"backing": {"driver": "raw"}'],
    ['bb', '"backing": {"driver": "raw", "file": {"driver": "file", "filename": "other.raw"}}'],
    ['bb', '"backing": {"file": {"filename": "bo.qcow2"}, "backing": null}'],
    ['bb', '"backing": {"file": {"filename": "bo.qcow2"}}'],
  ])('%s: %s', async (image, backing) => {
    const name = `json:{"driver": "qcow2", "file": {"driver": "file", "filename": "${image}.qcow2"}, ${backing}}`;
    await same(['map', '--output=json', name]);
  });
});

describe('backing options on the other commands, as qemu-img 7.2', () => {
  const image = (o: string) => `driver=qcow2,file.filename=bo.qcow2,${o}`;
  const COMMANDS: Array<[string, (o: string) => string[]]> = [
    ['info', (o) => ['info', '--image-opts', image(o)]],
    ['check', (o) => ['check', '--image-opts', image(o)]],
    ['measure', (o) => ['measure', '-O', 'qcow2', '--image-opts', image(o)]],
    ['snapshot -l', (o) => ['snapshot', '-l', '--image-opts', image(o)]],
    ['compare', (o) => ['compare', '--image-opts', image(o), 'driver=qcow2,file.filename=bb.qcow2']],
    ['dd', (o) => ['dd', '--image-opts', `if=${image(o)}`, 'of=dd.raw', 'bs=64k']],
    ['convert', (o) => ['convert', '--image-opts', '-O', 'raw', image(o), 'cv.raw']],
    ['resize', (o) => ['resize', '--image-opts', image(o), '2M']],
    ['amend', (o) => ['amend', '-o', 'lazy_refcounts=on', '--image-opts', image(o)]],
    ['rebase -u', (o) => ['rebase', '-u', '-b', 'base.qcow2', '-F', 'qcow2', '--image-opts', image(o)]],
    ['commit', (o) => ['commit', '--image-opts', image(o)]],
    ['bitmap', (o) => ['bitmap', '--add', '--image-opts', image(o), 'b0']],
  ];
  for (const o of ['backing.foo=1', 'backing=', 'backing.driver=raw']) {
    it.each(COMMANDS)(`%s: ${o}`, async (_, args) => {
      await same(args(o), 'bo.qcow2');
    });
  }
});

describe('the backing file fails to open', () => {
  it.each([
    ['map', 'wf.qcow2'],
    ['map', 'mo.qcow2'],
    ['check', 'mo.qcow2'],
    ['snapshot', '-l', 'mo.qcow2'],
    ['resize', 'mo.qcow2', '2M'],
    ['bitmap', '--add', 'mo.qcow2', 'b0'],
    ['rebase', '-u', '-b', 'base.qcow2', '-F', 'qcow2', 'mo.qcow2'],
  ])('%s %s', async (...args) => {
    await same(args, args.at(-1)?.endsWith('.qcow2') ? args.at(-1) : args.at(-2));
  });
});
