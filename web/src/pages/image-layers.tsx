/**
 * An image among its masters and overlays: the chain up (following backing_image_id), every
 * overlay below it (GET /v2/images?backing_image_id=…, level by level), and, from an overlay,
 * "flatten into a new master" (POST …/actions/flatten), optionally onto another master.
 */
import { useEffect, useState } from 'preact/hooks';
import { TaskProgress } from '../components/task-progress.js';
import { ErrorText, Field, Spinner } from '../components/ui.js';
import { useApp } from '../context.js';
import { errorMessage } from '../lib/errors.js';
import { buildForest, masterOf } from '../lib/tree.js';
import type { Image } from '../lib/types.js';
import { TreeView } from './tree.js';

const MAX_DEPTH = 16;
const MAX_NODES = 500;

export const FLATTEN_FORMATS = ['qcow2', 'qed', 'raw', 'vmdk', 'vdi', 'vhd', 'vhdx'];

export function LayersTab({ img }: { img: Image }) {
  const { api, session } = useApp();
  const [images, setImages] = useState<Image[] | null>(null);
  const [missing, setMissing] = useState<string[]>([]);
  const [truncated, setTruncated] = useState(false);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let live = true;
    (async () => {
      const found = new Map<string, Image>([[img.id, img]]);
      const notVisible: string[] = [];
      // Up: the masters, one GET each.
      let cur: Image = img;
      for (let i = 0; i < MAX_DEPTH; i++) {
        const m = masterOf(cur);
        if (m === undefined || found.has(m)) break;
        try {
          cur = await api.image(m);
          found.set(cur.id, cur);
        } catch {
          notVisible.push(m);
          break;
        }
      }
      // Down: the dependents, level by level.
      let level = [img.id];
      let cut = false;
      for (let d = 0; d < MAX_DEPTH && level.length > 0 && !cut; d++) {
        const next: string[] = [];
        for (const id of level) {
          const q = new URLSearchParams({ backing_image_id: id, limit: '200', sort: 'name:asc' });
          if (session.isAdmin) q.set('visibility', 'all');
          const r = await api.listImages(q);
          for (const c of r.images) {
            if (found.has(c.id)) continue;
            found.set(c.id, c);
            next.push(c.id);
          }
          if (r.next !== undefined || found.size > MAX_NODES) cut = true;
        }
        level = next;
      }
      if (!live) return;
      setImages([...found.values()]);
      setMissing(notVisible);
      setTruncated(cut);
    })().catch((e: unknown) => live && setError(errorMessage(e)));
    return () => {
      live = false;
    };
  }, [api, img, session.isAdmin]);

  const overlay = masterOf(img) !== undefined;
  return (
    <div class="stack">
      <div class="card">
        <h2>Masters and overlays</h2>
        <p class="muted">
          An overlay stores only the blocks that differ from its master and reads the rest from it; the
          registry keeps each layer once.
        </p>
        <ErrorText error={error} />
        {images === null ? (
          error === null && <Spinner label="Walking the chain…" />
        ) : (
          <>
            <TreeView roots={buildForest(images)} highlight={img.id} />
            {missing.length > 0 && (
              <p class="hint">The master {missing.join(', ')} is not visible to this project.</p>
            )}
            {truncated && <p class="hint">Only the first overlays are shown: there are more.</p>}
            {!overlay && images.length === 1 && (
              <p class="hint">
                No overlay names this image as its master yet. Upload an overlay (a qcow2 or qed whose backing
                file is this image) and choose this image as its master.
              </p>
            )}
          </>
        )}
      </div>
      {overlay && <FlattenForm img={img} />}
    </div>
  );
}

function FlattenForm({ img }: { img: Image }) {
  const { api, session } = useApp();
  const [name, setName] = useState(`${img.name ?? img.id}-flat`);
  const [format, setFormat] = useState('qcow2');
  const [visibility, setVisibility] = useState('private');
  const [onto, setOnto] = useState('');
  const [masters, setMasters] = useState<Image[] | null>(null);
  const [moreMasters, setMoreMasters] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [started, setStarted] = useState<Image | null>(null);

  useEffect(() => {
    api
      .listImages(new URLSearchParams({ status: 'active', sort: 'name:asc', limit: '500' }))
      .then((r) => {
        setMasters(r.images.filter((i) => i.id !== img.id));
        setMoreMasters(r.next !== undefined);
      })
      .catch(() => setMasters([]));
  }, [api, img.id]);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body = {
        name,
        disk_format: format,
        visibility,
        ...(onto !== '' ? { backing_image_id: onto } : {}),
      };
      setStarted(await api.flatten(img.id, body));
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="card">
      <h2>Flatten into a new master</h2>
      <p class="muted">
        The registry writes this overlay and its masters as one standalone image, owned by{' '}
        {session.project.name}. This image is not changed. Onto another master, the result instead holds only
        what differs from that master.
      </p>
      <form class="stack" onSubmit={(e) => void submit(e)}>
        <div class="row-2">
          <Field label="New image name" id="fl-name">
            <input id="fl-name" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
          </Field>
          <Field label="Disk format" id="fl-format">
            <select id="fl-format" value={format} onChange={(e) => setFormat(e.currentTarget.value)}>
              {FLATTEN_FORMATS.map((f) => (
                <option key={f} value={f} disabled={onto !== '' && f !== 'qcow2' && f !== 'qed'}>
                  {f}
                </option>
              ))}
            </select>
          </Field>
        </div>
        <div class="row-2">
          <Field label="Visibility" id="fl-visibility">
            <select
              id="fl-visibility"
              value={visibility}
              onChange={(e) => setVisibility(e.currentTarget.value)}
            >
              <option value="private">private</option>
              <option value="shared">shared</option>
              <option value="community">community</option>
              {session.isAdmin && <option value="public">public</option>}
            </select>
          </Field>
          <Field
            label="Onto another master (optional)"
            id="fl-onto"
            hint="Keep “standalone” for a new master."
          >
            <select
              id="fl-onto"
              aria-describedby="fl-onto-hint"
              value={onto}
              onChange={(e) => {
                setOnto(e.currentTarget.value);
                if (e.currentTarget.value !== '' && format !== 'qcow2' && format !== 'qed')
                  setFormat('qcow2');
              }}
            >
              <option value="">standalone (no master)</option>
              {(masters ?? []).map((m) => (
                <option key={m.id} value={m.id}>
                  {m.name ?? m.id} ({m.disk_format})
                </option>
              ))}
            </select>
          </Field>
        </div>
        {moreMasters && (
          <Field
            label="…or the other master's image id"
            id="fl-onto-id"
            hint="The list holds the first 500 active images by name."
          >
            <input
              id="fl-onto-id"
              aria-describedby="fl-onto-id-hint"
              value={masters?.some((m) => m.id === onto) === true ? '' : onto}
              onInput={(e) => {
                setOnto(e.currentTarget.value.trim());
                if (e.currentTarget.value.trim() !== '' && format !== 'qcow2' && format !== 'qed')
                  setFormat('qcow2');
              }}
            />
          </Field>
        )}
        <ErrorText error={error} />
        <div>
          <button type="submit" class="btn btn-primary" disabled={busy || started !== null}>
            {busy ? 'Starting…' : 'Flatten'}
          </button>
        </div>
      </form>
      {started !== null && <TaskProgress imageId={started.id} what="Flattening into" />}
    </div>
  );
}
