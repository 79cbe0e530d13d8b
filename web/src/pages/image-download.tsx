/**
 * Downloads through tickets: POST …/download-ticket (with the token) answers a URL valid for
 * 60 s that holds no token; the browser navigates to it and streams the file to disk under
 * the server's Content-Disposition name. Nothing goes through the page's memory.
 */
import { useState } from 'preact/hooks';
import { startDownload, type TicketRequest } from '../api.js';
import { Alert, ErrorText, Size } from '../components/ui.js';
import { useApp } from '../context.js';
import { errorMessage } from '../lib/errors.js';
import type { Image } from '../lib/types.js';

interface Choice {
  id: string;
  label: string;
  detail: string;
  req: TicketRequest | null;
  /** Formats that can name a master (flatten=false makes sense). */
  layered?: boolean;
}

const CHOICES: Choice[] = [
  {
    id: 'original',
    label: 'Original bytes',
    detail: 'exactly what was uploaded (checked against its checksum)',
    req: null,
  },
  {
    id: 'virtualbox',
    label: 'VirtualBox',
    detail: 'vmdk, monolithicSparse',
    req: { disk_format: 'vmdk', subformat: 'monolithicSparse' },
    layered: true,
  },
  {
    id: 'esxi',
    label: 'VMware ESXi',
    detail: 'vmdk, streamOptimized (compressed)',
    req: { disk_format: 'vmdk', subformat: 'streamOptimized' },
  },
  {
    id: 'azure',
    label: 'Azure',
    detail: 'vhd, fixed (size rounded up to a whole MiB)',
    req: { disk_format: 'vhd', subformat: 'fixed' },
  },
  {
    id: 'qcow2',
    label: 'qcow2',
    detail: 'QEMU/KVM, OpenStack',
    req: { disk_format: 'qcow2' },
    layered: true,
  },
  {
    id: 'qcow2c',
    label: 'qcow2, compressed',
    detail: 'smaller, slower to make',
    req: { disk_format: 'qcow2', compress: true },
    layered: true,
  },
  {
    id: 'raw',
    label: 'raw',
    detail: 'every byte of the virtual disk (sparse where the file system allows)',
    req: { disk_format: 'raw' },
  },
  { id: 'qed', label: 'qed', detail: 'QEMU enhanced disk', req: { disk_format: 'qed' }, layered: true },
  { id: 'vdi', label: 'vdi', detail: 'VirtualBox native', req: { disk_format: 'vdi' } },
  {
    id: 'vhd',
    label: 'vhd, dynamic',
    detail: 'Hyper-V (older), Virtual PC',
    req: { disk_format: 'vhd', subformat: 'dynamic' },
  },
  { id: 'vhdx', label: 'vhdx', detail: 'Hyper-V', req: { disk_format: 'vhdx' } },
];

export function DownloadTab({ img }: { img: Image }) {
  const { api } = useApp();
  const [choice, setChoice] = useState('original');
  const [flatten, setFlatten] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [started, setStarted] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const overlay = typeof img.backing_image_id === 'string';
  const c = CHOICES.find((x) => x.id === choice) ?? CHOICES[0]!;

  const go = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setStarted(null);
    try {
      const body: TicketRequest = c.req === null ? {} : { ...c.req, ...(overlay ? { flatten } : {}) };
      const url = await api.downloadTicket(img.id, body);
      startDownload(url);
      setStarted(
        c.req === null
          ? 'The download has started: your browser saves the original file.'
          : `The download has started: the registry converts the image to ${c.label} as your browser saves it.`,
      );
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  if (img.status !== 'active' && img.status !== 'deactivated')
    return (
      <div class="card">
        <h2>Download</h2>
        <p class="muted">The image has no data yet ({img.status}): there is nothing to download.</p>
      </div>
    );

  return (
    <div class="card">
      <h2>Download</h2>
      <form onSubmit={(e) => void go(e)} class="stack">
        <fieldset class="fieldset">
          <legend>What to download</legend>
          <div class="choices">
            {CHOICES.map((x) => (
              <div class="choice" key={x.id}>
                <input
                  type="radio"
                  name="dl-format"
                  id={`dl-${x.id}`}
                  value={x.id}
                  checked={choice === x.id}
                  onChange={() => setChoice(x.id)}
                />
                <label for={`dl-${x.id}`}>
                  <span class="choice-label">{x.label}</span>
                  <span class="choice-detail">
                    {x.req === null ? (
                      <>
                        {img.disk_format}, <Size bytes={img.size} />: {x.detail}
                      </>
                    ) : (
                      x.detail
                    )}
                  </span>
                </label>
              </div>
            ))}
          </div>
        </fieldset>
        {overlay && c.req !== null && (
          <div class="field field-check">
            <input
              id="dl-flatten"
              type="checkbox"
              checked={flatten}
              onChange={(e) => setFlatten(e.currentTarget.checked)}
            />
            <label for="dl-flatten">
              Flatten: one standalone image with its masters' data (unchecked: this overlay alone, naming its
              master by image id
              {c.layered === true ? '' : '; this format cannot name a master'})
            </label>
          </div>
        )}
        {overlay && c.req === null && (
          <p class="hint">
            This image is an overlay: its original bytes hold only what differs from its master. Choose a
            format to get a standalone disk.
          </p>
        )}
        <ErrorText error={error} />
        {started !== null && <Alert tone="success">{started}</Alert>}
        <div>
          <button type="submit" class="btn btn-primary" disabled={busy}>
            {busy ? 'Preparing…' : 'Download'}
          </button>
        </div>
        <p class="hint">
          The link the browser opens is valid for 60 seconds and holds no password or token; logging out
          revokes it.
        </p>
      </form>
    </div>
  );
}
