/**
 * The allocation map: GET /v2/images/{id}/map?buckets=N drawn as a grid of N cells (a canvas),
 * each cell filled from the bottom with the share of its bytes stored here, compressed, zero,
 * read from the masters; the rest is unallocated. A legend with totals, the same in words for
 * screen readers, and a slider to read any region's make-up with the keyboard.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { ErrorText, Mono, Size, Spinner } from '../components/ui.js';
import { useApp } from '../context.js';
import { errorMessage } from '../lib/errors.js';
import { describeBucket, mapParts, summarizeMap } from '../lib/map-summary.js';
import { formatBytes, formatPercent } from '../lib/sizes.js';
import type { AllocationMap, Image, MapKind } from '../lib/types.js';
import { href } from '../router.js';

export const KIND_COLOR: Record<MapKind | 'unallocated', string> = {
  data: '#2563eb',
  compressed: '#7c3aed',
  zero: '#94a3b8',
  master: '#f59e0b',
  unallocated: '#eef2f7',
};

const DETAIL = [256, 1024, 4096];

export function MapTab({ img }: { img: Image }) {
  const { api } = useApp();
  const [buckets, setBuckets] = useState(1024);
  const [map, setMap] = useState<AllocationMap | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [cursor, setCursor] = useState(0);

  useEffect(() => {
    if (img.status !== 'active' && img.status !== 'deactivated') return undefined;
    let live = true;
    setError(null);
    api
      .map(img.id, buckets)
      .then((m) => {
        if (!live) return;
        setMap(m);
        setCursor(0);
      })
      .catch((e: unknown) => live && setError(errorMessage(e)));
    return () => {
      live = false;
    };
  }, [api, img.id, img.status, buckets]);

  if (img.status !== 'active' && img.status !== 'deactivated')
    return (
      <div class="card">
        <h2>Allocation map</h2>
        <p class="muted">The image has no data yet ({img.status}).</p>
      </div>
    );

  return (
    <div class="card">
      <div class="card-head">
        <h2>Allocation map</h2>
        <div class="field-inline">
          <label for="map-detail">Detail</label>
          <select
            id="map-detail"
            value={String(buckets)}
            onChange={(e) => setBuckets(Number(e.currentTarget.value))}
          >
            {DETAIL.map((n) => (
              <option key={n} value={String(n)}>
                {n} parts
              </option>
            ))}
          </select>
        </div>
      </div>
      <ErrorText error={error} />
      {map === null ? (
        error === null && <Spinner label="Reading the block status…" />
      ) : (
        <MapPicture map={map} cursor={cursor} onCursor={setCursor} />
      )}
    </div>
  );
}

function MapPicture({
  map,
  cursor,
  onCursor,
}: {
  map: AllocationMap;
  cursor: number;
  onCursor: (i: number) => void;
}) {
  const wrap = useRef<HTMLDivElement>(null);
  const canvas = useRef<HTMLCanvasElement>(null);
  const [width, setWidth] = useState(800);
  const n = map.buckets.length;
  // 256 parts: 32 columns, 1024: 64, 4096: 128 (a picture about four times as wide as tall).
  const cols = Math.min(n, Math.max(32, Math.round(Math.sqrt(n * 4))));
  const rows = Math.ceil(n / cols);
  const gap = 2;
  const cell = Math.max(4, Math.floor((width - gap * (cols - 1)) / cols));
  const height = rows * cell + (rows - 1) * gap;
  const summary = summarizeMap(map);
  const parts = mapParts(map);

  useEffect(() => {
    const el = wrap.current;
    if (el === null) return undefined;
    const ro = new ResizeObserver(() => setWidth(Math.max(200, el.clientWidth)));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);

  useEffect(() => {
    const c = canvas.current;
    if (c === null) return;
    const dpr = window.devicePixelRatio || 1;
    const w = cols * cell + (cols - 1) * gap;
    c.width = Math.round(w * dpr);
    c.height = Math.round(height * dpr);
    c.style.width = `${w}px`;
    c.style.height = `${height}px`;
    const g = c.getContext('2d');
    if (g === null) return;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, height);
    // The theme's colours for the empty part and the cursor (light or dark).
    const css = getComputedStyle(c);
    const empty = css.getPropertyValue('--map-unallocated').trim() || KIND_COLOR.unallocated;
    const ink = css.getPropertyValue('--text').trim() || '#0f172a';
    map.buckets.forEach((b, i) => {
      const x = (i % cols) * (cell + gap);
      const y = Math.floor(i / cols) * (cell + gap);
      g.fillStyle = empty;
      g.fillRect(x, y, cell, cell);
      let bottom = y + cell;
      map.kinds.forEach((k, j) => {
        const f = b[j] ?? 0;
        if (f <= 0) return;
        const h = Math.max(1, Math.round(f * cell));
        g.fillStyle = KIND_COLOR[k];
        g.fillRect(x, bottom - h, cell, h);
        bottom -= h;
      });
      if (i === cursor) {
        g.strokeStyle = ink;
        g.lineWidth = 2;
        g.strokeRect(x + 1, y + 1, cell - 2, cell - 2);
      }
    });
  }, [map, cols, cell, height, cursor]);

  const at = (e: MouseEvent) => {
    const c = canvas.current;
    if (c === null) return;
    const r = c.getBoundingClientRect();
    const col = Math.floor((e.clientX - r.left) / (cell + gap));
    const row = Math.floor((e.clientY - r.top) / (cell + gap));
    const i = row * cols + col;
    if (col >= 0 && col < cols && i >= 0 && i < n) onCursor(i);
  };

  const start = cursor * map.bucket_size;
  const end = Math.min(map.virtual_size, start + map.bucket_size);
  return (
    <div class="map">
      <p class="map-summary" id="map-summary">
        {summary}
      </p>
      <div class="map-canvas" ref={wrap}>
        <canvas
          ref={canvas}
          role="img"
          aria-label={`Allocation map. ${summary}`}
          onMouseMove={at}
          onClick={at}
        />
      </div>
      <p class="hint">
        {n} parts of {formatBytes(map.bucket_size)} each, left to right and top to bottom from the start of
        the disk; each cell fills from the bottom.
      </p>
      <div class="map-inspect">
        <label for="map-cursor">Inspect a part</label>
        <input
          id="map-cursor"
          type="range"
          min="0"
          max={String(n - 1)}
          value={String(cursor)}
          aria-valuetext={`Part ${cursor + 1} of ${n}, ${formatBytes(start)} to ${formatBytes(end)}`}
          onInput={(e) => onCursor(Number(e.currentTarget.value))}
        />
        <output for="map-cursor" aria-live="polite">
          Part {cursor + 1} ({formatBytes(start)} – {formatBytes(end)}):{' '}
          {describeBucket(map.buckets[cursor] ?? [], map.kinds, map)}
        </output>
      </div>
      <ul class="legend" aria-label="Legend">
        {parts.map((p) => (
          <li key={p.kind}>
            <span class={`swatch swatch-${p.kind}`} aria-hidden="true" />
            <span class="legend-label">{p.label}</span>
            <span class="legend-value">
              {formatPercent(p.fraction)} · {formatBytes(p.bytes)}
            </span>
          </li>
        ))}
      </ul>
      <h3>Chain</h3>
      <table class="plain">
        <thead>
          <tr>
            <th scope="col">Layer</th>
            <th scope="col">Image</th>
            <th scope="col">Format</th>
            <th scope="col" class="num">
              Stored
            </th>
          </tr>
        </thead>
        <tbody>
          {map.chain.map((c, i) => (
            <tr key={c.id}>
              <td>{i === 0 ? 'this image' : i === 1 ? 'its master' : `master ${i}`}</td>
              <td>
                <a href={href(`image/${c.id}`)}>{c.name ?? c.id}</a> <Mono>{c.id.slice(0, 8)}</Mono>
              </td>
              <td>{c.disk_format}</td>
              <td class="num">
                <Size bytes={c.size} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <p class="hint">
        {map.extents.toLocaleString('en-US')} extents read; virtual size {formatBytes(map.virtual_size)}.
      </p>
    </div>
  );
}
