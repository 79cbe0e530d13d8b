/**
 * Masters and overlays, live: every image the project can see in lists (its own, public,
 * accepted shared, community; every project's for an admin), loaded in pages of 1000 and
 * grouped by `backing_image_id` into trees with stored and virtual sizes.
 */
import { useEffect, useState } from 'preact/hooks';
import { Empty, ErrorText, Size, Spinner, StatusBadge } from '../components/ui.js';
import { useApp } from '../context.js';
import { errorMessage } from '../lib/errors.js';
import { formatBytes } from '../lib/sizes.js';
import { buildForest, type TreeNode, treeTotals } from '../lib/tree.js';
import type { Image } from '../lib/types.js';
import { href } from '../router.js';
import { useTitle } from '../title.js';

/** At most this many images are loaded for the forest (10 requests of 1000). */
const CAP = 10_000;

export function TreePage() {
  const { api, session } = useApp();
  const [images, setImages] = useState<Map<string, Image>>(new Map());
  const [done, setDone] = useState(false);
  const [capped, setCapped] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [all, setAll] = useState(false);
  useTitle('Masters & overlays');

  useEffect(() => {
    let live = true;
    const found = new Map<string, Image>();
    (async () => {
      const scopes = session.isAdmin ? ['visibility=all'] : ['', 'visibility=community'];
      for (const scope of scopes) {
        let r = await api.listImages(`${scope}${scope === '' ? '' : '&'}limit=1000&sort=created_at:asc`);
        for (;;) {
          for (const i of r.images) found.set(i.id, i);
          if (!live) return;
          setImages(new Map(found));
          if (r.next === undefined) break;
          if (found.size >= CAP) {
            setCapped(true);
            break;
          }
          r = await api.listNext(r.next);
        }
      }
      // Masters named by listed overlays but not listed themselves (hidden, or shared and not accepted): by id.
      const missing = [...found.values()]
        .map((i) => i.backing_image_id)
        .filter((m): m is string => typeof m === 'string' && !found.has(m));
      for (const m of new Set(missing)) {
        try {
          found.set(m, await api.image(m));
        } catch {
          // not visible: the forest shows a placeholder
        }
      }
      if (!live) return;
      setImages(new Map(found));
      setDone(true);
    })().catch((e: unknown) => live && setError(errorMessage(e)));
    return () => {
      live = false;
    };
  }, [api, session.isAdmin]);

  const roots = buildForest(images.values(), { layeredOnly: !all });
  return (
    <section aria-labelledby="tree-title">
      <div class="page-head">
        <h1 id="tree-title">Masters &amp; overlays</h1>
        <div class="field field-check">
          <input
            id="tree-all"
            type="checkbox"
            checked={all}
            onChange={(e) => setAll(e.currentTarget.checked)}
          />
          <label for="tree-all">Show images without overlays too</label>
        </div>
      </div>
      <p class="tab-help">
        Each master with the overlays built on it (and theirs). An overlay stores only what differs from its
        master: the stored sizes add up to far less than the virtual disks they give.
      </p>
      <ErrorText error={error} />
      {!done && error === null && (
        <Spinner label={`Loading images… ${images.size.toLocaleString('en-US')} so far`} />
      )}
      {capped && <p class="hint">Only the first {CAP.toLocaleString('en-US')} images are grouped here.</p>}
      {done && roots.length === 0 && (
        <Empty title="No master has overlays yet.">
          <p>
            Upload an overlay (a qcow2 or qed whose backing file is an image of the registry) from{' '}
            <a href={href('create')}>Create image</a> and choose its master: the tree appears here.
          </p>
        </Empty>
      )}
      <div class="forest">
        {roots.map((r) => (
          <TreeCard key={r.id} root={r} />
        ))}
      </div>
    </section>
  );
}

function TreeCard({ root }: { root: TreeNode }) {
  const t = treeTotals(root);
  const name = root.image?.name ?? root.id;
  return (
    <article class="card tree-card" aria-label={`Tree of ${name}`}>
      <TreeView roots={[root]} />
      {t.images > 1 && (
        <p class="tree-totals">
          {t.images} images · {formatBytes(t.stored)} stored in all · {formatBytes(t.virtual)} of virtual
          disks
        </p>
      )}
    </article>
  );
}

export function TreeView({ roots, highlight }: { roots: TreeNode[]; highlight?: string }) {
  return (
    <ul class="tree">
      {roots.map((r) => (
        <TreeItem key={r.id} node={r} highlight={highlight} />
      ))}
    </ul>
  );
}

function TreeItem({ node, highlight }: { node: TreeNode; highlight: string | undefined }) {
  const img = node.image;
  return (
    <li class={node.id === highlight ? 'tree-node tree-here' : 'tree-node'}>
      <div class="tree-line">
        {img === undefined ? (
          <span class="muted">
            A master this project cannot see <code class="mono">{node.id.slice(0, 8)}…</code>
          </span>
        ) : (
          <>
            <a
              class="tree-name"
              href={href(`image/${img.id}`)}
              aria-current={node.id === highlight ? 'true' : undefined}
            >
              {img.name ?? img.id}
            </a>
            <span class="chip">{img.disk_format ?? '—'}</span>
            <StatusBadge status={img.status} />
            <span class="tree-sizes">
              <span>
                stored <Size bytes={img.size} />
              </span>
              <span>
                virtual <Size bytes={img.virtual_size} />
              </span>
            </span>
            <span class="tree-links">
              <a href={href(`image/${img.id}/map`)} aria-label={`Allocation map of ${img.name ?? img.id}`}>
                map
              </a>
              {node.depth > 0 || img.backing_image_id !== undefined ? (
                <a href={href(`image/${img.id}/layers`)} aria-label={`Flatten ${img.name ?? img.id}`}>
                  flatten…
                </a>
              ) : null}
            </span>
          </>
        )}
      </div>
      {node.children.length > 0 && (
        <ul>
          {node.children.map((c) => (
            <TreeItem key={c.id} node={c} highlight={highlight} />
          ))}
        </ul>
      )}
    </li>
  );
}
