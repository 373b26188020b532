"""Creating, finishing, resetting and removing executions: the write side.

Every operation builds its commits and notes in memory (`ObjectStore`), writes them as
one pack, then moves the branch and `refs/notes/expegit` together with a compare-and-swap,
and only then brings the index and work tree along, as `git checkout` would. A failure
before the refs move leaves nothing behind; the work tree is never touched behind the
user's back.
"""

from __future__ import annotations

import dataclasses
import getpass
import shutil
import socket
import uuid
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pygit2

from git_expegit import git
from git_expegit import notes
from git_expegit.campaign import EXECUTIONS
from git_expegit.campaign import EXPERIMENT
from git_expegit.campaign import NOTES_REF
from git_expegit.campaign import Campaign
from git_expegit.campaign import ExecutionId
from git_expegit.campaign import folder
from git_expegit.catalog import Execution
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.objects import BLOB
from git_expegit.objects import TREE
from git_expegit.objects import Entry
from git_expegit.objects import ObjectStore
from git_expegit.placement import write_code

# Only the results are committed: data/ (data/lfs/ through Git LFS) and the logs.
GITIGNORE = (b"# Added by git expegit: only results are committed; the code is dropped at "
             b"finish.\n/*\n!/.gitignore\n!/data/\n!/stdout\n!/stderr\n")
LFS_ATTRIBUTES = (b"* filter=lfs diff=lfs merge=lfs -text\n"
                  b".gitattributes -filter -diff -merge text\n")


@dataclass
class _Edit:
    """An operation being built: the new branch tip and the notes to append."""

    campaign: Campaign
    store: ObjectStore
    ident: str
    head: pygit2.Commit
    tip: pygit2.Oid
    root: pygit2.Oid
    texts: dict[str, str]

    def set_folder(self, execution: ExecutionId, tree: pygit2.Oid | None) -> None:
        """Put `tree` at the execution's folder, or remove the folder when None."""
        store, bucket_name = self.store, execution[:2]
        root = store.entries(self.root)
        excs_old = root[EXECUTIONS].oid if EXECUTIONS in root else None
        excs = store.entries(excs_old)
        bucket_old = excs[bucket_name].oid if bucket_name in excs else None
        bucket = store.entries(bucket_old)
        if tree is None:
            bucket.pop(execution, None)
        else:
            bucket[execution] = Entry(TREE, tree)
        if bucket:
            excs[bucket_name] = Entry(TREE, store.tree(bucket, base=bucket_old))
        else:
            excs.pop(bucket_name, None)
        root[EXECUTIONS] = Entry(TREE, store.tree(excs, base=excs_old))
        self.root = store.tree(root, base=self.root)

    def commit(self, message: str) -> pygit2.Oid:
        self.tip = self.store.commit(self.root, [self.tip], message, self.ident)
        return self.tip

    def log(self, creation: str, line: str) -> None:
        if creation not in self.texts:
            self.texts[creation] = notes.read(self.campaign.repo, _notes_tree(self.campaign),
                                              creation)
        self.texts[creation] += line

    def publish(self, message: str, checkout: bool = True) -> None:
        """Write the objects, move both refs at once, then bring the work tree along."""
        campaign, store = self.campaign, self.store
        old_notes = campaign.notes()
        tree = notes.edit(store, None if old_notes is None else old_notes.tree_id, self.texts)
        new_notes = notes.commit(store, tree, [] if old_notes is None else [old_notes.id],
                                 self.ident, f"Notes added by 'git expegit {message}'")
        store.write()
        moves = {campaign.branch(): (str(self.head.id), str(self.tip)),
                 NOTES_REF: (None if old_notes is None else str(old_notes.id), str(new_notes))}
        git.publish(campaign.root, moves, message,
                    (str(self.head.tree_id), str(self.root)) if checkout else None)


