"""Watching this clone's executions change state, for `jobs wait`: the changes another
process (the agent, a `jobs run`) records in the notes, as the runner's Changes.

A tick reads two ref files (the branch and the notes); the catalog is read again only when
one of them moved, so waiting on a campaign of 50,000 executions costs next to nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field

from git_expegit import catalog
from git_expegit import queue
from git_expegit import record
from git_expegit import refs
from git_expegit.campaign import Campaign
from git_expegit.catalog import Execution
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.record import STATES
from git_expegit.record import ExecutionId
from git_expegit.record import State
from git_expegit.runner import Change

TICK = 0.5  # seconds between two looks at the refs
PENDING = (State.QUEUED, State.RUNNING)


def refs_key(campaign: Campaign) -> tuple[str | None, str | None] | None:
    """What the catalog depends on: the branch tip and the notes; None when the ref files
    cannot be read as git would (then the catalog must be asked each time)."""
    key = campaign.tip_and_notes()
    return None if refs.UNKNOWN in key else key


@dataclass
class Watch:
    """The executions followed, and what was last seen of each: (state, attempt, owner)."""

    campaign: Campaign
    name: str | None
    clone: str
    seen: dict[ExecutionId, tuple[State, int, str | None]] = field(default_factory=dict)
    gone: set[ExecutionId] = field(default_factory=set)  # removed while followed
    _first: list[Change] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.seen)

    def pending(self) -> bool:
        """Something followed may still change by itself: queued or running here."""
        return any(state in PENDING and owner == self.clone
                   for eid, (state, _, owner) in self.seen.items() if eid not in self.gone)

    def failed(self) -> list[ExecutionId]:
        """What did not succeed: failed, or removed while followed."""
        return [eid for eid, (state, _, _) in self.seen.items()
                if state == State.FAILED or eid in self.gone]

    def changes(self, tick: float = TICK) -> Iterator[Change]:
        """The state of each execution followed that is not queued (at once), then every
        change, until nothing followed is queued or running here."""
        yield from self._first
        self._first = []
        key = refs_key(self.campaign)
        while self.pending():
            time.sleep(tick)
            now = refs_key(self.campaign)
            if now is not None and now == key:
                continue
            key = now
            yield from self._compare(catalog.executions(self.campaign))

    def _compare(self, current: list[Execution]) -> Iterator[Change]:
        by_id = {e.id: e for e in current}
        for eid in list(self.seen):
            if eid in self.gone:
                continue
            e = by_id.get(eid)
            if e is None:
                self.gone.add(eid)
                yield Change(eid, "", State.FAILED, "removed")
            elif _key(e) != self.seen[eid]:
                yield self._follow(e)
        if self.name is None:  # the whole queue: what is queued here meanwhile joins
            for e in queue.mine(self.campaign, current, PENDING):
                if e.id not in self.seen:
                    yield self._follow(e)

    def _follow(self, e: Execution) -> Change:
        self.seen[e.id] = _key(e)
        return change_of(self.campaign, e, self.clone)


def start(campaign: Campaign, name: str | None = None) -> Watch:
    """Follow this clone's queued and running executions; with `name`, every execution of
    that batch queued here, the ended ones included, so that the answer is the batch's
    whatever moment the wait began."""
    everything = catalog.executions(campaign)
    clone = campaign.clone_id()
    if name is None:
        chosen = queue.mine(campaign, everything, PENDING)
    else:
        batch = [e for e in everything if queue.batch_of(e) == name]
        if not batch:
            raise ExpegitError(f"no batch named {name!r} in this campaign: see git expegit "
                               "list", ExitCode.INPUT)
        chosen = queue.mine(campaign, batch, STATES)
        if not chosen:
            raise ExpegitError(f"batch {name!r} has no execution queued in this clone: wait "
                               "for it in the clone that runs it", ExitCode.INPUT)
    found = Watch(campaign, name, clone)
    for e in chosen:
        change = found._follow(e)
        if change.state != State.QUEUED:
            found._first.append(change)
    return found


def change_of(campaign: Campaign, e: Execution, clone: str) -> Change:
    """An execution's current state as a Change, with what its state event says."""
    event = record.state_event(e.log)
    words = []
    if event is not None:
        owner, attempt = event.field("owner"), event.field("attempt")
        if e.state == State.QUEUED and owner and owner != clone:
            words.append(f"queued in clone {owner}")
        if attempt and attempt != "1":
            words.append(f"attempt {attempt}")
        if e.state == State.RUNNING and event.field("host"):
            words.append(f"on {event.field('host')}")
        if event.field("exit") is not None:
            words.append(f"exit {event.field('exit')}")
        if event.field("reason"):
            words.append(str(event.field("reason")))
        if event.field("duration"):
            words.append(f"after {_seconds(str(event.field('duration')))}")
    return Change(e.id, e.parameters, e.state, ", ".join(words),
                  campaign.root / e.folder)


def _seconds(text: str) -> str:
    try:
        return f"{float(text):.1f} s"
    except ValueError:
        return text


def _key(e: Execution) -> tuple[State, int, str | None]:
    return e.state, queue.attempt_of(e), queue.owner_of(e)
