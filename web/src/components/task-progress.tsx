/**
 * Follows an image that the registry is filling (web-download import, flatten): its status and
 * its task's, every second, until it is `active` (done) or back to `queued` (failed, with the
 * task's message).
 */
import { useEffect, useState } from 'preact/hooks';
import { useApp } from '../context.js';
import { errorMessage } from '../lib/errors.js';
import { latestTask, outcomeOf } from '../lib/outcome.js';
import type { Image, Task } from '../lib/types.js';
import { href } from '../router.js';
import { Alert, Size, StatusBadge } from './ui.js';

export function TaskProgress({ imageId, what }: { imageId: string; what: string }) {
  const { api } = useApp();
  const [img, setImg] = useState<Image | null>(null);
  const [task, setTask] = useState<Task | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const outcome = outcomeOf(img, task);

  useEffect(() => {
    if (outcome !== 'running') return undefined;
    let live = true;
    const tick = async () => {
      try {
        const [i, tasks] = await Promise.all([api.image(imageId), api.tasks(imageId)]);
        if (!live) return;
        setImg(i);
        setTask(latestTask(tasks));
        setError(null);
      } catch (e) {
        if (live) setError(errorMessage(e));
      }
    };
    void tick();
    const t = setInterval(() => void tick(), 1000);
    return () => {
      live = false;
      clearInterval(t);
    };
  }, [api, imageId, outcome]);

  const name = img?.name ?? imageId;
  return (
    <div class="task" aria-live="polite">
      <p>
        {what}: <a href={href(`image/${imageId}`)}>{name}</a>{' '}
        {img !== null && <StatusBadge status={img.status} />}{' '}
        {task !== undefined && (
          <span class="muted">
            task <StatusBadge status={task.status} />
          </span>
        )}
      </p>
      {outcome === 'running' && (
        <div class="progress-line">
          <progress aria-label={`${what} in progress`} />
          <span class="muted">
            {task?.message !== undefined && task.message !== '' ? task.message : 'Working…'}
          </span>
        </div>
      )}
      {outcome === 'done' && img !== null && (
        <Alert tone="success">
          Done: <a href={href(`image/${imageId}`)}>{name}</a> is active (<Size bytes={img.size} /> stored,{' '}
          <Size bytes={img.virtual_size} /> virtual).
        </Alert>
      )}
      {outcome === 'failed' && (
        <Alert tone="error">
          It failed{task?.message !== undefined && task.message !== '' ? `: ${task.message}` : '.'} The image
          is back to {img?.status ?? 'queued'}, without data.
        </Alert>
      )}
      {error !== null && <Alert tone="error">{error}</Alert>}
    </div>
  );
}
