"""The only bridge to git_runaway: runs this clone's queued executions, for `jobs run` and
the agent alike.

    runner = Runner(campaign, listen=display.change, workers=8, retries=2)
    summary = await runner.run(lambda: queue.mine(campaign))

Each commit's code is written once, from git objects, into `.git/expegit/code/<commit>/`
(with the execution's skeleton: .gitignore, data/lfs/) and packed once: every run of a batch
sends the same archive, which a host receives once. A run's results and its stdout and
stderr land in its execution's folder; its end is committed with others that ended at the
same time (queue.py's claims make each run findable again after a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import time
import uuid
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import BinaryIO

import pygit2

from git_expegit import catalog
from git_expegit import executions
from git_expegit import parameters
from git_expegit import placement
from git_expegit import queue
from git_expegit import transaction
from git_expegit.campaign import Campaign
from git_expegit.catalog import Execution
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.executions import Ending
from git_expegit.record import DONE
from git_expegit.record import ExecutionId
from git_expegit.record import State
from git_runaway import profiles
from git_runaway.archive import FETCH_IGNORE
from git_runaway.archive import Pack
from git_runaway.archive import pack
from git_runaway.errors import ExitCode as RunawayCode
from git_runaway.errors import RunawayError
from git_runaway.execution import Job
from git_runaway.execution import Outcome
from git_runaway.execution import Runaway
from git_runaway.profiles import Profile
from git_runaway.schedulers.slurm import END_NAMES
from git_runaway.schedulers.slurm import Sbatch

# Runaway's failures that say something about the code or the profile, not the connection:
# running again would fail the same way.
_FINAL = (RunawayCode.USAGE, RunawayCode.PROFILE)
_DEFAULT_REMOTE_WORKERS = 8
_GATHER_SECONDS = 0.1


@dataclass(frozen=True)
class Change:
    """A state change of one execution, for displays (progress, plain lines, the web)."""

    execution: ExecutionId
    parameters: str
    state: State  # running, finished, failed; queued when a lost run goes back to the queue
    detail: str = ""  # "exit 3", "timeout after 10 s", "connection lost: attempt 2 of 3"
    logs: Path | None = None  # the folder holding its stdout and stderr


Listener = Callable[[Change], None]
Select = Callable[[], list[Execution]]


@dataclass
class Summary:
    finished: list[ExecutionId] = field(default_factory=list)
    failed: list[tuple[ExecutionId, str]] = field(default_factory=list)  # (id, why)
    queued: list[ExecutionId] = field(default_factory=list)  # left queued (Ctrl-C)
    interrupted: bool = False  # stopped by the user (Ctrl-C) before the queue was done




def check_profile(campaign: Campaign, name: str) -> Profile:
    """The profile `name` as runaway finds it from the campaign, or a one-line error."""
    try:
        return profiles.load(name, campaign.root)
    except RunawayError as e:
        raise ExpegitError(str(e), ExitCode.INPUT) from None


def profile_names(campaign: Campaign) -> list[str]:
    """The names of the profiles runaway finds and reads from the campaign (the web form's
    choice): the user's own, the built-in `local`, the campaign's `.runaway/`."""
    return sorted({p.name for p in profiles.available(campaign.root)})


def check_code(campaign: Campaign, commit: str) -> None:
    """The experiment at `commit` must have its `run` handle at the root, executable."""
    tree = campaign.experiment()[commit].peel(pygit2.Commit).tree
    entry = tree[placement.RUN] if placement.RUN in tree else None
    if entry is None or entry.filemode not in (0o100755, 0o120000):
        raise ExpegitError(f"the experiment at {commit[:12]} has no executable run handle at "
                           "its root: add one (ln -s your_script run; chmod +x) and git "
                           "expegit update-expe", ExitCode.INPUT)


def workers_for(profile: Profile, workers: int | None) -> int:
    """-w N, else the profile's concurrency, else the CPUs here or 8 on a host."""
    if workers is not None:
        return workers
    if profile.concurrency is not None:
        return profile.concurrency
    return (os.cpu_count() or 1) if profile.ssh_config is None else _DEFAULT_REMOTE_WORKERS


