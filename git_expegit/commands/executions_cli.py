"""exec new, finish, exec reset and exec remove, as the user sees them."""

from __future__ import annotations

from pathlib import Path

from git_expegit import campaign
from git_expegit import catalog
from git_expegit import executions
from git_expegit import parameters
from git_expegit import placement
from git_expegit import sweep
from git_expegit import sync as syncing
from git_expegit.commands.output import logger
from git_expegit.commands.output import relative
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError


def new(cwd: Path, commit: str | None, params: list[str], expression: str | None,
        repeat: int, profile: str | None, dry_run: bool, push: bool, verbose: bool) -> int:
    if repeat < 1:
        raise ExpegitError("--repeat needs a number of at least 1", ExitCode.USAGE)
    if expression is None:
        strings = [parameters.join(params)] * repeat
    else:
        parameters.check(expression, "the --sweep expression")
        strings = _expand(expression, repeat)
        parameters.check_strings(strings)
    if dry_run:
        print("\n".join(strings))
        return 0
    found = campaign.find(cwd)
    full = executions.experiment_commit(found, commit)
    if expression is None:  # the objects its code needs, fetched before anything changes
        placement.prepare(found, full)
    with syncing.pushing(found, push):
        ids = executions.create(found, full, strings, profile, place_code=expression is None)
        logger(verbose)(f"created {len(ids)} execution(s) of {full[:12]}")
        for execution in ids:
            print(relative(found.root / campaign.folder(execution), cwd))
    return 0


def _expand(expression: str, repeat: int) -> list[str]:
    try:
        return sweep.expand(expression, repeat)
    except sweep.SweepError as e:
        raise ExpegitError(f"bad --sweep expression at {e}", ExitCode.INPUT) from None


def finish(cwd: Path, prefix: str | None, exit_code: int | None, push: bool, verbose: bool) -> int:
    found = campaign.find(cwd)
    execution = catalog.resolve(found, prefix, cwd)
    with syncing.pushing(found, push):
        executions.finish(found, execution, exit_code)
        logger(verbose)(f"finished {execution.id}")
    return 0


def reset_or_remove(cwd: Path, prefix: str | None, remove: bool, push: bool, verbose: bool) -> int:
    found = campaign.find(cwd)
    execution = catalog.resolve(found, prefix, cwd)
    if not remove:  # reset places the code again: its objects, fetched before the change
        placement.prepare(found, execution.commit)
    with syncing.pushing(found, push):
        (executions.remove if remove else executions.reset)(found, execution)
        logger(verbose)(f"{'removed' if remove else 'reset'} {execution.id}")
    return 0
