/**
 * The dashboard: a session held in memory (never in a URL or in storage: a reload asks to log
 * in again), a header with the project switcher, and the pages under hash routes.
 */
import type { JSX } from 'preact';
import { useCallback, useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { Api, myProjects, rescope, revoke, type Session } from './api.js';
import { Alert } from './components/ui.js';
import { App, type AppContext } from './context.js';
import { errorMessage } from './lib/errors.js';
import type { Project } from './lib/types.js';
import { CreatePage } from './pages/create.js';
import { ImagePage } from './pages/image.js';
import { ImagesPage } from './pages/images.js';
import { LoginPage } from './pages/login.js';
import { TreePage } from './pages/tree.js';
import { href, navigate, useRoute } from './router.js';

export function Root() {
  const [session, setSession] = useState<Session | null>(null);
  const [ended, setEnded] = useState<string | null>(null);
  if (session === null)
    return (
      <LoginPage
        notice={ended}
        onLogin={(s) => {
          setEnded(null);
          setSession(s);
        }}
      />
    );
  return (
    <Shell
      key={session.token}
      session={session}
      onSession={setSession}
      onEnd={(why) => {
        setEnded(why);
        setSession(null);
      }}
    />
  );
}

function Shell({
  session,
  onSession,
  onEnd,
}: {
  session: Session;
  onSession: (s: Session) => void;
  onEnd: (why: string | null) => void;
}) {
  const route = useRoute();
  const [projects, setProjects] = useState<Project[]>([]);
  const [allProjects, setAllProjects] = useState<Project[]>([]);
  const [switching, setSwitching] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [flash, setFlashState] = useState<{ text: string; at: number } | null>(null);
  const setFlash = useCallback((text: string) => setFlashState({ text, at: Date.now() }), []);
  const ending = useRef(false);
  const api = useMemo(
    () =>
      new Api(session.token, () => {
        if (ending.current) return;
        ending.current = true;
        onEnd('Your session has ended (the token expired or was revoked): log in again.');
      }),
    [session.token, onEnd],
  );

  useEffect(() => {
    myProjects(session.token)
      .then(setProjects)
      .catch((e: unknown) => setError(errorMessage(e)));
    if (session.isAdmin)
      api
        .projects()
        .then(setAllProjects)
        .catch(() => setAllProjects([]));
  }, [session.token, session.isAdmin, api]);

  const names = useMemo(() => {
    const m = new Map<string, string>();
    for (const p of [...allProjects, ...projects]) m.set(p.id, p.name);
    m.set(session.project.id, session.project.name);
    return m;
  }, [projects, allProjects, session.project]);

  const ctx: AppContext = useMemo(
    () => ({
      session,
      api,
      projectName: (id) => (id === null || id === undefined ? undefined : names.get(id)),
      flash: setFlash,
    }),
    [session, api, names, setFlash],
  );

  const switchTo = async (projectId: string) => {
    if (projectId === session.project.id) return;
    setSwitching(true);
    setError(null);
    try {
      const next = await rescope(session.token, projectId);
      const old = session.token;
      onSession(next);
      // The old token is held nowhere any more: revoke it.
      await revoke(old).catch(() => {});
      navigate('images/own');
    } catch (e) {
      setError(errorMessage(e));
    } finally {
      setSwitching(false);
    }
  };

  const logout = useCallback(async () => {
    ending.current = true;
    try {
      await revoke(session.token);
    } catch {
      // Whatever the answer, the page forgets the token.
    }
    location.hash = '';
    onEnd(null);
  }, [session.token, onEnd]);

  // A flash message lives through the navigation that follows it, and ends with the next one.
  useEffect(() => {
    setFlashState((f) => (f !== null && Date.now() - f.at > 1500 ? null : f));
  }, [route.hash]);

  // A new page (not a new filter of the same page): focus moves to the page's content, so that
  // keyboard and screen-reader users start there, as after a full page load.
  const path = route.parts.join('/');
  const lastPath = useRef(path);
  useEffect(() => {
    if (lastPath.current === path) return;
    lastPath.current = path;
    // Switching tabs keeps the focus on the tab; anything else starts at the content.
    if (document.activeElement?.closest('.tabs') == null)
      document.getElementById('main')?.focus({ preventScroll: true });
    window.scrollTo(0, 0);
  }, [path]);

  const [section, ...rest] = route.parts;
  let page: JSX.Element;
  let current: 'images' | 'tree' = 'images';
  if (section === 'image' && rest[0] !== undefined) {
    page = <ImagePage key={rest[0]} id={rest[0]} tab={rest[1] ?? 'overview'} />;
  } else if (section === 'create') {
    page = <CreatePage query={route.query} />;
  } else if (section === 'tree') {
    current = 'tree';
    page = <TreePage />;
  } else {
    page = <ImagesPage tab={rest[0] ?? 'own'} query={route.query} />;
  }

  return (
    <App.Provider value={ctx}>
      <button type="button" class="skip" onClick={() => document.getElementById('main')?.focus()}>
        Skip to content
      </button>
      <header class="topbar">
        <div class="topbar-inner">
          <a class="brand" href={href('images/own')}>
            <span class="brand-mark" aria-hidden="true">
              ▣
            </span>{' '}
            vdisk <span class="brand-sub">images</span>
          </a>
          <nav class="mainnav" aria-label="Main">
            <a href={href('images/own')} aria-current={current === 'images' ? 'page' : undefined}>
              Images
            </a>
            <a href={href('tree')} aria-current={current === 'tree' ? 'page' : undefined}>
              Masters &amp; overlays
            </a>
          </nav>
          <div class="session">
            <label for="project-switch" class="session-label">
              Project
            </label>
            <select
              id="project-switch"
              value={session.project.id}
              disabled={switching}
              onChange={(e) => void switchTo(e.currentTarget.value)}
            >
              {(projects.length > 0 ? projects : [session.project]).map((p) => (
                <option key={p.id} value={p.id}>
                  {p.name}
                </option>
              ))}
            </select>
            <span
              class="session-user"
              title={`User ${session.user.name}${session.isAdmin ? ' (admin)' : ''}`}
            >
              {session.user.name}
              {session.isAdmin && <span class="role-tag">admin</span>}
            </span>
            <button type="button" class="btn btn-small" onClick={() => void logout()}>
              Log out
            </button>
          </div>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {error !== null && (
          <Alert tone="error" onDismiss={() => setError(null)}>
            {error}
          </Alert>
        )}
        {flash !== null && (
          <Alert tone="success" onDismiss={() => setFlashState(null)}>
            {flash.text}
          </Alert>
        )}
        {page}
      </main>
    </App.Provider>
  );
}