def _ignore(change: Change) -> None:
    pass


def _quiet(message: str) -> None:
    pass


class Runner:
    """Runs queued executions of this clone through runaway; one per clone at a time (the
    caller holds queue.runner_lock)."""

    def __init__(self, campaign: Campaign, listen: Listener | None = None,
                 workers: int | None = None, retries: int = 2,
                 log: Callable[[str], None] | None = None) -> None:
        self.campaign = campaign
        self._listen = listen or _ignore
        self._workers = workers
        self._retries = retries
        self._log = log or _quiet
        self._launching = True
        self._cancelled = False
        self._active: dict[ExecutionId, str] = {}  # running here -> its profile
        self._ended: set[ExecutionId] = set()  # ended here: the catalog may lag behind
        self._stops: dict[ExecutionId, asyncio.Event] = {}
        self._profiles: dict[str, Profile | ExpegitError] = {}
        self._codes: dict[str, asyncio.Future[tuple[Path, Pack]]] = {}
        self._wakeup: asyncio.Event | None = None
        self._poked = True
        self._recorder = _Recorder(campaign, self._log)
        self._session: Runaway | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watching: dict[ExecutionId, asyncio.Task[None]] = {}  # Slurm runs, by execution
        self._detached = False
        self._lost: dict[ExecutionId, int] = {}  # Slurm runs whose job was gone, how often
        self.summary = Summary()

    # Control ----------------------------------------------------------------------------------

    @property
    def launching(self) -> bool:
        return self._launching

    def poke(self) -> None:
        """The queue changed: read select() again."""
        self._poked = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def stop_launching(self) -> None:
        """No new run starts; the running ones end as they would (a first Ctrl-C)."""
        self._launching = False
        self._wake()

    def cancel(self) -> None:
        """Stop the running scripts (scancel the Slurm jobs); their results are still
        fetched and they are recorded failed, reason=cancelled (a second Ctrl-C)."""
        self._cancelled = True
        self.stop_launching()
        for stop in self._stops.values():
            stop.set()

    def detach(self) -> None:
        """Stop watching the Slurm jobs, which go on without us (`agent stop`: the laptop
        closes); their claims stay, and the next runner collects them. Nothing new starts."""
        self._detached = True
        self.stop_launching()
        for task in self._watching.values():
            task.cancel()

    # The loop ---------------------------------------------------------------------------------

    async def run(self, select: Select) -> Summary:
        """Recover the claims a dead runner left, then run what `select()` gives (read again
        when a run ends, or on poke()) until nothing is left and nothing runs. Records and
        finishes in batches; does not sync (the caller does)."""
        self._wakeup = asyncio.Event()
        tasks = self._tasks
        async with Runaway(self._log) as session:
            self._session = session
            try:
                await self._recover()
                pending: list[Execution] = []
                read = 0.0
                while True:
                    self._wakeup.clear()
                    # select() reads the whole catalog: again only when poked (the queue
                    # changed), or after a second (a jobs delete meanwhile).
                    if self._poked or time.monotonic() - read > 1:
                        self._poked, read = False, time.monotonic()
                        pending = await asyncio.to_thread(select)
                    if self._launching:
                        self._launch(self._launchable(pending))
                    if not tasks:
                        self.summary.queued = [e.id for e in pending
                                               if e.id not in self._ended]
                        break
                    # Woken by a run's end or poke(); at least each second, for the
                    # cancel requests of jobs delete.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), 1.0)
                    self._cancel_requested()
            finally:
                if tasks:  # cancelled ourselves: the runs stop and still record their end
                    self.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                await self._recorder.drain()
        return self.summary

    def _cancel_requested(self) -> None:
        for execution in queue.cancel_requests(self.campaign) & set(self._stops):
            self._stops[ExecutionId(execution)].set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._ended_task)
        return task

    def _ended_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log(f"internal error in a run: {task.exception()!r}")
        self._wake()

    def _launch(self, chosen: list[Execution]) -> None:
        """Start each run; those of an sbatch profile go to Slurm, one job array for each
        batch, commit and profile."""
        arrays: dict[tuple[str, ...], list[Execution]] = {}
        for execution in chosen:
            name = queue.profile_of(execution) or ""
            profile = self._profile(name)
            if isinstance(profile, Profile) and profile.sbatch is not None:
                key = (queue.batch_of(execution) or execution.id, name, execution.commit,
                       repr(queue.sbatch_of(execution)))
                arrays.setdefault(key, []).append(execution)
            else:
                self._spawn(self._one(execution))
        for group in arrays.values():
            profile = self._profile(queue.profile_of(group[0]) or "")
            assert isinstance(profile, Profile)
            self._spawn(self._submit(group, profile))

    def _launchable(self, pending: list[Execution]) -> list[Execution]:
        """The next executions to start, in order, within each profile's concurrency."""
        chosen = []
        for execution in pending:
            if execution.id in self._active or execution.id in self._ended:
                continue
            name = queue.profile_of(execution) or ""
            profile = self._profile(name)
            # Slurm runs are all submitted at once: the array's %N throttles them.
            if isinstance(profile, Profile) and profile.sbatch is None:
                busy = sum(1 for p in self._active.values() if p == name)
                if busy >= workers_for(profile, self._workers):
                    continue
            self._active[execution.id] = name
            chosen.append(execution)
        return chosen

    def _profile(self, name: str) -> Profile | ExpegitError:
        if name not in self._profiles:
            try:
                if not name:
                    raise ExpegitError("it has no profile: reschedule it with --profile",
                                       ExitCode.INPUT)
                self._profiles[name] = check_profile(self.campaign, name)
            except ExpegitError as e:
                self._profiles[name] = e
        return self._profiles[name]

    # One execution ----------------------------------------------------------------------------

    async def _one(self, execution: Execution) -> None:
        try:
            ending = await self._attempts(execution)
        finally:
            # The slot is free once the run ended: its end is committed with others.
            self._active.pop(execution.id, None)
            self._ended.add(execution.id)
            self._wake()
        await self._end(execution, ending)

    async def _attempts(self, execution: Execution) -> Ending:
        profile = self._profile(queue.profile_of(execution) or "")
        if isinstance(profile, ExpegitError):
            return Ending(execution, None, True, {"reason": str(profile)})
        first = queue.attempt_of(execution)
        for attempt in range(first, first + self._retries + 1):
            try:
                return await self._attempt(execution, profile, attempt)
            except (RunawayError, ExpegitError) as e:
                final = isinstance(e, ExpegitError) or e.code in _FINAL
                if final or attempt == first + self._retries or not self._launching:
                    return Ending(execution, None, True, {"attempt": attempt,
                                                         "reason": f"runaway: {e}"})
                self._recorder.event(execution, "lost", attempt=attempt, reason=str(e))
                self._listen(Change(execution.id, execution.parameters, State.QUEUED,
                                    f"{e}: attempt {attempt + 1} of {first + self._retries}",
                                    self._folder(execution)))
        raise AssertionError("unreachable")

    async def _attempt(self, execution: Execution, profile: Profile, attempt: int) -> Ending:
        assert self._session is not None
        code, package = await self._code(execution.commit)
        folder = self._folder(execution)
        await asyncio.to_thread(_skeleton, folder)
        run_id = str(uuid.uuid4())
        claim = queue.Claim(execution.id, attempt, run_id, profile.name, time.time())
        queue.claim(self.campaign, claim)
        stop = self._stops[execution.id] = asyncio.Event()
        timer = (asyncio.get_running_loop().call_later(profile.timeout, stop.set)
                 if profile.timeout else None)
        job = Job(code, placement.RUN, execution.parameters,
                  environment={"RUNAWAY_COMMIT": execution.commit}, results=folder,
                  run_id=run_id)

        def started(where: Mapping[str, str]) -> None:
            self._recorder.event(execution, "running", attempt=attempt, run=run_id,
                                 host=profile.ssh_config or "local", **_where(where),
                                 argv=parameters.join(parameters.split(execution.parameters)))
            self._listen(Change(execution.id, execution.parameters, State.RUNNING,
                                f"on {where.get('node', profile.name)}", folder))

        try:
            with _Logs(folder) as logs:
                outcome = await self._session.run(profile, job, logs.stdout, logs.stderr,
                                                  package=package, started=started, stop=stop)
        finally:
            if timer is not None:
                timer.cancel()
            self._stops.pop(execution.id, None)
        await asyncio.to_thread(_skeleton, folder)  # a run must not change the folder's own files
        ending = self._ending(execution, outcome, attempt, profile,
                              timed_out=timer is not None and stop.is_set()
                              and not self._cancelled)
        # The host has forgotten the run: until its end is committed, the claim remembers it.
        queue.claim(self.campaign, dataclasses.replace(
            claim, exit_code=outcome.exit_code, ended=_claimed(ending)))
        return ending

    def _ending(self, execution: Execution, outcome: Outcome, attempt: int, profile: Profile,
                timed_out: bool) -> Ending:
        reason = (f"timeout after {profile.timeout:g} s" if timed_out
                  else "cancelled" if outcome.stopped else None)
        return Ending(execution, outcome.exit_code, outcome.stopped, {
            "attempt": attempt, "host": outcome.where.get("node"),
            "duration": f"{outcome.seconds:.1f}", "reason": reason})

    async def _end(self, execution: Execution, ending: Ending) -> None:
        folder = self._folder(execution)
        try:
            finished = await self._recorder.finish(ending)
        except (ExpegitError, OSError) as e:
            why = f"its results are in {folder} but could not be committed: {e}"
            self.summary.failed.append((execution.id, why))
            self._listen(Change(execution.id, execution.parameters, State.FAILED, why, folder))
            return  # the claim stays: the next runner finds the run again
        queue.release(self.campaign, execution.id)
        if finished is None:
            return  # removed or finished meanwhile (jobs delete)
        detail = _detail(ending)
        if finished.status == State.FINISHED:
            self.summary.finished.append(execution.id)
        else:
            self.summary.failed.append((execution.id, detail))
        self._listen(Change(execution.id, execution.parameters, finished.status, detail, folder))

    def _folder(self, execution: Execution) -> Path:
        return self.campaign.root / execution.folder

    async def _code(self, commit: str) -> tuple[Path, Pack]:
        """The code of `commit`, written and packed once per runner."""
        if commit not in self._codes:
            self._codes[commit] = asyncio.ensure_future(
                asyncio.to_thread(_stage_code, self.campaign, commit))
        return await asyncio.shield(self._codes[commit])

    # Slurm ------------------------------------------------------------------------------------

    async def _submit(self, group: list[Execution], profile: Profile) -> None:
        """Submit a batch's runs as one job array; each is then watched until it ends."""
        assert self._session is not None
        try:
            options = sbatch_options(profile, queue.sbatch_of(group[0]))
            code, package = await self._code(group[0].commit)
        except (ExpegitError, RunawayError) as e:
            await self._fail_all(group, f"{e}")
            return
        claims, jobs = [], []
        for execution in group:
            folder = self._folder(execution)
            await asyncio.to_thread(_skeleton, folder)
            found = queue.Claim(execution.id, queue.attempt_of(execution), str(uuid.uuid4()),
                                profile.name, time.time())
            queue.claim(self.campaign, found)
            claims.append(found)
            jobs.append(Job(code, placement.RUN, execution.parameters, results=folder,
                            environment={"RUNAWAY_COMMIT": execution.commit},
                            run_id=found.run))
        try:
            handles = await self._session.submit(
                profile, jobs, package=package, throttle=workers_for(profile, self._workers),
                options=options)
        except RunawayError as e:
            for found in claims:
                queue.release(self.campaign, found.execution)
            await self._fail_all(group, f"runaway: {e}")
            return
        for execution, found, handle in zip(group, claims, handles, strict=True):
            found = dataclasses.replace(found, job=handle.job)
            queue.claim(self.campaign, found)
            self._recorder.event(execution, "submitted", attempt=found.attempt, run=found.run,
                                 job=handle.job)
            self._listen(Change(execution.id, execution.parameters, State.QUEUED,
                                f"submitted as Slurm job {handle.job}",
                                self._folder(execution)))
            self._watch(execution, profile, found)

    async def _fail_all(self, group: list[Execution], why: str) -> None:
        for execution in group:
            self._active.pop(execution.id, None)
            self._ended.add(execution.id)
        await asyncio.gather(*(self._end(e, Ending(e, None, True, {
            "attempt": queue.attempt_of(e), "reason": why})) for e in group))

    def _watch(self, execution: Execution, profile: Profile, found: queue.Claim) -> None:
        if self._detached:  # submitted while detaching: the next runner follows it
            self._active.pop(execution.id, None)
            self._ended.add(execution.id)
            return
        self._active[execution.id] = profile.name
        self._watching[execution.id] = self._spawn(self._follow(execution, profile, found))

    async def _follow(self, execution: Execution, profile: Profile, found: queue.Claim) -> None:
        try:
            ending = await self._attach(execution, profile, found)
        except asyncio.CancelledError:
            return  # detached: the job goes on, its claim stays for the next runner
        finally:
            self._watching.pop(execution.id, None)
            self._active.pop(execution.id, None)
            self._ended.add(execution.id)
            self._wake()
        if ending is None:
            lost = self._lost[execution.id] = self._lost.get(execution.id, 0) + 1
            if lost <= self._retries or not self._launching:
                self._requeue(execution, found.attempt, "its Slurm job is gone")
                queue.release(self.campaign, execution.id)
                # Queued again (once the notes say so): this runner submits it again (its
                # retries), or, stopped, reports it left queued.
                await self._recorder.drain()
                self._ended.discard(execution.id)
                self.poke()
                return
            ending = Ending(execution, None, True, {"attempt": found.attempt, "job": found.job,
                                                   "reason": "its Slurm job is gone"})
        await self._end(execution, ending)

    async def _attach(self, execution: Execution, profile: Profile, found: queue.Claim
                      ) -> Ending | None:
        """Wait for the run's job to end and collect it; None when the job is not there
        (never submitted, or cleaned away): it runs again."""
        assert self._session is not None
        folder = self._folder(execution)
        code, _ = await self._code(execution.commit)
        stop = self._stops[execution.id] = asyncio.Event()
        job = Job(code, placement.RUN, results=folder, run_id=found.run)
        try:
            with _Logs(folder, append=True) as logs:
                outcome = await self._session.attach(profile, job, logs.stdout, logs.stderr,
                                                     stop=stop,
                                                     watch=self._states(execution, found))
        except (RunawayError, ExpegitError) as e:
            return Ending(execution, None, True, {"attempt": found.attempt, "job": found.job,
                                                  "reason": f"runaway: {e}"})
        finally:
            self._stops.pop(execution.id, None)
        await asyncio.to_thread(_skeleton, folder)
        if outcome.where.get("state") == "LOST":
            return None
        ending = _slurm_ending(execution, outcome, found, self._cancelled)
        queue.claim(self.campaign, dataclasses.replace(
            found, exit_code=outcome.exit_code, ended=_claimed(ending)))
        return ending

    def _states(self, execution: Execution, found: queue.Claim
                ) -> Callable[[str, Mapping[str, str]], None]:
        """Record what Slurm says of the run: each start (where), each requeue."""
        def heard(state: str, where: Mapping[str, str]) -> None:
            nonlocal found
            folder = self._folder(execution)
            if found.job is None and where.get("job"):
                # Its runner was killed between sbatch's answer and the claim's update: the
                # claim learns its job (for jobs delete), the notes too unless they have it.
                found = dataclasses.replace(found, job=where["job"])
                queue.claim(self.campaign, found)
                if execution.field("run") != found.run:
                    self._recorder.event(execution, "submitted", attempt=found.attempt,
                                         run=found.run, job=found.job)
            if state == "running":
                self._recorder.event(execution, "running", attempt=found.attempt,
                                     run=found.run, job=where.get("job"),
                                     restarts=where.get("restarts"), **_where(where),
                                     argv=parameters.join(parameters.split(
                                         execution.parameters)))
                self._listen(Change(execution.id, execution.parameters, State.RUNNING,
                                    f"on {where.get('node', '?')} as Slurm job "
                                    f"{where.get('job')}", folder))
            elif state == "requeued":
                self._recorder.event(execution, "requeued", attempt=found.attempt,
                                     job=where.get("job"))
                self._listen(Change(execution.id, execution.parameters, State.QUEUED,
                                    "requeued by Slurm", folder))
        return heard

    # Recovery ---------------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Collect the runs a dead runner left: what ended on its host is finished, what
        died with it is queued again as a new attempt."""
        claims = queue.claims(self.campaign)
        mine = await asyncio.to_thread(queue.mine, self.campaign, None, (State.RUNNING,))
        if not claims and not mine:
            return
        known = {e.id: e for e in await asyncio.to_thread(catalog.executions, self.campaign)}
        claimed = {c.execution for c in claims}
        await asyncio.gather(*(self._recover_claim(c, known.get(c.execution)) for c in claims))
        for execution in mine:
            if execution.id not in claimed:
                self._requeue(execution, queue.attempt_of(execution), "no claim of its run")
        await self._recorder.drain()

    async def _recover_claim(self, claim: queue.Claim, execution: Execution | None) -> None:
        assert self._session is not None
        if execution is None or execution.state in DONE:
            queue.release(self.campaign, claim.execution)
            return
        if claim.ended is not None:  # its results were here already
            self._ended.add(execution.id)
            fields = dict(claim.ended)
            failed = fields.pop("failed", None) is not None
            await self._end(execution, Ending(execution, claim.exit_code, failed, fields))
            return
        profile = self._profile(claim.profile)
        if isinstance(profile, Profile) and profile.sbatch is not None:
            self._watch(execution, profile, claim)  # re-attach: its job may still run
            return
        outcome = None
        if isinstance(profile, Profile):
            folder = self._folder(execution)
            await asyncio.to_thread(_skeleton, folder)
            try:
                # The code that was sent: its .fetchignore says what does not come back.
                code, _ = await self._code(execution.commit)
                job = Job(code, placement.RUN, results=folder, run_id=claim.run)
                with _Logs(folder, append=True) as logs:
                    outcome = await self._session.collect(profile, job, logs.stderr)
            except (RunawayError, ExpegitError) as e:
                self._log(f"cannot collect execution {execution.id[:8]}: {e}")
        if outcome is None:
            self._requeue(execution, claim.attempt, "its runner stopped")
            queue.release(self.campaign, claim.execution)
            return
        self._ended.add(execution.id)
        ending = Ending(execution, outcome.exit_code, False, {
            "attempt": claim.attempt, "collected": 1,
            "duration": f"{time.time() - claim.started:.1f}"})
        await self._end(execution, ending)

    def _requeue(self, execution: Execution, attempt: int, why: str) -> None:
        self._recorder.event(execution, "lost", attempt=attempt, reason=why)
        self._recorder.event(execution, "queued", owner=self.campaign.clone_id(),
                             attempt=attempt + 1)
        self._listen(Change(execution.id, execution.parameters, State.QUEUED,
                            f"{why}: queued again as attempt {attempt + 1}",
                            self._folder(execution)))


def cancel_jobs(campaign: Campaign, chosen: list[ExecutionId]) -> list[str]:
    """scancel the Slurm jobs that these executions' claims name, when no runner watches
    them (a runner cancels its own: see Runner.cancel); the jobs cancelled."""
    by_profile: dict[str, list[str]] = {}
    for found in queue.claims(campaign):
        if found.execution in chosen and found.job:
            by_profile.setdefault(found.profile, []).append(found.job)

    async def cancel() -> None:
        async with Runaway() as session:
            for name, jobs in by_profile.items():
                await session.cancel_jobs(check_profile(campaign, name), jobs)

    if by_profile:
        try:
            asyncio.run(cancel())
        except RunawayError as e:
            raise ExpegitError(f"cannot cancel the Slurm jobs: {e}", ExitCode.FAILED) from None
    return [job for jobs in by_profile.values() for job in jobs]


def stop(campaign: Campaign, execution: Execution,
         say: Callable[[str], None] = _quiet) -> None:
    """Stop the execution's run if one is under way: have the runner that runs it stop it
    and wait until its end is recorded; with no runner, scancel its Slurm job (nothing
    else runs without a runner). For jobs delete, exec reset and the web interface."""
    claimed = any(c.execution == execution.id for c in queue.claims(campaign))
    if execution.state != State.RUNNING and not claimed:
        return
    if queue.runner_pid(campaign) is None:
        for job in cancel_jobs(campaign, [execution.id]):
            say(f"cancelled Slurm job {job} of execution {execution.id[:8]}")
        return  # the claim is dropped with the execution
    queue.request_cancel(campaign, execution.id)
    say(f"stopping execution {execution.id[:8]}")
    deadline = time.monotonic() + CANCEL_SECONDS
    while time.monotonic() < deadline:
        if (catalog.resolve_in(catalog.executions(campaign), execution.id).state
                != State.RUNNING
                and not any(c.execution == execution.id for c in queue.claims(campaign))):
            return
        time.sleep(0.2)
    raise ExpegitError(f"execution {execution.id[:8]} did not stop within "
                       f"{CANCEL_SECONDS} s: retry, or stop its runner (git expegit agent "
                       "stop)", ExitCode.FAILED)


CANCEL_SECONDS = 60


def delete(campaign: Campaign, chosen: list[Execution],
           say: Callable[[str], None] = _quiet) -> None:
    """Delete executions (jobs delete): their runs stopped first, then their folders; the
    history and the notes keep them."""
    for execution in chosen:
        stop(campaign, execution, say)
    for execution in chosen:
        queue.release(campaign, execution.id)
        queue.forget_cancel(campaign, execution.id)
        executions.remove(campaign, execution, force=True)


def sbatch_options(profile: Profile, overrides: list[tuple[str, str]]) -> Sbatch | None:
    """The profile's sbatch options with a batch's `--sbatch KEY=VALUE` in place, or a
    one-line error."""
    if profile.sbatch is None:
        if overrides:
            raise ExpegitError(f"--sbatch: profile {profile.name!r} has no sbatch: key; its "
                               "runs do not go through Slurm", ExitCode.INPUT)
        return None
    try:
        return profile.sbatch.replace(overrides)
    except ValueError as e:
        raise ExpegitError(str(e), ExitCode.INPUT) from None


def _claimed(ending: Ending) -> dict[str, str]:
    """An ending as a claim keeps it until it is committed."""
    return ({k: str(v) for k, v in ending.fields.items() if v is not None}
            | ({"failed": "1"} if ending.failed else {}))


def _slurm_ending(execution: Execution, outcome: Outcome, found: queue.Claim,
                  cancelled: bool) -> Ending:
    """How a Slurm run ended: its exit code, and Slurm's word for the end (completed,
    failed, timeout, cancelled, preempted, oom...)."""
    state = outcome.where.get("state", "")
    end = END_NAMES.get(state, state.lower())
    failed = end != "completed" or outcome.exit_code != 0
    reason = None
    if end not in ("completed", "failed"):
        reason = "cancelled" if outcome.stopped or cancelled else f"slurm: {end}"
    return Ending(execution, outcome.exit_code, failed, {
        "attempt": found.attempt, "job": outcome.where.get("job") or found.job,
        "host": outcome.where.get("node"), "slurm": end,
        "duration": f"{time.time() - found.started:.1f}", "reason": reason})


def _detail(ending: Ending) -> str:
    reason = ending.fields.get("reason")
    if reason:
        return str(reason) + ("" if ending.exit_code is None else f" (exit {ending.exit_code})")
    return f"exit {ending.exit_code}"


def _where(where: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in where.items() if k in ("node", "os", "cpus", "gpus") and v}


def _stage_code(campaign: Campaign, commit: str) -> tuple[Path, Pack]:
    """Write the code of `commit` with an execution's skeleton into the campaign's code
    cache (whole or not at all: a rename), and pack it."""
    target = campaign.state_dir / "code" / commit
    if not (target / placement.RUN).exists():
        placement.prepare(campaign, commit)
        staging = target.with_name(f".{commit}.{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True)
        try:
            placement.write_code(campaign, commit, staging)
            _skeleton(staging)
            _keep_logs(staging)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target, pack(target)


def _keep_logs(code: Path) -> None:
    """A run's own files named stdout or stderr must not come back over its logs: they
    are left on the host (after the experiment's own .fetchignore rules, so they win)."""
    path = code / FETCH_IGNORE
    before = path.read_bytes() if path.is_file() else b""
    path.unlink(missing_ok=True)  # a symlink in the experiment is not followed
    path.write_bytes(before + (b"" if before.endswith(b"\n") or not before else b"\n")
                     + b"/stdout\n/stderr\n")


def _skeleton(folder: Path) -> None:
    """An execution folder's own files, as its creation committed them."""
    for name, content in ((".gitignore", executions.GITIGNORE),
                          ("data/lfs/.gitattributes", executions.LFS_ATTRIBUTES)):
        path = folder / name
        with contextlib.suppress(OSError):
            if path.read_bytes() == content:
                continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_bytes(content)


class _Logs:
    """A run's stdout and stderr, written to its folder as they come (`logs -f` reads them)."""

    def __init__(self, folder: Path, append: bool = False) -> None:
        mode = "ab" if append else "wb"
        self._files: list[BinaryIO] = [
            open(folder / name, mode, buffering=0)  # type: ignore[misc]
            for name in ("stdout", "stderr")]

    def stdout(self, chunk: bytes) -> None:
        self._files[0].write(chunk)

    def stderr(self, chunk: bytes) -> None:
        self._files[1].write(chunk)

    def __enter__(self) -> _Logs:
        return self

    def __exit__(self, *exc: object) -> None:
        for file in self._files:
            file.close()


class _Recorder:
    """Writes events and ends in batches: whatever came while one batch was written goes
    in the next, in one transaction (and one for the finishes)."""

    def __init__(self, campaign: Campaign, log: Callable[[str], None]) -> None:
        self._campaign = campaign
        self._log = log
        self._events: list[tuple[Execution, str, dict[str, object]]] = []
        self._ends: list[tuple[Ending, asyncio.Future[executions.Finished | None]]] = []
        self._task: asyncio.Task[None] | None = None

    def event(self, execution: Execution, kind: str, **fields: object) -> None:
        self._events.append((execution, kind, fields))
        self._kick()

    async def finish(self, ending: Ending) -> executions.Finished | None:
        future: asyncio.Future[executions.Finished | None] = (
            asyncio.get_running_loop().create_future())
        self._ends.append((ending, future))
        self._kick()
        return await future

    async def drain(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._write_all())

    async def _write_all(self) -> None:
        while self._events or self._ends:
            # A group costs about the same whatever its size (a few git processes): a
            # moment's wait lets the ends that come close together share one.
            await asyncio.sleep(_GATHER_SECONDS)
            events, self._events = self._events, []
            ends, self._ends = self._ends, []
            try:
                done = await asyncio.to_thread(self._write, events, [e for e, _ in ends])
            except Exception as e:  # each waiting run hears it
                self._log(f"cannot record {len(events)} event(s) and {len(ends)} end(s): {e}")
                for _, future in ends:
                    if not future.done():
                        future.set_exception(e)
                continue
            for ending, future in ends:
                if not future.done():
                    future.set_result(done.get(ending.execution.id))

    def _write(self, events: list[tuple[Execution, str, dict[str, object]]],
               ends: list[Ending]) -> dict[ExecutionId, executions.Finished]:
        if not ends:
            transaction.retried(lambda: queue.record_events(self._campaign, events))
            return {}
        return transaction.retried(lambda: executions.finish_many(self._campaign, ends,
                                                                  events=events))


