"""Many clones, one remote, nothing lost: fetch, merge the branch and the notes, push.

Executions live in disjoint folders, so merging the branch never conflicts on them; the
branch is merged (never rebased), so every note stays attached to its commit. Notes are
united line by line (cat_sort_uniq). The push moves the branch and the notes atomically
and is retried from the fetch whenever another clone pushed first.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pygit2

from git_expegit import git
from git_expegit import notes
from git_expegit import repository
from git_expegit import requests
from git_expegit import transaction
from git_expegit.campaign import EXECUTIONS
from git_expegit.campaign import EXPERIMENT
from git_expegit.campaign import NOTES_REF
from git_expegit.campaign import Campaign
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.objects import TREE
from git_expegit.objects import Entry
from git_expegit.objects import ObjectStore

REMOTE = "origin"
REMOTE_NOTES = "refs/remote-notes/origin/expegit"
TRIES = 30


@dataclass(frozen=True)
class Report:
    received: int  # commits that came from the remote
    tries: int
    kept: list[str]  # folders removed on one side and changed on the other, kept whole


def sync(campaign: Campaign, tries: int = TRIES) -> Report:
    """Bring the remote's executions here and ours there; retry when another clone won."""
    _require_remote(campaign)
    git.require_lfs(campaign.root, campaign.repo)
    received, kept = 0, list[str]()
    with campaign.locked():
        transaction.recover(campaign)
        fetch(campaign)  # first: an unreachable remote fails here, before anything changes
        # LFS files go up before the race with the other clones: the branch push below then
        # skips the LFS hook's upload (GIT_LFS_SKIP_PUSH), so the window between our fetch
        # and our push, in which another clone's push makes ours fail, is shorter.
        _push_lfs(campaign)
        rejected = ExpegitError(f"the remote kept moving: push rejected {tries} times; run "
                                "git expegit sync again", ExitCode.REMOTE)
        failure = rejected
        for attempt in range(1, tries + 1):
            # Fetched again even the first time: other clones pushed during the LFS upload.
            # A remote busy with their pushes (or its own gc) sometimes fails one fetch,
            # which changes nothing here: it is retried, and reported if it never works.
            try:
                fetch(campaign)
            except ExpegitError as e:
                failure = e
                time.sleep(random.uniform(0.1, 0.3))
                continue
            failure = rejected
            merged = _integrate(campaign)
            received, kept = received + merged.received, kept + merged.kept
            _publish_experiment(campaign)
            if _push(campaign):
                git.collect_garbage(campaign.root)
                return Report(received, attempt, kept)
            time.sleep(random.uniform(0.05, 0.2) * attempt)
    raise failure


@contextmanager
def pushing(campaign: Campaign, push: bool) -> Iterator[None]:
    """The `-p` of a command: the remote is checked before the change, so an unreachable
    one changes nothing, and synced after it."""
    if push:
        fetch(campaign)
    yield
    if push:
        sync(campaign)


def fetch(campaign: Campaign) -> None:
    """Fetch the branch and the notes; nothing local moves, so a failure changes nothing."""
    _require_remote(campaign)
    git.run([*git.NO_AUTO_GC, "fetch", "--quiet", "--no-tags", REMOTE,
             f"+refs/heads/*:refs/remotes/{REMOTE}/*", f"+{NOTES_REF}*:{REMOTE_NOTES}*"],
            campaign.root, code=ExitCode.REMOTE,
            what=f"fetching from {REMOTE} (nothing was changed)")


def has_remote(campaign: Campaign) -> bool:
    return REMOTE in campaign.repo.remotes.names()


def _require_remote(campaign: Campaign) -> None:
    if REMOTE not in campaign.repo.remotes.names():
        raise ExpegitError(f"the campaign has no remote {REMOTE!r}: add one with git remote add "
                           f"{REMOTE} URL", ExitCode.REMOTE)


def _integrate(campaign: Campaign) -> Merged:
    """Merge what was fetched into the branch and the notes, as one transaction."""
    tx = transaction.start(campaign)
    repo, head, branch = campaign.repo, tx.head, campaign.branch()
    theirs_ref = repo.references.get(f"refs/remotes/{REMOTE}/{branch.removeprefix('refs/heads/')}")
    notes_ref = repo.references.get(REMOTE_NOTES)
    theirs = None if theirs_ref is None else _oid(theirs_ref.target)
    kept: list[str] = []
    trees: dict[pygit2.Oid, pygit2.Oid] = {}  # of the merge commit, not yet written

    def merge(ours: pygit2.Oid, theirs: pygit2.Oid) -> pygit2.Oid:
        commit, trees[commit] = _merge_commits(tx.store, repo, ours, theirs, tx.ident, kept)
        return commit

    new_tip = _unite(repo, head.id, theirs, merge)
    their_notes = None if notes_ref is None else _oid(notes_ref.target)
    new_notes = _unite(repo, tx.notes_tip, their_notes,
                       lambda o, t: notes.merge(tx.store, repo, o, t, tx.ident))
    if new_tip == head.id and new_notes == tx.notes_tip:
        return Merged(0, [])
    assert new_tip is not None
    tx.tip, tx.notes_tip, tx.touched = new_tip, new_notes, None
    tx.root = trees.get(new_tip) or repo[new_tip].peel(pygit2.Tree).id
    tx.publish("sync")
    if new_tip == head.id:
        return Merged(0, [])
    if _pin(repo[tx.root].peel(pygit2.Tree)) != _pin(head.tree):
        repository.follow_experiment(campaign.root)  # the index moved, not the submodule
    return Merged(sum(1 for _ in _new_commits(repo, new_tip, head.id)), kept)


