from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from git_runaway import profiles
from git_runaway.commands.output import logger
from git_runaway.commands.output import stderr_sink
from git_runaway.commands.output import stdout_sink
from git_runaway.errors import ExitCode
from git_runaway.execution import Job
from git_runaway.execution import Leave
from git_runaway.execution import Log
from git_runaway.execution import Outcome
from git_runaway.execution import Runaway
from git_runaway.execution import forwarded_environment

CLOSED_STDOUT = 128 + signal.SIGPIPE  # what a shell reports for a command killed by SIGPIPE
SAME_CTRL_C = 0.5  # seconds: a SIGINT this close to the first is the same Ctrl-C


def run(profile_name: str, script: str, arguments: list[str], leave: str, verbose: bool,
        cwd: Path) -> int:
    profile = profiles.load(profile_name, cwd)
    job = Job(cwd, script, " ".join(arguments), Leave(leave), forwarded_environment(os.environ))
    try:
        return asyncio.run(_run(profile, job, logger(verbose)))
    except asyncio.CancelledError:  # Ctrl-C, once the run stopped and cleaned up
        raise KeyboardInterrupt from None
    except BrokenPipeError:
        # `git runaway ... | head -1`: the script was stopped and the host cleaned up. Exit
        # quietly, as a command killed by SIGPIPE does; nothing more may go to stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return CLOSED_STDOUT


async def _run(profile: profiles.Profile, job: Job, log: Log) -> int:
    main = asyncio.current_task()
    assert main is not None
    _on_ctrl_c(main)
    async with Runaway(log) as runaway:
        outcome = await runaway.run(profile, job, stdout_sink, stderr_sink)
    warn_unfetched(outcome)
    if outcome.exit_code is None:
        return ended_without_code(outcome, outcome.where.get("job", outcome.uuid))
    return outcome.exit_code


def warn_unfetched(outcome: Outcome) -> None:
    for name in outcome.unfetched:  # said even without -v: these results did not come back
        print(f"runaway: warning: {name!r} was not fetched: it is unreadable, or not a "
              "file", file=sys.stderr, flush=True)


def ended_without_code(outcome: Outcome, job: str) -> int:
    """A Slurm job that ended before its script could say an exit code (cancelled while
    queued, killed at its time limit): runaway's own failure, not an exit code of 0."""
    state = outcome.where.get("state", "UNKNOWN")
    why = (" (Slurm forgot it and it left no exit code: killed, collected already, or "
           "removed by --clean)" if state == "LOST" else "")
    print(f"runaway: Slurm job {job} ended without an exit code: its state is {state}{why}",
          file=sys.stderr, flush=True)
    return ExitCode.HOST.status


def _on_ctrl_c(main: asyncio.Task[int]) -> None:
    """The first Ctrl-C cancels the run, which stops the script, then still fetches and
    cleans up; a second one, later, aborts at once (the host keeps the run folder).

    Handled in the loop, not by asyncio.run's handler, which raises KeyboardInterrupt
    between any two bytecodes on a second SIGINT: in the middle of writing an ssh packet,
    that corrupted the connection. A terminal sends SIGINT to runaway and to the `git` that
    started it, which forwards it: that second one, a moment later, is the same Ctrl-C.
    """
    first: list[float] = []

    def interrupted() -> None:
        now = time.monotonic()
        if not first:
            first.append(now)
            main.cancel()
        elif now - first[0] > SAME_CTRL_C:
            print("runaway: interrupted again: aborted; the host keeps the run folder",
                  file=sys.stderr, flush=True)
            os._exit(130)

    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupted)
