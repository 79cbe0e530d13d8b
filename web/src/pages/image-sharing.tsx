/**
 * Members of a shared image. The owner adds projects (by id, or from the list of projects
 * when the user may list them: admins) and removes them; a member project answers its
 * invitation (accept, reject, back to pending).
 */
import { useCallback, useEffect, useState } from 'preact/hooks';
import { Alert, Confirm, Empty, ErrorText, Mono, Spinner, StatusBadge } from '../components/ui.js';
import { useApp } from '../context.js';
import { errorMessage } from '../lib/errors.js';
import { formatDate } from '../lib/sizes.js';
import type { Image, Member, MemberStatus, Project } from '../lib/types.js';
import { displayName } from './image.js';

export function SharingTab({ img, editable }: { img: Image; editable: boolean }) {
  const { session } = useApp();
  if (img.visibility !== 'shared')
    return (
      <div class="card">
        <h2>Sharing</h2>
        <Empty title={`This image is ${img.visibility}: only shared images have members.`}>
          {editable ? (
            <p>To hand it to other projects, set its visibility to Shared with Edit, then add them here.</p>
          ) : (
            <p>Its owner decides who sees it.</p>
          )}
        </Empty>
      </div>
    );
  if (editable && (img.owner === session.project.id || session.isAdmin)) return <OwnerMembers img={img} />;
  return <MyInvitation img={img} />;
}