@dataclass(frozen=True)
class Merged:
    received: int  # commits that came from the remote
    kept: list[str]  # folders removed on one side and changed on the other, kept whole


def _pin(tree: pygit2.Tree) -> pygit2.Oid | None:
    return tree[EXPERIMENT].id if EXPERIMENT in tree else None


def _new_commits(repo: pygit2.Repository, tip: pygit2.Oid, old: pygit2.Oid) -> pygit2.Walker:
    walker = repo.walk(tip)
    walker.hide(old)
    return walker


def _unite(repo: pygit2.Repository, ours: pygit2.Oid | None, theirs: pygit2.Oid | None,
           merge: Callable[[pygit2.Oid, pygit2.Oid], pygit2.Oid]) -> pygit2.Oid | None:
    """The tip holding both histories: one side's when it contains the other, else a merge."""
    if ours is None or theirs is None:
        return theirs if ours is None else ours
    if ours == theirs or repo.descendant_of(ours, theirs):
        return ours
    if repo.descendant_of(theirs, ours):
        return theirs
    return merge(ours, theirs)


def _merge_commits(store: ObjectStore, repo: pygit2.Repository, ours: pygit2.Oid,
                   theirs: pygit2.Oid, ident: str,
                   kept: list[str]) -> tuple[pygit2.Oid, pygit2.Oid]:
    """A merge commit of the branch. Executions live in disjoint folders; one removed on
    one side and changed on the other (a finish, a reset) is kept whole as changed, never
    half deleted. Any other conflict means two clones changed the same file, which a
    person must settle."""
    base = repo.merge_base(ours, theirs)
    whole = _removed_and_changed(repo, base, ours, theirs) if base is not None else {}
    # No rename detection: every execution has the same .gitignore, so "remove one, create
    # another" would look like a rename and clash with the other side's removal.
    index = repo.merge_commits(ours, theirs, flags=pygit2.enums.MergeFlag(0))
    if index.conflicts is not None:
        paths = {e.path for entries in index.conflicts for e in entries if e is not None}
        for path in paths:
            if _folder_of(path) in whole:
                del index.conflicts[path]
        if index.conflicts is not None:
            name = next(e.path for entries in index.conflicts for e in entries if e is not None)
            raise ExpegitError(f"sync: this clone and {REMOTE} both changed {name}; merge it "
                               f"by hand (git merge {REMOTE}/{_branch_name(repo)}), then run "
                               "git expegit sync", ExitCode.REMOTE)
    tree = index.write_tree(repo)
    for path, side in sorted(whole.items()):
        tree = _put(store, tree, path.split("/"), repo[side].peel(pygit2.Tree)[path].id)
        kept.append(path)
    return store.commit(tree, [ours, theirs], f"Merge executions from {REMOTE}\n", ident), tree


def _branch_name(repo: pygit2.Repository) -> str:
    return "<branch>" if repo.head_is_detached else repo.head.shorthand


def _folder_of(path: str) -> str:
    return "/".join(path.split("/")[:3])


def _removed_and_changed(repo: pygit2.Repository, base: pygit2.Oid, ours: pygit2.Oid,
                         theirs: pygit2.Oid) -> dict[str, pygit2.Oid]:
    """Execution folders that one side removed and the other changed: folder -> the
    commit whose version is kept."""
    trees = {side: repo[side].peel(pygit2.Tree) for side in (ours, theirs)}
    base_tree = repo[base].peel(pygit2.Tree)
    changed = {side: {_folder_of(d.new_file.path) for d in
                      base_tree.diff_to_tree(trees[side]).deltas
                      if d.new_file.path.startswith(EXECUTIONS + "/")} for side in trees}
    whole: dict[str, pygit2.Oid] = {}
    for side, other in ((ours, theirs), (theirs, ours)):
        for path in changed[side] & changed[other]:
            if path not in trees[other] and path in trees[side] and path in base_tree:
                whole[path] = side
    return whole


