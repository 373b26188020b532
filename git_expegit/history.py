"""Bringing the catalog's cache up to date from git objects (the catalog's slow path).

Only what changed since the cache was written is read: the commits in `tip..cached tip`
(all of them when history was rewritten), the note buckets whose tree id changed, and the
execution folders of the new tree.
"""

from __future__ import annotations

import pygit2

from git_expegit import notes
from git_expegit.campaign import EXECUTIONS
from git_expegit.campaign import NOTES_REF
from git_expegit.catalog import Cache

_TREE = pygit2.enums.FileMode.TREE


def update(repo: pygit2.Repository, cache: Cache) -> None:
    tip = None if repo.head_is_unborn else repo.head.peel(pygit2.Commit)
    if (None if tip is None else str(tip.id)) != cache.head:
        _update_history(repo, cache, tip)
        cache.present = _present(repo, tip)
        cache.head = None if tip is None else str(tip.id)
    ref = repo.references.get(NOTES_REF)
    notes_tip = None if ref is None else repo[ref.target].peel(pygit2.Commit)
    if (None if notes_tip is None else str(notes_tip.id)) != cache.notes_commit:
        _update_notes(repo, cache, notes_tip)
        cache.notes_commit = None if notes_tip is None else str(notes_tip.id)


def _update_history(repo: pygit2.Repository, cache: Cache, tip: pygit2.Commit | None) -> None:
    if tip is None or not (cache.head and _ancestor(repo, cache.head, tip)):
        cache.history = {}
    if tip is None:
        return
    walker = repo.walk(tip.id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
    if cache.history and cache.head:
        walker.hide(pygit2.Oid(hex=cache.head))
    for commit in walker:
        # libgit2 gives an empty trailer value as "\n": values are stripped.
        trailers = {k: v.strip() for k, v in commit.message_trailers.items()}
        execution = trailers.get("Expegit-Execution")
        if execution and "Expegit-Status" not in trailers:  # the commit that created it
            cache.history[execution] = [str(commit.id), trailers.get("Expegit-Commit", ""),
                                        trailers.get("Expegit-Parameters", ""),
                                        trailers.get("Expegit-Profile") or None]


def _ancestor(repo: pygit2.Repository, old: str, tip: pygit2.Commit) -> bool:
    oid = pygit2.Oid(hex=old)
    return oid in repo and (oid == tip.id or repo.descendant_of(tip.id, oid))


def _present(repo: pygit2.Repository, tip: pygit2.Commit | None) -> set[str]:
    """The ids of the executions whose folder is in the tree at `tip`."""
    if tip is None or EXECUTIONS not in tip.tree:
        return set()
    present: set[str] = set()
    for bucket in _tree(repo, tip.tree[EXECUTIONS].id):
        if bucket.filemode == _TREE:
            present.update(e.name for e in _tree(repo, bucket.id) if e.name is not None)
    return present


def _update_notes(repo: pygit2.Repository, cache: Cache, commit: pygit2.Commit | None) -> None:
    """Re-read only the note buckets whose tree changed."""
    buckets: dict[str, list[object]] = {}
    tree = None if commit is None else commit.tree
    for entry in tree or ():
        name = entry.name or ""
        old = cache.buckets.get(name)
        if old is not None and old[0] == str(entry.id):
            buckets[name] = old
        elif entry.filemode == _TREE:
            buckets[name] = [str(entry.id), notes.read_all(repo, _tree(repo, entry.id), name)]
    cache.buckets = buckets
    # Notes git wrote without fan-out (it does while a notes tree is small): few, re-read.
    cache.flat = {e.name: notes.text(repo, e.id) for e in tree or ()
                  if e.filemode != _TREE and e.name and len(e.name) == 40}


def _tree(repo: pygit2.Repository, oid: pygit2.Oid) -> pygit2.Tree:
    tree = repo[oid]
    assert isinstance(tree, pygit2.Tree)
    return tree
