from __future__ import annotations

import asyncio
import os
from pathlib import Path

from git_runaway import profiles
from git_runaway.commands.output import logger
from git_runaway.commands.output import stderr_sink
from git_runaway.commands.output import stdout_sink
from git_runaway.execution import Job
from git_runaway.execution import Leave
from git_runaway.execution import Log
from git_runaway.execution import Runaway
from git_runaway.execution import forwarded_environment


def run(profile_name: str, script: str, arguments: list[str], leave: str, verbose: bool,
        cwd: Path) -> int:
    profile = profiles.load(profile_name, cwd)
    job = Job(cwd, script, " ".join(arguments), Leave(leave), forwarded_environment(os.environ))
    # asyncio.run turns the first Ctrl-C into a cancellation, which stops the script and
    # still fetches and cleans up; a second Ctrl-C aborts at once (KeyboardInterrupt).
    return asyncio.run(_run(profile, job, logger(verbose)))


async def _run(profile: profiles.Profile, job: Job, log: Log) -> int:
    async with Runaway(log) as runaway:
        outcome = await runaway.run(profile, job, stdout_sink, stderr_sink)
    return outcome.exit_code
