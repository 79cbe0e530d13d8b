/**
 * Create an image: upload a file from this computer (the browser streams the File to
 * PUT /v2/images/{id}/file; progress and cancel), or import it from a URL (web-download,
 * then the task's progress). The disk format is suggested from the file's first bytes; an
 * overlay needs its master (backing_image_id).
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { type Upload, UploadCancelled } from '../api.js';
import { TaskProgress } from '../components/task-progress.js';
import { Alert, ErrorText, Field } from '../components/ui.js';
import { useApp } from '../context.js';
import { type Detection, probeBlob } from '../lib/detect.js';
import { errorMessage } from '../lib/errors.js';
import { CONTAINER_FORMATS, DISK_FORMATS } from '../lib/query.js';
import { formatBytes, formatDuration, formatPercent, formatRate } from '../lib/sizes.js';
import { formatFromName, guessMaster, nameFromPath } from '../lib/suggest.js';
import type { Image } from '../lib/types.js';
import { href, navigate } from '../router.js';
import { useTitle } from '../title.js';

const LAYERED = new Set(['qcow2', 'qed']);
/** os_distro values of the OpenStack image property catalogue (a suggestion list; any text goes). */
const OS_DISTROS = [
  'arch',
  'centos',
  'debian',
  'fedora',
  'freebsd',
  'opensuse',
  'rhel',
  'rocky',
  'ubuntu',
  'windows',
];

interface Progress {
  sent: number;
  total: number;
  started: number;
  now: number;
}

export function CreatePage({ query }: { query: URLSearchParams }) {
  const mode = query.get('from') === 'url' ? 'url' : 'file';
  useTitle('Create an image');
  return (
    <section aria-labelledby="create-title" class="narrow">
      <p class="crumbs">
        <a href={href('images/own')}>Images</a> <span aria-hidden="true">/</span> Create
      </p>
      <h1 id="create-title">Create an image</h1>
      <nav class="tabs" aria-label="Image source">
        <a class="tab" href={href('create')} aria-current={mode === 'file' ? 'page' : undefined}>
          Upload a file
        </a>
        <a
          class="tab"
          href={href('create', { from: 'url' })}
          aria-current={mode === 'url' ? 'page' : undefined}
        >
          Import from a URL
        </a>
      </nav>
      <CreateForm key={mode} mode={mode} />
    </section>
  );
}

