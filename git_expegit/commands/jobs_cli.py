"""jobs run, jobs wait, jobs reschedule and jobs delete, as the user sees them."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from git_expegit import campaign
from git_expegit import catalog
from git_expegit import executions
from git_expegit import parameters
from git_expegit import queue
from git_expegit import runner
from git_expegit import sync as syncing
from git_expegit import transaction
from git_expegit.agent import control
from git_expegit.commands.output import logger
from git_expegit.commands.output import warn
from git_expegit.commands.progress import Display
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

if TYPE_CHECKING:
    from git_expegit.main import Args


def dispatch(a: Args) -> int:
    if a.flag("run"):
        return run(a.cwd, str(a.opt("PROFILE")), a.opt("COMMIT") or None, a.opt("EXPR"),
                   a.int("--repeat", 1, 100_000) or 1, a.int("--workers", 1, 10_000),
                   a.opt("--name"), a.flag("--new-only"), a.int("--retries", 0, 100) or 0,
                   a.flag("--detach"), a.flag("--verbose"), _options(a.list("--sbatch")))
    if a.flag("wait"):
        return wait(a.cwd, a.opt("--name"))
    if a.flag("reschedule"):
        return reschedule(a.cwd, a.list("IDS"), a.flag("--failed"), a.opt("--name"),
                          a.opt("--profile"), a.flag("--push"), a.flag("--verbose"))
    return delete(a.cwd, a.list("IDS"), a.flag("--push"), a.flag("--verbose"))


def _options(pairs: list[str]) -> list[tuple[str, str]]:
    """`--sbatch KEY=VALUE`, each KEY once but extra, which adds a line each time."""
    options: list[tuple[str, str]] = []
    for pair in pairs:
        key, equal, value = pair.partition("=")
        if not equal or not key:
            raise ExpegitError(f"--sbatch {pair!r}: give KEY=VALUE, such as time=2:00:00",
                               ExitCode.USAGE)
        if key != "extra" and key in dict(options):
            raise ExpegitError(f"--sbatch {key} is given twice: keep one", ExitCode.USAGE)
        options.append((key, value))
    return options


def run(cwd: Path, profile: str, commit: str | None, expression: str | None, repeat: int,
        workers: int | None, name: str | None, new_only: bool, retries: int, detach: bool,
        verbose: bool, sbatch: list[tuple[str, str]] | None = None) -> int:
    strings = _strings(expression, repeat)
    found = campaign.find(cwd)
    # Everything is checked before anything is created.
    runner.sbatch_options(runner.check_profile(found, profile), sbatch or [])
    full = executions.experiment_commit(found, commit)
    runner.check_code(found, full)
    if name is not None and any(queue.batch_of(e) == name for e in catalog.executions(found)):
        raise ExpegitError(f"a batch is named {name!r} already: choose another name (jobs "
                           f"reschedule --name {name} runs that one again)", ExitCode.INPUT)
    batch = queue.enqueue(found, full, strings, profile, name=name, new_only=new_only,
                          sbatch=sbatch)
    log = logger(verbose)
    if batch.skipped:
        print(f"skipped {batch.skipped} execution(s) that already finished", file=sys.stderr)
    print(f"batch {batch.name}: {len(batch.ids)} execution(s) of {full[:12]} on {profile}",
          file=sys.stderr)
    if not batch.ids:
        return 0
    if detach:
        control.ensure_running(found)
        print(batch.name)
        return 0
    with queue.runner_lock(found) as ours:
        if not ours:
            print(f"another process (pid {queue.runner_pid(found) or '?'}) runs this clone's "
                  "queue: the agent runs this batch after it; waiting", file=sys.stderr)
            control.ensure_running(found)
            return wait(cwd, batch.name)
        chosen = set(batch.ids)
        with Display(len(batch.ids)) as display:
            summary = _run(found, lambda: [e for e in queue.mine(found) if e.id in chosen],
                           workers, retries, log, display)
    _sync(found)
    return _report(found, summary)


def _strings(expression: str | None, repeat: int) -> list[str]:
    if expression is None or not expression.strip():
        return [""] * repeat
    return parameters.expand(expression, repeat, "parameter expression")


def _run(found: campaign.Campaign, select: runner.Select, workers: int | None, retries: int,
         log: Callable[[str], None], display: Display) -> runner.Summary:
    """Run with Ctrl-C handled: the first stops launching, the second cancels the runs."""
    the_runner = runner.Runner(found, display.change, workers, retries, log)

    def interrupted() -> None:
        if the_runner.launching:
            display.note("interrupted: no new run starts; the running ones finish (Ctrl-C "
                         "again to stop them)")
            the_runner.stop_launching()
        else:
            display.note("interrupted again: stopping the running executions")
            the_runner.cancel()

    async def main() -> runner.Summary:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, interrupted)
        try:
            return await the_runner.run(select)
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    summary = asyncio.run(main())
    summary.interrupted = not the_runner.launching
    return summary


def _sync(found: campaign.Campaign) -> None:
    if not syncing.has_remote(found):
        return
    try:
        transaction.retried(lambda: syncing.sync(found))
    except ExpegitError as e:
        warn(f"the results are committed here but not synced ({e}); run git expegit sync")


def _report(found: campaign.Campaign, summary: runner.Summary) -> int:
    """The exit code; the display's summary named the failures."""
    if summary.queued:
        who = ("this clone's agent runs them now" if control.running(found) is not None
               else "git expegit agent start runs them")
        print(f"expegit: {len(summary.queued)} execution(s) left queued: {who}; git expegit "
              "jobs delete removes them", file=sys.stderr)
        return ExitCode.INTERRUPTED
    if summary.interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.FAILED if summary.failed else ExitCode.OK


def wait(cwd: Path, name: str | None) -> int:
    from git_expegit.commands import wait_cli

    return wait_cli.wait(cwd, name)


def reschedule(cwd: Path, ids: Sequence[str], failed: bool, name: str | None,
               profile: str | None, push: bool, verbose: bool) -> int:
    found = campaign.find(cwd)
    every = catalog.executions(found)
    if failed:
        chosen = [e for e in every if e.state == "failed"]
    elif name is not None:
        chosen = [e for e in every if queue.batch_of(e) == name]
        if not chosen:
            raise ExpegitError(f"no batch named {name!r}: see git expegit list",
                               ExitCode.INPUT)
    else:
        chosen = [catalog.resolve_in(every, prefix) for prefix in ids]
    if profile is not None:
        runner.check_profile(found, profile)
    if not chosen:
        print("nothing to reschedule", file=sys.stderr)
        return ExitCode.FAILED
    with syncing.pushing(found, push):
        done = queue.reschedule(found, chosen, profile)
    logger(verbose)(f"rescheduled {len(done)} execution(s)")
    print(f"queued {len(done)} execution(s) again: git expegit agent start runs them, or "
          "git expegit jobs wait", file=sys.stderr)
    return 0


def delete(cwd: Path, ids: Sequence[str], push: bool, verbose: bool) -> int:
    found = campaign.find(cwd)
    every = catalog.executions(found)
    chosen = [catalog.resolve_in(every, prefix) for prefix in ids]
    with syncing.pushing(found, push):
        runner.delete(found, chosen, _say)
    logger(verbose)(f"deleted {len(chosen)} execution(s)")
    return 0


def stop(found: campaign.Campaign, execution: catalog.Execution) -> None:
    """Stop the execution's run if one is under way (runner.stop), saying so."""
    runner.stop(found, execution, _say)


def _say(message: str) -> None:
    print(message, file=sys.stderr)
