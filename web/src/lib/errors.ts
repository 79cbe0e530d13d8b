/**
 * The words of an API error. Glance answers webob's plain-text page
 * (`403 Forbidden\n\nYou are not authorized…\n\n   `): the message is the line after the
 * title. Keystone answers `{"error": {"message": …}}`. Anything else: the status text.
 */
export function apiErrorText(status: number, contentType: string | null, body: string): string {
  const type = (contentType ?? '').toLowerCase();
  const text = body.trim();
  if (type.includes('json') || text.startsWith('{')) {
    try {
      const j = JSON.parse(text) as unknown;
      if (typeof j === 'object' && j !== null) {
        const o = j as Record<string, unknown>;
        const err = o['error'];
        if (typeof err === 'object' && err !== null) {
          const m = (err as Record<string, unknown>)['message'];
          if (typeof m === 'string' && m.trim() !== '') return m.trim();
        }
        for (const k of ['message', 'detail', 'title']) {
          const m = o[k];
          if (typeof m === 'string' && m.trim() !== '') return m.trim();
        }
      }
    } catch {
      // not JSON after all: read it as text below
    }
  }
  if (text !== '') {
    if (type.includes('html') || /^<(!doctype|html)/i.test(text)) {
      // An HTML error page: its text without tags, first meaningful line after the title.
      const plain = text
        .replace(/<(script|style)[\s\S]*?<\/\1>/gi, '')
        .replace(/<[^>]+>/g, '\n')
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l !== '');
      const rest = plain.filter((l) => !l.startsWith(String(status)));
      if (rest.length > 0) return rest.join(' ');
    }
    const lines = text
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l !== '');
    // webob: the first line is "403 Forbidden"; the message follows.
    const first = lines[0] ?? '';
    const body = /^\d{3}\b/.test(first) ? lines.slice(1) : lines;
    if (body.length > 0) return body.join(' ');
    if (first !== '') return first;
  }
  return `${status} ${STATUS_TEXT[status] ?? 'Error'}`;
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  409: 'Conflict',
  413: 'Request Entity Too Large',
  415: 'Unsupported Media Type',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
};

/** An error from the API: the status and the message in words. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** Any thrown value as one sentence for the page. */
export function errorMessage(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}
