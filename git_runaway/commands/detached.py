"""The runs `git runaway --detach` submitted, recorded on this machine until `--attach`
collects them: one JSON file each, `${XDG_CACHE_HOME:-~/.cache}/runaway/detached/<run>.json`.

A record holds what collecting needs without the profile: where the job lives (the host
and the absolute host_directory it was submitted to, even if the profile changed since) and
where its results go (the folder it was started from). It is written whole or not at all
(a temporary file, then a rename), and removed once the run is collected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path

from git_runaway import remote
from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError
from git_runaway.execution import Job
from git_runaway.execution import Leave
from git_runaway.profiles import Profile
from git_runaway.schedulers.slurm import Sbatch

VERSION = 1


@dataclasses.dataclass(frozen=True)
class Detached:
    profile: str
    ssh_config: str | None
    root: str  # the absolute host_directory the job was submitted to
    folder: str  # where `--detach` ran: the code sent, and where the results come back
    script: str
    arguments: str
    run_id: str
    job: str  # Slurm's id of its task: "123_0"
    digest: str  # the code's archive, which the job pins on the host until it is collected
    leave: str
    submitted: float  # seconds since the epoch

    def target(self) -> Profile:
        """Where the job lives, as a profile: collecting needs its host and folder only."""
        return Profile(self.profile, self.ssh_config, remote.q(self.root), (), (), (),
                       f"the record of detached job {self.job}", sbatch=Sbatch())

    def collected(self) -> Job:
        return Job(Path(self.folder), self.script, self.arguments, Leave(self.leave),
                   run_id=self.run_id)

    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.submitted))


def folder() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "runaway" / "detached"


def save(record: Detached) -> Path:
    """Write the record whole, or leave none (a full disk, a SIGKILL mid-write)."""
    path = folder() / f"{record.run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{record.run_id}.json.{os.getpid()}")
    try:
        with open(temporary, "w") as file:
            json.dump({"version": VERSION, **dataclasses.asdict(record)}, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise RunawayError(f"cannot record the detached run in {path.parent}: {e}; the job "
                           f"{record.job} runs anyway (git runaway --clean {record.profile} "
                           "removes it once it ended)", ExitCode.INTERNAL) from None
    return path


def forget(record: Detached) -> None:
    (folder() / f"{record.run_id}.json").unlink(missing_ok=True)


def load_all() -> list[Detached]:
    """Every record, oldest first; a file that is not one (a stray temporary, a newer
    runaway's record) is skipped."""
    records = []
    for path in sorted(folder().glob("*.json")) if folder().is_dir() else []:
        with contextlib.suppress(OSError, ValueError, TypeError):
            data = json.loads(path.read_text())
            if data.pop("version", None) == VERSION and path.stem == data.get("run_id"):
                records.append(Detached(**data))
    return sorted(records, key=lambda r: (r.submitted, r.job))


def select(jobs: list[str], cwd: Path) -> list[Detached]:
    """The records of `jobs` (job or run ids), or without any, those started from `cwd`."""
    records = load_all()
    if not jobs:
        here = os.path.realpath(cwd)
        found = [r for r in records if os.path.realpath(r.folder) == here]
        if not found:
            raise RunawayError(f"no detached run was started from {cwd}"
                               f"{_elsewhere(records)}", ExitCode.USAGE)
        return found
    by_id = {r.job: r for r in records} | {r.run_id: r for r in records}
    unknown = [j for j in jobs if j not in by_id]
    if unknown:
        raise RunawayError(f"no detached run has the job id {unknown[0]!r}"
                           f"{_elsewhere(records)}", ExitCode.USAGE)
    return list({by_id[j].run_id: by_id[j] for j in jobs}.values())


def _elsewhere(records: list[Detached]) -> str:
    if not records:
        return " (none is waiting to be collected)"
    return f" ({len(records)} other(s) waiting: see git runaway --detached)"
