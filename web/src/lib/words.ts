/** Words and tones of statuses and visibilities, shared by the components and the list rows. */

const STATUS_TONE: Record<string, string> = {
  active: 'ok',
  queued: 'idle',
  saving: 'busy',
  uploading: 'busy',
  importing: 'busy',
  deactivated: 'warn',
  killed: 'bad',
  deleted: 'bad',
  pending_delete: 'bad',
  pending: 'warn',
  accepted: 'ok',
  rejected: 'bad',
  processing: 'busy',
  success: 'ok',
  failure: 'bad',
};

const STATUS_WORD: Record<string, string> = {
  active: 'Active',
  queued: 'Queued',
  saving: 'Saving',
  uploading: 'Uploading',
  importing: 'Importing',
  deactivated: 'Deactivated',
  killed: 'Killed',
  deleted: 'Deleted',
  pending_delete: 'Pending delete',
  pending: 'Pending',
  accepted: 'Accepted',
  rejected: 'Rejected',
  processing: 'Processing',
  success: 'Succeeded',
  failure: 'Failed',
};

const VIS_WORD: Record<string, string> = {
  public: 'Public',
  community: 'Community',
  shared: 'Shared',
  private: 'Private',
};

export const statusTone = (status: string): string => STATUS_TONE[status] ?? 'idle';
export const statusWord = (status: string): string => STATUS_WORD[status] ?? status;
export const visibilityWord = (v: string): string => VIS_WORD[v] ?? v;
