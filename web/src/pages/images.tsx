/* biome-ignore-all lint/a11y/useSemanticElements: the list is an ARIA table on divs on purpose: table rows cannot take content-visibility, which lets a page of 1000 rows skip the layout of the rows off screen (see the table below). */
/* biome-ignore-all lint/a11y/useFocusableInteractive: role=row is not interactive in a role=table (only in a grid); the links and buttons inside take the focus. */
/**
 * The image lists: one tab per scope, filters, sortable columns, and keyset pagination
 * (`limit`, `marker`/`next`): one request per page, whatever the number of images.
 */
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from 'preact/hooks';
import {
  Confirm,
  Dialog,
  Empty,
  ErrorText,
  Spinner,
  StatusBadge,
  VisibilityBadge,
} from '../components/ui.js';
import { useApp } from '../context.js';
import { errorMessage } from '../lib/errors.js';
import {
  DEFAULT_PAGE_SIZE,
  DISK_FORMATS,
  filtersFrom,
  filtersToQuery,
  isTab,
  type ListFilters,
  listQuery,
  PAGE_SIZES,
  parseSort,
  rowsOf,
  SORTABLE,
  STATUSES,
  TABS,
  type Tab,
} from '../lib/query.js';
import { rowsHtml } from '../lib/rows-html.js';
import { formatBytes, formatDate } from '../lib/sizes.js';
import type { Image, MemberStatus } from '../lib/types.js';
import { href, navigate } from '../router.js';
import { useTitle } from '../title.js';

interface PageState {
  /** The query this page answers (rows of another tab or page are never shown). */
  for: string;
  images: Image[];
  next: string | undefined;
}

