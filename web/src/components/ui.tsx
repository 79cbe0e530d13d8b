/** Small building blocks: badges, alerts, dialogs, fields, sizes. */
import type { ComponentChildren, TargetedKeyboardEvent } from 'preact';
import { useEffect, useId, useRef } from 'preact/hooks';
import { formatBytes, formatExactBytes } from '../lib/sizes.js';
import { statusTone, statusWord, visibilityWord } from '../lib/words.js';

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge badge-${statusTone(status)}`}>{statusWord(status)}</span>;
}

export function VisibilityBadge({ visibility }: { visibility: string }) {
  return <span class={`vis vis-${visibility}`}>{visibilityWord(visibility)}</span>;
}

/** A size in human units with the exact count in a tooltip. */
export function Size({ bytes }: { bytes: number | null | undefined }) {
  return (
    <span title={bytes === null || bytes === undefined ? undefined : formatExactBytes(bytes)}>
      {formatBytes(bytes)}
    </span>
  );
}

export function Alert({
  tone = 'error',
  children,
  onDismiss,
}: {
  tone?: 'error' | 'info' | 'success' | 'warn';
  children: ComponentChildren;
  onDismiss?: () => void;
}) {
  return (
    <div class={`alert alert-${tone}`} role={tone === 'error' ? 'alert' : 'status'}>
      <div class="alert-body">{children}</div>
      {onDismiss !== undefined && (
        <button
          type="button"
          class="btn btn-quiet btn-small"
          onClick={onDismiss}
          aria-label="Dismiss this message"
        >
          ×
        </button>
      )}
    </div>
  );
}

/** An error message from a thrown value, or nothing. */
export function ErrorText({ error, onDismiss }: { error: string | null; onDismiss?: () => void }) {
  if (error === null) return null;
  return (
    <Alert tone="error" {...(onDismiss !== undefined ? { onDismiss } : {})}>
      {error}
    </Alert>
  );
}

export function Spinner({ label = 'Loading…' }: { label?: string }) {
  return (
    <p class="loading" role="status">
      <span class="spinner" aria-hidden="true" />
      {label}
    </p>
  );
}

export function Empty({ title, children }: { title: string; children?: ComponentChildren }) {
  return (
    <div class="empty">
      <p class="empty-title">{title}</p>
      {children !== undefined && <div class="empty-body">{children}</div>}
    </div>
  );
}

/**
 * A modal dialog on the native <dialog> (showModal: the rest of the page is inert, Escape
 * cancels); Tab and Shift+Tab also wrap inside it, and focus goes back where it was.
 */
export function Dialog({
  title,
  onClose,
  children,
  wide = false,
}: {
  title: string;
  onClose: () => void;
  children: ComponentChildren;
  wide?: boolean;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  useEffect(() => {
    const d = ref.current;
    if (d === null) return undefined;
    const before = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    if (!d.open) d.showModal();
    const first = d.querySelector<HTMLElement>(
      '[autofocus], input, select, textarea, button:not(.dialog-close)',
    );
    first?.focus();
    return () => {
      if (d.open) d.close();
      before?.focus();
    };
  }, []);
  const onKeyDown = (e: TargetedKeyboardEvent<HTMLDialogElement>) => {
    if (e.key !== 'Tab') return;
    const d = ref.current;
    if (d === null) return;
    const items = [
      ...d.querySelectorAll<HTMLElement>(
        'a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])',
      ),
    ].filter((el) => !el.hidden && el.offsetParent !== null);
    const first = items[0];
    const last = items.at(-1);
    if (first === undefined || last === undefined) return;
    if (e.shiftKey && document.activeElement === first) {
      e.preventDefault();
      last.focus();
    } else if (!e.shiftKey && document.activeElement === last) {
      e.preventDefault();
      first.focus();
    }
  };
  return (
    <dialog
      ref={ref}
      class={wide ? 'dialog dialog-wide' : 'dialog'}
      aria-labelledby={titleId}
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
      onKeyDown={onKeyDown}
    >
      <div class="dialog-head">
        <h2 id={titleId}>{title}</h2>
        <button type="button" class="btn btn-quiet dialog-close" onClick={onClose} aria-label="Close">
          ×
        </button>
      </div>
      {children}
    </dialog>
  );
}

/** A confirmation dialog: the question, a danger button, Cancel. */
export function Confirm({
  title,
  children,
  confirm,
  onConfirm,
  onClose,
  busy = false,
  error = null,
}: {
  title: string;
  children: ComponentChildren;
  confirm: string;
  onConfirm: () => void;
  onClose: () => void;
  busy?: boolean;
  error?: string | null;
}) {
  return (
    <Dialog title={title} onClose={onClose}>
      <div class="dialog-body">{children}</div>
      <ErrorText error={error} />
      <div class="dialog-actions">
        <button type="button" class="btn" onClick={onClose} autofocus>
          Cancel
        </button>
        <button type="button" class="btn btn-danger" onClick={onConfirm} disabled={busy}>
          {busy ? 'Working…' : confirm}
        </button>
      </div>
    </Dialog>
  );
}

/** A labelled field: the label is a real <label for>, a hint is tied with aria-describedby. */
export function Field({
  label,
  hint,
  children,
  id,
}: {
  label: string;
  hint?: ComponentChildren;
  id: string;
  children: ComponentChildren;
}) {
  return (
    <div class="field">
      <label for={id}>{label}</label>
      {children}
      {hint !== undefined && (
        <p class="hint" id={`${id}-hint`}>
          {hint}
        </p>
      )}
    </div>
  );
}

export function Mono({ children }: { children: ComponentChildren }) {
  return <code class="mono">{children}</code>;
}
