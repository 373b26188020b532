"""Bringing the catalog's cache up to date from git objects (the catalog's slow path).

Only what changed since the cache was written is read: the commits in `tip..cached tip`
(all of them when history was rewritten), and the entries that differ between the cached
and the current `excs/` and notes trees, compared bucket by bucket, into the buckets whose
ids differ only. A finish costs a few records, whatever the size of the campaign.
"""

from __future__ import annotations

import pygit2

from git_expegit import notes
from git_expegit.campaign import EXECUTIONS
from git_expegit.campaign import NOTES_REF
from git_expegit.catalog import Catalog
from git_expegit.catalog import Record

_TREE_TYPE = int(pygit2.enums.ObjectType.TREE)
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
    if not (catalog.valid and not catalog.writing and _known(repo, catalog.notes)
            and (catalog.head == head or _ancestor(repo, catalog.head, tip))):
        catalog.reset()  # history rewritten, or no usable cache: everything is read
    old_head, old_notes = catalog.head, catalog.notes
    created, named = _walk(repo, catalog, tip)
    excs = _tree(repo, head, EXECUTIONS)
    notes_tree = None if notes_tip is None else notes_tip.tree
    # Every execution whose record may change: the new ones, those whose folder changed and
    # those whose note changed. When every new commit names its execution (only expegit
    # wrote), they name the folders that changed: the `excs/` trees are not compared. The
    # notes trees always are (bucket by bucket): notes may change with no commit beside.
    touched = set(created)
    if catalog.valid:
        touched |= named if named is not None else _changed_folders(
            repo, _tree(repo, old_head, EXECUTIONS), excs)
    by_creation = {record[1]: eid for eid, record in created.items()}
    changed_notes: dict[str, str] = {}
    for creation, text in _changed_notes(repo, _tree(repo, old_notes), notes_tree).items():
        execution = by_creation.get(creation) or _creator(repo, creation)
        if execution is not None:
            changed_notes[execution] = text
            touched.add(execution)
    present, notes_at = _Buckets(repo, excs), _Buckets(repo, notes_tree)
    for eid in sorted(touched, key=lambda e: created[e][0] if e in created else -1):
        _update_one(catalog, eid, created.get(eid), changed_notes.get(eid), present, notes_at)
    catalog.compact()
    catalog.head, catalog.notes, catalog.changed = head, notes_id, True


def _update_one(catalog: Catalog, eid: str,
                created: tuple[int, str, str, str, str | None] | None, note: str | None,
                present: _Buckets, notes_at: _Buckets) -> None:
    """Bring one execution's record up to date: `created` for a new one; `note` when its
    note changed."""
    if created is not None:
        # A new execution has no record yet: its shard is not read (a sweep of 1,000 would
        # read them all). Its note is read by its path when it did not change (it came
        # before its commit: a fetch of the notes alone).
        old = catalog.journal().get(eid)
        new: Record = [*created, False, notes_at.note(created[1]) if note is None else note]
    else:
        old = catalog.record(eid)
        if old is None:
            return  # a folder no creation commit names (copied by hand): not an execution
        new = list(old)
        if note is not None:
            new[6] = note
    new[5] = present.has_folder(eid)
    catalog.put(eid, new, old)


class _Buckets:
    """A tree fanned out by two hex characters (`excs/`, the notes), each bucket read once:
    a lookup by path ("ab/<id>") inflates the bucket again each time, and the buckets of
    a large campaign are too big for libgit2's object cache (300 us a lookup)."""

    def __init__(self, repo: pygit2.Repository, tree: pygit2.Tree | None) -> None:
        self.repo, self.tree = repo, tree
        self.buckets: dict[str, pygit2.Tree | None] = {}

    def get(self, key: str) -> pygit2.Object | None:
        """The entry `key[2:]` of the bucket `key[:2]`, or None."""
        name = key[:2]
        if name not in self.buckets:
            entry = self.tree[name] if self.tree is not None and name in self.tree else None
            bucket = None if entry is None else self.repo.get(entry.id)
            self.buckets[name] = bucket if isinstance(bucket, pygit2.Tree) else None
        bucket = self.buckets[name]
        return bucket[key[2:]] if bucket is not None and key[2:] in bucket else None

    def note(self, annotated: str) -> str:
        """The note of `annotated`, where expegit puts it (2/38), else wherever git did."""
        entry = self.get(annotated)
        if entry is not None and entry.type != _TREE_TYPE:
            return notes.text(self.repo, entry.id)
        return notes.read(self.repo, self.tree, annotated)

    def has_folder(self, execution: str) -> bool:
        return self.get(execution[:2] + execution) is not None


def _walk(repo: pygit2.Repository, catalog: Catalog, tip: pygit2.Commit | None
          ) -> tuple[Created, set[str] | None]:
    """The executions created by the commits the cache has not seen, oldest first; and
    the executions those commits name, or None when one of them names none or merges."""
    created: Created = {}
    named: set[str] | None = set()
    if tip is None or str(tip.id) == catalog.head:
        return created, named
    walker = repo.walk(tip.id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
    if catalog.head is not None:
        walker.hide(pygit2.Oid(hex=catalog.head))
    for commit in walker:
        # libgit2 gives an empty trailer value as "\n": values are stripped.
        trailers = {k: v.strip() for k, v in commit.message_trailers.items()}
        execution = trailers.get("Expegit-Execution", "").lower()
        if named is not None and execution and len(commit.parent_ids) == 1:
            named.add(execution)
        else:
            named = None
        if execution and "Expegit-Status" not in trailers:  # the commit that created it
            created[execution] = (
                catalog.next_order + len(created), str(commit.id),
                trailers.get("Expegit-Commit", ""), trailers.get("Expegit-Parameters", ""),
                trailers.get("Expegit-Profile") or None)
    catalog.next_order += len(created)
    return created, named


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
    return {} if tree is None else {e.name: (e.id, e.type == _TREE_TYPE)
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
