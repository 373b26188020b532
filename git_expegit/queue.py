"""The queue: executions waiting to run, and the claims of the runs under way.

An execution is queued when its note's latest state event is `queued owner=CLONE
attempt=N`: only the clone named runs it (a clone that fetches it never does unless it is
rescheduled there). Its batch is the `batch=` of its creation; its profile is the `profile=`
of its latest queued event, else its Expegit-Profile trailer.

One runner per clone runs the queue (`jobs run` or the agent, under `runner_lock`). Before a
run starts, its claim (execution, attempt, runaway run id, profile) is written to
`.git/expegit/claims/`, a plain file, so that a runner killed at any moment leaves the handle
of every run it started: the next runner collects what ended on the host, and queues again,
as a new attempt, what died with it. The notes record `running` and the end in batches, one
transaction for many executions.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import urllib.parse
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

from git_expegit import catalog
from git_expegit import executions
from git_expegit import locks
from git_expegit import record
from git_expegit import transaction
from git_expegit.campaign import Campaign
from git_expegit.catalog import Execution
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.record import ExecutionId
from git_expegit.record import State

CLAIMS = "claims"
WAKE = "queue-changed"  # touched after every change to the queue: the agent watches it


@dataclass(frozen=True)
class Batch:
    name: str
    ids: list[ExecutionId]
    skipped: int = 0  # --new-only: parameter strings that already finished


def new_name() -> str:
    """A batch name that sorts by time and is unique enough: 20261130-0903-a1b2."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def enqueue(campaign: Campaign, commit: str, strings: Sequence[str], profile: str,
            name: str | None = None, new_only: bool = False,
            request: str | None = None, sbatch: Sequence[tuple[str, str]] | None = None
            ) -> Batch:
    """Create and queue, for this clone, one execution per parameter string, in one
    operation. With `new_only`, a (commit, parameters) pair that already finished is
    skipped (once per finished execution: `-r 2` after `-r 1` adds one more). `sbatch`:
    the batch's own Slurm options (`jobs run --sbatch KEY=VALUE`), kept with each one."""
    name = name or new_name()
    chosen = list(strings)
    if new_only:
        chosen = _new_only(campaign, commit, chosen)
    skipped = len(strings) - len(chosen)
    if not chosen:
        return Batch(name, [], skipped)
    ids = transaction.retried(lambda: executions.create(
        campaign, commit, chosen, profile, batch=name, queued=True, request=request,
        sbatch=urllib.parse.urlencode(sbatch) if sbatch else None))
    wake(campaign)
    return Batch(name, ids, skipped)


def _new_only(campaign: Campaign, commit: str, strings: list[str]) -> list[str]:
    done: dict[str, int] = {}
    for e in catalog.executions(campaign):
        if e.commit == commit and e.state == State.FINISHED:
            done[e.parameters] = done.get(e.parameters, 0) + 1
    chosen = []
    for text in strings:
        if done.get(text.strip(), 0) > 0:
            done[text.strip()] -= 1
        else:
            chosen.append(text)
    return chosen


def profile_of(execution: Execution) -> str | None:
    """The profile an execution runs on: the latest rescheduling's, else its creation's."""
    return execution.field("profile") or execution.profile


def batch_of(execution: Execution) -> str | None:
    """The batch it was created in (a reschedule's reset does not change it)."""
    for event in record.events(execution.log):
        if event.kind == "created":
            return event.field("batch")
    return None


def sbatch_of(execution: Execution) -> list[tuple[str, str]]:
    """The Slurm options its batch overrides (`jobs run --sbatch`), in their order."""
    for event in record.events(execution.log):
        if event.kind == "created":
            return urllib.parse.parse_qsl(event.field("sbatch") or "")
    return []


def owner_of(execution: Execution) -> str | None:
    return execution.field("owner")


def attempt_of(execution: Execution) -> int:
    value = execution.field("attempt")
    return int(value) if value and value.isdigit() else 1


def mine(campaign: Campaign, chosen: Iterable[Execution] | None = None,
         states: tuple[State, ...] = (State.QUEUED,)) -> list[Execution]:
    """The executions in `states` that this clone owns, in creation (expansion) order."""
    clone = campaign.clone_id()
    pool = catalog.executions(campaign) if chosen is None else chosen
    return [e for e in pool if e.state in states and owner_of(e) == clone]


