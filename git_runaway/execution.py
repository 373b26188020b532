"""The library API: run executions, many at once, from one asyncio loop.

    async with Runaway() as runaway:
        outcomes = await asyncio.gather(*(
            runaway.run(profile, Job(folder, "run", f"--seed {i}"), sink, sink)
            for i in range(100)))

Each run is pack -> send (only if the host lacks that archive) -> run -> fetch -> clean up.
Runs to one host share a few connections, and runs of the same code share one upload: with
--leave=nothing the archive stays on the host until the session closes, then goes if no run
(of this session or another) uses it. The CLI, `git expegit jobs run` and the agent all
call `Runaway.run`; nothing here prints except through the `log` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from typing import BinaryIO

from git_runaway import hosts
from git_runaway import remote
from git_runaway import variables
from git_runaway.archive import FETCH_IGNORE
from git_runaway.archive import STAGING_PREFIX
from git_runaway.archive import Pack
from git_runaway.archive import ignore_spec
from git_runaway.archive import pack
from git_runaway.archive import safe_extract
from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError
from git_runaway.hosts import Completed
from git_runaway.hosts import Host
from git_runaway.hosts import Sink
from git_runaway.hosts.local import LocalHost
from git_runaway.profiles import Profile
from git_runaway.profiles import repository_root
from git_runaway.schedulers.sbatch import Handle
from git_runaway.schedulers.slurm import Sbatch

if TYPE_CHECKING:
    from git_runaway.schedulers.sbatch import HostWatcher

Log = Callable[[str], None]


class Leave(enum.Enum):
    """What stays on the host after a run (for the archive: after the session)."""

    NOTHING = "nothing"  # neither the run folder nor the code archive (unless another run uses it)
    CODE = "code"  # the code archive, so the next run of the same code uploads nothing
    EVERYTHING = "everything"  # the archive and the run folder


@dataclasses.dataclass(frozen=True)
class Job:
    folder: Path  # packed and sent; the results are fetched back into it
    script: str  # relative to folder
    arguments: str = ""  # split like a shell would, then quoted again for the host
    leave: Leave = Leave.NOTHING
    environment: Mapping[str, str] = dataclasses.field(default_factory=dict)  # RUNAWAY* vars
    # Where the results are fetched to, when not into `folder`: runs of one code folder
    # (git expegit's batches) each bring theirs into their own place.
    results: Path | None = None
    run_id: str | None = None  # the run folder's name on the host, when the caller chose it

    @property
    def destination(self) -> Path:
        return self.folder if self.results is None else self.results


@dataclasses.dataclass(frozen=True)
class Outcome:
    uuid: str
    exit_code: int | None  # None: a Slurm job stopped before its script could say one
    remote_folder: str
    uploaded: int  # bytes of code sent; 0 when the host already had the archive
    fetched: tuple[str, ...]
    seconds: float
    # Output the host could not send (unreadable files, fifos, devices): named, not lost
    # without a word; they stay in the run folder if --leave keeps it.
    unfetched: tuple[str, ...] = ()
    # node, os, cpus, gpus; for a Slurm run also job (its id) and state (how it ended)
    where: Mapping[str, str] = dataclasses.field(default_factory=dict)
    stopped: bool = False  # the script was stopped (`stop`), not left to end


def split_arguments(arguments: str) -> list[str]:
    try:
        return shlex.split(arguments)
    except ValueError as e:
        raise RunawayError(f"cannot split the arguments {arguments!r}: {e}",
                           ExitCode.USAGE) from None


def forwarded_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The local RUNAWAY* variables, which the original forwarded ("parametric profiles")."""
    return {k: v for k, v in environ.items() if k.startswith("RUNAWAY")}


def _silent(message: str) -> None:
    pass


Where = tuple[str | None, str]  # (the profile's ssh_config, the absolute host_directory)
RECORD = "environment.txt"  # where the output of a profile's `record:` commands goes