def _put(store: ObjectStore, tree: pygit2.Oid, parts: list[str],
         folder: pygit2.Oid) -> pygit2.Oid:
    """`tree` with the subtree at `parts` replaced by `folder`."""
    entries = store.entries(tree)
    if len(parts) == 1:
        entries[parts[0]] = Entry(TREE, folder)
    else:
        inner = entries[parts[0]].oid if parts[0] in entries else None
        entries[parts[0]] = Entry(TREE, _put(store, inner, parts[1:], folder)) \
            if inner is not None else Entry(TREE, _put_new(store, parts[1:], folder))
    return store.tree(entries, base=tree)


def _put_new(store: ObjectStore, parts: list[str], folder: pygit2.Oid) -> pygit2.Oid:
    if len(parts) == 1:
        return store.tree({parts[0]: Entry(TREE, folder)})
    return store.tree({parts[0]: Entry(TREE, _put_new(store, parts[1:], folder))})


def _publish_experiment(campaign: Campaign) -> None:
    """Before the campaign goes up, the experiment commit it pins, when the remote's branch
    pins another, must be on the experiment's remote, or collaborators could not check it
    out. A commit that a batch request pinned is pushed there on the branch it was made on
    (as git push --recurse-submodules=on-demand would); otherwise sync refuses."""
    repo, xprp = campaign.repo, campaign.root / EXPERIMENT
    head, branch = campaign.head(), campaign.branch().removeprefix("refs/heads/")
    theirs = repo.references.get(f"refs/remotes/{REMOTE}/{branch}")
    ours = None if head is None else _pin(head.tree)
    if (ours is None or not (xprp / ".git").exists()
            or (theirs is not None and _pin(repo[theirs.target].peel(pygit2.Tree)) == ours)):
        return
    commit = str(ours)

    def on_remote() -> bool:
        return bool(git.run(["for-each-ref", "--count=1", "--format=x", "--contains", commit,
                             f"refs/remotes/{REMOTE}"], xprp).strip())

    if on_remote():
        return
    git.run([*git.FILE_PROTOCOL, "fetch", "--quiet", REMOTE], xprp, code=ExitCode.REMOTE,
            what=f"fetching the experiment in {EXPERIMENT}/ (nothing was pushed)")
    if on_remote():
        return
    for ref in git.run(["for-each-ref", "--format=%(refname)", "--contains", commit,
                        requests.PUSH_REFS.rstrip("/")], xprp).split():
        made_on = ref.removeprefix(requests.PUSH_REFS)
        if subprocess.run(["git", *git.FILE_PROTOCOL, "push", "--quiet", REMOTE,
                           f"{commit}:refs/heads/{made_on}"], cwd=xprp,
                          capture_output=True).returncode == 0:
            return
    raise ExpegitError(f"the campaign pins experiment commit {commit[:12]}, which the "
                       "experiment's remote does not have, so collaborators could not check "
                       f"it out: push it (git -C {EXPERIMENT} push {REMOTE} "
                       f"{commit[:12]}:refs/heads/BRANCH, or git push from your clone), then "
                       "run git expegit sync again (your work is committed here)",
                       ExitCode.REMOTE)


def _push_lfs(campaign: Campaign) -> None:
    """Upload the LFS files of the branch that the remote does not have yet; the merges
    made afterwards bring none of ours."""
    git.run(["lfs", "push", REMOTE, campaign.branch()], campaign.root, code=ExitCode.REMOTE,
            what=f"uploading LFS files to {REMOTE} (nothing was changed)")


def _push(campaign: Campaign) -> bool:
    """Push the branch and the notes together; False when the remote moved first."""
    branch = campaign.branch()
    refspecs = [f"{branch}:{branch}"]
    if campaign.notes() is not None:
        refspecs.append(f"{NOTES_REF}:{NOTES_REF}")
    result = subprocess.run(["git", *git.NO_AUTO_GC, "push", "--porcelain", "--atomic",
                             "--quiet", REMOTE, *refspecs], cwd=campaign.root, capture_output=True,
                            env={**os.environ, "GIT_LFS_SKIP_PUSH": "1"})
    if result.returncode == 0:
        return True
    out = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    # "[rejected]" (the remote moved first) or "[remote rejected]" (it could not take the
    # push just now: a lock, an unpacker busy with another clone's push): both are retried.
    if ("rejected]" in out or "atomic push failed" in out) and "declined" not in out:
        return False
    raise ExpegitError(f"pushing to {REMOTE} failed: {git.last_line(result.stderr)}; your "
                       "work is committed here: run git expegit sync later", ExitCode.REMOTE)


def _oid(target: pygit2.Oid | str) -> pygit2.Oid:
    assert isinstance(target, pygit2.Oid), "a direct reference"
    return target


def _hex(oid: pygit2.Oid | None) -> str | None:
    return None if oid is None else str(oid)