function CreateForm({ mode }: { mode: 'file' | 'url' }) {
  const { api, session, flash } = useApp();
  const [file, setFile] = useState<File | null>(null);
  const [detected, setDetected] = useState<Detection | null>(null);
  const [url, setUrl] = useState('');
  const [name, setName] = useState('');
  const [diskFormat, setDiskFormat] = useState(mode === 'url' ? 'qcow2' : '');
  const [containerFormat, setContainerFormat] = useState('bare');
  const [visibility, setVisibility] = useState('private');
  const [minDisk, setMinDisk] = useState(0);
  const [minRam, setMinRam] = useState(0);
  const [protect, setProtect] = useState(false);
  const [master, setMaster] = useState('');
  const [osDistro, setOsDistro] = useState('');
  const [osVersion, setOsVersion] = useState('');
  const [description, setDescription] = useState('');
  const [masters, setMasters] = useState<Image[] | null>(null);
  /** More active images than the list holds: the master may also be given by id. */
  const [moreMasters, setMoreMasters] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [progress, setProgress] = useState<Progress | null>(null);
  const [importing, setImporting] = useState<Image | null>(null);
  const upload = useRef<{ up: Upload; id: string } | null>(null);
  const [busy, setBusy] = useState(false);

  const overlay = detected?.overlay;
  const wantsMaster = LAYERED.has(diskFormat);

  // Candidate masters: active images this project can see, by name.
  useEffect(() => {
    if (!wantsMaster || masters !== null) return;
    api
      .listImages(new URLSearchParams({ status: 'active', sort: 'name:asc', limit: '1000' }))
      .then((r) => {
        setMasters(r.images);
        setMoreMasters(r.next !== undefined);
      })
      .catch(() => setMasters([]));
  }, [api, wantsMaster, masters]);

  // Preselect the master whose name is the overlay's backing file.
  useEffect(() => {
    if (overlay === undefined || masters === null || master !== '') return;
    const g = guessMaster(overlay.backingFile, masters, session.project.id);
    if (g !== undefined) setMaster(g.id);
  }, [overlay, masters, master, session.project.id]);

  // Leaving the page stops an upload in progress (and removes the image it created).
  useEffect(() => {
    const warn = (e: BeforeUnloadEvent) => {
      if (upload.current !== null) e.preventDefault();
    };
    addEventListener('beforeunload', warn);
    return () => {
      removeEventListener('beforeunload', warn);
      const u = upload.current;
      if (u !== null) {
        u.up.abort();
        void api.deleteImage(u.id).catch(() => {});
      }
    };
  }, [api]);

  const pickFile = async (f: File | null) => {
    setFile(f);
    setDetected(null);
    setError(null);
    setMaster('');
    if (f === null) return;
    if (name === '' || name === nameFromPath(file?.name ?? '')) setName(f.name);
    try {
      const d = await probeBlob(f);
      setDetected(d);
      setDiskFormat(d.format);
    } catch (e) {
      setError(`Could not read the start of the file: ${errorMessage(e)}`);
    }
  };

  const body = (): Record<string, unknown> => {
    const b: Record<string, unknown> = {
      name: name.trim(),
      disk_format: diskFormat,
      container_format: containerFormat,
      visibility,
      min_disk: minDisk,
      min_ram: minRam,
      protected: protect,
    };
    if (wantsMaster && master !== '') b['backing_image_id'] = master;
    // Common properties (what Nova and the other dashboards read), only when given.
    if (osDistro.trim() !== '') b['os_distro'] = osDistro.trim();
    if (osVersion.trim() !== '') b['os_version'] = osVersion.trim();
    if (description.trim() !== '') b['description'] = description.trim();
    return b;
  };

  const submitFile = async () => {
    if (file === null) return;
    if (overlay !== undefined && master === '') {
      setError(
        'This file is an overlay: choose its master image first (the registry refuses an overlay without one).',
      );
      return;
    }
    const img = await api.createImage(body());
    const started = performance.now();
    setProgress({ sent: 0, total: file.size, started, now: started });
    const up = api.upload(img.id, file, (sent, total) =>
      setProgress({ sent, total, started, now: performance.now() }),
    );
    upload.current = { up, id: img.id };
    try {
      await up.done;
      upload.current = null;
      navigate(`image/${img.id}`);
      flash(`Uploaded ${file.name} (${formatBytes(file.size)}).`);
    } catch (e) {
      upload.current = null;
      setProgress(null);
      // Nothing half-made stays behind: the image record goes (as openstack image create does).
      await api.deleteImage(img.id).catch(() => {});
      if (e instanceof UploadCancelled)
        setNotice('The upload was cancelled; the image it had created was removed.');
      else throw e;
    }
  };

  const submitUrl = async () => {
    const img = await api.createImage(body());
    try {
      await api.webDownload(img.id, url.trim());
    } catch (e) {
      await api.deleteImage(img.id).catch(() => {});
      throw e;
    }
    setImporting(img);
  };

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setNotice(null);
    try {
      if (mode === 'file') await submitFile();
      else await submitUrl();
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  const locked = busy || progress !== null || importing !== null;
  const pct = progress === null || progress.total === 0 ? 0 : progress.sent / progress.total;
  const elapsed = progress === null ? 0 : (progress.now - progress.started) / 1000;
  const rate = elapsed > 0.2 && progress !== null ? progress.sent / elapsed : 0;

  return (
    <form class="card stack" onSubmit={(e) => void submit(e)} aria-describedby="create-help">
      <p id="create-help" class="muted">
        {mode === 'file'
          ? 'The file goes straight from your disk to the registry: it is never loaded into this page, so images of any size work.'
          : 'The registry downloads the image itself (web-download import); you can leave this page while it works.'}
      </p>
      {mode === 'file' ? (
        <Field label="Disk image file" id="c-file" hint="qcow2, qed, vmdk, vdi, vhd, vhdx, iso or raw.">
          <input
            id="c-file"
            type="file"
            required
            disabled={locked}
            aria-describedby="c-file-hint"
            onChange={(e) => void pickFile(e.currentTarget.files?.[0] ?? null)}
          />
        </Field>
      ) : (
        <Field
          label="Image URL"
          id="c-url"
          hint="http or https; the registry's import filters decide which hosts are allowed."
        >
          <input
            id="c-url"
            type="url"
            required
            disabled={locked}
            aria-describedby="c-url-hint"
            placeholder="https://cloud.example.org/debian-12.qcow2"
            value={url}
            onInput={(e) => {
              const v = e.currentTarget.value;
              setUrl(v);
              const f = formatFromName(v);
              if (f !== undefined) setDiskFormat(f);
              if (name === '' || name === nameFromPath(url)) setName(nameFromPath(v));
            }}
          />
        </Field>
      )}
      {detected !== null && file !== null && (
        <Alert tone={overlay !== undefined ? 'warn' : 'info'}>
          <p>
            Detected <strong>{detected.format}</strong> ({detected.reason})
            {detected.virtualSize !== undefined && <>, virtual size {formatBytes(detected.virtualSize)}</>}
            {'; '}file size {formatBytes(file.size)}.
          </p>
          {overlay !== undefined && (
            <p>
              This is an <strong>overlay</strong>: it names the backing file{' '}
              <code class="mono">{overlay.backingFile}</code>. The registry never opens a file by that name;
              it reads the overlay's missing blocks from a master image. Choose the image that holds that
              backing file below (it must be active, and its virtual size at most the overlay's).
            </p>
          )}
        </Alert>
      )}
      <div class="row-2">
        <Field label="Name" id="c-name">
          <input
            id="c-name"
            value={name}
            disabled={locked}
            onInput={(e) => setName(e.currentTarget.value)}
            required
          />
        </Field>
        <Field
          label="Disk format"
          id="c-format"
          hint={detected !== null ? `Suggested from the file: ${detected.format}` : undefined}
        >
          <select
            id="c-format"
            required
            disabled={locked}
            value={diskFormat}
            aria-describedby={detected !== null ? 'c-format-hint' : undefined}
            onChange={(e) => setDiskFormat(e.currentTarget.value)}
          >
            <option value="" disabled>
              choose…
            </option>
            {DISK_FORMATS.map((f) => (
              <option key={f} value={f}>
                {f}
              </option>
            ))}
          </select>
        </Field>
      </div>
      {wantsMaster && (
        <Field
          label={
            overlay !== undefined
              ? 'Master image (required for this overlay)'
              : 'Master image (only for an overlay)'
          }
          id="c-master"
          hint="Sets the property backing_image_id: the image this overlay reads its other blocks from."
        >
          <select
            id="c-master"
            disabled={locked}
            value={master}
            required={overlay !== undefined}
            aria-describedby="c-master-hint"
            onChange={(e) => setMaster(e.currentTarget.value)}
          >
            <option value="">
              {overlay !== undefined ? 'choose the master…' : 'none: a standalone image'}
            </option>
            {(masters ?? []).map((m) => (
              <option key={m.id} value={m.id}>
                {m.name ?? m.id} — {m.disk_format}, {formatBytes(m.virtual_size)} virtual
                {m.owner === session.project.id ? '' : ' (other project)'}
              </option>
            ))}
          </select>
        </Field>
      )}
      {wantsMaster && moreMasters && (
        <Field
          label="…or the master's image id"
          id="c-master-id"
          hint="The list holds the first 1000 active images by name; any image you can see can be the master."
        >
          <input
            id="c-master-id"
            disabled={locked}
            aria-describedby="c-master-id-hint"
            value={masters?.some((m) => m.id === master) === true ? '' : master}
            onInput={(e) => setMaster(e.currentTarget.value.trim())}
          />
        </Field>
      )}
      <div class="row-3">
        <Field label="Visibility" id="c-visibility">
          <select
            id="c-visibility"
            disabled={locked}
            value={visibility}
            onChange={(e) => setVisibility(e.currentTarget.value)}
          >
            <option value="private">private</option>
            <option value="shared">shared</option>
            <option value="community">community</option>
            {session.isAdmin && <option value="public">public</option>}
          </select>
        </Field>
        <Field label="Container format" id="c-container">
          <select
            id="c-container"
            disabled={locked}
            value={containerFormat}
            onChange={(e) => setContainerFormat(e.currentTarget.value)}
          >
            {CONTAINER_FORMATS.map((f) => (
              <option key={f} value={f}>
                {f}
              </option>
            ))}
          </select>
        </Field>
        <div class="field field-check field-check-bottom">
          <input
            id="c-protected"
            type="checkbox"
            disabled={locked}
            checked={protect}
            onChange={(e) => setProtect(e.currentTarget.checked)}
          />
          <label for="c-protected">Protected</label>
        </div>
      </div>
      <div class="row-3">
        <Field label="Min disk (GiB)" id="c-min-disk">
          <input
            id="c-min-disk"
            type="number"
            min="0"
            step="1"
            disabled={locked}
            value={String(minDisk)}
            onInput={(e) => setMinDisk(Number(e.currentTarget.value))}
          />
        </Field>
        <Field label="Min RAM (MiB)" id="c-min-ram">
          <input
            id="c-min-ram"
            type="number"
            min="0"
            step="1"
            disabled={locked}
            value={String(minRam)}
            onInput={(e) => setMinRam(Number(e.currentTarget.value))}
          />
        </Field>
      </div>
      <div class="row-3">
        <Field label="OS (os_distro)" id="c-os" hint="e.g. debian, ubuntu, windows">
          <input
            id="c-os"
            list="c-os-list"
            disabled={locked}
            aria-describedby="c-os-hint"
            value={osDistro}
            onInput={(e) => setOsDistro(e.currentTarget.value)}
          />
          <datalist id="c-os-list">
            {OS_DISTROS.map((o) => (
              <option key={o} value={o} />
            ))}
          </datalist>
        </Field>
        <Field label="OS version (os_version)" id="c-os-version">
          <input
            id="c-os-version"
            disabled={locked}
            value={osVersion}
            onInput={(e) => setOsVersion(e.currentTarget.value)}
          />
        </Field>
      </div>
      <Field label="Description" id="c-description">
        <textarea
          id="c-description"
          rows={2}
          maxLength={255}
          disabled={locked}
          value={description}
          onInput={(e) => setDescription(e.currentTarget.value)}
        />
      </Field>
      <ErrorText error={error} onDismiss={() => setError(null)} />
      {notice !== null && <Alert tone="info">{notice}</Alert>}
      {progress !== null && (
        <div class="upload-progress">
          <label for="c-progress">Uploading {file?.name}</label>
          <progress id="c-progress" max={String(progress.total)} value={String(progress.sent)} />
          <p class="progress-text" aria-live="off">
            {formatPercent(pct)} · {formatBytes(progress.sent)} of {formatBytes(progress.total)}
            {rate > 0 && (
              <>
                {' '}
                · {formatRate(rate)} · {formatDuration((progress.total - progress.sent) / rate)} left
              </>
            )}
            {progress.sent === progress.total && ' · the registry is checking and storing it…'}
          </p>
          <button type="button" class="btn" onClick={() => upload.current?.up.abort()}>
            Cancel upload
          </button>
        </div>
      )}
      {importing !== null && <TaskProgress imageId={importing.id} what="Importing" />}
      {progress === null && importing === null && (
        <div class="form-actions">
          <button type="submit" class="btn btn-primary" disabled={busy}>
            {busy ? 'Working…' : mode === 'file' ? 'Create and upload' : 'Create and import'}
          </button>
          <a class="btn btn-quiet" href={href('images/own')}>
            Cancel
          </a>
        </div>
      )}
    </form>
  );
}