class Runaway:
    """A session of runs sharing connections; use as an async context manager."""

    def __init__(self, log: Log = _silent) -> None:
        self._log = log
        self._hosts: dict[str | None, Host] = {}
        self._roots: dict[tuple[str | None, str], str] = {}
        self._lock = asyncio.Lock()
        # The archives this session's runs used, and the --leave of the last run of each
        # to end: with NOTHING, `close` deletes the archive if no run uses it.
        self._archives: dict[Where, dict[str, Leave]] = {}
        # The last upload of each archive: runs that find it missing wait for it, not resend.
        self._uploads: dict[tuple[Where, str], asyncio.Future[int]] = {}
        self.watchers: dict[Where, HostWatcher] = {}  # the Slurm poll loop of each host

    def log(self, message: str) -> None:
        self._log(message)

    def keep_code(self, where: Where, digest: str, leave: Leave) -> None:
        """A run of this session used the archive `digest`: `close` deletes it with
        --leave=nothing once no run uses it."""
        self._archives.setdefault(where, {})[digest] = leave

    async def __aenter__(self) -> Runaway:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        try:
            await self.close()
        except RunawayError as e:
            if error is None:
                raise
            self._log(str(e))  # the error on its way out says more about what went wrong

    async def close(self) -> None:
        """Delete the archives that the session kept for --leave=nothing and that no run
        uses any more, then close the connections."""
        hosts, self._hosts = self._hosts, {}
        archives, self._archives = self._archives, {}
        try:
            await asyncio.gather(*(self._delete_unused(hosts.get(where[0]), where[1], digests)
                                   for where, digests in archives.items()))
        finally:
            await asyncio.gather(*(host.close() for host in hosts.values()))

    async def _delete_unused(self, host: Host | None, root: str,
                             leaves: dict[str, Leave]) -> None:
        digests = [digest for digest, leave in leaves.items() if leave is Leave.NOTHING]
        if host is None or not host.alive or not digests:
            return  # a lost connection was reported by the run that lost it
        self._log(f"deleting {len(digests)} archive(s) from {root} unless a run uses them")
        done = await _run(host, "delete", remote.delete_unused, root, digests)
        if done.exit_code != 0:
            raise _host_error(f"cannot delete the code archives in {root}", done)

    async def host(self, profile: Profile) -> Host:
        key = profile.ssh_config
        async with self._lock:
            host = self._hosts.get(key)
            if host is None or not host.alive:
                self._log(f"connecting to {key or 'this machine'}")
                host = LocalHost() if key is None else await _connect(key)
                self._hosts[key] = host
            return host

    async def root(self, host: Host, profile: Profile) -> str:
        """The absolute host_directory, created on first use."""
        key = (profile.ssh_config, profile.host_directory)
        if key not in self._roots:
            done = await _run(host, "root", remote.resolve_root, profile.host_directory)
            lines = done.stdout.decode(errors="replace").strip().splitlines()
            if done.exit_code != 0 or not lines:
                raise _host_error(f"cannot create host_directory {profile.host_directory}", done)
            if done.noise:
                self._log(f"{host.name}'s shell printed {len(done.noise)} bytes at startup "
                          "(set aside): see --check")
            self._roots[key] = lines[-1]
        return self._roots[key]

    async def run(self, profile: Profile, job: Job, stdout: Sink, stderr: Sink, *,
                  package: Pack | None = None, started: Started | None = None,
                  stop: asyncio.Event | None = None) -> Outcome:
        """Run `job`. A cancellation stops the script, then still fetches its results and
        cleans up before it goes on; so does a failing `stdout` (a closed pipe), whose error
        is raised once that is done. `package`: the folder packed already (a batch packs
        its code once). `started` hears where the script started; setting `stop` stops the
        script, whose results still come back (a timeout, a cancel)."""
        start = time.monotonic()
        arguments = split_arguments(job.arguments)
        variables.check(job.environment, job.script, arguments)
        script = _script_path(job)
        if package is None:
            package = await asyncio.to_thread(pack, job.folder)
        if script not in package.files:
            raise RunawayError(f"script {script!r} is excluded by {job.folder}/.sendignore; "
                               "it must be sent to run", ExitCode.USAGE)
        self._log(f"packed {len(package.files)} entries ({package.size} bytes, "
                  f"sha256 {package.digest[:12]})")
        [job] = await _with_commit([job])
        if profile.sbatch is not None:
            return await self._submit_and_wait(profile, job, stdout, stderr, package, started,
                                               stop)
        host = await self.host(profile)
        root = await self.root(host, profile)
        run_id = _run_id(job)
        folder = f"{root}/{run_id}"
        run = _Run(self, host, (profile.ssh_config, root), package, run_id, job,
                   commands_of(profile, job, folder),
                   environment_of(profile, job, root, run_id, package), stdout, stderr,
                   started)
        task = asyncio.ensure_future(run.protocol())
        stopper = asyncio.ensure_future(_stop_when(stop, run))
        try:
            code = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            self._log("interrupted: stopping the script; fetching and cleaning up")
            await run.stop()
            try:
                await task
            except RunawayError as e:
                self._log(str(e))
            raise
        finally:
            stopper.cancel()
        if run.stdout_error is not None:
            raise run.stdout_error
        return Outcome(run_id, code, folder, run.uploaded, tuple(run.fetched),
                       time.monotonic() - start, tuple(run.unfetched), run.where,
                       run.stopped)

    async def _submit_and_wait(self, profile: Profile, job: Job, stdout: Sink, stderr: Sink,
                               package: Pack, started: Started | None,
                               stop: asyncio.Event | None) -> Outcome:
        """A blocking run on an sbatch profile: submit, wait, collect. Cancelling it
        cancels the job (scancel), then still collects what the job left."""
        # Shielded: a Ctrl-C while sbatch answers must not lose a job it accepted.
        [handle] = await asyncio.shield(self.submit(profile, [job], package=package))
        job = dataclasses.replace(job, run_id=handle.run_id)
        stop = stop or asyncio.Event()

        def watch(state: str, where: Mapping[str, str]) -> None:
            if state == "running" and started is not None:
                started(where)

        task = asyncio.ensure_future(self.attach(profile, job, stdout, stderr, stop=stop,
                                                 watch=watch))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            self._log("interrupted: cancelling the job; collecting what it left")
            stop.set()
            try:
                await task
            except RunawayError as e:
                self._log(str(e))
            raise

    async def submit(self, profile: Profile, jobs: list[Job], *, package: Pack | None = None,
                     throttle: int | None = None, options: Sbatch | None = None
                     ) -> list[Handle]:
        """Submit `jobs`, runs of one folder's code, to Slurm as one job array of at most
        `throttle` tasks at a time, with the profile's sbatch options (or `options`);
        returns once sbatch accepted them."""
        from git_runaway.schedulers import sbatch

        if profile.sbatch is None:
            raise RunawayError(f"profile {profile.name!r} has no sbatch: key: it runs its "
                               "scripts directly and cannot submit them", ExitCode.USAGE)
        if package is None:
            package = await asyncio.to_thread(pack, jobs[0].folder)
        jobs = await _with_commit(jobs)
        for job in jobs:
            variables.check(job.environment, job.script, split_arguments(job.arguments))
            if _script_path(job) not in package.files:
                raise RunawayError(f"script {job.script!r} is excluded by "
                                   f"{job.folder}/.sendignore; it must be sent to run",
                                   ExitCode.USAGE)
            _run_id(job)
        return await sbatch.submit(self, profile, jobs, package, throttle,
                                   options or profile.sbatch)

    async def attach(self, profile: Profile, job: Job, stdout: Sink, stderr: Sink, *,
                     stop: asyncio.Event | None = None,
                     watch: Callable[[str, Mapping[str, str]], None] | None = None) -> Outcome:
        """Wait for the submitted run `job.run_id` to end, then collect its results, its
        job's stdout and stderr and its exit code, as `run` does. `watch` hears each new
        state of the job (pending, running, requeued...); setting `stop` cancels the job;
        cancelling this call leaves the job running, to be attached again later."""
        from git_runaway.schedulers import sbatch

        if job.run_id is None:
            raise RunawayError("attach needs the run id of a submitted run", ExitCode.USAGE)
        _run_id(job)
        return await sbatch.attach(self, profile, job, stdout, stderr, stop, watch)

    async def cancel_jobs(self, profile: Profile, jobs: list[str]) -> None:
        """scancel Slurm jobs (ids such as 123_4) on the profile's host."""
        from git_runaway.schedulers import sbatch

        await sbatch.cancel(self, profile, jobs)

    async def collect(self, profile: Profile, job: Job, stderr: Sink) -> Outcome | None:
        """Collect a run started earlier whose runaway went away (`job.run_id`): its
        results and exit code when its script ended on its own; None when it is not there
        or was stopped with the connection (the host removes what it left). Waits while
        its host program still ends."""
        start = time.monotonic()
        host = await self.host(profile)
        root = await self.root(host, profile)
        run_id = _run_id(job)
        listed = (job.folder / FETCH_IGNORE).exists()
        for delay in BUSY_WAITS:
            key = hosts.nonce()
            async with hosts.session(host, "collect", remote.collect(key, root, run_id, listed),
                                     key, (stderr,)) as session:
                word = await session.stdout.until(hosts.discard)
                if word is not None and word.startswith("exit "):
                    run = _Run(self, host, (profile.ssh_config, root), None, run_id, job,
                               ([], [], []), {}, hosts.discard, stderr, None)
                    await run._fetch(session, listed)
                    await session.finish()
                    return Outcome(run_id, int(word.split()[1]), f"{root}/{run_id}", 0,
                                   tuple(run.fetched), time.monotonic() - start)
                await session.finish()
            if word != "busy":
                if word not in ("gone", "lost"):
                    raise RunawayError(f"cannot find the run {run_id} on {host.name}",
                                       ExitCode.HOST)
                return None
            await asyncio.sleep(delay)
        return None

    async def provide(self, host: Host, where: Where, package: Pack) -> int:
        """Make sure the host has the code: wait for an upload of it that this session
        already runs, or upload it. Returns the bytes sent."""
        key = (where, package.digest)
        ongoing = self._uploads.get(key)
        if ongoing is not None and not ongoing.done():
            self._log("another run is uploading this code: waiting for it")
            await asyncio.shield(ongoing)
            if ongoing.exception() is None:
                return 0
        upload = self._uploads[key] = asyncio.ensure_future(self._upload(host, where, package))
        return await asyncio.shield(upload)

    async def _upload(self, host: Host, where: Where, package: Pack) -> int:
        """Send the code, streamed: the tar is written again in chunks, never whole."""
        root = where[1]
        self._log(f"uploading {package.size} bytes")
        key = hosts.nonce()
        upload_id = str(uuid.uuid4())
        async with hosts.session(host, "upload", remote.upload(key, root, package.digest,
                                                               upload_id), key) as started:
            await started.expect("ready")
            await _send_chunks(started.process, package)
            started.process.write_eof()
            await started.stdout.until(hosts.discard)
            code = await started.finish()
            message = await started.last_message()
        if code == remote.CORRUPT:
            raise RunawayError(f"the archive uploaded to {host.name} does not match its sha256 "
                               f"{package.digest} (did {package.folder} change meanwhile?); "
                               "retry", ExitCode.SEND)
        if code != 0:
            raise RunawayError(f"cannot upload the code to {host.name}:{root}: {message}",
                               ExitCode.SEND)
        return package.size

    async def check(self, profile: Profile) -> list[tuple[str, str | None]]:
        """Try each step of a profile on its host: (step, None) when it works, else
        (step, why it failed). Stops at the first failure."""
        steps: list[tuple[str, str | None]] = []
        try:
            host = await self.host(profile)
            steps.append((f"connect to {host.name}", None))
            root = await self.root(host, profile)
            steps.append((f"create host_directory {root}", None))
        except RunawayError as e:
            return [*steps, ("connect and create host_directory", str(e))]
        quiet = await _run(host, "check", remote.program, ":")
        noise = quiet.noise.decode(errors="replace").strip()
        steps.append(("quiet shell startup", None if not noise else (
            f"the login shell printed {len(quiet.noise)} bytes before the command ran "
            f"({_first_line(noise)!r}...); runaway sets it aside, other tools may not")))
        folder = f"{root}/check-{uuid.uuid4()}"
        for section in ("before_execution", "after_execution"):
            done = await _run(host, "check", remote.try_commands, folder,
                              getattr(profile, section))
            reason = f"exit {done.exit_code}: {_last_line(done.stderr)}" if done.exit_code else None
            steps.append((section, reason))
        if profile.sbatch is not None:
            done = await _run(host, "check", remote.find_commands, remote.SLURM_COMMANDS)
            steps.append((f"{', '.join(remote.SLURM_COMMANDS)} on the PATH",
                          _last_line(done.stderr) if done.exit_code else None))
        return steps

    async def clean(self, profile: Profile) -> list[str]:
        """Remove what runs that are over left on the profile's host; what was removed."""
        host = await self.host(profile)
        root = await self.root(host, profile)
        done = await _run(host, "clean", remote.clean, root)
        if done.exit_code != 0:
            raise _host_error(f"cannot clean {root}", done)
        return [f"{host.name}:{root}/{line.split(' ')[-1]} ({line.rpartition(' ')[0]})"
                for line in done.stdout.decode(errors="replace").splitlines() if line]


