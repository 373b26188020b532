"""Placing an experiment commit's code in an execution folder (git ignores it there)."""

from __future__ import annotations

import os
from pathlib import Path

import pygit2

from git_expegit.campaign import Campaign
from git_expegit.objects import BLOB
from git_expegit.objects import EXECUTABLE
from git_expegit.objects import LINK
from git_expegit.objects import TREE


def write_code(campaign: Campaign, commit: str, target: Path) -> None:
    """Place the experiment's files at `commit` in an execution folder (git ignores them)."""
    repo = campaign.experiment()
    tree = repo[pygit2.Oid(hex=commit)].peel(pygit2.Tree)
    _write_tree(repo, tree, target, top=True)


def _write_tree(repo: pygit2.Repository, tree: pygit2.Tree, target: Path, top: bool) -> None:
    for entry in tree:
        name = entry.name or ""
        if top and name in (".gitignore", "data"):
            continue  # the execution's own files win over the experiment's
        path = target / name
        if entry.filemode == TREE:
            path.mkdir(exist_ok=True)
            subtree = repo[entry.id]
            assert isinstance(subtree, pygit2.Tree)
            _write_tree(repo, subtree, path, top=False)
        elif entry.filemode in (BLOB, EXECUTABLE):
            path.write_bytes(_blob(repo, entry.id))
            path.chmod(0o755 if entry.filemode == EXECUTABLE else 0o644)
        elif entry.filemode == LINK:
            os.symlink(_blob(repo, entry.id), path)


def _blob(repo: pygit2.Repository, oid: pygit2.Oid) -> bytes:
    blob = repo[oid]
    assert isinstance(blob, pygit2.Blob)
    return blob.data
