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