Started = Callable[[Mapping[str, str]], None]
# How long `collect` waits, in turn, for a run's host program that is still ending (its
# stop takes 5 s at most, then the results go nowhere): then it counts as lost.
BUSY_WAITS = (0.5, 1, 1, 2, 2, 4, 4, 8, 8, 0)
_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _run_id(job: Job) -> str:
    if job.run_id is None:
        return str(uuid.uuid4())
    if not _RUN_ID.fullmatch(job.run_id):  # it is written into shell text
        raise RunawayError(f"invalid run id {job.run_id!r}: a lowercase uuid", ExitCode.USAGE)
    return job.run_id


async def _stop_when(stop: asyncio.Event | None, run: _Run) -> None:
    if stop is not None:
        await stop.wait()
        await run.stop()


class _Run:
    """One run's conversation with its host program (`remote.run`)."""

    def __init__(self, session: Runaway, host: Host, where: Where, package: Pack | None,
                 run_id: str, job: Job, commands: tuple[list[str], list[str], list[str]],
                 env: dict[str, str], stdout: Sink, stderr: Sink,
                 started: Started | None) -> None:
        self.session, self.host, self.place, self.package = session, host, where, package
        self.run_id, self.job, self.commands, self.env = run_id, job, commands, env
        self.stdout, self.stderr = stdout, stderr
        self.folder = f"{where[1]}/{run_id}"
        self.uploaded = 0
        self.fetched: list[str] = []
        self.stdout_error: OSError | None = None
        self.unfetched: list[str] = []
        self._started: hosts.Session | None = None
        self._on_start = started
        self.where: dict[str, str] = {}
        self.stopped = False
        self._stopping = False
        self._stopper: asyncio.Future[None] | None = None

    async def stop(self) -> None:
        self.stopped = True
        self._stopping = True
        if self._started is not None:
            await self._started.answer(remote.STOP)

    def _forward(self, chunk: bytes) -> None:
        if self.stdout_error is not None:
            return
        try:
            self.stdout(chunk)
        except OSError as e:  # a closed pipe (`| head -1`): stop the script, quietly
            self.stdout_error = e
            self._stopper = asyncio.ensure_future(self.stop())

    async def protocol(self) -> int:
        log = self.session._log
        root = self.place[1]
        key = hosts.nonce()
        listed = (self.job.folder / FETCH_IGNORE).exists()
        before, execution, after = self.commands
        assert self.package is not None
        program = remote.run(key, root, self.package.digest, self.run_id, self.env, before,
                             execution, after, listed)
        log(f"running {self.folder} on {self.host.name}")
        async with hosts.session(self.host, "run", program, key, (self.stderr,)) as started:
            self._started = started
            if started.noise.parts:
                log(f"set aside {len(started.noise.bytes())} bytes the login shell printed")
            if self._stopping:
                await started.answer(remote.STOP)
            try:
                await self._prepare(started)
                word = await started.stdout.until(self._forward)
                if word is None or not word.startswith("exit "):
                    raise RunawayError(f"the run ended before its script did: "
                                       f"{await started.last_message()}", ExitCode.HOST)
                code = int(word.split()[1])
                log(f"the script exited with {code}")
                self.session._archives.setdefault(self.place, {})[self.package.digest] = (
                    self.job.leave)
                await self._fetch(started, listed)
            except RunawayError as e:
                if e.code == ExitCode.CONNECTION:
                    e.args = (f"{e.args[0]}; the run folder, if the run started, is "
                              f"{self.host.name}:{self.folder}",)
                raise
            cleaned = await started.finish()
            self.unfetched = [line.removeprefix(remote.UNFETCHED) for line in
                              started.messages.bytes().decode(errors="replace").splitlines()
                              if line.startswith(remote.UNFETCHED)]
        if cleaned != 0:
            raise RunawayError(f"cannot clean up {self.folder} on {self.host.name}: "
                               f"{_last_line(started.messages.bytes())}", ExitCode.HOST)
        return code

    async def _prepare(self, started: hosts.Session) -> None:
        while True:
            word = await started.stdout.until(hosts.discard)
            if word is not None and word.startswith("where "):
                self.where = dict(w.partition("=")[::2] for w in word.split()[1:] if "=" in w)
                continue
            if word == "started":
                if self._on_start is not None:
                    self._on_start(self.where)
                if not self.uploaded:
                    self.session._log("the host already had this code: nothing uploaded")
                return
            if word == "missing":
                assert self.package is not None
                self.uploaded += await self.session.provide(self.host, self.place,
                                                            self.package)
                await started.answer(remote.GO)
                continue
            if word == "unprepared":
                raise RunawayError(f"cannot prepare the run folder {self.folder} on "
                                   f"{self.host.name} (see the message above)", ExitCode.HOST)
            raise RunawayError(f"cannot start the run in {self.place[1]} on {self.host.name}: "
                               f"{await started.last_message()}", ExitCode.HOST)

    async def _fetch(self, started: hosts.Session, listed: bool) -> None:
        """Receive the results into a file, extract them, then tell the host whether it may
        delete them: until the results are in place here, the host keeps them."""
        session = self.session
        if listed:
            names = hosts.Collect()
            if await started.stdout.until(names) != "listed":
                raise RunawayError(f"cannot list the results in {self.folder}: "
                                   f"{await started.last_message()}", ExitCode.FETCH)
            spec = ignore_spec(self.job.folder, FETCH_IGNORE)
            wanted = b"\0".join(n for n in names.bytes().split(b"\0")
                                 if n and not spec.match_file(os.fsdecode(n[2:])))
            await started.process.write(f"{len(wanted)}\n".encode() + wanted)
        where = f"{self.host.name}:{self.folder}"
        # Next to the results' place: the same file system, and a hidden name never sent.
        received = _Received(self.job.destination / f"{STAGING_PREFIX}{self.run_id}.tar")
        word = await started.stdout.until(received.write)
        received.close()
        try:
            if received.error is not None:
                raise RunawayError(f"cannot store the results here ({received.error}); they "
                                   f"are kept on {where}", ExitCode.FETCH)
            if word != "end 0":
                raise RunawayError(f"cannot archive the results in {self.folder}: "
                                   f"{await started.last_message()}; the run folder is kept "
                                   f"on {where}", ExitCode.FETCH)
            try:
                self.fetched = await asyncio.to_thread(safe_extract, received.path,
                                                       self.job.destination)
            except RunawayError as e:
                kept = _keep(received.path, self.run_id)
                e.args = (f"{e.args[0]}; the archive is kept as {kept}; the run folder is kept "
                          f"on {where}",)
                raise
        except RunawayError:
            received.path.unlink(missing_ok=True)
            await started.answer(remote.KEEP)
            raise
        received.path.unlink(missing_ok=True)
        session._log(f"fetched {len(self.fetched)} files ({received.size} bytes)")
        keep = self.job.leave is Leave.EVERYTHING
        await started.answer(remote.KEEP if keep else remote.CLEAN)
        started.process.write_eof()
        await started.stdout.until(hosts.discard)


