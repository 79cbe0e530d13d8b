import { createContext } from 'preact';
import { useContext } from 'preact/hooks';
import type { Api, Session } from './api.js';

export interface AppContext {
  session: Session;
  api: Api;
  /** Names of the projects this user knows (its own projects; every project for an admin). */
  projectName(id: string | null | undefined): string | undefined;
  /** Ask the header to show a message after a navigation (e.g. "Image deleted"). */
  flash(text: string): void;
}

export const App = createContext<AppContext | null>(null);

export function useApp(): AppContext {
  const c = useContext(App);
  if (c === null) throw new Error('useApp outside the logged-in app');
  return c;
}
