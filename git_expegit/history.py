"""Bringing the catalog's cache up to date from git objects (the catalog's slow path).

Only what changed since the cache was written is read: the commits in `tip..cached tip`
(all of them when history was rewritten), and the files that differ between the cached
and the current `excs/` and notes trees (libgit2 compares the trees and skips the subtrees
whose ids are equal). A finish costs a few records, whatever the size of the campaign.
"""

from __future__ import annotations

import pygit2

from git_expegit import notes
from git_expegit.campaign import EXECUTIONS
from git_expegit.campaign import NOTES_REF
from git_expegit.catalog import Catalog
from git_expegit.catalog import Record

_TREE_MODE = pygit2.enums.FileMode.TREE
# execution id -> (order of creation, creation commit, experiment commit, parameters,
# profile)
Created = dict[str, tuple[int, str, str, str, str | None]]


def update(repo: pygit2.Repository, catalog: Catalog) -> None:
    tip = None if repo.head_is_unborn else repo.head.peel(pygit2.Commit)
    ref = repo.references.get(NOTES_REF)
    notes_tip = None if ref is None else repo[ref.target].peel(pygit2.Commit)
    head = None if tip is None else str(tip.id)
    notes_id = None if notes_tip is None else str(notes_tip.id)
    if catalog.fresh(head, notes_id):
        return
    old_excs, old_notes = _tree(repo, catalog.head, EXECUTIONS), _tree(repo, catalog.notes)
    if not (catalog.valid and not catalog.writing and _known(repo, catalog.notes)
            and (catalog.head == head or _ancestor(repo, catalog.head, tip))):
        catalog.reset()  # history rewritten, or no usable cache: everything is read
        old_excs = old_notes = None
    created = _walk(repo, catalog, tip)
    excs = _tree(repo, head, EXECUTIONS)
    texts = _changed_notes(repo, old_notes, None if notes_tip is None else notes_tip.tree)
    # Every execution whose record may change: the new ones, those whose folder changed and
    # those whose note changed.
    touched = set(created)
    if catalog.valid:  # else everything is read again: only created executions count
        touched |= _changed_folders(repo, old_excs, excs)
    by_creation = {record[1]: eid for eid, record in created.items()}
    changed_notes: dict[str, str] = {}
    for creation, text in texts.items():
        execution = by_creation.get(creation) or _creator(repo, creation)
        if execution is not None:
            changed_notes[execution] = text
            touched.add(execution)
    notes_tree = None if notes_tip is None else notes_tip.tree
    present = _Folders(repo, excs)
    for eid in sorted(touched, key=lambda e: created[e][0] if e in created else -1):
        _update_one(repo, catalog, eid, created.get(eid), changed_notes.get(eid), notes_tree,
                    present)
    catalog.compact()
    catalog.head, catalog.notes, catalog.changed = head, notes_id, True


def _update_one(repo: pygit2.Repository, catalog: Catalog, eid: str,
                created: tuple[int, str, str, str, str | None] | None, note: str | None,
                notes_tree: pygit2.Tree | None, present: _Folders) -> None:
    """Bring one execution's record up to date: `created` for a new one, `note` when its
    note changed."""
    if created is not None:
        # A new execution has no record yet: its shard is not read (a sweep of 1,000 would
        # read them all).
        old = catalog.journal().get(eid)
        if note is None:  # its note came before its commit (a fetch of notes alone)
            note = notes.read(repo, notes_tree, created[1])
        new: Record = [*created, False, note]
    else:
        old = catalog.record(eid)
        if old is None:
            return  # a folder no creation commit names (copied by hand): not an execution
        new = list(old)
        if note is not None:
            new[6] = note
    new[5] = present.has(eid)
    catalog.put(eid, new, old)


class _Folders:
    """Which executions have their folder in `excs/`, one bucket tree read once."""

    def __init__(self, repo: pygit2.Repository, excs: pygit2.Tree | None) -> None:
        self.repo, self.excs = repo, excs
        self.buckets: dict[str, pygit2.Tree | None] = {}

    def has(self, eid: str) -> bool:
        # A lookup by path ("ab/<id>") reads the bucket again each time: 50 us.
        name = eid[:2]
        if name not in self.buckets:
            entry = self.excs[name] if self.excs is not None and name in self.excs else None
            tree = None if entry is None else self.repo.get(entry.id)
            self.buckets[name] = tree if isinstance(tree, pygit2.Tree) else None
        bucket = self.buckets[name]
        return bucket is not None and eid in bucket