class _Received:
    """The results' tar, written to a file as it arrives; a failure to write (a full disk)
    is kept for later, and the rest of the stream is read and dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self.error: OSError | None = None
        self._file: BinaryIO | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "wb")
        except OSError as e:
            self.error = e

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            return
        try:
            self._file.write(chunk)
            self.size += len(chunk)
        except OSError as e:
            self.error = e
            self.close()

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as e:
                self.error = self.error or e


async def _send_chunks(process: hosts.Process, package: Pack) -> None:
    """Write the tar to the process as it is packed, in a thread, with a bounded queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)

    def produce() -> None:
        try:
            package.chunks(lambda chunk: asyncio.run_coroutine_threadsafe(
                queue.put(chunk), loop).result())
        finally:
            asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

    producer = asyncio.ensure_future(asyncio.to_thread(produce))
    try:
        while (chunk := await queue.get()) is not None:
            await process.write(chunk)
    finally:
        while not producer.done():  # let the thread end: drain what it still puts
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            await asyncio.sleep(0)
    await producer


async def _run(host: Host, tag: str, make: Callable[..., str], *args: object) -> hosts.Completed:
    key = hosts.nonce()
    return await hosts.run(host, tag, make(key, *args), key)


async def _connect(alias: str) -> Host:
    # Imported here: asyncssh takes 0.2 s to import, which `local` runs need not pay.
    from git_runaway.hosts.ssh import SshHost

    return await SshHost.connect(alias)


