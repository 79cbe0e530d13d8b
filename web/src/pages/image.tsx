/**
 * One image: every field and property, and tabs for sharing, download, masters and overlays,
 * and the allocation map. Changes go through PATCH (json-patch v2.1) and the actions; what
 * the API refuses is shown in its words.
 */
import type { ComponentChildren } from 'preact';
import { useCallback, useEffect, useState } from 'preact/hooks';
import {
  Alert,
  Confirm,
  ErrorText,
  Mono,
  Size,
  Spinner,
  StatusBadge,
  VisibilityBadge,
} from '../components/ui.js';
import { useApp } from '../context.js';
import { errorMessage } from '../lib/errors.js';
import { formatDate, formatExactBytes } from '../lib/sizes.js';
import { BASE_FIELDS, type Image } from '../lib/types.js';
import { href, navigate } from '../router.js';
import { useTitle } from '../title.js';
import { DownloadTab } from './image-download.js';
import { EditDialog } from './image-edit.js';
import { LayersTab } from './image-layers.js';
import { MapTab } from './image-map.js';
import { SharingTab } from './image-sharing.js';

const TABS = [
  { id: 'overview', label: 'Overview' },
  { id: 'sharing', label: 'Sharing' },
  { id: 'download', label: 'Download' },
  { id: 'layers', label: 'Masters & overlays' },
  { id: 'map', label: 'Allocation map' },
] as const;

const BUSY = new Set(['saving', 'uploading', 'importing']);

export const displayName = (img: Pick<Image, 'name' | 'id'>) =>
  img.name !== null && img.name !== '' ? img.name : img.id;

export function canChange(img: Image, session: { isAdmin: boolean; project: { id: string } }): boolean {
  return session.isAdmin || img.owner === session.project.id;
}

export function ImagePage({ id, tab }: { id: string; tab: string }) {
  const { api, session, flash, projectName } = useApp();
  const [img, setImg] = useState<Image | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [actionError, setActionError] = useState<string | null>(null);
  const [editing, setEditing] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [busy, setBusy] = useState(false);
  useTitle(img === null ? null : displayName(img), 'Image');

  const load = useCallback(
    () =>
      api
        .image(id)
        .then((i) => {
          setImg(i);
          setError(null);
        })
        .catch((e: unknown) => setError(errorMessage(e))),
    [api, id],
  );
  useEffect(() => {
    void load();
  }, [load]);
  // While the registry works on it (upload, import, flatten), follow its status.
  useEffect(() => {
    if (img === null || !BUSY.has(img.status)) return undefined;
    const t = setInterval(() => void load(), 1500);
    return () => clearInterval(t);
  }, [img, load]);

  if (img === null)
    return error !== null ? (
      <section>
        <p>
          <a href={href('images/own')}>← Images</a>
        </p>
        <h1>Image {id}</h1>
        <ErrorText error={error} />
      </section>
    ) : (
      <Spinner label="Loading the image…" />
    );

  const editable = canChange(img, session);
  const act = async (what: 'deactivate' | 'reactivate') => {
    setBusy(true);
    setActionError(null);
    try {
      await api.action(img.id, what);
      await load();
    } catch (e) {
      setActionError(errorMessage(e));
    } finally {
      setBusy(false);
    }
  };
  const remove = async () => {
    setBusy(true);
    setActionError(null);
    try {
      await api.deleteImage(img.id);
      setDeleting(false);
      navigate('images/own');
      flash(`Image ${displayName(img)} was deleted.`);
    } catch (e) {
      setActionError(errorMessage(e));
    } finally {
      setBusy(false);
    }
  };
  const current = TABS.some((t) => t.id === tab) ? tab : 'overview';

  return (
    <section aria-labelledby="image-title">
      <p class="crumbs">
        <a href={href('images/own')}>Images</a> <span aria-hidden="true">/</span> {displayName(img)}
      </p>
      <div class="page-head">
        <div>
          <h1 id="image-title" class="image-title">
            {displayName(img)}
          </h1>
          <div class="title-badges">
            <StatusBadge status={img.status} />
            <VisibilityBadge visibility={img.visibility} />
            {img.disk_format !== null && <span class="chip">{img.disk_format}</span>}
            {typeof img.backing_image_id === 'string' && <span class="chip chip-overlay">overlay</span>}
            {img.protected && <span class="chip">protected</span>}
          </div>
        </div>
        <div class="actions">
          <button type="button" class="btn" disabled={!editable} onClick={() => setEditing(true)}>
            Edit
          </button>
          {img.status === 'deactivated' ? (
            <button
              type="button"
              class="btn"
              disabled={!editable || busy}
              onClick={() => void act('reactivate')}
            >
              Reactivate
            </button>
          ) : (
            <button
              type="button"
              class="btn"
              disabled={!editable || busy || img.status !== 'active'}
              onClick={() => void act('deactivate')}
            >
              Deactivate
            </button>
          )}
          <button type="button" class="btn btn-danger" disabled={!editable} onClick={() => setDeleting(true)}>
            Delete
          </button>
        </div>
      </div>
      {!editable && (
        <Alert tone="info">
          Read-only: this image belongs to another project ({projectName(img.owner) ?? img.owner}). Only its
          owner project or an admin can change it; you can still download it and read its map.
        </Alert>
      )}
      <ErrorText error={actionError} onDismiss={() => setActionError(null)} />
      <nav class="tabs" aria-label="Image sections">
        {TABS.map((t) => (
          <a
            key={t.id}
            class="tab"
            href={href(`image/${img.id}/${t.id}`)}
            aria-current={t.id === current ? 'page' : undefined}
          >
            {t.label}
          </a>
        ))}
      </nav>
      {current === 'overview' && <Overview img={img} />}
      {current === 'sharing' && <SharingTab img={img} editable={editable} />}
      {current === 'download' && <DownloadTab img={img} />}
      {current === 'layers' && <LayersTab img={img} />}
      {current === 'map' && <MapTab img={img} />}
      {editing && (
        <EditDialog
          img={img}
          onClose={() => setEditing(false)}
          onSaved={(i) => {
            setImg(i);
            setEditing(false);
          }}
        />
      )}
      {deleting && (
        <Confirm
          title={`Delete ${displayName(img)}?`}
          confirm="Delete image"
          onConfirm={() => void remove()}
          onClose={() => {
            setDeleting(false);
            setActionError(null);
          }}
          busy={busy}
          error={actionError}
        >
          <p>
            The image and its data are removed from the registry; this cannot be undone.
            {img.protected && ' It is protected: unprotect it first (Edit), or the registry refuses.'}
          </p>
        </Confirm>
      )}
    </section>
  );
}