export function ImagesPage({ tab: tabParam, query }: { tab: string; query: URLSearchParams }) {
  const { session, api, projectName } = useApp();
  const tab: Tab = isTab(tabParam) && (tabParam !== 'all' || session.isAdmin) ? tabParam : 'own';
  useTitle(TABS.find((t) => t.id === tab)?.label, 'Images');
  const filters = filtersFrom(query);
  const first = listQuery(tab, filters, session.project.id).toString();
  // Pages: the query of each page shown so far (the first, then `next` links).
  const [pagesState, setPagesState] = useState({ first, list: [first] });
  const pages = pagesState.first === first ? pagesState.list : [first];
  const setPages = (f: (list: string[]) => string[]) =>
    setPagesState((s) => ({ first, list: f(s.first === first ? s.list : [first]) }));
  const [page, setPage] = useState<PageState | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [reload, setReload] = useState(0);
  // Selected rows (ids) for the batch delete, on the tabs where the project may delete.
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [batchDeleting, setBatchDeleting] = useState(false);
  const current = pages.at(-1) ?? first;

  // A layout effect: the request starts as soon as the page renders, not after a paint.
  useLayoutEffect(() => {
    let live = true;
    setLoading(true);
    setError(null);
    const req = current.startsWith('/v2/images') ? api.listNext(current) : api.listImages(current);
    req
      .then((r) => {
        if (!live) return;
        performance.mark('vdisk:images-response', { detail: r.images.length });
        setPage({ for: current, images: r.images, next: r.next });
        setLoading(false);
      })
      .catch((e: unknown) => {
        if (!live) return;
        setError(errorMessage(e));
        setLoading(false);
      });
    return () => {
      live = false;
    };
  }, [current, api, reload]);

  // User timing marks (devtools, tests): the rows of a response are in the DOM.
  useLayoutEffect(() => {
    if (!loading && page !== null) performance.mark('vdisk:images-rendered', { detail: page.images.length });
  }, [loading, page]);

  const setFilters = (f: ListFilters) => navigate(`images/${tab}`, filtersToQuery(f));
  const shown = page !== null && page.for === current ? page : null;
  const rows = shown === null ? [] : rowsOf(tab, shown.images, session.project.id);
  const sort = parseSort(filters.sort);
  const limit = filters.limit ?? DEFAULT_PAGE_SIZE;
  const selectable = tab === 'own' || tab === 'all';
  // Only the rows of the page shown count (a selection does not follow to other pages).
  const selectedRows = selectable ? rows.filter((i) => selected.has(i.id)) : [];
  const toggle = (id: string, on: boolean) =>
    setSelected((old) => {
      const next = new Set(old);
      if (on) next.add(id);
      else next.delete(id);
      return next;
    });
  const extra = tab === 'shared' ? 'Your answer' : tab === 'own' ? null : 'Owner';
  const ownerName = (id: string | null) => projectName(id) ?? shortId(id);
  const filtered = ['name', 'status', 'disk_format', 'tag'].some(
    (k) => (filters as Record<string, unknown>)[k] !== undefined,
  );

  return (
    <section aria-labelledby="images-title">
      <div class="page-head">
        <h1 id="images-title">Images</h1>
        <a class="btn btn-primary" href={href('create')}>
          + Create image
        </a>
      </div>
      <nav class="tabs" aria-label="Image lists">
        {TABS.filter((t) => !t.adminOnly || session.isAdmin).map((t) => (
          <a
            key={t.id}
            href={href(`images/${t.id}`, filtersToQuery({ ...filters, member_status: undefined }))}
            aria-current={t.id === tab ? 'page' : undefined}
            class="tab"
          >
            {t.label}
          </a>
        ))}
      </nav>
      <p class="tab-help">
        {TAB_HELP[tab](session.project.name)}
        {tab === 'shared' && (
          <>
            {' '}
            To be invited, give the image's owner this project's id:{' '}
            <code class="mono nobreak">{session.project.id}</code>
          </>
        )}
      </p>
      <Filters key={first} tab={tab} filters={filters} onChange={setFilters} />
      <ErrorText error={error} />
      {selectable && selectedRows.length > 0 && (
        <div class="batch-bar" role="status">
          <span>
            {selectedRows.length} image{selectedRows.length === 1 ? '' : 's'} selected
          </span>
          <button type="button" class="btn btn-small btn-danger" onClick={() => setBatchDeleting(true)}>
            Delete selected
          </button>
          <button type="button" class="btn btn-small btn-quiet" onClick={() => setSelected(new Set())}>
            Clear selection
          </button>
        </div>
      )}
      {batchDeleting && (
        <BatchDelete
          images={selectedRows}
          onClose={(changed) => {
            setBatchDeleting(false);
            if (changed) {
              setSelected(new Set());
              setReload((n) => n + 1);
            }
          }}
        />
      )}
      <div class="table-wrap" aria-busy={loading}>
        {/*
          An ARIA table of rows laid out with CSS grid: every row is in the DOM and in the
          accessibility tree, and rows off screen skip layout and paint (content-visibility),
          so a page of 1000 images renders as fast as a page of 25.
        */}
        <div
          class={`images${extra === null ? '' : ' images-extra'}${tab === 'shared' ? ' images-shared' : ''}${selectable ? ' images-select' : ''}`}
          role="table"
          aria-label={`${TABS.find((t) => t.id === tab)?.label} images, page ${pages.length}`}
          data-state={loading ? 'loading' : 'loaded'}
        >
          <div role="rowgroup" class="images-head">
            <div role="row" class="image-row">
              {selectable && (
                <div role="columnheader" class="select-cell">
                  <input
                    type="checkbox"
                    aria-label="Select every image of this page"
                    checked={rows.length > 0 && rows.every((i) => selected.has(i.id))}
                    onChange={(e) =>
                      setSelected(e.currentTarget.checked ? new Set(rows.map((i) => i.id)) : new Set())
                    }
                  />
                </div>
              )}
              <SortHeader id="name" label="Name" sort={sort} filters={filters} onChange={setFilters} />
              <SortHeader id="status" label="Status" sort={sort} filters={filters} onChange={setFilters} />
              <SortHeader
                id="disk_format"
                label="Format"
                sort={sort}
                filters={filters}
                onChange={setFilters}
              />
              <div role="columnheader">Visibility</div>
              <SortHeader id="size" label="Size" sort={sort} filters={filters} onChange={setFilters} num />
              <div role="columnheader" class="num">
                Virtual size
              </div>
              <SortHeader
                id="created_at"
                label="Created"
                sort={sort}
                filters={filters}
                onChange={setFilters}
              />
              {extra !== null && <div role="columnheader">{extra}</div>}
            </div>
          </div>
          {tab === 'shared' ? (
            // Shared with me: a component per row (each fetches and answers its invitation).
            <div role="rowgroup" class="images-body" key={current}>
              {rows.map((img) => (
                <Row key={img.id} img={img} />
              ))}
            </div>
          ) : (
            <HtmlRows
              key={current}
              rows={rows}
              selectable={selectable}
              selected={selected}
              onToggle={toggle}
              owner={tab === 'own' ? undefined : ownerName}
            />
          )}
        </div>
        {loading && shown === null && <Spinner label="Loading images…" />}
        {!loading && rows.length === 0 && error === null && (
          <EmptyTab
            tab={tab}
            filtered={filtered}
            onClear={() => setFilters({ sort: filters.sort, limit: filters.limit })}
          />
        )}
      </div>
      <div class="pager">
        <div class="field-inline">
          <label for="page-size">Rows per page</label>
          <select
            id="page-size"
            value={String(limit)}
            onChange={(e) => setFilters({ ...filters, limit: Number(e.currentTarget.value) })}
          >
            {PAGE_SIZES.map((n) => (
              <option key={n} value={String(n)}>
                {n}
              </option>
            ))}
          </select>
        </div>
        <span class="pager-info" aria-live="polite">
          {loading
            ? 'Loading…'
            : `Page ${pages.length} · ${rows.length} image${rows.length === 1 ? '' : 's'}`}
        </span>
        <div class="pager-buttons">
          <button
            type="button"
            class="btn btn-small"
            onClick={() => setReload((n) => n + 1)}
            disabled={loading}
          >
            Refresh
          </button>
          <button
            type="button"
            class="btn btn-small"
            disabled={pages.length <= 1 || loading}
            onClick={() => setPages((p) => p.slice(0, -1))}
          >
            ← Previous
          </button>
          <button
            type="button"
            class="btn btn-small"
            disabled={shown?.next === undefined || loading}
            onClick={() => {
              const n = shown?.next;
              if (n !== undefined) setPages((p) => [...p, n]);
            }}
          >
            Next →
          </button>
        </div>
      </div>
    </section>
  );
}

