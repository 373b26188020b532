"""The life of each execution, as git notes under refs/notes/expegit.

A note is attached to the commit that created the execution. It is an append-only log:
one event a line (record.Event), each line starting with a UTC ISO-8601 timestamp, so that
the union of two clones' logs, sorted and without duplicates (`git notes merge -s
cat_sort_uniq`), is again a log; the events' own order (record.events) gives the state.

Notes trees are written with a two-character fan-out (`ab/cdef...`) in one commit per
operation: pygit2's `create_note` rewrites a flat tree per note (224 s for 10,000).
Any fan-out git itself wrote is read too, and rewritten as 2/38 where we touch it.
"""

from __future__ import annotations

from collections.abc import Mapping

import pygit2

from git_expegit.objects import BLOB
from git_expegit.objects import TREE
from git_expegit.objects import Entry
from git_expegit.objects import ObjectStore


def read_all(repo: pygit2.Repository, tree: pygit2.Tree | None,
             prefix: str = "") -> dict[str, str]:
    """Every note of a notes tree (or of a bucket named `prefix`), keyed by the annotated
    object's hex id."""
    notes: dict[str, str] = {}
    if tree is not None:
        _walk(repo, tree, prefix, notes)
    return notes


def _walk(repo: pygit2.Repository, tree: pygit2.Tree, prefix: str, out: dict[str, str]) -> None:
    for entry in tree:
        name = prefix + (entry.name or "")
        if entry.filemode == TREE:
            subtree = repo[entry.id]
            assert isinstance(subtree, pygit2.Tree)
            _walk(repo, subtree, name, out)
        elif len(name) == 40:
            out[name] = text(repo, entry.id)
    return None


def text(repo: pygit2.Repository, oid: pygit2.Oid) -> str:
    blob = repo[oid]
    assert isinstance(blob, pygit2.Blob)
    return blob.data.decode(errors="replace")


def read(repo: pygit2.Repository, tree: pygit2.Tree | None, annotated: str) -> str:
    """One note, wherever the fan-out put it ('' when there is none)."""
    for depth in (1, 2, 0):
        path = "/".join([annotated[2 * i:2 * i + 2] for i in range(depth)]
                        + [annotated[2 * depth:]])
        try:
            entry = tree[path] if tree is not None else None
        except KeyError:
            continue
        if entry is not None:
            return text(repo, entry.id)
    return ""


def edit(store: ObjectStore, tree: pygit2.Oid | None, texts: Mapping[str, str]) -> pygit2.Oid:
    """A notes tree where each annotated hex id in `texts` has that text (others kept)."""
    root = store.entries(tree)
    by_bucket: dict[str, dict[str, str]] = {}
    for annotated, text in texts.items():
        by_bucket.setdefault(annotated[:2], {})[annotated[2:]] = text
        root.pop(annotated, None)  # a flat note git wrote; it moves into the bucket
    for name, notes in by_bucket.items():
        old = root[name].oid if name in root and root[name].mode == TREE else None
        bucket = store.entries(old)
        for rest, text in notes.items():
            deeper = bucket.get(rest[:2])
            if deeper is not None and deeper.mode == TREE:  # git's 2/2/36 fan-out
                inner = store.entries(deeper.oid)
                inner.pop(rest[2:], None)
                bucket[rest[:2]] = Entry(TREE, store.tree(inner, base=deeper.oid))
            bucket[rest] = Entry(BLOB, store.blob(text.encode()))
        root[name] = Entry(TREE, store.tree(bucket, base=old))
    return store.tree(root, base=tree)


def union(ours: str, theirs: str) -> str:
    """cat_sort_uniq: both logs' lines, sorted, each once."""
    lines = sorted(set(ours.splitlines()) | set(theirs.splitlines()))
    return "".join(line + "\n" for line in lines if line)


def commit(store: ObjectStore, tree: pygit2.Oid, parents: list[pygit2.Oid], ident: str,
           message: str) -> pygit2.Oid:
    return store.commit(tree, parents, message + "\n", ident)


def merge(store: ObjectStore, repo: pygit2.Repository, ours: pygit2.Oid, theirs: pygit2.Oid,
          ident: str) -> pygit2.Oid:
    """A notes commit uniting two diverged notes histories (cat_sort_uniq)."""
    our_tree, their_tree = _tree(repo, ours), _tree(repo, theirs)
    mine, other = read_all(repo, our_tree), read_all(repo, their_tree)
    texts = {key: union(mine.get(key, ""), text) for key, text in other.items()
             if mine.get(key) != text}
    tree = edit(store, our_tree.id, texts)
    return commit(store, tree, [ours, theirs], ident, "Notes merged by 'git expegit sync'")


def _tree(repo: pygit2.Repository, oid: pygit2.Oid) -> pygit2.Tree:
    return repo[oid].peel(pygit2.Tree)