function Row({ label, children }: { label: string; children: ComponentChildren }) {
  return (
    <div class="dl-row">
      <dt>{label}</dt>
      <dd>{children}</dd>
    </div>
  );
}

function Overview({ img }: { img: Image }) {
  const { projectName, session } = useApp();
  const props = Object.entries(img)
    .filter(([k]) => !BASE_FIELDS.has(k))
    .sort(([a], [b]) => (a < b ? -1 : 1));
  const owner = projectName(img.owner);
  return (
    <div class="grid-2">
      <div class="card">
        <h2>Details</h2>
        <dl class="dl">
          <Row label="ID">
            <Mono>{img.id}</Mono>
          </Row>
          <Row label="Name">{img.name ?? '—'}</Row>
          <Row label="Status">
            <StatusBadge status={img.status} />
          </Row>
          <Row label="Visibility">
            <VisibilityBadge visibility={img.visibility} />
          </Row>
          <Row label="Protected">{img.protected ? 'yes' : 'no'}</Row>
          <Row label="Hidden">{img.os_hidden ? 'yes (left out of lists)' : 'no'}</Row>
          <Row label="Owner">
            {owner !== undefined ? `${owner} ` : ''}
            <Mono>{img.owner ?? '—'}</Mono>
            {img.owner === session.project.id && <span class="muted"> (this project)</span>}
          </Row>
          <Row label="Created">{formatDate(img.created_at)}</Row>
          <Row label="Updated">{formatDate(img.updated_at)}</Row>
        </dl>
      </div>
      <div class="card">
        <h2>Data</h2>
        <dl class="dl">
          <Row label="Disk format">{img.disk_format ?? '—'}</Row>
          <Row label="Container format">{img.container_format ?? '—'}</Row>
          <Row label="Size">
            <Size bytes={img.size} />{' '}
            {img.size !== null && <span class="muted">({formatExactBytes(img.size)})</span>}
          </Row>
          <Row label="Virtual size">
            <Size bytes={img.virtual_size} />{' '}
            {img.virtual_size !== null && <span class="muted">({formatExactBytes(img.virtual_size)})</span>}
          </Row>
          <Row label="Min disk">{img.min_disk} GiB</Row>
          <Row label="Min RAM">{img.min_ram} MiB</Row>
          <Row label="Checksum (md5)">
            <Mono>{img.checksum ?? '—'}</Mono>
          </Row>
          <Row label={`Hash (${img.os_hash_algo ?? 'none'})`}>
            <Mono>{img.os_hash_value ?? '—'}</Mono>
          </Row>
          {typeof img.backing_image_id === 'string' && (
            <Row label="Master">
              <a href={href(`image/${img.backing_image_id}`)}>{img.backing_image_id}</a>
            </Row>
          )}
        </dl>
      </div>
      <div class="card">
        <h2>Tags</h2>
        {img.tags.length === 0 ? (
          <p class="muted">No tags. Add some with Edit to find the image by tag.</p>
        ) : (
          <ul class="tag-list">
            {img.tags.map((t) => (
              <li key={t} class="chip">
                {t}
              </li>
            ))}
          </ul>
        )}
      </div>
      <div class="card">
        <h2>Properties</h2>
        {props.length === 0 ? (
          <p class="muted">No custom properties.</p>
        ) : (
          <table class="kv">
            <thead>
              <tr>
                <th scope="col">Property</th>
                <th scope="col">Value</th>
              </tr>
            </thead>
            <tbody>
              {props.map(([k, v]) => (
                <tr key={k}>
                  <th scope="row">
                    <Mono>{k}</Mono>
                  </th>
                  <td class="wrap">{typeof v === 'string' ? v : JSON.stringify(v)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </div>
    </div>
  );
}
