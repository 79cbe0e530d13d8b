import { describe, expect, it } from 'vitest';
import { latestTask, outcomeOf } from './outcome.js';

describe('import and flatten outcome', () => {
  it('follows the image and its task', () => {
    expect(outcomeOf(null, undefined)).toBe('running');
    expect(outcomeOf({ status: 'queued' }, undefined)).toBe('running');
    expect(outcomeOf({ status: 'importing' }, { status: 'processing' })).toBe('running');
    expect(outcomeOf({ status: 'active' }, { status: 'success' })).toBe('done');
    expect(outcomeOf({ status: 'importing' }, { status: 'failure' })).toBe('failed');
    expect(outcomeOf({ status: 'queued' }, { status: 'failure' })).toBe('failed');
    expect(outcomeOf({ status: 'queued' }, { status: 'pending' })).toBe('running');
    expect(outcomeOf({ status: 'killed' }, undefined)).toBe('failed');
  });
  it('takes the latest task', () => {
    expect(
      latestTask([
        { created_at: '2026-01-01T00:00:01Z', id: 'a' },
        { created_at: '2026-01-01T00:00:03Z', id: 'b' },
        { created_at: '2026-01-01T00:00:02Z', id: 'c' },
      ])?.id,
    ).toBe('b');
    expect(latestTask([])).toBeUndefined();
  });
});
