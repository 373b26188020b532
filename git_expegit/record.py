"""The on-disk vocabulary of a campaign, each word defined once: execution ids, states, the
events of an execution's note, and the `Expegit-*` trailers of its commits.

Everything here is plain data: it reads and writes text, never the repository.

An event is one line of a note:

    2026-11-30T07:00:00.000001Z finished exit=0 seq=3 clone=5f2c9a01

Lines start with a UTC timestamp so that `git notes merge -s cat_sort_uniq` unites what
several clones wrote, but clocks differ between clones, so an execution's state follows
causal order instead: every event carries `seq`, one more than the highest its writer had
seen for that execution, and `clone`, its writer's id, which breaks ties between two clones
that wrote at the same step. A line without `seq` (written by hand) takes its place by its
timestamp.
"""

from __future__ import annotations

import datetime
import enum
import re
import urllib.parse
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NewType

ExecutionId = NewType("ExecutionId", str)

# A profile name, as runaway accepts it (git_runaway.profiles.NAME: the data layer never
# imports runaway).
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # and at most 100 characters
_EXECUTION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class State(enum.StrEnum):
    CREATED = "created"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


STATES = tuple(State)
DONE = (State.FINISHED, State.FAILED)

# The events that set a state; "reset" makes an execution new again. Other events
# ("removed", attempts...) are kept in the log without changing the state.
_STATE_OF = {"created": State.CREATED, "reset": State.CREATED, "queued": State.QUEUED,
             "running": State.RUNNING, "finished": State.FINISHED, "failed": State.FAILED}


class RecordError(ValueError):
    """A value that cannot be written into a note or a trailer."""


# Events ---------------------------------------------------------------------------------------

_last_stamp = ""


def stamp() -> str:
    """Now, in UTC to the microsecond; strictly increasing within this process."""
    global _last_stamp
    now = datetime.datetime.now(datetime.UTC)
    text = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    while text <= _last_stamp:
        now += datetime.timedelta(microseconds=1)
        text = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    _last_stamp = text
    return text


def _quote(value: object) -> str:
    # Values are one word: spaces, "%" and control characters are percent-encoded, so a
    # file name or a host name can never split a line or forge another field.
    return urllib.parse.quote(str(value), safe="!#$&'()*+,-./:;<>?@[]^_`{|}~=")


@dataclass(frozen=True)
class Event:
    stamp: str
    kind: str
    fields: tuple[tuple[str, str], ...] = ()
    seq: int = 0
    clone: str = ""

    def field(self, name: str) -> str | None:
        return next((value for key, value in self.fields if key == name), None)

    def line(self) -> str:
        """The event as one note line, newline included."""
        words = [self.stamp, self.kind, *(f"{k}={_quote(v)}" for k, v in self.fields)]
        if self.seq:
            words += [f"seq={self.seq}", f"clone={self.clone}"]
        return " ".join(words) + "\n"

    @classmethod
    def parse(cls, line: str) -> Event | None:
        """The event of one note line; None for a line that is not one (a hand edit)."""
        words = line.split()
        if len(words) < 2:
            return None
        fields, seq, clone = [], 0, ""
        for word in words[2:]:
            key, _, value = word.partition("=")
            if key == "seq" and value.isdigit():
                seq = int(value)
            elif key == "clone":
                clone = value
            else:
                fields.append((key, urllib.parse.unquote(value)))
        return cls(words[0], words[1], tuple(fields), seq, clone)


def new_event(kind: str, seen: Iterable[Event], clone: str, **fields: object) -> Event:
    """An event that comes after every event in `seen` (the execution's log so far)."""
    if not re.fullmatch(r"[a-z][a-z-]*", kind):
        raise RecordError(f"invalid event kind {kind!r}")
    for key in fields:
        if not re.fullmatch(r"[a-z][a-z_-]*", key) or key in ("seq", "clone"):
            raise RecordError(f"invalid event field {key!r}")
    seq = max((event.seq for event in seen), default=0) + 1
    return Event(stamp(), kind,
                 tuple((k, str(v)) for k, v in fields.items() if v is not None), seq, clone)


