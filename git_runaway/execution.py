"""The library API: run executions, many at once, from one asyncio loop.

    async with Runaway() as runaway:
        outcomes = await asyncio.gather(*(
            runaway.run(profile, Job(folder, "run", f"--seed {i}"), sink, sink)
            for i in range(100)))

Each run is pack -> send (only if the host lacks that archive) -> run -> fetch -> clean up.
Runs to one host share one connection, and runs of the same code share one upload: with
--leave=nothing the archive stays on the host until the session closes, then goes if no run
(of this session or another) uses it. The CLI, `git expegit jobs run` and the agent all
call `Runaway.run`; nothing here prints except through the `log` callback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import shlex
import time
import uuid
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from git_runaway import remote
from git_runaway import variables
from git_runaway.archive import FETCH_IGNORE
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


@dataclasses.dataclass(frozen=True)
class Outcome:
    uuid: str
    exit_code: int
    remote_folder: str
    uploaded: int  # bytes of code sent; 0 when the host already had the archive
    fetched: tuple[str, ...]
    seconds: float


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
        # The last upload of each archive, set once it ended: runs wait for it, not resend.
        self._uploads: dict[tuple[Where, str], asyncio.Event] = {}

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
        done = await host.run(remote.delete_unused(root, digests))
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
            done = await host.run(remote.resolve_root(profile.host_directory))
            if done.exit_code != 0:
                raise _host_error(f"cannot create host_directory {profile.host_directory}", done)
            self._roots[key] = done.stdout.decode().strip().splitlines()[-1]
        return self._roots[key]

    async def run(self, profile: Profile, job: Job, stdout: Sink, stderr: Sink) -> Outcome:
        start = time.monotonic()
        arguments = split_arguments(job.arguments)
        variables.check(job.environment, job.script, arguments)
        script = _script_path(job)
        package = await asyncio.to_thread(pack, job.folder)
        if script not in package.files:
            raise RunawayError(f"script {script!r} is excluded by {job.folder}/.sendignore; "
                               "it must be sent to run", ExitCode.USAGE)
        self._log(f"packed {len(package.files)} entries ({len(package.data)} bytes, "
                  f"sha256 {package.digest[:12]})")
        host = await self.host(profile)
        root = await self.root(host, profile)
        run_id = str(uuid.uuid4())
        folder = f"{root}/{run_id}"
        env = {**job.environment, **_variables(profile, job, root, folder, run_id, package)}
        command = _command(profile, env, f"{folder}/{script}", arguments)
        where = (profile.ssh_config, root)
        try:
            uploaded, code = await self._start(host, where, package, run_id, command,
                                               stdout, stderr)
        except asyncio.CancelledError:
            self._log("interrupted: the script was stopped; fetching and cleaning up")
            try:
                await self._finish(host, where, package.digest, run_id, job)
            except RunawayError as e:
                self._log(str(e))
            raise
        fetched = await self._finish(host, where, package.digest, run_id, job)
        return Outcome(run_id, code, folder, uploaded, tuple(fetched), time.monotonic() - start)

    async def _start(self, host: Host, where: Where, package: Pack, run_id: str,
                     command: str, stdout: Sink, stderr: Sink) -> tuple[int, int]:
        """Run `command` in its run folder, uploading the code first if the host lacks it;
        returns the bytes uploaded and the exit code."""
        root = where[1]
        self._log(f"running {root}/{run_id} on {host.name}")
        prepare = remote.prepare(root, package.digest, run_id)
        before = self._uploads.get((where, package.digest))
        done = await host.run(prepare + command, stdout=stdout, stderr=stderr, hold_stdin=True)
        latest = self._uploads.get((where, package.digest))
        if done.signal == remote.MISSING and latest is not None and (
                latest is not before or not latest.is_set()):
            # Another run of this session is sending this code, or sent it after this one
            # looked: use that upload rather than send the same bytes again.
            self._log("another run is uploading this code: waiting for it")
            await latest.wait()
            done = await host.run(prepare + command, stdout=stdout, stderr=stderr,
                                  hold_stdin=True)
        uploaded = 0
        if done.signal == remote.MISSING:
            uploaded = await self._upload(host, where, package, run_id)
            done = await host.run(command, stdout=stdout, stderr=stderr, hold_stdin=True)
        elif done.signal == remote.UNPREPARED:
            raise RunawayError(f"cannot prepare the run folder {root}/{run_id} on {host.name} "
                               "(see the message above)", ExitCode.HOST)
        else:
            self._log("the host already had this code: nothing uploaded")
        self._log(f"the script exited with {done.exit_code}")
        return uploaded, done.exit_code

    async def _upload(self, host: Host, where: Where, package: Pack, run_id: str) -> int:
        """Send the code; the session's other runs that find it missing meanwhile wait for
        this upload instead of sending the same bytes again."""
        root = where[1]
        self._log(f"uploading {len(package.data)} bytes")
        uploading = self._uploads[(where, package.digest)] = asyncio.Event()
        try:
            done = await host.run(remote.upload(root, package.digest, run_id),
                                  stdin=package.data)
        finally:
            uploading.set()
        if done.exit_code == remote.CORRUPT:
            raise RunawayError(f"the archive uploaded to {host.name} does not match its sha256 "
                               f"{package.digest}; retry", ExitCode.SEND)
        if done.exit_code != 0:
            raise RunawayError(f"cannot upload the code to {host.name}:{root}: "
                               f"{_last_line(done.stderr)}", ExitCode.SEND)
        return len(package.data)

    async def _finish(self, host: Host, where: Where, digest: str, run_id: str,
                      job: Job) -> list[str]:
        """Fetch the results, and clean up the host once they are safe on this side."""
        root = where[1]
        folder = f"{root}/{run_id}"
        self._archives.setdefault(where, {})[digest] = job.leave
        listed = (job.folder / FETCH_IGNORE).exists()
        paths = await self._fetch_list(host, folder, job.folder) if listed else b""
        cleanup = remote.cleanup(root, digest, run_id, job.leave is Leave.EVERYTHING)
        done = await host.run(remote.fetch_and_cleanup(folder, cleanup, listed), stdin=paths)
        if done.exit_code not in (0, remote.CLEANUP_FAILED):
            # A run's results matter more than a tidy host: keep them where they are.
            raise RunawayError(f"cannot archive the results in {folder}: "
                               f"{_last_line(done.stderr)}; the run folder is kept on "
                               f"{host.name}:{folder}", ExitCode.FETCH)
        try:
            fetched = await asyncio.to_thread(safe_extract, done.stdout, job.folder)
        except RunawayError as e:
            e.args = (f"{e.args[0]}; the archive is kept as {_keep(done.stdout, run_id)}",)
            raise
        self._log(f"fetched {len(fetched)} files")
        if done.exit_code == remote.CLEANUP_FAILED:
            raise _host_error(f"cannot clean up {folder}", done)
        return fetched

    async def _fetch_list(self, host: Host, folder: str, local: Path) -> bytes:
        """The changed files minus .fetchignore, NUL-separated, for `fetch_and_cleanup`."""
        listing = await host.run(remote.changed_files(folder))
        if listing.exit_code != 0:
            raise RunawayError(f"cannot list the results in {folder}: "
                               f"{_last_line(listing.stderr)}", ExitCode.FETCH)
        spec = ignore_spec(local, FETCH_IGNORE)
        return b"\0".join(n for n in listing.stdout.split(b"\0")
                           if n and not spec.match_file(os.fsdecode(n[2:])))

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
        folder = f"{root}/check-{uuid.uuid4()}"
        for section in ("before_execution", "after_execution"):
            done = await host.run(remote.try_commands(folder, getattr(profile, section)))
            reason = f"exit {done.exit_code}: {_last_line(done.stderr)}" if done.exit_code else None
            steps.append((section, reason))
        await host.run(f"rm -rf {remote.q(folder)}")
        return steps


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


def _command(profile: Profile, env: dict[str, str], script: str, arguments: list[str]) -> str:
    def commands(section: tuple[str, ...]) -> list[str]:
        return [remote.substitute(c, script, arguments) for c in section]

    return remote.execute(env["RUNAWAY_PWD"], env, commands(profile.before_execution),
                          commands(profile.execution), commands(profile.after_execution))


def _keep(archive: bytes, run_id: str) -> Path:
    """Save a fetched archive that was not extracted, since the host no longer has it."""
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runaway"
    path = folder / "refused" / f"{run_id}.tar"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(archive)
    return path


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


def _last_line(text: bytes) -> str:
    lines = text.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message"
