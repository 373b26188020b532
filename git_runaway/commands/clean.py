from __future__ import annotations

import asyncio
from pathlib import Path

from git_runaway import profiles
from git_runaway.commands.output import logger
from git_runaway.execution import Runaway


def clean(profile_name: str, cwd: Path, verbose: bool) -> int:
    """Remove what runs that are over left on the profile's host, one line per item."""
    profile = profiles.load(profile_name, cwd)
    for line in asyncio.run(_clean(profile, verbose)):
        print(f"removed {line}")
    return 0


async def _clean(profile: profiles.Profile, verbose: bool) -> list[str]:
    async with Runaway(logger(verbose)) as runaway:
        return await runaway.clean(profile)
