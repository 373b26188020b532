"""Creating, finishing, resetting and removing executions: the write side.

Every operation is a `Transaction`: its commits and notes are built in memory and
published whole or not at all (see transaction.py). The work tree is never touched behind
the user's back: only the folders an operation changes, never over a local change.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import uuid
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import pygit2

from git_expegit import git
from git_expegit import record
from git_expegit import transaction
from git_expegit.campaign import EXPERIMENT
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
from git_expegit.record import Trailer

# Only the results are committed: data/ (data/lfs/ through Git LFS) and the logs.
GITIGNORE = (b"# Added by git expegit: only results are committed; the code is dropped at "
             b"finish.\n/*\n!/.gitignore\n!/data/\n!/stdout\n!/stderr\n")
LFS_ATTRIBUTES = (b"* filter=lfs diff=lfs merge=lfs -text\n"
                  b".gitattributes -filter -diff -merge text\n")
# What an execution's folder holds besides the code: everything else a run creates is lost.
# environment.txt: the output of the profile's `record:` commands (git_runaway's RECORD).
KEPT = (".gitignore", "data", "stdout", "stderr", "environment.txt")
# How many names of files created outside data/ a note records.
_OUTSIDE_NAMES = 20


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
           place_code: bool = False, batch: str | None = None, queued: bool = False,
           request: str | None = None, sbatch: str | None = None) -> list[ExecutionId]:
    """New executions of `commit`, one per parameter string, each created by its own commit,
    all published at once. With `queued`, each is also queued for this clone to run (see
    queue.py); `request` is the key of the batch request they expand (see requests.py)."""
    parameters = [text.strip() for text in parameters]
    for text in parameters:
        _check(Trailer.PARAMETERS, text)
    _check(Trailer.PROFILE, profile)
    _check(Trailer.NAME, batch)
    generator = f"{getpass.getuser()}@{socket.gethostname()}"
    if batch is None and len(parameters) > 1:
        batch = str(uuid.uuid4())
    ids: list[ExecutionId] = []
    with transaction.begin(campaign) as tx:
        template = _template(tx.store)
        for text in parameters:
            execution = ExecutionId(str(uuid.uuid4()))
            tx.set_folder(execution, template)
            creation = tx.commit(record.message(f"Create execution {execution[:8]}", {
                Trailer.EXECUTION: execution, Trailer.COMMIT: commit,
                Trailer.PARAMETERS: text, Trailer.PROFILE: profile}))
            tx.texts[str(creation)] = ""  # a new commit has no note to read yet
            tx.log(str(creation), "created", by=generator, commit=commit[:12], batch=batch,
                   request=request, sbatch=sbatch)
            if queued:
                tx.log(str(creation), "queued", owner=tx.clone, attempt=1)
            ids.append(execution)
        tx.publish("exec new" if not queued else "jobs run")
        if place_code:
            for execution in ids:
                write_code(campaign, commit, campaign.root / folder(execution))
    return ids


def _check(key: Trailer, value: str | None) -> None:
    if value is not None:
        try:
            record.check_value(key, value)
        except record.RecordError as e:
            raise ExpegitError(str(e), ExitCode.INPUT) from None


def _template(store: ObjectStore) -> pygit2.Oid:
    """The tree of a new execution, the same for all: .gitignore and data/lfs/."""
    lfs = store.tree({".gitattributes": Entry(BLOB, store.blob(LFS_ATTRIBUTES))})
    data = store.tree({"lfs": Entry(TREE, lfs)})
    return store.tree({".gitignore": Entry(BLOB, store.blob(GITIGNORE)),
                       "data": Entry(TREE, data)})


@dataclass(frozen=True)
class Finished:
    status: record.State
    outside: list[str]  # files the run created outside data/: not kept


@dataclass(frozen=True)
class Ending:
    """How a run ended, for finish_many."""

    execution: Execution
    exit_code: int | None
    failed: bool = False  # failed whatever the exit code: a timeout, runaway's own failure
    fields: Mapping[str, object] = field(default_factory=dict)  # host=, duration=, reason=


def finish(campaign: Campaign, execution: Execution, exit_code: int | None) -> Finished:
    """Commit the execution's results (data/, data/lfs/ through LFS, the logs), record its
    end in the notes, then drop the experiment code from its folder."""
    return finish_many(campaign, [Ending(execution, exit_code)], strict=True)[execution.id]


def finish_many(campaign: Campaign, endings: Sequence[Ending], strict: bool = False,
                events: Sequence[tuple[Execution, str, Mapping[str, object]]] = ()
                ) -> dict[ExecutionId, Finished]:
    """Finish several executions in one transaction: one ref move for all, with `events`
    (running...) logged first. With `strict`, one that cannot be finished fails them all;
    without, it is left out (removed or finished meanwhile, a git repository among its
    results) and missing from the answer."""
    git.require_lfs(campaign.root, campaign.repo)
    done: dict[ExecutionId, Finished] = {}
    with transaction.begin(campaign) as tx:
        for execution, kind, fields in events:
            tx.log(execution.creation, kind, **fields)
        chosen = []
        for ending in endings:
            try:
                _refuse_done(tx, ending.execution)  # under the lock: another may have won
                _refuse_repositories(campaign.root, folder(ending.execution.id))
            except ExpegitError:
                if strict:
                    raise
                continue
            chosen.append(ending)
        if not chosen:
            if events:
                tx.publish("finish", worktree=False)
            return done
        trees = _add_results(tx, [folder(e.execution.id) for e in chosen])
        for ending in chosen:
            execution, path = ending.execution, folder(ending.execution.id)
            _refuse_tracked_changes(tx, path, trees[path])
            outside = _created_outside(campaign, execution)
            tx.set_folder(execution.id, trees[path])
            status = (record.State.FAILED if ending.failed or ending.exit_code not in (0, None)
                      else record.State.FINISHED)
            tx.commit(record.message(f"Finish execution {execution.id[:8]}", {
                Trailer.EXECUTION: execution.id, Trailer.STATUS: status,
                Trailer.EXIT_CODE: "unknown" if ending.exit_code is None
                else str(ending.exit_code)}))
            shown = outside[:_OUTSIDE_NAMES] + ([f"+{len(outside) - _OUTSIDE_NAMES}"]
                                                if len(outside) > _OUTSIDE_NAMES else [])
            tx.log(execution.creation, status, exit=ending.exit_code,
                   lost=",".join(shown) or None, **ending.fields)
            done[execution.id] = Finished(status, outside)
        tx.publish("finish", worktree=False)
    for ending in chosen:
        _drop_code(campaign, folder(ending.execution.id))
    return done


def _add_results(tx: transaction.Transaction, paths: Sequence[str]) -> dict[str, pygit2.Oid]:
    """Stage the results in the transaction's private index; each folder's tree."""
    root = tx.campaign.root
    # --force: results must not be lost to the user's own ignore rules (a global `*.log`);
    # the folder's .gitignore already keeps the code out.
    results = [f"{path}/{name}" for path in paths for name in KEPT[1:]
               if (root / path / name).exists()]
    add = ["-c", "filter.lfs.required=true", "add", "-A", "--force", "--"]
    if results:
        git.run([*add, *results], root, env={"GIT_INDEX_FILE": str(tx.private_index())},
                what="adding the results")
    else:
        tx.private_index()
    tx.staged.update(paths)
    # The folders' trees, from an index of these folders alone: `write-tree` on the whole
    # index would read and write all of it once more (a quarter second at 50,000).
    alone = tx.campaign.state_dir / "folder.index"
    alone.unlink(missing_ok=True)
    env = {"GIT_INDEX_FILE": str(alone)}
    try:
        own = [f"{path}/.gitignore" for path in paths if (root / path / ".gitignore").exists()]
        git.run([*add, *own, *results], root, env=env, what="adding the results")
        top = tx.campaign.repo[git.run(["write-tree"], root, env=env).strip()]
        assert isinstance(top, pygit2.Tree)
        return {path: top[path].id for path in paths}
    finally:
        alone.unlink(missing_ok=True)


def _refuse_done(tx: transaction.Transaction, execution: Execution) -> None:
    if folder(execution.id) not in tx.head.tree:
        raise ExpegitError(f"execution {execution.id[:8]} was removed", ExitCode.INPUT)
    now = record.state(tx.note(execution.creation).splitlines())
    if now in record.DONE:
        raise ExpegitError(f"execution {execution.id[:8]} is already {now}: use git "
                           "expegit exec reset to run it again", ExitCode.INPUT)


def _refuse_tracked_changes(tx: transaction.Transaction, path: str,
                            results: pygit2.Oid) -> None:
    """The folder's own files (.gitignore, data/lfs/.gitattributes) must be as committed:
    finish commits results, not a changed ignore rule or a lost LFS rule. Compared here,
    in the trees, rather than with `git status`, which reads the whole index again."""
    repo = tx.campaign.repo
    before, after = tx.head.tree[path], repo[results]
    assert isinstance(before, pygit2.Tree) and isinstance(after, pygit2.Tree)
    for name in (".gitignore", "data/lfs/.gitattributes"):
        old = before[name].id if name in before else None
        new = after[name].id if name in after else None
        # .gitignore is not among what finish adds: its copy in the work tree counts.
        if name == ".gitignore" and new is not None:
            try:
                new = pygit2.hash((tx.campaign.root / path / name).read_bytes())
            except FileNotFoundError:
                new = None
        if old != new:
            raise ExpegitError(f"{path} has changes to files git tracks ({name}): restore "
                               f"it (git restore --staged --worktree {path}/{name})",
                               ExitCode.DIRTY)


def _refuse_repositories(root: Path, path: str) -> None:
    """A git repository among the results would be committed as a link to a commit that
    no remote has: its files would never leave this machine."""
    data = root / path / "data"
    for folder_, folders, files in os.walk(data):
        # Any case: git refuses .GIT too, where file systems may fold case.
        if any(name.lower() == ".git" for name in [*folders, *files]):
            inner = os.path.relpath(folder_, root)
            raise ExpegitError(f"{inner} is a git repository (it holds a .git), which git "
                               f"would not store: remove {inner}/.git or move it out of "
                               "data/, then finish again", ExitCode.INPUT)


def _created_outside(campaign: Campaign, execution: Execution) -> list[str]:
    """The files of the folder that are neither results nor the experiment's code: the
    run created them outside data/, and finish drops them with the code."""
    base = campaign.root / folder(execution.id)
    try:
        code = campaign.experiment()[pygit2.Oid(hex=execution.commit)].peel(pygit2.Tree)
    except (ExpegitError, KeyError, ValueError):
        return []  # without the experiment, the code cannot be told from the rest
    found = []
    for here, folders, files in os.walk(base):
        relative = os.path.relpath(here, base)
        if relative == ".":
            folders[:] = [f for f in folders if f not in KEPT]
            files = [f for f in files if f not in KEPT]
        for name in sorted(files) + sorted(f for f in folders if os.path.islink(
                os.path.join(here, f))):
            path = name if relative == "." else f"{relative}/{name}"
            if path not in code:
                found.append(path)
        folders.sort()
    return sorted(found)


def _drop_code(campaign: Campaign, path: str, keep: Sequence[str] = KEPT) -> None:
    """Remove what the folder holds besides `keep` (the code, what the run left outside
    data/), never data/. In Python, not `git clean`: that reads the whole index."""
    for entry in os.scandir(campaign.root / path):
        if entry.name in keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def reset(campaign: Campaign, execution: Execution) -> None:
    """Make the execution new again, as the seed did: its results are deleted, its log says
    so, and its folder gets the experiment code back, ready for ./run."""
    path = folder(execution.id)
    experiment_commit(campaign, execution.commit)  # checked first: the code must come back
    with transaction.begin(campaign) as tx:
        tx.set_folder(execution.id, _template(tx.store))
        tx.commit(record.message(f"Reset execution {execution.id[:8]}", {
            Trailer.EXECUTION: execution.id, Trailer.STATUS: "reset"}))
        tx.log(execution.creation, "reset")
        tx.publish("exec reset")
        _drop_code(campaign, path, keep=(".gitignore", "data"))
        write_code(campaign, execution.commit, campaign.root / path)


def check_profile(profile: str) -> None:
    _check(Trailer.PROFILE, profile)


def requeue(campaign: Campaign, chosen: Sequence[Execution], profile: str | None,
            attempts: Mapping[ExecutionId, int]) -> list[ExecutionId]:
    """Queue executions again for this clone, in one transaction: a finished or failed one
    gets its new folder (the history keeps its results), all get `queued` (see queue.py)."""
    with transaction.begin(campaign) as tx:
        for execution in chosen:
            if folder(execution.id) not in tx.head.tree:
                raise ExpegitError(f"execution {execution.id[:8]} was removed",
                                   ExitCode.INPUT)
            if execution.state in record.DONE:
                tx.set_folder(execution.id, _template(tx.store))
                tx.commit(record.message(f"Reschedule execution {execution.id[:8]}", {
                    Trailer.EXECUTION: execution.id, Trailer.STATUS: "reset"}))
                tx.log(execution.creation, "reset")
            tx.log(execution.creation, "queued", owner=tx.clone,
                   attempt=attempts[execution.id], profile=profile)
        tx.publish("jobs reschedule")
    return [e.id for e in chosen]


def remove(campaign: Campaign, execution: Execution, force: bool = False) -> None:
    """Delete the execution's folder; its history and log stay in git. Results that are
    not committed are deleted only with `force`, as git rm does."""
    path = folder(execution.id)
    with transaction.begin(campaign) as tx:
        if not force:
            _refuse_uncommitted(campaign, path)
        tx.set_folder(execution.id, None)
        tx.commit(record.message(f"Remove execution {execution.id[:8]}", {
            Trailer.EXECUTION: execution.id, Trailer.STATUS: "removed"}))
        tx.log(execution.creation, "removed")
        tx.publish("exec remove", force=force)
        shutil.rmtree(campaign.root / path, ignore_errors=True)
        bucket = (campaign.root / path).parent
        if bucket.is_dir() and not any(bucket.iterdir()):
            bucket.rmdir()


def _refuse_uncommitted(campaign: Campaign, path: str) -> None:
    # The folder's .gitignore hides the code, so what shows is results and changes.
    changed = git.run(["status", "--porcelain", "--untracked-files=all", "--", path],
                      campaign.root).splitlines()
    if changed:
        raise ExpegitError(f"{path} has results that are not committed ({changed[0][3:]}): "
                           "finish the execution first, or use exec remove --force to delete "
                           "them", ExitCode.DIRTY)
