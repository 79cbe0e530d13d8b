/** Where an image the registry is filling (import, flatten) stands, from its status and its latest task. */
import type { Image, Task } from './types.js';

export type Outcome = 'running' | 'done' | 'failed';

export function outcomeOf(
  img: Pick<Image, 'status'> | null,
  task: Pick<Task, 'status'> | undefined,
): Outcome {
  if (img === null) return 'running';
  if (img.status === 'active') return 'done';
  if (task?.status === 'failure') return 'failed';
  // Back to queued after its task ended: the import or flatten failed (Glance's behaviour).
  if (
    img.status === 'queued' &&
    task !== undefined &&
    task.status !== 'pending' &&
    task.status !== 'processing'
  )
    return 'failed';
  if (img.status === 'killed' || img.status === 'deleted') return 'failed';
  return 'running';
}

/** The latest of an image's tasks. */
export function latestTask<T extends Pick<Task, 'created_at'>>(tasks: T[]): T | undefined {
  return [...tasks].sort((a, b) =>
    a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0,
  )[0];
}