@contextmanager
def editing(campaign: Campaign) -> Iterator[_Edit]:
    """Hold the campaign's lock while an operation is built and published."""
    with campaign.locked():
        head = campaign.head()
        if head is None:
            raise ExpegitError("the campaign has no commit yet: run git expegit init",
                               ExitCode.CAMPAIGN)
        yield _Edit(campaign, ObjectStore(campaign.repo), git.ident(campaign.root), head,
                    head.id, head.tree_id, {})


def experiment_commit(campaign: Campaign, revision: str | None) -> str:
    """The full id of an experiment commit: by default the one the campaign pins."""
    if revision is None:
        head = campaign.head()
        if head is None or EXPERIMENT not in head.tree:
            raise ExpegitError(f"the campaign has no {EXPERIMENT} submodule: run git expegit "
                               "init", ExitCode.CAMPAIGN)
        pinned = head.tree[EXPERIMENT].id
        if pinned not in campaign.experiment():
            raise ExpegitError(f"the experiment's pinned commit {str(pinned)[:12]} is not in "
                               f"{EXPERIMENT}/: run git submodule update --init",
                               ExitCode.CAMPAIGN)
        return str(pinned)
    try:
        return str(campaign.experiment().revparse_single(revision).peel(pygit2.Commit).id)
    except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
        raise ExpegitError(f"unknown experiment commit {revision!r}: run git expegit "
                           "update-expe to fetch the experiment's new commits",
                           ExitCode.INPUT) from None


def create(campaign: Campaign, commit: str, parameters: Sequence[str], profile: str | None,
           place_code: bool = False) -> list[ExecutionId]:
    """New executions of `commit`, one per parameter string, each created by its own commit,
    all published at once."""
    for text in parameters:
        if "\n" in text or "\r" in text:
            raise ExpegitError("parameters must fit on one line", ExitCode.INPUT)
    generator = f"{getpass.getuser()}@{socket.gethostname()}"
    batch = str(uuid.uuid4()) if len(parameters) > 1 else None
    ids: list[ExecutionId] = []
    with editing(campaign) as edit:
        template = _template(edit.store)
        for text in parameters:
            execution = ExecutionId(str(uuid.uuid4()))
            edit.set_folder(execution, template)
            creation = edit.commit(_creation_message(execution, commit, text, profile))
            edit.texts[str(creation)] = notes.event("created", by=generator, commit=commit[:12],
                                                    batch=batch)
            ids.append(execution)
        edit.publish("exec new")
        if place_code:
            for execution in ids:
                write_code(campaign, commit, campaign.root / folder(execution))
    return ids


def _creation_message(execution: ExecutionId, commit: str, parameters: str,
                      profile: str | None) -> str:
    trailers = [f"Expegit-Execution: {execution}", f"Expegit-Commit: {commit}",
                f"Expegit-Parameters: {parameters.strip()}"]
    if profile:
        trailers.append(f"Expegit-Profile: {profile}")
    return f"Create execution {execution[:8]}\n\n" + "\n".join(trailers) + "\n"


def _template(store: ObjectStore) -> pygit2.Oid:
    """The tree of a new execution, the same for all: .gitignore and data/lfs/."""
    lfs = store.tree({".gitattributes": Entry(BLOB, store.blob(LFS_ATTRIBUTES))})
    data = store.tree({"lfs": Entry(TREE, lfs)})
    return store.tree({".gitignore": Entry(BLOB, store.blob(GITIGNORE)),
                       "data": Entry(TREE, data)})