def _walk(repo: pygit2.Repository, catalog: Catalog, tip: pygit2.Commit | None) -> Created:
    """The executions created by the commits the cache has not seen, oldest first."""
    created: Created = {}
    if tip is None or str(tip.id) == catalog.head:
        return created
    walker = repo.walk(tip.id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
    if catalog.head is not None:
        walker.hide(pygit2.Oid(hex=catalog.head))
    for commit in walker:
        # libgit2 gives an empty trailer value as "\n": values are stripped.
        trailers = {k: v.strip() for k, v in commit.message_trailers.items()}
        execution = trailers.get("Expegit-Execution")
        if execution and "Expegit-Status" not in trailers:  # the commit that created it
            created[execution.lower()] = (
                catalog.next_order + len(created), str(commit.id),
                trailers.get("Expegit-Commit", ""), trailers.get("Expegit-Parameters", ""),
                trailers.get("Expegit-Profile") or None)
    catalog.next_order += len(created)
    return created


def _changed_folders(repo: pygit2.Repository, old: pygit2.Tree | None,
                     new: pygit2.Tree | None) -> set[str]:
    """The execution ids whose folder under `excs/` differs between two trees."""
    return {path.split("/")[1].lower() for path in _changes(repo, old, new, 2)
            if path.count("/") == 1}


def _changed_notes(repo: pygit2.Repository, old: pygit2.Tree | None,
                   new: pygit2.Tree | None) -> dict[str, str]:
    """The notes whose text differs between two notes trees, keyed by the annotated
    commit (whatever the fan-out: git moves notes when it changes it); '' when removed."""
    before: dict[str, pygit2.Oid] = {}
    after: dict[str, pygit2.Oid] = {}
    for path, (was, now) in _changes(repo, old, new, None).items():
        annotated = path.replace("/", "")
        if was is not None:
            before[annotated] = was
        if now is not None:
            after[annotated] = now
    return {annotated: "" if annotated not in after else notes.text(repo, after[annotated])
            for annotated in before.keys() | after.keys()
            if len(annotated) == 40 and before.get(annotated) != after.get(annotated)}


Change = tuple[pygit2.Oid | None, pygit2.Oid | None]


def _changes(repo: pygit2.Repository, old: pygit2.Tree | None, new: pygit2.Tree | None,
             depth: int | None, prefix: str = "") -> dict[str, Change]:
    """The paths whose object differs between two trees (None: the empty tree), going
    into the subtrees that differ only, down to `depth` levels (None: to the files).

    libgit2's tree diff costs the whole tree here (0.2 s at 50,000 executions); this costs
    the buckets that changed.
    """
    before, after = _listing(old), _listing(new)
    out: dict[str, Change] = {}
    for name in before.keys() | after.keys():
        was, now = before.get(name), after.get(name)
        if was == now:
            continue
        path = prefix + name
        if depth == 1 or not ((was and was[1]) or (now and now[1])):
            out[path] = (was and was[0], now and now[0])
            continue
        out.update(_changes(repo, _subtree(repo, was), _subtree(repo, now),
                            None if depth is None else depth - 1, path + "/"))
        for side, entry in ((0, was), (1, now)):
            if entry is not None and not entry[1]:  # a file on this side, a folder on the other
                out[path] = (entry[0], None) if side == 0 else (None, entry[0])
    return out


def _listing(tree: pygit2.Tree | None) -> dict[str, tuple[pygit2.Oid, bool]]:
    """A tree's entries: name -> (id, is a tree)."""
    return {} if tree is None else {e.name: (e.id, e.filemode == _TREE_MODE)
                                    for e in tree if e.name is not None}


def _subtree(repo: pygit2.Repository, entry: tuple[pygit2.Oid, bool] | None
             ) -> pygit2.Tree | None:
    if entry is None or not entry[1]:
        return None
    tree = repo.get(entry[0])
    return tree if isinstance(tree, pygit2.Tree) else None


def _creator(repo: pygit2.Repository, creation: str) -> str | None:
    """The execution a note belongs to: the one its annotated commit created."""
    commit = repo.get(creation)
    if not isinstance(commit, pygit2.Commit):
        return None
    trailers = {k: v.strip() for k, v in commit.message_trailers.items()}
    execution = trailers.get("Expegit-Execution")
    return execution.lower() if execution and "Expegit-Status" not in trailers else None


def _known(repo: pygit2.Repository, commit: str | None) -> bool:
    return commit is None or pygit2.Oid(hex=commit) in repo


def _ancestor(repo: pygit2.Repository, old: str | None, tip: pygit2.Commit | None) -> bool:
    if old is None or tip is None:
        return old is None
    oid = pygit2.Oid(hex=old)
    return oid in repo and (oid == tip.id or repo.descendant_of(tip.id, oid))


def _tree(repo: pygit2.Repository, commit: str | None, name: str | None = None
          ) -> pygit2.Tree | None:
    """A commit's tree, or its subtree `name`; None when there is none."""
    obj = None if commit is None else repo.get(commit)
    if not isinstance(obj, pygit2.Commit):
        return None
    tree = obj.tree
    if name is None:
        return tree
    if name not in tree:
        return None
    sub = repo[tree[name].id]
    return sub if isinstance(sub, pygit2.Tree) else None
