"""The only bridge to git_runaway: runs this clone's queued executions, for `jobs run` and
the agent alike. (Interface first; the body lands next.)

    runner = Runner(campaign, listen=display.change, workers=8, retries=2)
    summary = await runner.run(lambda: queue.mine(campaign, ...))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from git_expegit.catalog import Execution
from git_expegit.record import ExecutionId
from git_expegit.record import State


@dataclass(frozen=True)
class Change:
    """A state change of one execution, for displays (progress, plain lines, the web)."""

    execution: ExecutionId
    parameters: str
    state: State  # running, finished, failed; queued when a lost run goes back to the queue
    detail: str = ""  # "exit 3", "timeout after 10 s", "connection lost: attempt 2 of 3"
    logs: Path | None = None  # the folder holding its stdout and stderr


Listener = Callable[[Change], None]
Select = Callable[[], list[Execution]]


@dataclass
class Summary:
    finished: list[ExecutionId] = field(default_factory=list)
    failed: list[tuple[ExecutionId, str]] = field(default_factory=list)  # (id, why)
    queued: list[ExecutionId] = field(default_factory=list)  # left queued (Ctrl-C)


class Runner:
    """Runs queued executions of this clone through runaway; one per clone at a time (the
    caller holds queue.runner_lock)."""

    def __init__(self, campaign: object, listen: Listener | None = None,
                 workers: int | None = None, retries: int = 2,
                 log: Callable[[str], None] | None = None) -> None:
        raise NotImplementedError

    async def run(self, select: Select) -> Summary:
        """Recover the claims a dead runner left, then run what `select()` gives (read again
        when a run ends, or on poke()) until nothing is left and nothing runs. Records and
        finishes in batches; does not sync (the caller does)."""
        raise NotImplementedError

    def poke(self) -> None:
        """The queue changed: read select() again."""

    def stop_launching(self) -> None:
        """No new run starts; the running ones end as they would (a first Ctrl-C)."""

    def cancel(self) -> None:
        """Stop the running scripts; their results are still fetched and they are recorded
        failed, reason=cancelled (a second Ctrl-C)."""