const TAB_HELP: Record<Tab, (project: string) => string> = {
  own: (p) => `Images owned by project ${p}, of every visibility.`,
  shared: () =>
    'Images other projects shared with this one: accept an invitation to see the image in lists and in Nova.',
  public: () => 'Images every project can see and boot.',
  community: () => 'Images their owners offered to everyone; they are not in default lists.',
  all: () => "Every project's images (you are an admin).",
};

function EmptyTab({ tab, filtered, onClear }: { tab: Tab; filtered: boolean; onClear: () => void }) {
  if (filtered)
    return (
      <Empty title="No image matches these filters.">
        <button type="button" class="btn btn-small" onClick={onClear}>
          Clear the filters
        </button>
      </Empty>
    );
  if (tab === 'own')
    return (
      <Empty title="This project has no images yet.">
        <p>
          <a href={href('create')}>Upload a disk image</a> from your computer or import one from a URL.
        </p>
      </Empty>
    );
  if (tab === 'shared')
    return (
      <Empty title="No project has shared an image with this one.">
        <p>When the owner of an image adds this project as a member, the invitation appears here.</p>
      </Empty>
    );
  if (tab === 'public') return <Empty title="There are no public images.">{null}</Empty>;
  if (tab === 'community') return <Empty title="There are no community images." />;
  return <Empty title="The registry holds no images." />;
}

function SortHeader({
  id,
  label,
  sort,
  filters,
  onChange,
  num = false,
}: {
  id: string;
  label: string;
  sort: { key: string; dir: 'asc' | 'desc' };
  filters: ListFilters;
  onChange: (f: ListFilters) => void;
  num?: boolean;
}) {
  const key = SORTABLE[id] ?? id;
  const active = sort.key === key;
  const nextDir = active && sort.dir === 'asc' ? 'desc' : active ? 'asc' : id === 'name' ? 'asc' : 'desc';
  return (
    <div
      role="columnheader"
      class={num ? 'num' : undefined}
      aria-sort={active ? (sort.dir === 'asc' ? 'ascending' : 'descending') : 'none'}
    >
      <button
        type="button"
        class="sort"
        onClick={() => onChange({ ...filters, sort: `${key}:${nextDir}` })}
        aria-label={`${label}: sort ${nextDir === 'asc' ? 'ascending' : 'descending'}`}
      >
        {label}
        <span class="sort-arrow" aria-hidden="true">
          {active ? (sort.dir === 'asc' ? '▲' : '▼') : '↕'}
        </span>
      </button>
    </div>
  );
}

