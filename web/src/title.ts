import { useEffect } from 'preact/hooks';

/** The document's title for the page shown ("lab1 · Images · vdisk"): tabs, history and screen readers name it. */
export function useTitle(...parts: (string | null | undefined)[]): void {
  const title = [...parts.filter((p): p is string => typeof p === 'string' && p !== ''), 'vdisk'].join(' · ');
  useEffect(() => {
    document.title = title;
  }, [title]);
}
