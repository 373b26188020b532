from __future__ import annotations

import asyncio
from pathlib import Path

from git_runaway import profiles
from git_runaway.commands.output import logger
from git_runaway.errors import ExitCode
from git_runaway.execution import Runaway


def check(profile_name: str, cwd: Path, verbose: bool) -> int:
    profile = profiles.load(profile_name, cwd)
    steps = asyncio.run(_check(profile, verbose))
    for step, failure in steps:
        print(f"ok    {step}" if failure is None else f"FAIL  {step}: {failure}")
    return 0 if all(failure is None for _, failure in steps) else ExitCode.HOST.status


async def _check(profile: profiles.Profile, verbose: bool) -> list[tuple[str, str | None]]:
    async with Runaway(logger(verbose)) as runaway:
        return await runaway.check(profile)
