/**
 * Hash routes (`#/images/own?name=x`): the page is one document served from /dashboard/, so
 * navigation never reloads it (the token lives in memory) and the server needs no fallback.
 * Only image ids and filters go in the hash, never a token.
 */
import { useEffect, useState } from 'preact/hooks';

export interface Route {
  /** Path segments after `#/`. */
  parts: string[];
  query: URLSearchParams;
  /** The whole hash, for keys. */
  hash: string;
}

export function parseHash(hash: string): Route {
  const h = hash.replace(/^#\/?/, '');
  const q = h.indexOf('?');
  const path = q < 0 ? h : h.slice(0, q);
  const parts = path
    .split('/')
    .filter((p) => p !== '')
    .map((p) => {
      try {
        return decodeURIComponent(p);
      } catch {
        return p;
      }
    });
  return { parts, query: new URLSearchParams(q < 0 ? '' : h.slice(q + 1)), hash: h };
}

export function href(path: string, query?: URLSearchParams | Record<string, string>): string {
  const qs = query === undefined ? '' : new URLSearchParams(query).toString();
  return `#/${path.replace(/^\//, '')}${qs === '' ? '' : `?${qs}`}`;
}

export function navigate(path: string, query?: URLSearchParams | Record<string, string>): void {
  const next = href(path, query);
  if (location.hash !== next) location.hash = next;
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseHash(location.hash));
  useEffect(() => {
    const on = () => setRoute(parseHash(location.hash));
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return route;
}
