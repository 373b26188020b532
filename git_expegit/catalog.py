"""Where every execution stands: the read side, for status, list, show and id prefixes.

An execution is made of three things git holds: the trailers of the commit that created it
(parameters, experiment commit, profile), its folder in the current tree (it exists), and
its note (its life). Reading them for 50,000 executions means walking 50,000 commits and
blobs, so the result is cached in `.git/expegit/catalog/`, keyed by the ids of the branch
tip and the notes commit. Both are immutable objects, so the cache cannot go stale: when
they move, only what changed is read again (history.py).

The cache is sharded like the `excs/` tree, by the first two hex characters of the
execution id, so that a change rewrites only the shards it touches and resolving an id
reads one shard. `index.json` holds the keys and each shard's count of executions per
state: `status` reads that file alone, whatever the campaign's size.

Writers (any command that finds the cache behind the refs) take `catalog/lock`, mark the
index "writing", write the shards they changed, then the index: a process killed halfway
leaves the mark, and the next writer rebuilds everything. Readers take no lock; a shard
newer than the index they read means a writer is at work, and they wait for it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from typing import TypeVar

from git_expegit import record
from git_expegit import refs
from git_expegit.campaign import EXECUTIONS
from git_expegit.campaign import Campaign
from git_expegit.campaign import ExecutionId
from git_expegit.campaign import folder
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

# Bump when what is cached changes meaning (the fields, or how a state is derived: the
# counts in the index are derived states). 6: states follow the events' causal order.
CACHE_VERSION = 6
STATES = record.STATES
_HEX = frozenset("0123456789abcdef")
T = TypeVar("T")


def state_of(log: Sequence[str]) -> record.State:
    """An execution's state from its note lines: the one place it is derived."""
    return record.state(log)


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
        return state_of(self.log)

    @property
    def folder(self) -> str:
        return folder(self.id)

    def field(self, name: str) -> str | None:
        """The latest value of `name=` in the log (host, job, exit, duration...)."""
        return record.latest(self.log, name)

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "state": self.state, "commit": self.commit,
                "parameters": self.parameters, "profile": self.profile,
                "host": self.field("host"), "exit_code": self.field("exit"),
                "duration": self.field("duration"), "creation": self.creation,
                "folder": self.folder, "log": list(self.log)}


def executions(campaign: Campaign) -> list[Execution]:
    """Every execution in the current tree, oldest first."""
    return _read(campaign, lambda catalog: catalog.executions())


def counts(campaign: Campaign) -> dict[str, int]:
    """How many executions of the current tree are in each state (read from the index
    alone when the cache is fresh)."""
    return _read(campaign, lambda catalog: catalog.counts())


def resolve(campaign: Campaign, prefix: str | None, cwd: Path) -> Execution:
    """The execution whose id starts with `prefix`, as git resolves short hashes; without
    a prefix, the execution whose folder holds `cwd`. Reads one shard of the cache."""
    prefix = (prefix or _here(campaign, cwd)).strip().lower()
    if len(prefix) < 4:
        raise ExpegitError(f"execution id {prefix!r} is too short: give at least 4 "
                           "characters", ExitCode.INPUT)
    return resolve_in(_read(campaign, lambda catalog: catalog.shard_executions(prefix[:2])),
                      prefix)


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


def select(chosen: Iterable[Execution], state: str | None = None, profile: str | None = None,
           grep: str | None = None, commit: str | None = None) -> list[Execution]:
    """The executions that pass every filter given (list's --state, --profile, --grep,
    --commit)."""
    if state is not None and state not in STATES:
        raise ExpegitError(f"unknown state {state!r}: use one of {', '.join(STATES)}",
                           ExitCode.USAGE)
    return [e for e in chosen
            if (state is None or e.state == state)
            and (profile is None or e.profile == profile)
            and (grep is None or grep in e.parameters)
            and (commit is None or e.commit.startswith(commit.lower()))]


class File(NamedTuple):
    path: str  # relative to the execution's folder
    size: int  # for an LFS file, the size of its content, not of its pointer
    lfs: bool


def files(campaign: Campaign, execution: ExecutionId) -> list[File]:
    """The files git holds for the execution at the branch tip."""
    import pygit2  # show reads trees; the other reading commands do without pygit2

    head = campaign.head()
    out: list[File] = []

    def walk(tree: pygit2.Tree, prefix: str) -> None:
        for entry in tree:
            path, obj = prefix + (entry.name or ""), campaign.repo[entry.id]
            if isinstance(obj, pygit2.Tree):
                walk(obj, path + "/")
            elif isinstance(obj, pygit2.Blob):
                out.append(_file(path, obj.data))

    if head is not None and folder(execution) in head.tree:
        walk(campaign.repo[head.tree[folder(execution)].id].peel(pygit2.Tree), "")
    return out


def _file(path: str, data: bytes) -> File:
    if data.startswith(b"version https://git-lfs"):
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("size ") and line[5:].isdigit():
                return File(path, int(line[5:]), True)
    return File(path, len(data), False)


# --- the cache -----------------------------------------------------------------------------