function Filters({
  tab,
  filters,
  onChange,
}: {
  tab: Tab;
  filters: ListFilters;
  onChange: (f: ListFilters) => void;
}) {
  const [name, setName] = useState(filters.name ?? '');
  const [tag, setTag] = useState(filters.tag ?? '');
  return (
    <form
      class="filters"
      aria-label="Filter images"
      onSubmit={(e) => {
        e.preventDefault();
        onChange({ ...filters, name, tag });
      }}
    >
      <div class="field-inline">
        <label for="f-name">Name</label>
        <input
          id="f-name"
          type="search"
          value={name}
          placeholder="exact name"
          onInput={(e) => setName(e.currentTarget.value)}
        />
      </div>
      <div class="field-inline">
        <label for="f-status">Status</label>
        <select
          id="f-status"
          value={filters.status ?? ''}
          onChange={(e) => onChange({ ...filters, name, tag, status: e.currentTarget.value })}
        >
          <option value="">any</option>
          {STATUSES.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
      </div>
      <div class="field-inline">
        <label for="f-format">Format</label>
        <select
          id="f-format"
          value={filters.disk_format ?? ''}
          onChange={(e) => onChange({ ...filters, name, tag, disk_format: e.currentTarget.value })}
        >
          <option value="">any</option>
          {DISK_FORMATS.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
      </div>
      <div class="field-inline">
        <label for="f-tag">Tag</label>
        <input id="f-tag" type="search" value={tag} onInput={(e) => setTag(e.currentTarget.value)} />
      </div>
      {tab === 'shared' && (
        <div class="field-inline">
          <label for="f-member">Invitation</label>
          <select
            id="f-member"
            value={filters.member_status ?? 'all'}
            onChange={(e) => onChange({ ...filters, name, tag, member_status: e.currentTarget.value })}
          >
            <option value="all">any answer</option>
            <option value="pending">pending</option>
            <option value="accepted">accepted</option>
            <option value="rejected">rejected</option>
          </select>
        </div>
      )}
      <button type="submit" class="btn btn-small">
        Filter
      </button>
      <button
        type="button"
        class="btn btn-small btn-quiet"
        onClick={() => {
          setName('');
          setTag('');
          onChange({ sort: filters.sort, limit: filters.limit });
        }}
      >
        Clear
      </button>
    </form>
  );
}

/** A row of the Shared with me tab, with the project's answer to the invitation. */
function Row({ img }: { img: Image }) {
  const name = img.name !== null && img.name !== '' ? img.name : img.id;
  return (
    <div role="row" class="image-row">
      <div role="cell" class="name-cell">
        <a href={`#/image/${encodeURIComponent(img.id)}`} title={name}>
          {name}
        </a>
        {typeof img.backing_image_id === 'string' && <span class="chip chip-overlay">overlay</span>}
        {img.protected && <span class="chip">protected</span>}
      </div>
      <div role="cell">
        <StatusBadge status={img.status} />
      </div>
      <div role="cell">{img.disk_format ?? '—'}</div>
      <div role="cell">
        <VisibilityBadge visibility={img.visibility} />
      </div>
      <div role="cell" class="num">
        {formatBytes(img.size)}
      </div>
      <div role="cell" class="num">
        {formatBytes(img.virtual_size)}
      </div>
      <div role="cell">{formatDate(img.created_at)}</div>
      <div role="cell">
        <MemberCell img={img} />
      </div>
    </div>
  );
}

/**
 * The rows of a page as HTML text (lib/rows-html.ts, every API value escaped): a page of
 * 1000 images is parsed by the browser in one go instead of 14,000 createElement calls.
 * Checkboxes are read by one delegated listener and set from the selection.
 */
function HtmlRows({
  rows,
  selectable,
  selected,
  onToggle,
  owner,
}: {
  rows: Image[];
  selectable: boolean;
  selected: ReadonlySet<string>;
  onToggle: (id: string, on: boolean) => void;
  owner: ((id: string | null) => string) | undefined;
}) {
  const ref = useRef<HTMLDivElement>(null);
  const html = useMemo(
    () => rowsHtml(rows, { selected: selectable ? EMPTY : undefined, owner }),
    // owner is a new function on each render of the page; the names it gives change with rows.
    [rows, selectable],
  );
  useLayoutEffect(() => {
    if (!selectable || ref.current === null) return;
    for (const cb of ref.current.querySelectorAll<HTMLInputElement>('input[data-id]'))
      cb.checked = selected.has(cb.dataset['id'] ?? '');
  }, [html, selected, selectable]);
  return (
    <div
      role="rowgroup"
      class="images-body"
      ref={ref}
      onChange={(e) => {
        const t = e.target;
        if (t instanceof HTMLInputElement && t.dataset['id'] !== undefined)
          onToggle(t.dataset['id'], t.checked);
      }}
      // rows-html.ts escapes every value it interpolates (tested with hostile names).
      dangerouslySetInnerHTML={{ __html: html }}
    />
  );
}

const EMPTY: ReadonlySet<string> = new Set();

/** Delete several images, four at a time; each refusal is reported with the API's words. */
function BatchDelete({ images, onClose }: { images: Image[]; onClose: (changed: boolean) => void }) {
  const { api } = useApp();
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState<{ deleted: number; errors: string[] } | null>(null);
  const run = async () => {
    setBusy(true);
    const errors: string[] = [];
    let deleted = 0;
    const queue = [...images];
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let img = queue.shift(); img !== undefined; img = queue.shift()) {
          try {
            await api.deleteImage(img.id);
            deleted++;
          } catch (e) {
            errors.push(`${img.name ?? img.id}: ${errorMessage(e)}`);
          }
        }
      }),
    );
    setBusy(false);
    if (errors.length === 0) onClose(true);
    else setDone({ deleted, errors });
  };
  if (done !== null)
    return (
      <Dialog title="Some images were not deleted" onClose={() => onClose(true)}>
        <div class="dialog-body">
          <p>
            Deleted {done.deleted} of {images.length}. The registry refused:
          </p>
          <ul class="error-list">
            {done.errors.map((e) => (
              <li key={e}>{e}</li>
            ))}
          </ul>
        </div>
        <div class="dialog-actions">
          <button type="button" class="btn btn-primary" onClick={() => onClose(true)} autofocus>
            OK
          </button>
        </div>
      </Dialog>
    );
  return (
    <Confirm
      title={`Delete ${images.length} image${images.length === 1 ? '' : 's'}?`}
      confirm={`Delete ${images.length} image${images.length === 1 ? '' : 's'}`}
      onConfirm={() => void run()}
      onClose={() => onClose(false)}
      busy={busy}
    >
      <p>These images and their data are removed from the registry; this cannot be undone:</p>
      <ul class="batch-list">
        {images.slice(0, 20).map((i) => (
          <li key={i.id}>{i.name ?? i.id}</li>
        ))}
        {images.length > 20 && <li>and {images.length - 20} more</li>}
      </ul>
    </Confirm>
  );
}

