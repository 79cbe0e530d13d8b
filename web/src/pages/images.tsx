/**
 * The image lists: one tab per scope, filters, sortable columns, and keyset pagination
 * (`limit`, `marker`/`next`): one request per page, whatever the number of images.
 */
import { useEffect, useState } from 'preact/hooks';
import { Empty, ErrorText, Size, Spinner, StatusBadge, VisibilityBadge } from '../components/ui.js';
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
import { formatDate } from '../lib/sizes.js';
import type { Image, MemberStatus } from '../lib/types.js';
import { href, navigate } from '../router.js';

interface PageState {
  images: Image[];
  next: string | undefined;
}

export function ImagesPage({ tab: tabParam, query }: { tab: string; query: URLSearchParams }) {
  const { session, api } = useApp();
  const tab: Tab = isTab(tabParam) && (tabParam !== 'all' || session.isAdmin) ? tabParam : 'own';
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
  const current = pages.at(-1) ?? first;

  useEffect(() => {
    let live = true;
    setLoading(true);
    setError(null);
    const req = current.startsWith('/v2/images') ? api.listNext(current) : api.listImages(current);
    req
      .then((r) => {
        if (!live) return;
        setPage({ images: r.images, next: r.next });
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

  const setFilters = (f: ListFilters) => navigate(`images/${tab}`, filtersToQuery(f));
  const rows = page === null ? [] : rowsOf(tab, page.images, session.project.id);
  const sort = parseSort(filters.sort);
  const limit = filters.limit ?? DEFAULT_PAGE_SIZE;
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
      <p class="tab-help">{TAB_HELP[tab](session.project.name)}</p>
      <Filters key={first} tab={tab} filters={filters} onChange={setFilters} />
      <ErrorText error={error} />
      <div class="table-wrap" aria-busy={loading}>
        <table class="images" data-state={loading ? 'loading' : 'loaded'}>
          <caption class="sr-only">
            {TABS.find((t) => t.id === tab)?.label} images, page {pages.length}
            {sort.key !== 'created_at' || sort.dir !== 'desc'
              ? `, sorted by ${sort.key} ${sort.dir}ending`
              : ''}
          </caption>
          <thead>
            <tr>
              <SortHeader id="name" label="Name" sort={sort} filters={filters} onChange={setFilters} />
              <SortHeader id="status" label="Status" sort={sort} filters={filters} onChange={setFilters} />
              <SortHeader
                id="disk_format"
                label="Format"
                sort={sort}
                filters={filters}
                onChange={setFilters}
              />
              <th scope="col">Visibility</th>
              <SortHeader id="size" label="Size" sort={sort} filters={filters} onChange={setFilters} num />
              <th scope="col" class="num">
                Virtual size
              </th>
              <SortHeader
                id="created_at"
                label="Created"
                sort={sort}
                filters={filters}
                onChange={setFilters}
              />
              {tab === 'shared' && <th scope="col">Your answer</th>}
              {(tab === 'all' || tab === 'public' || tab === 'community') && <th scope="col">Owner</th>}
            </tr>
          </thead>
          <tbody>
            {rows.map((img) => (
              <Row key={img.id} img={img} tab={tab} />
            ))}
          </tbody>
        </table>
        {loading && page === null && <Spinner label="Loading images…" />}
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
            disabled={page?.next === undefined || loading}
            onClick={() => {
              const n = page?.next;
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
    <th
      scope="col"
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
    </th>
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

function Row({ img, tab }: { img: Image; tab: Tab }) {
  const { projectName } = useApp();
  const name = img.name !== null && img.name !== '' ? img.name : img.id;
  const layered = typeof img.backing_image_id === 'string';
  return (
    <tr>
      <td class="name-cell">
        <a href={href(`image/${img.id}`)}>{name}</a>
        {layered && (
          <span class="chip chip-overlay" title="An overlay: it reads what it does not store from its master">
            overlay
          </span>
        )}
        {img.protected && (
          <span class="chip" title="Protected: it cannot be deleted">
            protected
          </span>
        )}
      </td>
      <td>
        <StatusBadge status={img.status} />
      </td>
      <td>{img.disk_format ?? '—'}</td>
      <td>
        <VisibilityBadge visibility={img.visibility} />
      </td>
      <td class="num">
        <Size bytes={img.size} />
      </td>
      <td class="num">
        <Size bytes={img.virtual_size} />
      </td>
      <td class="nowrap">{formatDate(img.created_at)}</td>
      {tab === 'shared' && (
        <td>
          <MemberCell img={img} />
        </td>
      )}
      {(tab === 'all' || tab === 'public' || tab === 'community') && (
        <td class="owner-cell" title={img.owner ?? undefined}>
          {projectName(img.owner) ?? shortId(img.owner)}
        </td>
      )}
    </tr>
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