class Invalid(Exception):
    """A cache file that cannot be trusted (unreadable, wrong types, written by a writer
    that has not finished): the cache is rebuilt."""


# One execution: [order of creation, creation commit, experiment commit, parameters,
# profile or None, folder present at the tip, note text].
Record = list[object]
# Changed executions wait in the journal, so that a sweep of 1,000 in a campaign of 50,000
# writes 1,000 records, not 50,000; past this many, they are merged into their shards.
JOURNAL_MAX = 2048


def _record_ok(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 7 and type(value[0]) is int
            and all(isinstance(v, str) for v in value[1:4])
            and (value[4] is None or isinstance(value[4], str))
            and isinstance(value[5], bool) and isinstance(value[6], str))


class Catalog:
    """The cache, read lazily: the index at once, the journal and each shard when asked."""

    def __init__(self, path: Path, index: dict[str, object] | None = None,
                 generation: int = 0) -> None:
        self.path = path
        index = index or {}
        self.valid = bool(index)  # False: nothing cached, everything must be read
        self.generation = int(index.get("generation", generation))  # type: ignore[call-overload]
        self.writing = bool(index.get("writing", False))
        self.head: str | None = index.get("head")  # type: ignore[assignment]
        self.notes: str | None = index.get("notes")  # type: ignore[assignment]
        self.next_order: int = index.get("next", 0)  # type: ignore[assignment]
        self.on_disk: set[str] = set(index.get("shards", ()))  # type: ignore[call-overload]
        # shard -> state -> executions present at the tip in that state (journal included)
        self.shard_counts: dict[str, dict[str, int]] = index.get("counts", {})  # type: ignore
        self._shards: dict[str, dict[str, Record]] = {}
        self._journal: dict[str, Record] | None = None
        self.dirty: set[str] = set()  # shards changed in memory, to save
        self.changed = False  # the index or the journal changed in memory, to save

    @classmethod
    def load(cls, path: Path) -> Catalog:
        """The cache as saved; an unreadable or ill-typed index is no cache."""
        try:
            data = json.loads((path / "index.json").read_text())
        except (OSError, ValueError):
            return cls(path)
        if not _index_ok(data):
            return cls(path, generation=data.get("generation", 0)
                       if isinstance(data, dict) and type(data.get("generation")) is int
                       else 0)
        return cls(path, data)

    def fresh(self, head: str | None, notes: str | None) -> bool:
        return (self.valid and not self.writing and refs.UNKNOWN not in (head, notes)
                and (head, notes) == (self.head, self.notes))

    def reset(self) -> None:
        """Forget everything: it is all read again."""
        self.valid, self.head, self.notes, self.next_order = False, None, None, 0
        self.shard_counts, self._shards, self._journal = {}, {}, {}
        # The old files stay until rewritten, unlisted: nothing reads them.
        self.on_disk, self.dirty, self.changed = set(), set(), True

    def journal(self) -> dict[str, Record]:
        if self._journal is None:
            self._journal = self._load("journal", "journal" in self.on_disk)
        return self._journal

    def shard(self, name: str) -> dict[str, Record]:
        if name not in self._shards:
            self._shards[name] = self._load(name, name in self.on_disk)
        return self._shards[name]

    def _load(self, name: str, exists: bool) -> dict[str, Record]:
        if not (self.valid and exists):
            return {}
        try:
            data = json.loads((self.path / f"{name}.json").read_text())
        except (OSError, ValueError):
            raise Invalid(name) from None
        if not (isinstance(data, dict) and data.get("version") == CACHE_VERSION
                and type(data.get("generation")) is int
                and isinstance(data.get("executions"), dict)):
            raise Invalid(name)
        if data["generation"] > self.generation:
            raise Invalid(name)  # written after the index was read: a writer is at work
        return data["executions"]  # type: ignore[no-any-return]

    def record(self, eid: str) -> Record | None:
        """An execution as cached (journal first), checked."""
        found = self.journal().get(eid) or self.shard(eid[:2]).get(eid)
        if found is not None and not _record_ok(found):
            raise Invalid(eid)
        return found

    def put(self, eid: str, new: Record, old: Record | None) -> None:
        """Record an execution's new state, keeping the counts right."""
        counts = self.shard_counts.setdefault(eid[:2], {})
        if old is not None and old[5]:
            state = state_of(_lines(old))
            if counts.get(state, 0) <= 0:
                raise Invalid("counts")  # they do not match the records: read all again
            counts[state] -= 1
            if not counts[state]:
                del counts[state]
        if new[5]:
            state = state_of(_lines(new))
            counts[state] = counts.get(state, 0) + 1
        self.journal()[eid] = new
        self.changed = True

    def compact(self) -> None:
        """Merge the journal into the shards once it is long."""
        if len(self.journal()) <= JOURNAL_MAX:
            return
        for eid, entry in self.journal().items():
            self.shard(eid[:2])[eid] = entry
            self.dirty.add(eid[:2])
        self._journal = {}

    def counts(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for states in self.shard_counts.values():
            total.update(states)
        return dict(total)

    def shard_executions(self, name: str) -> list[Execution]:
        if len(name) != 2 or not set(name) <= _HEX:
            return []  # not a shard name: no execution has this prefix
        records = {**self.shard(name), **{eid: r for eid, r in self.journal().items()
                                          if eid[:2] == name}}
        return _executions(records)

    def executions(self) -> list[Execution]:
        names = (self.on_disk - {"journal"}) | self.dirty  # on disk, or not saved yet
        records = {eid: r for name in sorted(names) for eid, r in self.shard(name).items()}
        records.update(self.journal())
        return sorted(_executions(records), key=lambda e: records[e.id][0])  # type: ignore

    def save(self) -> None:
        """Write what changed; a failure (full disk, read-only folder) leaves a cache the
        next writer rebuilds, never a wrong one."""
        if not (self.changed or self.dirty):
            return
        try:
            self.path.mkdir(exist_ok=True)
            for stale in self.path.glob(".tmp-*"):  # from a killed writer (we hold the lock)
                stale.unlink(missing_ok=True)
            previous = Catalog.load(self.path)
            if previous.valid:
                self._write("index.json", {**previous._index(), "writing": True})
            generation = max(previous.generation + 1, self.generation + 1, time.time_ns())
            for name in [*sorted(self.dirty), "journal"]:
                records = self.journal() if name == "journal" else self.shard(name)
                self._write(f"{name}.json", {"version": CACHE_VERSION,
                                             "generation": generation, "executions": records})
                self.on_disk.add(name)
            self.generation, self.writing = generation, False
            self._write("index.json", self._index())
            (self.path.parent / "catalog.json").unlink(missing_ok=True)  # version 3's
        except OSError:
            return
        self.dirty.clear()
        self.changed = False

    def _index(self) -> dict[str, object]:
        return {"version": CACHE_VERSION, "generation": self.generation,
                "writing": self.writing, "head": self.head, "notes": self.notes,
                "next": self.next_order, "shards": sorted(self.on_disk),
                "counts": self.shard_counts}

    def _write(self, name: str, data: dict[str, object]) -> None:
        # Written aside, then renamed: a reader sees the old file or the new one, whole.
        tmp = self.path / f".tmp-{os.getpid()}-{name}"
        try:
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, self.path / name)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise


def _index_ok(data: object) -> bool:
    return (isinstance(data, dict) and data.get("version") == CACHE_VERSION
            and type(data.get("generation")) is int and isinstance(data.get("writing"), bool)
            and all(data.get(k) is None or isinstance(data.get(k), str)
                    for k in ("head", "notes"))
            and type(data.get("next")) is int
            and isinstance(data.get("shards"), list)
            and all(isinstance(n, str) and (n == "journal" or (len(n) == 2 and set(n) <= _HEX))
                    for n in data["shards"])
            and isinstance(data.get("counts"), dict)
            and all(isinstance(c, dict) and all(type(n) is int for n in c.values())
                    for c in data["counts"].values()))


def _lines(record: Record) -> tuple[str, ...]:
    return tuple(line for line in str(record[6]).splitlines() if line)


def _executions(records: dict[str, Record]) -> list[Execution]:
    if not all(_record_ok(r) for r in records.values()):
        raise Invalid("record")
    return [Execution(ExecutionId(eid), str(r[1]), str(r[2]), str(r[3]),
                      None if r[4] is None else str(r[4]), _lines(r))
            for eid, r in records.items() if r[5]]


def _read(campaign: Campaign, answer: Callable[[Catalog], T]) -> T:
    """`answer` from a cache that matches the refs: as saved when it does (no pygit2),
    else brought up to date (and saved, where the campaign can be written)."""
    if ((campaign.git_dir / "expegit" / "publish.json").exists()
            or (campaign.git_dir / "index.lock").exists()):
        # Perhaps a publish that a dead process left half done: completed first, so that
        # what is read is whole (transaction.py, imported only then: it needs pygit2).
        from git_expegit import transaction

        transaction.recover_if_interrupted(campaign)
    path = campaign.git_dir / "expegit" / "catalog"
    catalog = Catalog.load(path)
    if catalog.fresh(*campaign.tip_and_notes()):
        try:
            return answer(catalog)
        except Invalid:
            pass  # a writer is at work, or a shard is damaged: see below, under the lock
    # Reading git objects needs pygit2, imported only now: a fresh cache answers without.
    from git_expegit import history

    with _locked(path) as writable:
        catalog = Catalog.load(path)
        try:
            try:
                history.update(campaign.repo, catalog)
                result = answer(catalog)
            except Invalid:
                catalog = Catalog(path, generation=catalog.generation)
                history.update(campaign.repo, catalog)
                result = answer(catalog)
        except KeyError as e:  # pygit2: an object the refs lead to is not there
            raise damaged(e) from None
        if writable:
            catalog.save()
    return result


def damaged(error: KeyError) -> ExpegitError:
    return ExpegitError(f"the campaign's history lacks the object {error.args[0]}: the "
                        "repository is damaged (see git fsck); restore it from a clone or "
                        "the remote", ExitCode.CAMPAIGN)


@contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """The cache writers' lock; yields False, with no lock, where the campaign cannot be
    written (then nothing is saved)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield os.access(path, os.W_OK)
    finally:
        os.close(fd)