def reschedule(campaign: Campaign, chosen: Sequence[Execution],
               profile: str | None = None) -> list[ExecutionId]:
    """Queue executions again for this clone, as a new attempt: finished and failed ones
    lose their results from the tree (the history keeps them), queued ones move here. A
    running one is refused: delete it first, or wait."""
    if profile is not None:
        executions.check_profile(profile)
    busy = [e for e in chosen if e.state == State.RUNNING]
    if busy:
        raise ExpegitError(f"execution {busy[0].id[:8]} is running: wait for it, or cancel "
                           f"it with git expegit jobs delete {busy[0].id[:8]}", ExitCode.INPUT)
    done = executions.requeue(campaign, chosen, profile,
                              {e.id: attempt_of(e) + 1 for e in chosen})
    wake(campaign)
    return done


def record_events(campaign: Campaign,
                  items: Sequence[tuple[Execution, str, Mapping[str, object]]]) -> None:
    """Append events (running, lost...) to many notes in one transaction."""
    if not items:
        return
    with transaction.begin(campaign) as tx:
        for execution, kind, fields in items:
            tx.log(execution.creation, kind, **fields)
        tx.publish("jobs run", worktree=False)


# Waking the agent -----------------------------------------------------------------------------

def wake(campaign: Campaign) -> None:
    """Tell the agent the queue changed: it watches this file's folder."""
    path = campaign.state_dir / WAKE
    path.write_text(f"{time.time()}\n")


# Cancelling ----------------------------------------------------------------------------------

def request_cancel(campaign: Campaign, execution: ExecutionId) -> None:
    """Ask the runner of this clone to stop a running execution (jobs delete)."""
    folder = campaign.state_dir / "cancel"
    folder.mkdir(exist_ok=True)
    (folder / execution).touch()
    wake(campaign)


def cancel_requests(campaign: Campaign) -> set[str]:
    folder = campaign.state_dir / "cancel"
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def forget_cancel(campaign: Campaign, execution: ExecutionId) -> None:
    with contextlib.suppress(FileNotFoundError):
        (campaign.state_dir / "cancel" / execution).unlink()


# Claims ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """A run that a runner started: enough to find it again on its host."""

    execution: ExecutionId
    attempt: int
    run: str  # runaway's run id: the name of the run folder on the host
    profile: str
    started: float  # time.time() when claimed
    # How the run ended, once its results are here and before its end is committed: a
    # runner killed in between finishes it from this, instead of running it again.
    exit_code: int | None = None
    ended: dict[str, str] | None = None
    job: str | None = None  # the Slurm job that runs it, once submitted: "123_4"


def _claims(campaign: Campaign) -> Path:
    path = campaign.state_dir / CLAIMS
    path.mkdir(exist_ok=True)
    return path


def claim(campaign: Campaign, found: Claim) -> None:
    """Write the claim before the run starts (whole or not at all: a rename)."""
    folder = _claims(campaign)
    tmp = folder / f".{found.execution}.tmp"
    tmp.write_text(json.dumps(asdict(found)))
    os.replace(tmp, folder / found.execution)


def release(campaign: Campaign, execution: ExecutionId) -> None:
    """Forget a claim once the run's end is published."""
    with contextlib.suppress(FileNotFoundError):
        (_claims(campaign) / execution).unlink()


def claims(campaign: Campaign) -> list[Claim]:
    """Every claim left, readable or not: an unreadable one is dropped (its execution is
    still `running` in the notes, which recovery queues again)."""
    found = []
    for path in sorted(_claims(campaign).iterdir()):
        if path.name.startswith("."):
            path.unlink(missing_ok=True)  # a claim cut before its rename
            continue
        try:
            data = json.loads(path.read_text())
            ended = data.get("ended")
            found.append(Claim(ExecutionId(data["execution"]), int(data["attempt"]),
                               str(data["run"]), str(data["profile"]), float(data["started"]),
                               None if data.get("exit_code") is None else int(data["exit_code"]),
                               {str(k): str(v) for k, v in ended.items()}
                               if isinstance(ended, dict) else None,
                               None if data.get("job") is None else str(data["job"])))
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
    return found


# One runner per clone -------------------------------------------------------------------------

@contextlib.contextmanager
def runner_lock(campaign: Campaign, wait: bool = False) -> Iterator[bool]:
    """Held by the process that runs this clone's queue (`jobs run` or the agent). Yields
    False, without `wait`, when another process holds it."""
    with locks.held(campaign.state_dir / "runner.lock", wait, pid=True) as ours:
        yield ours


def runner_pid(campaign: Campaign) -> int | None:
    """The pid of the process running this clone's queue, if one does."""
    return locks.holder(campaign.state_dir / "runner.lock")