def _script_path(job: Job) -> str:
    folder = Path(os.path.abspath(job.folder))
    path = Path(os.path.normpath(folder / job.script))  # no resolve(): `run` may be a symlink
    if not path.is_relative_to(folder) or not path.is_file():
        raise RunawayError(f"script {job.script!r} is not a file inside {folder}",
                           ExitCode.USAGE)
    return path.relative_to(folder).as_posix()


def commands_of(profile: Profile, job: Job, folder: str
                ) -> tuple[list[str], list[str], list[str]]:
    """The profile's before, execution and after commands for `job` run in `folder`."""
    script = f"{folder}/{_script_path(job)}"
    arguments = split_arguments(job.arguments)

    def commands(section: tuple[str, ...]) -> list[str]:
        return [remote.substitute(c, script, arguments) for c in section]

    record = [f"{{ printf '$ %s\\n' {remote.q(c)}; {c}; }} >>{RECORD} 2>&1 </dev/null || :"
              for c in profile.record]
    return ([*commands(profile.before_execution), *record], commands(profile.execution),
            commands(profile.after_execution))


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runaway"


def _keep(archive: Path, run_id: str) -> Path:
    """Keep a fetched archive that was not extracted, for the user to inspect."""
    path = _cache() / "refused" / f"{run_id}.tar"
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(archive, path)
    return path


