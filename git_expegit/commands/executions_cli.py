"""exec new, finish, exec reset and exec remove, as the user sees them."""

from __future__ import annotations

from pathlib import Path

from git_expegit import campaign
from git_expegit import catalog
from git_expegit import executions
from git_expegit import parameters
from git_expegit import placement
from git_expegit import queue
from git_expegit import sync as syncing
from git_expegit.commands import jobs_cli
from git_expegit.commands.output import logger
from git_expegit.commands.output import relative
from git_expegit.commands.output import warn


def new(cwd: Path, commit: str | None, params: list[str], expression: str | None,
        repeat: int, profile: str | None, dry_run: bool, push: bool, verbose: bool) -> int:
    if expression is None:
        strings = [parameters.join(params)] * repeat
    else:
        strings = parameters.expand(expression, repeat, "--sweep expression")
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


def finish(cwd: Path, prefix: str | None, exit_code: int | None, push: bool, verbose: bool) -> int:
    found = campaign.find(cwd)
    execution = catalog.resolve(found, prefix, cwd)
    with syncing.pushing(found, push):
        done = executions.finish(found, execution, exit_code)
        logger(verbose)(f"{done.status} {execution.id}")
    if done.outside:
        # A name may hold a line break: shown escaped, so the warning stays one line.
        names = ["".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
                 for name in done.outside[:10]]
        shown = ", ".join(names) + (", ..." if len(done.outside) > 10 else "")
        warn(f"the run created {len(done.outside)} file(s) outside data/, which are not kept "
             f"(results live in data/): {shown}")
    return 0


def reset(cwd: Path, prefix: str | None, push: bool, verbose: bool) -> int:
    found = campaign.find(cwd)
    execution = catalog.resolve(found, prefix, cwd)
    placement.prepare(found, execution.commit)  # the code's objects, before the change
    jobs_cli.stop(found, execution)  # a run under way would write into the reset folder
    queue.release(found, execution.id)
    with syncing.pushing(found, push):
        executions.reset(found, execution)
        logger(verbose)(f"reset {execution.id}")
    return 0


def remove(cwd: Path, prefix: str | None, force: bool, push: bool, verbose: bool) -> int:
    found = campaign.find(cwd)
    execution = catalog.resolve(found, prefix, cwd)
    with syncing.pushing(found, push):
        executions.remove(found, execution, force)
        logger(verbose)(f"removed {execution.id}")
    return 0
