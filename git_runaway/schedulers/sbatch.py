"""Runs handed to Slurm: submit them as one job array, watch them, collect each one's results.

    handles = await runaway.submit(profile, jobs, throttle=8)    # returns once sbatch took them
    outcome = await runaway.attach(profile, job_of(handle), stdout, stderr)

`submit` needs nothing more than an ssh session for a moment; `attach` polls the scheduler
(one squeue for every run this session watches on a host, less often while nothing changes)
and, once a run's job is over, collects its results with the job's stdout and stderr. A run
is found by its run id alone (the host keeps `<run>.slurm`), so any later session re-attaches:
the agent after a restart, or `git runaway --attach`. Cancelling `attach` leaves the job
running (a detach); `stop` cancels the job (scancel) and still collects what it left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import Callable
from collections.abc import Mapping
from typing import TYPE_CHECKING

from git_runaway import hosts
from git_runaway import remote
from git_runaway.archive import FETCH_IGNORE
from git_runaway.archive import Pack
from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError
from git_runaway.hosts import Host
from git_runaway.hosts import Sink
from git_runaway.profiles import Profile
from git_runaway.schedulers import slurm
from git_runaway.schedulers.slurm import JobState
from git_runaway.schedulers.slurm import Sbatch

if TYPE_CHECKING:
    from git_runaway.execution import Job
    from git_runaway.execution import Outcome
    from git_runaway.execution import Runaway

# Seconds between two polls of a host's scheduler: from FIRST, longer by half while nothing
# changes, up to RUNAWAY_SLURM_POLL (default 30): a job's end is seen within seconds when
# jobs are short, and a cluster is not asked every second about jobs that run for hours.
FIRST_POLL = 1.0
_DEFAULT_MAX_POLL = 30.0
Watcher = Callable[[str, Mapping[str, str]], None]  # (Slurm's state, lowercase; where)


@dataclasses.dataclass(frozen=True)
class Handle:
    """A submitted run: its run id finds it again on the host, from any session."""

    run_id: str
    job: str  # Slurm's id of its task: "123_4"


def max_poll() -> float:
    try:
        return max(FIRST_POLL, float(os.environ.get("RUNAWAY_SLURM_POLL", _DEFAULT_MAX_POLL)))
    except ValueError:
        return _DEFAULT_MAX_POLL


async def submit(session: Runaway, profile: Profile, jobs: list[Job], package: Pack,
                 throttle: int | None, options: Sbatch) -> list[Handle]:
    """Submit `jobs` (runs of one code folder) as one job array, `throttle` at a time."""
    from git_runaway import execution

    host = await session.host(profile)
    root = await session.root(host, profile)
    tasks = {}
    for job in jobs:
        run_id = job.run_id or str(uuid.uuid4())
        tasks[run_id] = remote.job_task(root, package.digest, run_id,
                                        execution.environment_of(profile, job, root, run_id,
                                                                 package),
                                        *execution.commands_of(profile, job,
                                                               f"{root}/{run_id}"))
    lines = [f"#SBATCH --array={slurm.array_spec(len(jobs), throttle)}",
             f"#SBATCH --job-name=runaway-{profile.name}", *options.lines()]
    key = hosts.nonce()
    submission = str(uuid.uuid4())
    async with hosts.session(host, "submit", remote.submit(key, root, package.digest,
                                                           submission, tasks, lines),
                             key) as started:
        while (word := await started.stdout.until(hosts.discard)) == "missing":
            await session.provide(host, (profile.ssh_config, root), package)
            await started.answer(remote.GO)
        started.process.write_eof()
        message = await started.last_message()
        await started.finish()
    # Accepted or not, the code is this session's to delete with --leave=nothing once no
    # run uses it: a refused submission leaves nothing on the host.
    session.keep_code((profile.ssh_config, root), package.digest, jobs[0].leave)
    if word is None or not word.startswith("submitted "):
        raise RunawayError(f"sbatch refused the jobs on {host.name}: {message}",
                           ExitCode.PROFILE if word == "refused" else ExitCode.HOST)
    array = word.split()[1]
    session.log(f"submitted {len(jobs)} run(s) as job array {array} on {host.name}")
    ids = slurm.job_ids(array, len(jobs))
    return [Handle(run_id, job) for run_id, job in zip(tasks, ids, strict=True)]


async def attach(session: Runaway, profile: Profile, job: Job, stdout: Sink, stderr: Sink,
                 stop: asyncio.Event | None, watch: Watcher | None) -> Outcome:
    """Wait for the submitted run `job.run_id` to be over, then collect it."""
    from git_runaway.execution import Outcome

    assert job.run_id is not None
    start = time.monotonic()
    host = await session.host(profile)
    root = await session.root(host, profile)
    watched = _watcher(session, profile, root).watch(job.run_id, watch)
    stopper = asyncio.ensure_future(_cancel_when(session, profile, stop, watched))
    try:
        end = await watched.ended
    finally:
        stopper.cancel()
        watched.forget()
    kept = _Tail(stderr)
    code, fetched = await _collect(session, profile, job, end.job, stdout, kept)
    state = end.state
    if state == "UNKNOWN":  # squeue forgot the job, and no accounting: its stderr tells
        state = (slurm.state_from_stderr(kept.tail) or
                 ("LOST" if code is None else "COMPLETED" if code == 0 else "FAILED"))
    if code is None:
        code = end.exit_code
    where = {**watched.where, "job": end.job, "state": state}
    return Outcome(job.run_id, code, f"{root}/{job.run_id}", 0, tuple(fetched),
                   time.monotonic() - start, where=where,
                   stopped=watched.cancelled)


async def _cancel_when(session: Runaway, profile: Profile, stop: asyncio.Event | None,
                       watched: _Watched) -> None:
    if stop is None:
        return
    await stop.wait()
    job = await watched.job
    watched.cancelled = True
    session.log(f"cancelling Slurm job {job}")
    try:
        await cancel(session, profile, [job])
    except RunawayError as e:  # the job then ends as it would: said, not lost in a task
        session.log(str(e))


async def cancel(session: Runaway, profile: Profile, jobs: list[str]) -> None:
    """scancel `jobs`: queued ones never start, running ones are stopped (TERM, then KILL)."""
    host = await session.host(profile)
    key = hosts.nonce()
    done = await hosts.run(host, "scancel", remote.cancel(key, slurm.jobs_argument(jobs)), key)
    if done.exit_code != 0:
        raise RunawayError(f"scancel {' '.join(jobs)} failed on {host.name}: "
                           f"{done.stderr.decode(errors='replace').strip()[-200:]}",
                           ExitCode.HOST)


# Watching ------------------------------------------------------------------------------------

@dataclasses.dataclass
class _End:
    job: str
    state: str
    exit_code: int | None = None


class _Watched:
    def __init__(self, watcher: HostWatcher, run_id: str, listen: Watcher | None) -> None:
        loop = asyncio.get_running_loop()
        self.watcher, self.run_id, self.listen = watcher, run_id, listen
        self.ended: asyncio.Future[_End] = loop.create_future()
        self.job: asyncio.Future[str] = loop.create_future()
        self.where: dict[str, str] = {}
        self.state: str | None = ""  # None: squeue and sacct knew nothing of it
        self.restarts: str | None = None  # SLURM_RESTART_COUNT of the start heard last
        self.started = False  # its start was heard, and no requeue since
        self.polls = 0  # polls in a row that found the same state
        self.cancelled = False

    def _hear(self, state: str, job: str, where: Mapping[str, str]) -> None:
        if self.listen is not None:
            self.listen(state.lower(), {**where, "job": job})

    def forget(self) -> None:
        self.watcher.runs.pop(self.run_id, None)

    def update(self, job: str, state: JobState | None, where_text: str) -> None:
        if job and not self.job.done() and job[0].isdigit():
            self.job.set_result(job)
        where = dict(w.partition("=")[::2] for w in where_text.split() if "=" in w)
        found = None if state is None else state.state
        self.polls = self.polls + 1 if found == self.state else 0
        if state is None:
            self.state = None
        elif state.state != self.state:
            self.state = state.state
            if state.state in ("PENDING", "REQUEUED") and self.started:
                self.started = False  # requeued: the next start is heard again
                self._hear("REQUEUED", job, where)
            elif not state.final and state.state != "RUNNING":
                self._hear(state.state, job, where)
        # A start is heard once its task wrote where it runs, with how many times Slurm
        # restarted it: a start between two polls is heard too, even of a job that ended.
        restarts = where.get("restarts")
        if restarts is not None and restarts != self.restarts:
            if self.started:  # requeued and started again between two polls
                self._hear("REQUEUED", job, where)
            self.restarts, self.started, self.where = restarts, True, where
            self._hear("RUNNING", job, where)
        if self.ended.done():
            return
        if not job:
            # No .slurm file (collected, cleaned, never submitted), or one whose submission
            # was killed before sbatch answered (remote.poll): nothing will ever run it.
            self.ended.set_result(_End("", "UNKNOWN"))
        elif state is not None and state.final and (state.state != "PREEMPTED" or self.polls):
            # PREEMPTED twice in a row: a job Slurm requeues shows it a moment, then PENDING.
            self.where = where or self.where
            self.ended.set_result(_End(job, state.state, state.exit_code))
        elif state is None and job[0].isdigit() and self.polls:
            # Forgotten by squeue (twice in a row: not a moment's gap), no accounting.
            self.where = where or self.where
            self.ended.set_result(_End(job, "UNKNOWN"))


class HostWatcher:
    """One poll loop for all the runs a session watches in one host_directory."""

    def __init__(self, session: Runaway, profile: Profile, root: str) -> None:
        self.session, self.profile, self.root = session, profile, root
        self.runs: dict[str, _Watched] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, run_id: str, listen: Watcher | None) -> _Watched:
        watched = self.runs[run_id] = _Watched(self, run_id, listen)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._loop())
        return watched

    async def _loop(self) -> None:
        delay = FIRST_POLL
        while self.runs:
            try:
                changed = await self._poll(list(self.runs.values()))
                delay = FIRST_POLL if changed else min(delay * 1.5, max_poll())
            except RunawayError as e:  # offline: try again later, the jobs go on
                self.session.log(f"cannot poll Slurm on {self.profile.ssh_config}: {e}")
                delay = min(max(delay, 5) * 2, 300)
            await asyncio.sleep(delay)

    async def _poll(self, runs: list[_Watched]) -> bool:
        host = await self.session.host(self.profile)
        key = hosts.nonce()
        parts = [hosts.Collect() for _ in range(3)]  # the tasks, squeue's, sacct's
        async with hosts.session(host, "poll", remote.poll(key, self.root,
                                                           [r.run_id for r in runs]),
                                 key) as started:
            started.process.write_eof()
            words = [await started.stdout.until(part) for part in parts]
            code = await started.finish()
            if code != 0 or words != ["squeue", "sacct", None]:
                raise RunawayError(f"the poll ended early: {await started.last_message()}",
                                   ExitCode.HOST)
        tasks, squeue, sacct = (p.bytes().decode(errors="replace") for p in parts)
        states = {**slurm.parse_sacct(sacct), **slurm.parse_squeue(squeue)}
        before = [(r.state, r.ended.done()) for r in runs]
        for line in tasks.splitlines():
            fields = line.split("|", 4)
            if len(fields) == 5 and fields[0] == "task" and fields[1] in self.runs:
                job = fields[2]
                self.runs[fields[1]].update(job, slurm.state_of(states, job), fields[4])
        return before != [(r.state, r.ended.done()) for r in runs]


def _watcher(session: Runaway, profile: Profile, root: str) -> HostWatcher:
    key = (profile.ssh_config, root)
    if key not in session.watchers:
        session.watchers[key] = HostWatcher(session, profile, root)
    return session.watchers[key]


# Collecting ----------------------------------------------------------------------------------

class _Tail:
    """A sink that passes everything on and keeps the last 64 KiB (slurmstepd's words)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.tail = b""

    def __call__(self, chunk: bytes) -> None:
        self.tail = (self.tail + chunk)[-65536:]
        self.sink(chunk)


async def _collect(session: Runaway, profile: Profile, job: Job, job_id: str, stdout: Sink,
                   stderr: Sink) -> tuple[int | None, list[str]]:
    """The run's exit code (None when its task could not write one) and fetched files."""
    from git_runaway.execution import BUSY_WAITS
    from git_runaway.execution import fetch

    assert job.run_id is not None
    host = await session.host(profile)
    root = await session.root(host, profile)
    listed = (job.folder / FETCH_IGNORE).exists()
    for delay in BUSY_WAITS:
        key = hosts.nonce()
        program = remote.collect_job(key, root, job.run_id, job_id or "none", listed)
        async with hosts.session(host, "collect", program, key, (stderr,)) as started:
            word = await started.stdout.until(hosts.discard)
            if word == "logs":
                word = await started.stdout.until(stdout)
            if word is not None and word.startswith(("exit", "gone")):
                code = _code(word)
                fetched = (await fetch(session, host, root, job, started, listed)
                           if word.startswith("exit") else [])
                await started.finish()
                return code, fetched
            await started.finish()
        if word != "busy":
            raise RunawayError(f"cannot collect the run {job.run_id} on {_name(host)}: "
                               f"{word}", ExitCode.HOST)
        await asyncio.sleep(delay)
    raise RunawayError(f"the run {job.run_id} on {_name(host)} still holds its marker after "
                       "its job ended; try again later", ExitCode.HOST)


def _code(word: str) -> int | None:
    text = word.partition(" ")[2].strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _name(host: Host) -> str:
    return host.name