async def _with_commit(jobs: list[Job]) -> list[Job]:
    """The jobs with RUNAWAY_COMMIT: the caller's, or the commit checked out in their
    folder (one folder for all)."""
    if all(job.environment.get("RUNAWAY_COMMIT") for job in jobs):
        return jobs
    commit = await asyncio.to_thread(_commit, jobs[0].folder)
    if not commit:
        return jobs
    return [job if job.environment.get("RUNAWAY_COMMIT") else dataclasses.replace(
        job, environment={**job.environment, "RUNAWAY_COMMIT": commit}) for job in jobs]


def _commit(folder: Path) -> str | None:
    """The commit checked out in the folder's repository, for RUNAWAY_COMMIT: `.git` is not
    sent, so that a script can still log which version of the code ran."""
    if repository_root(Path(os.path.abspath(folder))) is None:
        return None
    done = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=folder,
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def environment_of(profile: Profile, job: Job, root: str, run_id: str, package: Pack
                   ) -> dict[str, str]:
    """The job's RUNAWAY* variables and those runaway sets for the run."""
    return {**job.environment, **_variables(profile, job, root, f"{root}/{run_id}", run_id,
                                            package)}


async def fetch(session: Runaway, host: Host, root: str, job: Job, started: hosts.Session,
                listed: bool) -> list[str]:
    """Receive a run's results from a host program that sends them as `run` does."""
    assert job.run_id is not None
    run = _Run(session, host, (None, root), None, job.run_id, job, ([], [], []), {},
               hosts.discard, hosts.discard, None)
    await run._fetch(started, listed)
    return run.fetched


def _variables(profile: Profile, job: Job, root: str, folder: str, run_id: str,
               package: Pack) -> dict[str, str]:
    return {
        "RUNAWAY_UUID": run_id,
        "RUNAWAY_PWD": folder,
        "RUNAWAY_PATH": root,
        "RUNAWAY_ARGUMENTS": job.arguments,
        "RUNAWAY_REMOTE": profile.name,
        "RUNAWAY_PROFILE": profile.name,
        "RUNAWAY_SCRIPT_PATH": job.script,
        "RUNAWAY_SEND_HASH": package.digest,
        "RUNAWAY_LEAVE": job.leave.value,
    }


def _host_error(what: str, done: Completed) -> RunawayError:
    return RunawayError(f"{what}: exit {done.exit_code}: {_last_line(done.stderr)}",
                        ExitCode.HOST)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:80] if text.strip() else ""


def _last_line(text: bytes) -> str:
    lines = text.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message"
