"""`--detach`: submit a run to Slurm and return; `--attach`: collect detached runs later,
into the folders they were started from; `--detached`: list those waiting."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from git_runaway import profiles
from git_runaway.archive import pack
from git_runaway.commands import detached
from git_runaway.commands.detached import Detached
from git_runaway.commands.output import logger
from git_runaway.commands.output import stderr_sink
from git_runaway.commands.output import stdout_sink
from git_runaway.commands.run import ended_without_code
from git_runaway.commands.run import warn_unfetched
from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError
from git_runaway.execution import Job
from git_runaway.execution import Leave
from git_runaway.execution import Log
from git_runaway.execution import Runaway
from git_runaway.execution import forwarded_environment


def detach(profile_name: str, script: str, arguments: list[str], leave: str, verbose: bool,
           cwd: Path) -> int:
    """Submit SCRIPT to the Slurm of an sbatch: profile, record it, print its job id."""
    profile = profiles.load(profile_name, cwd)
    if profile.sbatch is None:
        raise RunawayError(f"--detach needs a profile with an sbatch: key; {profile.name!r} "
                           f"({profile.source}) runs its scripts directly: run without "
                           "--detach", ExitCode.USAGE)
    job = Job(cwd, script, " ".join(arguments), Leave(leave), forwarded_environment(os.environ),
              run_id=str(uuid.uuid4()))
    try:
        record, interrupted = asyncio.run(_detach(profile, job, logger(verbose)))
    except asyncio.CancelledError:  # Ctrl-C before the submission: nothing was submitted
        raise KeyboardInterrupt from None
    print(record.job, flush=True)
    if interrupted:
        print(f"runaway: interrupted, but the job was submitted: collect it with "
              f"git runaway --attach {record.job}", file=sys.stderr, flush=True)
        return ExitCode.INTERRUPTED.status
    return 0


async def _detach(profile: profiles.Profile, job: Job, log: Log) -> tuple[Detached, bool]:
    submitting, interrupted = _on_ctrl_c()
    async with Runaway(log) as runaway:
        package = await asyncio.to_thread(pack, job.folder)
        host = await runaway.host(profile)
        root = await runaway.root(host, profile)
        submitting.set()
        [handle] = await runaway.submit(profile, [job], package=package)
    assert job.run_id is not None
    record = Detached(profile.name, profile.ssh_config, root, str(job.folder), job.script,
                      job.arguments, job.run_id, handle.job, package.digest, job.leave.value,
                      time.time())
    detached.save(record)
    log(f"recorded in {detached.folder()}/{record.run_id}.json")
    return record, interrupted.is_set()


def _on_ctrl_c() -> tuple[asyncio.Event, asyncio.Event]:
    """A Ctrl-C before the submission stops at once: nothing was submitted. Submitting
    takes a second: a Ctrl-C meanwhile waits for sbatch's answer, so that a job it accepted
    is recorded, never left running unknown; a second one aborts."""
    main = asyncio.current_task()
    assert main is not None
    submitting, interrupted = asyncio.Event(), asyncio.Event()

    def on_sigint() -> None:
        if not submitting.is_set():
            main.cancel()
            return
        if interrupted.is_set():
            print("runaway: interrupted again: aborted; a job sbatch accepted runs unrecorded",
                  file=sys.stderr, flush=True)
            os._exit(ExitCode.INTERRUPTED.status)
        interrupted.set()
        print("runaway: interrupted: waiting for sbatch's answer (Ctrl-C again aborts)",
              file=sys.stderr, flush=True)

    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_sigint)
    return submitting, interrupted


def attach(jobs: list[str], verbose: bool, cwd: Path) -> int:
    """Wait for detached runs, stream their output, fetch their results into the folders
    they were started from; exit with the first non-zero exit code."""
    records = detached.select(jobs, cwd)
    try:
        return asyncio.run(_attach(records, logger(verbose)))
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


async def _attach(records: list[Detached], log: Log) -> int:
    main = asyncio.current_task()
    assert main is not None
    waiting = {r.run_id for r in records}

    def on_sigint() -> None:  # the jobs go on: say how to collect them later
        left = " ".join(r.job for r in records if r.run_id in waiting)
        print(f"runaway: interrupted; the jobs go on: collect them with git runaway --attach "
              f"{left}", file=sys.stderr, flush=True)
        main.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_sigint)
    status = 0
    async with Runaway(log) as runaway:
        # One after the other, in the order they were submitted: their outputs never mix,
        # and the jobs run meanwhile anyway.
        for record in records:
            code = await _collect(runaway, record)
            waiting.discard(record.run_id)
            status = status or code
    return status


async def _collect(runaway: Runaway, record: Detached) -> int:
    target = record.target()
    if not Path(record.folder).is_dir():  # its results would go nowhere anyone looks
        print(f"runaway: job {record.job}: the folder it was started from, {record.folder}, "
              f"is gone: make it again to collect it there, or remove "
              f"{detached.folder()}/{record.run_id}.json", file=sys.stderr, flush=True)
        return ExitCode.USAGE.status
    runaway.log(f"waiting for job {record.job} on {target.ssh_config or 'this machine'}")
    try:
        outcome = await runaway.attach(target, record.collected(), stdout_sink, stderr_sink)
    except RunawayError as e:
        print(f"runaway: job {record.job}: {e}", file=sys.stderr, flush=True)
        return ExitCode.HOST.status
    # The job no longer pins its code: with --leave=nothing, it goes when the session ends
    # unless another run uses it.
    runaway.keep_code((target.ssh_config, record.root), record.digest, Leave(record.leave))
    detached.forget(record)
    warn_unfetched(outcome)
    if outcome.exit_code is None:
        return ended_without_code(outcome, record.job)
    return outcome.exit_code


def list_detached() -> int:
    """One line a detached run: job id, profile, when, folder, script and arguments."""
    for r in detached.load_all():
        print(" ".join([r.job, r.profile, r.when(), r.folder, r.script,
                        *([r.arguments] if r.arguments else [])]))
    return 0