export const shortId = (id: string | null | undefined) =>
  id === null || id === undefined ? '—' : `${id.slice(0, 8)}…`;

/** The project's answer to an invitation, fetched per row, with Accept/Reject while pending. */
function MemberCell({ img }: { img: Image }) {
  const { api, session } = useApp();
  const [status, setStatus] = useState<MemberStatus | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    api
      .member(img.id, session.project.id)
      .then((m) => live && setStatus(m.status))
      .catch((e: unknown) => live && setError(errorMessage(e)));
    return () => {
      live = false;
    };
  }, [api, img.id, session.project.id]);
  const answer = async (s: MemberStatus) => {
    setBusy(true);
    setError(null);
    try {
      setStatus((await api.setMemberStatus(img.id, session.project.id, s)).status);
    } catch (e) {
      setError(errorMessage(e));
    } finally {
      setBusy(false);
    }
  };
  if (error !== null) return <span class="error-text">{error}</span>;
  if (status === null) return <span class="muted">…</span>;
  const label = img.name ?? img.id;
  return (
    <span class="member-cell">
      <StatusBadge status={status} />
      {status !== 'accepted' && (
        <button
          type="button"
          class="btn btn-small"
          disabled={busy}
          onClick={() => void answer('accepted')}
          aria-label={`Accept ${label}`}
        >
          Accept
        </button>
      )}
      {status === 'pending' && (
        <button
          type="button"
          class="btn btn-small btn-quiet"
          disabled={busy}
          onClick={() => void answer('rejected')}
          aria-label={`Reject ${label}`}
        >
          Reject
        </button>
      )}
    </span>
  );
}
