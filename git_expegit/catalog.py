"""Where every execution stands: the read side, for status, list, show and id prefixes.

An execution is made of three things git holds: the trailers of the commit that created it
(parameters, experiment commit, profile), its folder in the current tree (it exists), and
its note (its life). Reading them for 10,000 executions means walking 10,000 commits and
blobs, so the result is cached in `.git/expegit/catalog.json`, keyed by the ids of the
branch tip and the notes commit. Both are immutable objects, so the cache cannot go stale:
when they move, only the new commits (`tip..cached tip`) and the changed note buckets are
read again.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pygit2

from git_expegit import notes
from git_expegit.campaign import EXECUTIONS
from git_expegit.campaign import Campaign
from git_expegit.campaign import ExecutionId
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

CACHE_VERSION = 1
STATES = ("created", "queued", "running", "finished", "failed")
# The event that sets each state; "reset" makes an execution new again.
_STATE_OF = {"created": "created", "reset": "created", "queued": "queued",
             "running": "running", "finished": "finished", "failed": "failed"}


@dataclass(frozen=True)
class Execution:
    id: ExecutionId
    creation: str
    commit: str
    parameters: str
    profile: str | None
    log: tuple[str, ...]

    @property
    def state(self) -> str:
        for line in reversed(self.log):
            kind = line.split(" ", 2)[1] if " " in line else ""
            if kind in _STATE_OF:
                return _STATE_OF[kind]
        return "created"

    def field(self, name: str) -> str | None:
        """The latest value of `name=` in the log (host, job, exit, duration...)."""
        for line in reversed(self.log):
            for word in line.split(" ")[2:]:
                if word.startswith(name + "="):
                    return word[len(name) + 1:]
        return None

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "state": self.state, "commit": self.commit,
                "parameters": self.parameters, "profile": self.profile,
                "host": self.field("host"), "exit_code": self.field("exit"),
                "duration": self.field("duration"), "creation": self.creation,
                "log": list(self.log)}


def executions(campaign: Campaign) -> list[Execution]:
    """Every execution in the current tree, oldest first."""
    head, notes_commit = campaign.head(), campaign.notes()
    cache = _Cache.load(campaign.state_dir / "catalog.json")
    changed = cache.update_history(campaign.repo, head)
    changed |= cache.update_notes(campaign.repo, notes_commit)
    if changed:
        cache.save()
    present = _present(campaign.repo, head)
    result = []
    for eid, (creation, commit, parameters, profile) in cache.history.items():
        if eid in present:
            log = cache.note(str(creation))
            result.append(Execution(ExecutionId(eid), str(creation), str(commit),
                                    str(parameters), profile,
                                    tuple(line for line in log.splitlines() if line)))
    return result


def resolve(campaign: Campaign, prefix: str) -> Execution:
    """The execution whose id starts with `prefix`, as git resolves short hashes."""
    return resolve_in(executions(campaign), prefix)


def resolve_in(candidates: Iterable[Execution], prefix: str) -> Execution:
    prefix = prefix.strip().lower()
    if len(prefix) < 4:
        raise ExpegitError(f"execution id {prefix!r} is too short: give at least 4 "
                           "characters", ExitCode.INPUT)
    found = [e for e in candidates if e.id.startswith(prefix)]
    if not found:
        raise ExpegitError(f"no execution {prefix!r} in this campaign: see git expegit list",
                           ExitCode.INPUT)
    if len(found) > 1:
        shown = ", ".join(e.id for e in found[:5]) + (", ..." if len(found) > 5 else "")
        raise ExpegitError(f"execution id {prefix!r} is ambiguous: {shown}", ExitCode.INPUT)
    return found[0]


def _present(repo: pygit2.Repository, head: pygit2.Commit | None) -> set[str]:
    """The ids of the executions whose folder is in the tree at `head`."""
    if head is None or EXECUTIONS not in head.tree:
        return set()
    excs = repo[head.tree[EXECUTIONS].id]
    assert isinstance(excs, pygit2.Tree)
    present: set[str] = set()
    for bucket in excs:
        if bucket.filemode == pygit2.GIT_FILEMODE_TREE:
            subtree = repo[bucket.id]
            assert isinstance(subtree, pygit2.Tree)
            present.update(e.name for e in subtree if e.name is not None)
    return present


class _Cache:
    """The catalog's memory of what it already read, keyed by immutable object ids."""

    def __init__(self, path: Path, data: dict[str, object]) -> None:
        self.path = path
        self.head: str | None = data.get("head")  # type: ignore[assignment]
        self.history: dict[str, list[str | None]] = data.get("history", {})  # type: ignore
        self.notes_commit: str | None = data.get("notes")  # type: ignore[assignment]
        # bucket name -> [bucket tree id, {annotated hex: note text}]
        self.buckets: dict[str, list[object]] = data.get("buckets", {})  # type: ignore

    @classmethod
    def load(cls, path: Path) -> _Cache:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            data = {}
        return cls(path, data)

    def save(self) -> None:
        data = {"version": CACHE_VERSION, "head": self.head, "history": self.history,
                "notes": self.notes_commit, "buckets": self.buckets}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".catalog-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, self.path)

    def note(self, creation: str) -> str:
        bucket = self.buckets.get(creation[:2])
        texts = bucket[1] if bucket else {}
        assert isinstance(texts, dict)
        return str(texts.get(creation, ""))

    def update_history(self, repo: pygit2.Repository, head: pygit2.Commit | None) -> bool:
        tip = None if head is None else str(head.id)
        if tip == self.head:
            return False
        if head is None or not (self.head and _ancestor(repo, self.head, head)):
            self.history = {}
        if head is not None:
            walker = repo.walk(head.id, pygit2.enums.SortMode.TOPOLOGICAL
                               | pygit2.enums.SortMode.REVERSE)
            if self.history and self.head:
                walker.hide(pygit2.Oid(hex=self.head))
            for commit in walker:
                self._read(commit)
        self.head = tip
        return True

    def _read(self, commit: pygit2.Commit) -> None:
        trailers = commit.message_trailers
        eid = trailers.get("Expegit-Execution")
        if eid and "Expegit-Status" not in trailers:
            self.history[eid] = [str(commit.id), trailers.get("Expegit-Commit", ""),
                                 trailers.get("Expegit-Parameters", ""),
                                 trailers.get("Expegit-Profile")]

    def update_notes(self, repo: pygit2.Repository, commit: pygit2.Commit | None) -> bool:
        tip = None if commit is None else str(commit.id)
        if tip == self.notes_commit:
            return False
        tree = None if commit is None else commit.tree
        buckets: dict[str, list[object]] = {}
        for entry in tree or ():
            name = entry.name or ""
            old = self.buckets.get(name)
            if old is not None and old[0] == str(entry.id):
                buckets[name] = old
            elif entry.filemode == pygit2.GIT_FILEMODE_TREE:
                subtree = repo[entry.id]
                assert isinstance(subtree, pygit2.Tree)
                buckets[name] = [str(entry.id), notes.read_all(repo, subtree, name)]
        flat = {e.name: notes.text(repo, e.id) for e in tree or ()
                if e.filemode != pygit2.GIT_FILEMODE_TREE and e.name and len(e.name) == 40}
        for annotated, text in flat.items():  # notes git wrote without fan-out
            bucket = buckets.setdefault(annotated[:2], ["", {}])
            texts = bucket[1]
            assert isinstance(texts, dict)
            texts[annotated] = text
        self.buckets, self.notes_commit = buckets, tip
        return True


def _ancestor(repo: pygit2.Repository, old: str, head: pygit2.Commit) -> bool:
    oid = pygit2.Oid(hex=old)
    return oid in repo and (oid == head.id or repo.descendant_of(head.id, oid))
