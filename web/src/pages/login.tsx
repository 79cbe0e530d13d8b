import { useState } from 'preact/hooks';
import { login, type Session } from '../api.js';
import { Alert, ErrorText, Field } from '../components/ui.js';
import { errorMessage } from '../lib/errors.js';
import { useTitle } from '../title.js';

export function LoginPage({ onLogin, notice }: { onLogin: (s: Session) => void; notice: string | null }) {
  const [user, setUser] = useState('');
  const [password, setPassword] = useState('');
  const [project, setProject] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  useTitle('Log in');

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      onLogin(await login(user.trim(), password, project));
    } catch (err) {
      setError(errorMessage(err));
      setBusy(false);
    }
  };

  return (
    <main id="main" class="login-wrap">
      <div class="login-card">
        <h1 class="login-title">
          <span class="brand-mark" aria-hidden="true">
            ▣
          </span>{' '}
          vdisk image registry
        </h1>
        <p class="login-sub">Log in with your OpenStack user (domain Default).</p>
        {notice !== null && <Alert tone="info">{notice}</Alert>}
        <form onSubmit={(e) => void submit(e)} class="stack">
          <Field label="User name" id="login-user">
            <input
              id="login-user"
              name="username"
              autocomplete="username"
              required
              value={user}
              onInput={(e) => setUser(e.currentTarget.value)}
            />
          </Field>
          <Field label="Password" id="login-password">
            <input
              id="login-password"
              name="password"
              type="password"
              autocomplete="current-password"
              required
              value={password}
              onInput={(e) => setPassword(e.currentTarget.value)}
            />
          </Field>
          <Field
            label="Project"
            id="login-project"
            hint="Leave empty to use your first project; switch later from the header."
          >
            <input
              id="login-project"
              name="project"
              aria-describedby="login-project-hint"
              value={project}
              onInput={(e) => setProject(e.currentTarget.value)}
            />
          </Field>
          <ErrorText error={error} />
          <button type="submit" class="btn btn-primary btn-block" disabled={busy}>
            {busy ? 'Logging in…' : 'Log in'}
          </button>
        </form>
        <p class="login-foot">
          Your token stays in this page's memory only: reloading the page logs you out.
        </p>
      </div>
    </main>
  );
}