def finish(campaign: Campaign, execution: Execution, exit_code: int | None) -> None:
    """Commit the execution's results (data/, data/lfs/ through LFS, the logs), record its
    end in the notes, then drop the experiment code from its folder."""
    path = folder(execution.id)
    git.require_lfs(campaign.root, campaign.repo)
    with editing(campaign) as edit:
        _refuse_finished(edit, execution)  # under the lock: another finish may have won
        _refuse_tracked_changes(campaign, path)
        # --force: results must not be lost to the user's own ignore rules (a global
        # `*.log`); the folder's .gitignore already keeps the code out.
        results = [f"{path}/{name}" for name in ("data", "stdout", "stderr")
                   if (campaign.root / path / name).exists()]
        git.run(["-c", "filter.lfs.required=true", "add", "-A", "--force", "--", *results],
                campaign.root, what="adding the results")
        try:
            tree = git.run(["write-tree", f"--prefix={path}/"], campaign.root).strip()
            edit.set_folder(execution.id, pygit2.Oid(hex=tree))
            status = "finished" if exit_code in (0, None) else "failed"
            edit.commit(f"Finish execution {execution.id[:8]}\n\n"
                        f"Expegit-Execution: {execution.id}\nExpegit-Status: {status}\n"
                        f"Expegit-Exit-Code: {'unknown' if exit_code is None else exit_code}\n")
            edit.log(execution.creation, notes.event(status, exit=exit_code))
            edit.publish("finish", checkout=False)
        except BaseException:
            git.run(["reset", "-q", "--", path], campaign.root)  # the index as it was
            raise
    _drop_code(campaign, path)


def _refuse_finished(edit: _Edit, execution: Execution) -> None:
    if folder(execution.id) not in edit.head.tree:
        raise ExpegitError(f"execution {execution.id[:8]} was removed", ExitCode.INPUT)
    log = notes.read(edit.campaign.repo, _notes_tree(edit.campaign), execution.creation)
    now = dataclasses.replace(execution, log=tuple(log.splitlines()))
    if now.state in ("finished", "failed"):
        raise ExpegitError(f"execution {execution.id[:8]} is already {now.state}: use git "
                           "expegit exec reset to run it again", ExitCode.INPUT)


def _refuse_tracked_changes(campaign: Campaign, path: str) -> None:
    changed = git.run(["status", "--porcelain", "--untracked-files=no", "--", path],
                      campaign.root).splitlines()
    if changed:
        raise ExpegitError(f"{path} has changes to files git tracks ({changed[0][3:]}): "
                           f"commit or restore them (git restore --staged --worktree {path})",
                           ExitCode.DIRTY)


def _drop_code(campaign: Campaign, path: str) -> None:
    """Remove what git does not track in the folder (the code), but never touch data/."""
    git.run(["clean", "-d", "-x", "-f", "-q", "--", path, f":(exclude){path}/data"],
            campaign.root)


def reset(campaign: Campaign, execution: Execution) -> None:
    """Make the execution new again, as the seed did: its results are deleted, its log says
    so, and its folder gets the experiment code back, ready for ./run."""
    path = folder(execution.id)
    with editing(campaign) as edit:
        edit.set_folder(execution.id, _template(edit.store))
        edit.commit(f"Reset execution {execution.id[:8]}\n\n"
                    f"Expegit-Execution: {execution.id}\nExpegit-Status: reset\n")
        edit.log(execution.creation, notes.event("reset"))
        edit.publish("exec reset")
        _drop_code(campaign, path)
        write_code(campaign, execution.commit, campaign.root / path)


def remove(campaign: Campaign, execution: Execution) -> None:
    """Delete the execution's folder; its history and log stay in git."""
    path = folder(execution.id)
    with editing(campaign) as edit:
        edit.set_folder(execution.id, None)
        edit.commit(f"Remove execution {execution.id[:8]}\n\n"
                    f"Expegit-Execution: {execution.id}\nExpegit-Status: removed\n")
        edit.log(execution.creation, notes.event("removed"))
        edit.publish("exec remove")
        shutil.rmtree(campaign.root / path, ignore_errors=True)
        bucket = (campaign.root / path).parent
        if bucket.is_dir() and not any(bucket.iterdir()):
            bucket.rmdir()


def _notes_tree(campaign: Campaign) -> pygit2.Tree | None:
    commit = campaign.notes()
    return None if commit is None else commit.tree
