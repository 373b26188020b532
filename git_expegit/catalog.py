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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from git_expegit import record
from git_expegit import refs
from git_expegit.campaign import EXECUTIONS
from git_expegit.campaign import NOTES_REF
from git_expegit.campaign import Campaign
from git_expegit.campaign import ExecutionId
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

CACHE_VERSION = 3
STATES = record.STATES


@dataclass(frozen=True)
class Execution:
    id: ExecutionId
    creation: str
    commit: str
    parameters: str
    profile: str | None
    log: tuple[str, ...]

    @property
    def state(self) -> record.State:
        return record.state(self.log)

    def field(self, name: str) -> str | None:
        """The latest value of `name=` in the log (host, job, exit, duration...)."""
        return record.latest(self.log, name)

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "state": self.state, "commit": self.commit,
                "parameters": self.parameters, "profile": self.profile,
                "host": self.field("host"), "exit_code": self.field("exit"),
                "duration": self.field("duration"), "creation": self.creation,
                "log": list(self.log)}


def executions(campaign: Campaign) -> list[Execution]:
    """Every execution in the current tree, oldest first."""
    if ((campaign.git_dir / "expegit" / "publish.json").exists()
            or (campaign.git_dir / "index.lock").exists()):
        # Perhaps a publish that a dead process left half done: completed first, so that
        # what is read is whole (transaction.py, imported only then: it needs pygit2).
        from git_expegit import transaction

        transaction.recover_if_interrupted(campaign)
    cache = Cache.load(campaign.state_dir / "catalog.json")
    tip = refs.read(campaign.git_dir, "HEAD")
    notes_tip = refs.read(campaign.git_dir, NOTES_REF)
    if refs.UNKNOWN in (tip, notes_tip) or (tip, notes_tip) != (cache.head, cache.notes_commit):
        # Reading git objects needs pygit2, imported only now: a warm cache answers without.
        from git_expegit import history

        history.update(campaign.repo, cache)
        cache.save()
    return cache.executions()


def resolve(campaign: Campaign, prefix: str | None, cwd: Path) -> Execution:
    """The execution whose id starts with `prefix`, as git resolves short hashes; without
    a prefix, the execution whose folder holds `cwd`."""
    return resolve_in(executions(campaign), prefix or _here(campaign, cwd))


def _here(campaign: Campaign, cwd: Path) -> str:
    parts = cwd.absolute().relative_to(campaign.root).parts
    if len(parts) >= 3 and parts[0] == EXECUTIONS:
        return parts[2]
    raise ExpegitError("which execution? give its ID, or run this inside its folder",
                       ExitCode.USAGE)


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


class Cache:
    """The catalog's memory of what it already read, keyed by immutable object ids."""

    def __init__(self, path: Path, data: dict[str, object]) -> None:
        self.path = path
        self.head: str | None = data.get("head")  # type: ignore[assignment]
        # execution id -> [creation commit, experiment commit, parameters, profile]
        self.history: dict[str, list[str | None]] = data.get("history", {})  # type: ignore
        # the ids whose folder is in the tree at `head`
        self.present: set[str] = set(data.get("present", ()))  # type: ignore[call-overload]
        self.notes_commit: str | None = data.get("notes")  # type: ignore[assignment]
        # bucket name -> [bucket tree id, {annotated hex: note text}]
        self.buckets: dict[str, list[object]] = data.get("buckets", {})  # type: ignore
        self.flat: dict[str, str] = data.get("flat", {})  # type: ignore[assignment]

    @classmethod
    def load(cls, path: Path) -> Cache:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            data = {}
        return cls(path, data)

    def save(self) -> None:
        data = {"version": CACHE_VERSION, "head": self.head, "history": self.history,
                "present": sorted(self.present), "notes": self.notes_commit,
                "buckets": self.buckets, "flat": self.flat}
        # Written aside, then renamed: a reader sees the old cache or the new one, whole.
        tmp = self.path.with_name(f".catalog-{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, self.path)

    def executions(self) -> list[Execution]:
        result = []
        for eid, (creation, commit, parameters, profile) in self.history.items():
            if eid in self.present:
                log = self.note(str(creation))
                result.append(Execution(ExecutionId(eid), str(creation), str(commit),
                                        str(parameters), profile,
                                        tuple(line for line in log.splitlines() if line)))
        return result

    def note(self, creation: str) -> str:
        if creation in self.flat:
            return self.flat[creation]
        bucket = self.buckets.get(creation[:2])
        texts = bucket[1] if bucket else {}
        assert isinstance(texts, dict)
        return str(texts.get(creation, ""))