def events(log: Iterable[str]) -> list[Event]:
    """A note's events in causal order: by step, then kind, then writer, then time. A line
    without a step (written by hand, or by an older version) takes its place by its time:
    after every event stamped before it."""
    parsed = sorted((e for e in map(Event.parse, log) if e is not None),
                    key=lambda e: e.stamp)
    keys, step = [], 0
    for event in parsed:
        step = max(step, event.seq)
        # (step, 0, ...) for events that carry one; (step, 1, ...) puts a line without one
        # after the events of the step it follows.
        rank = _RANK.get(event.kind, 1)
        keys.append(((event.seq, 0, rank, event.clone, event.stamp) if event.seq
                     else (step, 1, rank, "", event.stamp), event))
    return [event for _, event in sorted(keys, key=lambda pair: pair[0])]


# Two clones that wrote at the same step did so concurrently: the one that says more about
# the results wins, as sync's merge keeps the folder a finish changed over a reset's.
_RANK = {"created": 0, "reset": 0, "queued": 2, "running": 3, "finished": 4, "failed": 4}


def state(log: Iterable[str]) -> State:
    """The state the last state-setting event in causal order leaves an execution in."""
    event = state_event(log)
    return State.CREATED if event is None else _STATE_OF[event.kind]


def state_event(log: Iterable[str]) -> Event | None:
    """The last state-setting event in causal order: what set the current state."""
    for event in reversed(events(log)):
        if event.kind in _STATE_OF:
            return event
    return None


def latest(log: Iterable[str], name: str) -> str | None:
    """The latest value of field `name` in causal order (host, job, exit, duration...),
    since the execution was last made new (a reset forgets the exit code of before)."""
    for event in reversed(events(log)):
        value = event.field(name)
        if value is not None:
            return value
        if event.kind in ("created", "reset"):
            return None
    return None


# Trailers -------------------------------------------------------------------------------------

class Trailer(enum.StrEnum):
    EXECUTION = "Expegit-Execution"
    COMMIT = "Expegit-Commit"
    PARAMETERS = "Expegit-Parameters"
    PROFILE = "Expegit-Profile"
    STATUS = "Expegit-Status"
    EXIT_CODE = "Expegit-Exit-Code"
    # A batch request, in a commit of the campaign or of the experiment (see requests.py).
    SWEEP = "Expegit-Sweep"
    REPEAT = "Expegit-Repeat"
    NAME = "Expegit-Name"


def message(subject: str, trailers: Mapping[Trailer, str | None]) -> str:
    """A commit message with `trailers` (None values left out), each value checked."""
    lines = []
    # Empty values last: libgit2 reads the line after an empty trailer as its value.
    for key, value in sorted(trailers.items(), key=lambda item: item[1] == ""):
        if value is not None:
            check_value(key, value)
            lines.append(f"{key}: {value}")
    return f"{subject}\n\n" + "\n".join(lines) + "\n"


def check_value(key: str, value: str) -> None:
    """A trailer value must stay one trailer: one line, no control characters."""
    what = _WHAT.get(key, key)
    if key == Trailer.PROFILE and not PROFILE_NAME.fullmatch(value):
        raise RecordError(f"invalid profile name {value[:120]!r}: use up to 100 letters, "
                          "digits, '.', '_' and '-', starting with a letter or digit")
    if key == Trailer.NAME and not PROFILE_NAME.fullmatch(value):
        raise RecordError(f"invalid batch name {value[:120]!r}: use up to 100 letters, "
                          "digits, '.', '_' and '-', starting with a letter or digit")
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        raise RecordError(f"{what} cannot hold a newline or a control character: {value!r}")
    if value != value.strip():
        raise RecordError(f"{what} cannot start or end with spaces: {value!r}")
    if key == Trailer.EXECUTION and not _EXECUTION_ID.fullmatch(value):
        raise RecordError(f"invalid execution id {value!r}")


_WHAT: dict[str, str] = {Trailer.PARAMETERS: "parameters", Trailer.COMMIT: "an experiment commit"}


@dataclass(frozen=True)
class Creation:
    """What the trailers of the commit that created an execution say."""

    execution: ExecutionId
    commit: str
    parameters: str
    profile: str | None


def creation(trailers: Mapping[str, str]) -> Creation | None:
    """The creation an execution's first commit records; None for other commits (finish,
    reset, remove carry a status) and for commits that are not expegit's."""
    # libgit2 gives an empty trailer value as "\n": values are stripped.
    values = {k: v.strip() for k, v in trailers.items()}
    execution = values.get(Trailer.EXECUTION)
    if not execution or Trailer.STATUS in values:
        return None
    return Creation(ExecutionId(execution), values.get(Trailer.COMMIT, ""),
                    values.get(Trailer.PARAMETERS, ""), values.get(Trailer.PROFILE) or None)
