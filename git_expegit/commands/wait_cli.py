"""jobs wait: block until this clone's queue, or one batch, is done, showing its progress;
exit as jobs run would."""

from __future__ import annotations

import sys
from pathlib import Path

from git_expegit import campaign
from git_expegit import watch
from git_expegit.agent import control
from git_expegit.commands.progress import Display
from git_expegit.errors import ExitCode


def wait(cwd: Path, name: str | None) -> int:
    """0 if every execution followed succeeded, 1 if one failed (the summary names it),
    4 for an unknown batch."""
    found = campaign.find(cwd)
    watching = watch.start(found, name)
    what = f"batch {name}" if name is not None else "this clone's queue"
    if not watching.total:
        print(f"expegit: nothing queued or running in {what}", file=sys.stderr)
        return int(ExitCode.OK)
    if watching.pending():
        control.ensure_running(found)  # the agent runs the queue: without it, no end
    with Display(watching.total) as display:
        display.note(f"waiting for {what}: {watching.total} execution(s)")
        for change in watching.changes():
            display.change(change)
    return int(ExitCode.FAILED if watching.failed() else ExitCode.OK)