function OwnerMembers({ img }: { img: Image }) {
  const { api, session, projectName } = useApp();
  const [members, setMembers] = useState<Member[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [projects, setProjects] = useState<Project[] | null>(null);
  const [project, setProject] = useState('');
  const [busy, setBusy] = useState(false);
  const [removing, setRemoving] = useState<Member | null>(null);
  const [removeError, setRemoveError] = useState<string | null>(null);
  const [added, setAdded] = useState<string | null>(null);

  const load = useCallback(
    () =>
      api
        .members(img.id)
        .then(setMembers)
        .catch((e: unknown) => setError(errorMessage(e))),
    [api, img.id],
  );
  useEffect(() => {
    void load();
    // The picker: only users who may list projects (admins); others type the id.
    if (session.isAdmin)
      api
        .projects()
        .then(setProjects)
        .catch(() => setProjects(null));
  }, [load, api, session.isAdmin]);

  const add = async (e: Event) => {
    e.preventDefault();
    const p = project.trim();
    if (p === '') return;
    setBusy(true);
    setError(null);
    setAdded(null);
    try {
      await api.addMember(img.id, p);
      setProject('');
      setAdded(`Project ${projectName(p) ?? p} was invited: it sees the image once it accepts.`);
      await load();
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  const remove = async (m: Member) => {
    setBusy(true);
    setRemoveError(null);
    try {
      await api.removeMember(img.id, m.member_id);
      setRemoving(null);
      await load();
    } catch (err) {
      setRemoveError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  const candidates = (projects ?? []).filter(
    (p) => p.id !== img.owner && !(members ?? []).some((m) => m.member_id === p.id),
  );

  return (
    <div class="card">
      <h2>Members</h2>
      <p class="muted">
        Projects that may use this image. A new member sees an invitation and accepts or rejects it; an
        overlay can only be shared with projects that can see its master.
      </p>
      <form class="add-member" onSubmit={(e) => void add(e)}>
        <div class="inline-add">
          <div class="field">
            <label for="member-project">Project ID</label>
            <input
              id="member-project"
              value={project}
              list={projects !== null ? 'member-projects' : undefined}
              placeholder="the project's id"
              aria-describedby="member-project-hint"
              onInput={(e) => setProject(e.currentTarget.value)}
              required
            />
            {projects !== null && (
              <datalist id="member-projects">
                {candidates.map((p) => (
                  <option key={p.id} value={p.id}>
                    {p.name}
                  </option>
                ))}
              </datalist>
            )}
          </div>
          {projects !== null && (
            <div class="field">
              <label for="member-pick">Or choose a project</label>
              <select id="member-pick" value="" onChange={(e) => setProject(e.currentTarget.value)}>
                <option value="">—</option>
                {candidates.map((p) => (
                  <option key={p.id} value={p.id}>
                    {p.name}
                  </option>
                ))}
              </select>
            </div>
          )}
          <button type="submit" class="btn btn-primary" disabled={busy || project.trim() === ''}>
            Add member
          </button>
        </div>
        <p class="hint" id="member-project-hint">
          {projects !== null
            ? 'Type an id, or choose a project from the list.'
            : 'Ask the other project for its id (openstack project show, or the id its users see in this dashboard).'}
        </p>
      </form>
      <ErrorText error={error} onDismiss={() => setError(null)} />
      {added !== null && <Alert tone="success">{added}</Alert>}
      {members === null ? (
        error === null && <Spinner label="Loading members…" />
      ) : members.length === 0 ? (
        <Empty title="No member yet.">
          <p>Add a project above to share this image with it.</p>
        </Empty>
      ) : (
        <table class="plain">
          <thead>
            <tr>
              <th scope="col">Project</th>
              <th scope="col">Answer</th>
              <th scope="col">Invited</th>
              <th scope="col">Updated</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {members.map((m) => (
              <tr key={m.member_id}>
                <td>
                  {projectName(m.member_id) !== undefined && <strong>{projectName(m.member_id)} </strong>}
                  <Mono>{m.member_id}</Mono>
                </td>
                <td>
                  <StatusBadge status={m.status} />
                </td>
                <td>{formatDate(m.created_at)}</td>
                <td>{formatDate(m.updated_at)}</td>
                <td class="num">
                  <button
                    type="button"
                    class="btn btn-small btn-quiet"
                    onClick={() => setRemoving(m)}
                    aria-label={`Remove project ${projectName(m.member_id) ?? m.member_id}`}
                  >
                    Remove
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {removing !== null && (
        <Confirm
          title="Remove this member?"
          confirm="Remove member"
          onConfirm={() => void remove(removing)}
          onClose={() => {
            setRemoving(null);
            setRemoveError(null);
          }}
          busy={busy}
          error={removeError}
        >
          <p>
            Project {projectName(removing.member_id) ?? removing.member_id} will no longer see{' '}
            {displayName(img)}.
          </p>
        </Confirm>
      )}
    </div>
  );
}

function MyInvitation({ img }: { img: Image }) {
  const { api, session, projectName } = useApp();
  const [member, setMember] = useState<Member | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    api
      .member(img.id, session.project.id)
      .then(setMember)
      .catch((e: unknown) => setError(errorMessage(e)));
  }, [api, img.id, session.project.id]);
  const answer = async (s: MemberStatus) => {
    setBusy(true);
    setError(null);
    try {
      setMember(await api.setMemberStatus(img.id, session.project.id, s));
    } catch (e) {
      setError(errorMessage(e));
    } finally {
      setBusy(false);
    }
  };
  const owner = projectName(img.owner) ?? img.owner ?? 'another project';
  return (
    <div class="card">
      <h2>Your invitation</h2>
      <ErrorText error={error} />
      {member === null ? (
        error === null && <Spinner label="Loading…" />
      ) : (
        <>
          <p>
            Project <strong>{owner}</strong> shared this image with <strong>{session.project.name}</strong>.
            Your answer: <StatusBadge status={member.status} />
          </p>
          <p class="muted">
            {member.status === 'pending'
              ? 'Accept it to see it in your image lists (and boot it); reject it to hide it.'
              : member.status === 'accepted'
                ? 'It is listed with your images. Reject it to hide it again.'
                : 'It is hidden from your lists. Accept it to list it.'}
          </p>
          <div class="actions">
            <button
              type="button"
              class="btn btn-primary"
              disabled={busy || member.status === 'accepted'}
              onClick={() => void answer('accepted')}
            >
              Accept
            </button>
            <button
              type="button"
              class="btn"
              disabled={busy || member.status === 'rejected'}
              onClick={() => void answer('rejected')}
            >
              Reject
            </button>
            <button
              type="button"
              class="btn btn-quiet"
              disabled={busy || member.status === 'pending'}
              onClick={() => void answer('pending')}
            >
              Decide later (pending)
            </button>
          </div>
        </>
      )}
    </div>
  );
}
