"""Bringing the catalog's cache up to date from git objects (the catalog's slow path).

Only what changed since the cache was written is read: the commits in `tip..cached tip`
(all of them when history was rewritten), the `excs/` buckets and the notes whose tree or
blob ids changed. Only the shards those touch are rewritten: a finish reads and writes
one or two shards, whatever the size of the campaign.
"""

from __future__ import annotations

import pygit2

from git_expegit import notes
from git_expegit.campaign import EXECUTIONS
from git_expegit.campaign import NOTES_REF
from git_expegit.catalog import Catalog

_TREE = pygit2.enums.FileMode.TREE
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
    if not (catalog.valid and not catalog.writing and (catalog.head == head or (
            tip is not None and catalog.head is not None and _ancestor(repo, catalog.head, tip)))):
        catalog.valid, catalog.head, catalog.excs, catalog.notes_root = False, None, {}, {}
        catalog.shard_counts, catalog.next_order = {}, 0  # history rewritten: everything
    created = _walk(repo, catalog, tip)
    excs = _entries(repo, _subtree(repo, tip, EXECUTIONS))
    notes_root = _entries(repo, None if notes_tip is None else notes_tip.tree_id)
    changed_notes = _changed_notes(repo, catalog.notes_root, notes_root)
    touched: dict[str, dict[str, str]] = {}  # shard -> execution id -> its note now
    catalog.next_order += len(created)
    by_creation = {record[1]: eid for eid, record in created.items()}
    for creation, text in changed_notes.items():
        execution = by_creation.get(creation) or _creator(repo, creation)
        if execution is not None:
            touched.setdefault(execution[:2], {})[execution] = text
    notes_tree = None if notes_tip is None else notes_tip.tree
    for execution, (_, creation, *_) in created.items():
        if creation not in changed_notes:  # its note came before its commit (a fetch)
            touched.setdefault(execution[:2], {})[execution] = notes.read(repo, notes_tree,
                                                                          creation)
    for name in {b for b in excs.keys() | catalog.excs.keys()
                 if excs.get(b) != catalog.excs.get(b)}:
        touched.setdefault(name, {})
    for name, texts in touched.items():
        _update_shard(repo, catalog, name, created, texts, excs.get(name))
    catalog.head, catalog.notes = head, notes_id
    catalog.excs, catalog.notes_root, catalog.changed = excs, notes_root, True


def _walk(repo: pygit2.Repository, catalog: Catalog, tip: pygit2.Commit | None) -> Created:
    """The executions created by the commits the cache has not seen, oldest first."""
    created: Created = {}
    if tip is None or tip.id == (catalog.head and pygit2.Oid(hex=catalog.head)):
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
    return created


def _update_shard(repo: pygit2.Repository, catalog: Catalog, name: str, created: Created,
                  texts: dict[str, str], bucket: str | None) -> None:
    """Rewrite one shard: `texts` holds the new executions of the shard (all of them) and
    the known ones whose note changed."""
    shard = {eid: list(record) for eid, record in catalog.shard(name).items()}
    for eid, text in texts.items():
        if eid in created:
            shard[eid] = [*created[eid], False, text]
        elif eid in shard:
            shard[eid][6] = text
    present = set(_entries(repo, bucket))
    for eid, record in shard.items():
        record[5] = eid in present
    catalog.put(name, shard)


def _creator(repo: pygit2.Repository, creation: str) -> str | None:
    """The execution a note belongs to: the one its annotated commit created."""
    commit = repo.get(creation) if len(creation) == 40 else None
    if not isinstance(commit, pygit2.Commit):
        return None
    trailers = {k: v.strip() for k, v in commit.message_trailers.items()}
    execution = trailers.get("Expegit-Execution")
    return execution.lower() if execution and "Expegit-Status" not in trailers else None


def _changed_notes(repo: pygit2.Repository, old: dict[str, str], new: dict[str, str]
                   ) -> dict[str, str]:
    """The notes whose text changed between two notes roots (name -> entry id), keyed by
    the annotated commit; a removed note has the text ''."""
    before: dict[str, pygit2.Oid] = {}
    after: dict[str, pygit2.Oid] = {}
    for name in old.keys() | new.keys():
        if old.get(name) != new.get(name):
            # Gathered over every changed entry first: git moves a note between a bucket and
            # the root when it changes its fan-out.
            before.update(_blobs(repo, old.get(name), name))
            after.update(_blobs(repo, new.get(name), name))
    return {annotated: "" if after.get(annotated) is None else notes.text(repo, after[annotated])
            for annotated in before.keys() | after.keys()
            if before.get(annotated) != after.get(annotated)}


def _blobs(repo: pygit2.Repository, oid: str | None, path: str) -> dict[str, pygit2.Oid]:
    """The notes under one root entry of a notes tree (a bucket, git's deeper fan-out, or
    a note git wrote without fan-out), annotated hex id -> blob id. An object this
    repository no longer has reads as no notes: they are all read as new."""
    obj = None if oid is None else repo.get(oid)
    if isinstance(obj, pygit2.Blob):
        return {path: obj.id} if len(path) == 40 else {}
    found: dict[str, pygit2.Oid] = {}
    if isinstance(obj, pygit2.Tree):
        for entry in obj:
            found.update(_blobs(repo, str(entry.id), path + (entry.name or "")))
    return found


def _ancestor(repo: pygit2.Repository, old: str, tip: pygit2.Commit) -> bool:
    oid = pygit2.Oid(hex=old)
    return oid in repo and (oid == tip.id or repo.descendant_of(tip.id, oid))


def _subtree(repo: pygit2.Repository, tip: pygit2.Commit | None, name: str) -> str | None:
    if tip is None or name not in tip.tree:
        return None
    entry = tip.tree[name]
    return str(entry.id) if entry.filemode == _TREE else None


def _entries(repo: pygit2.Repository, oid: str | pygit2.Oid | None) -> dict[str, str]:
    """A tree's entries, name -> object id ({} for no tree)."""
    tree = None if oid is None else repo.get(oid)
    if not isinstance(tree, pygit2.Tree):
        return {}
    return {e.name: str(e.id) for e in tree if e.name is not None}
