import { useState } from 'preact/hooks';
import { Dialog, ErrorText, Field } from '../components/ui.js';
import { useApp } from '../context.js';
import { errorMessage } from '../lib/errors.js';
import { diff, type EditForm, formOf, validate } from '../lib/patch.js';
import type { Image } from '../lib/types.js';

export function EditDialog({
  img,
  onClose,
  onSaved,
}: {
  img: Image;
  onClose: () => void;
  onSaved: (i: Image) => void;
}) {
  const { api, session } = useApp();
  const [f, setF] = useState<EditForm>(() => formOf(img));
  const [tag, setTag] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const set = <K extends keyof EditForm>(k: K, v: EditForm[K]) => setF((x) => ({ ...x, [k]: v }));

  const addTag = () => {
    const t = tag.trim();
    if (t !== '' && !f.tags.includes(t)) set('tags', [...f.tags, t]);
    setTag('');
  };

  const save = async (e: Event) => {
    e.preventDefault();
    const problems = validate(f);
    if (problems.length > 0) {
      setError(problems.join(' '));
      return;
    }
    const ops = diff(img, f);
    if (ops.length === 0) {
      onClose();
      return;
    }
    setBusy(true);
    setError(null);
    try {
      onSaved(await api.patchImage(img.id, ops));
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <Dialog title={`Edit ${img.name ?? img.id}`} onClose={onClose} wide>
      <form onSubmit={(e) => void save(e)} class="dialog-body stack">
        <Field label="Name" id="e-name">
          <input id="e-name" value={f.name} onInput={(e) => set('name', e.currentTarget.value)} />
        </Field>
        <div class="row-2">
          <Field label="Min disk (GiB)" id="e-min-disk">
            <input
              id="e-min-disk"
              type="number"
              min="0"
              step="1"
              value={String(f.min_disk)}
              onInput={(e) => set('min_disk', Number(e.currentTarget.value))}
            />
          </Field>
          <Field label="Min RAM (MiB)" id="e-min-ram">
            <input
              id="e-min-ram"
              type="number"
              min="0"
              step="1"
              value={String(f.min_ram)}
              onInput={(e) => set('min_ram', Number(e.currentTarget.value))}
            />
          </Field>
        </div>
        <div class="row-2">
          <Field
            label="Visibility"
            id="e-visibility"
            hint="Only an admin makes an image public. Members exist only on shared images."
          >
            <select
              id="e-visibility"
              aria-describedby="e-visibility-hint"
              value={f.visibility}
              onChange={(e) => set('visibility', e.currentTarget.value)}
            >
              <option value="private">Private: this project only</option>
              <option value="shared">Shared: this project and its members</option>
              <option value="community">Community: anyone who asks for it</option>
              <option value="public" disabled={!session.isAdmin && img.visibility !== 'public'}>
                Public: everyone
              </option>
            </select>
          </Field>
          <div class="field field-check">
            <input
              id="e-protected"
              type="checkbox"
              checked={f.protected}
              onChange={(e) => set('protected', e.currentTarget.checked)}
            />
            <label for="e-protected">Protected (cannot be deleted)</label>
          </div>
        </div>
        <fieldset class="fieldset">
          <legend>Tags</legend>
          <ul class="tag-list">
            {f.tags.map((t) => (
              <li key={t} class="chip chip-removable">
                {t}
                <button
                  type="button"
                  class="chip-x"
                  aria-label={`Remove tag ${t}`}
                  onClick={() =>
                    set(
                      'tags',
                      f.tags.filter((x) => x !== t),
                    )
                  }
                >
                  ×
                </button>
              </li>
            ))}
            {f.tags.length === 0 && <li class="muted">No tags.</li>}
          </ul>
          <div class="inline-add">
            <label for="e-tag" class="sr-only">
              New tag
            </label>
            <input
              id="e-tag"
              placeholder="new tag"
              value={tag}
              onInput={(e) => setTag(e.currentTarget.value)}
              onKeyDown={(e) => {
                if (e.key === 'Enter') {
                  e.preventDefault();
                  addTag();
                }
              }}
            />
            <button type="button" class="btn btn-small" onClick={addTag}>
              Add tag
            </button>
          </div>
        </fieldset>
        <fieldset class="fieldset">
          <legend>Custom properties</legend>
          {f.properties.length === 0 && <p class="muted">No custom properties.</p>}
          {f.properties.map(([k, v], i) => {
            const locked = k === 'backing_image_id' && img.status !== 'queued';
            return (
              <div class="prop-row" key={i}>
                <label for={`e-pk-${i}`} class="sr-only">
                  Property {i + 1} name
                </label>
                <input
                  id={`e-pk-${i}`}
                  value={k}
                  placeholder="name"
                  readOnly={locked}
                  onInput={(e) => {
                    const next = [...f.properties];
                    next[i] = [e.currentTarget.value, v];
                    set('properties', next);
                  }}
                />
                <label for={`e-pv-${i}`} class="sr-only">
                  Property {k === '' ? i + 1 : k} value
                </label>
                <input
                  id={`e-pv-${i}`}
                  value={v}
                  placeholder="value"
                  readOnly={locked}
                  onInput={(e) => {
                    const next = [...f.properties];
                    next[i] = [k, e.currentTarget.value];
                    set('properties', next);
                  }}
                />
                <button
                  type="button"
                  class="btn btn-small btn-quiet"
                  aria-label={`Remove property ${k === '' ? i + 1 : k}`}
                  disabled={locked}
                  onClick={() =>
                    set(
                      'properties',
                      f.properties.filter((_, j) => j !== i),
                    )
                  }
                >
                  Remove
                </button>
              </div>
            );
          })}
          <button
            type="button"
            class="btn btn-small"
            onClick={() => set('properties', [...f.properties, ['', '']])}
          >
            Add property
          </button>
          {typeof img.backing_image_id === 'string' && img.status !== 'queued' && (
            <p class="hint">backing_image_id cannot change once the image has data.</p>
          )}
        </fieldset>
        <ErrorText error={error} />
        <div class="dialog-actions">
          <button type="button" class="btn" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="btn btn-primary" disabled={busy}>
            {busy ? 'Saving…' : 'Save changes'}
          </button>
        </div>
      </form>
    </Dialog>
  );
}
