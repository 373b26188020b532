"""Slurm: what runaway writes for `sbatch` and what it reads back from `squeue` and `sacct`.

A profile with an `sbatch:` mapping submits its runs instead of running them in the ssh
session: the runs of one submission form one job array, each task running one run's folder
(`remote.job_task`). Nothing here talks to a host: `execution.Runaway` sends the text and
parses the answers with these functions, so that they are tested on recorded output too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping

# The profile's `sbatch:` keys, each with the check of its value and its sbatch option.
_WORD = re.compile(r"[A-Za-z0-9_.,-]+")
_TIME = re.compile(r"(?:[0-9]+-)?[0-9]+(?::[0-9]+){0,2}|UNLIMITED|INFINITE")
_MEM = re.compile(r"[0-9]+[KMGT]?")
_GPUS = re.compile(r"(?:[A-Za-z0-9_.-]+:)?[0-9]+")
_SIGNAL = re.compile(r"(?:B:|R:|RB:|BR:)?(?:SIG)?[A-Z0-9]+(?:@[0-9]+)?")
_COUNT = re.compile(r"[1-9][0-9]{0,5}")
OPTIONS: dict[str, tuple[re.Pattern[str], str, str]] = {
    "partition": (_WORD, "--partition", "a partition name such as debug"),
    "time": (_TIME, "--time", "a time limit such as 30, 2:00:00 or 1-12:00"),
    "cpus_per_task": (_COUNT, "--cpus-per-task", "a whole number of CPUs such as 4"),
    "gpus": (_GPUS, "--gpus", "a number of GPUs such as 1 or a100:2"),
    "mem": (_MEM, "--mem", "an amount of memory such as 4G or 500M"),
    "signal": (_SIGNAL, "--signal", "a signal before the time limit such as USR1@120"),
}
EXTRA = "extra"
KEYS = (*OPTIONS, EXTRA)
# sbatch options that runaway sets itself, or that would keep `sbatch --parsable` from
# printing the id runaway reads (--test-only) or from returning once the job is queued
# (--wait): a profile's `extra` must not give them, in any spelling sbatch takes.
_OWN = ("--array", "--output", "--error", "--parsable", "--wrap", "--chdir", "--job-name",
        "--wait", "--test-only")
_OWN_SHORT = "aoeDJW"  # -a, -o, -e, -D, -J, -W
_FLAGS = "HhIkOQsuVvW"  # sbatch's short options that take no value (-I, -k: an optional one)


@dataclasses.dataclass(frozen=True)
class Sbatch:
    """A profile's `sbatch:` options, checked: `#SBATCH` lines runaway can write as they are."""

    options: tuple[tuple[str, str], ...] = ()  # (key of OPTIONS, value)
    extra: tuple[str, ...] = ()  # further options, each one line such as --qos=high

    def replace(self, overrides: Mapping[str, str] | Iterable[tuple[str, str]]) -> Sbatch:
        """These options with `overrides` (`jobs run --sbatch KEY=VALUE`) in place, checked;
        each `extra` adds a line."""
        def fail(what: str) -> ValueError:
            return ValueError(f"--sbatch: {what}")
        merged = dict(self.options)
        extra = list(self.extra)
        pairs = overrides.items() if isinstance(overrides, Mapping) else overrides
        for key, value in pairs:
            if key == EXTRA:
                extra.append(_extra_line(value, fail, EXTRA))
            else:
                merged[key] = _option(key, value, fail)
        return Sbatch(tuple(sorted(merged.items())), tuple(extra))

    def lines(self) -> list[str]:
        return [*(f"#SBATCH {OPTIONS[k][1]}={v}" for k, v in self.options),
                *(f"#SBATCH {line}" for line in self.extra)]


def parse(value: object, fail: Callable[[str], Exception]) -> Sbatch:
    """The `sbatch:` key of a profile; `fail` makes the error that names the file."""
    if not isinstance(value, dict):
        raise fail(f"key 'sbatch' must be a mapping of sbatch options: {', '.join(KEYS)}")
    options = {}
    extra: tuple[str, ...] = ()
    for key, item in value.items():
        if key == EXTRA:
            extra = tuple(_extra_line(line, fail, f"sbatch.{EXTRA}")
                          for line in _extra_list(item, fail))
        else:
            options[str(key)] = _option(str(key), item, fail, prefix="sbatch.")
    return Sbatch(tuple(sorted(options.items())), extra)


def _option(key: str, value: object, fail: Callable[[str], Exception], prefix: str = "") -> str:
    if key not in OPTIONS:
        raise fail(f"unknown key {prefix + key!r}; sbatch keys: {', '.join(KEYS)}")
    pattern, _, example = OPTIONS[key]
    text = str(value).strip() if type(value) in (int, str) else ""
    if not pattern.fullmatch(text):
        raise fail(f"key {prefix + key!r} must be {example}, not {value!r}")
    return text


def _extra_list(value: object, fail: Callable[[str], Exception]) -> list[object]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise fail("key 'sbatch.extra' must be a list of sbatch options such as --qos=high")
    return value


def _extra_line(line: object, fail: Callable[[str], Exception], name: str) -> str:
    """One option of `extra`, as `--qos=high` or `#SBATCH --qos=high`: one line, an option,
    and not one runaway sets itself."""
    text = line.strip().removeprefix("#SBATCH").strip() if isinstance(line, str) else ""
    # sbatch reads every option of the line, not only its first (`--comment=x --array=1`).
    if (not text.startswith("-") or any(c in text for c in "\n\r\0")
            or any(_sets_own(word) for word in text.split() if word.startswith("-"))):
        raise fail(f"key {name!r} has {line!r}: each item is one sbatch option such as "
                   f"--qos=high, other than {', '.join(_OWN)}")
    return text


def _sets_own(option: str) -> bool:
    """Whether sbatch reads `option` as one of _OWN: sbatch (getopt) takes a long option
    abbreviated (`--outp=x` is --output), a short one with its value attached (`-ox`), and
    short flags run together (`-Qox` is -Q -o x)."""
    name = re.split(r"[=\s]", option, maxsplit=1)[0]
    if name.startswith("--"):
        return len(name) > 2 and any(own.startswith(name) for own in _OWN)
    for letter in name[1:]:
        if letter in _OWN_SHORT:
            return True
        if letter not in _FLAGS:  # an option with a value: the rest of the word is its value
            return False
    return False


# Reading the scheduler -------------------------------------------------------------------------

# The states in which a job is over for good. PREEMPTED is one only when Slurm does not
# requeue the job: a requeued one shows REQUEUED, then PENDING.
FINAL = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL",
                   "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"})
# What a run's end is called in the notes.
END_NAMES = {"COMPLETED": "completed", "FAILED": "failed", "TIMEOUT": "timeout",
             "CANCELLED": "cancelled", "PREEMPTED": "preempted", "OUT_OF_MEMORY": "oom",
             "NODE_FAIL": "node_fail", "BOOT_FAIL": "boot_fail", "DEADLINE": "deadline",
             "REVOKED": "revoked"}
SQUEUE_FORMAT = "%i|%T|%N"
SACCT_FIELDS = "JobID,State,ExitCode,NodeList"


@dataclasses.dataclass(frozen=True)
class JobState:
    job: str  # "123", or "123_4" for a task of an array
    state: str  # Slurm's word: PENDING, RUNNING, COMPLETED, TIMEOUT...
    node: str = ""
    exit_code: int | None = None  # sacct's, when accounting exists

    @property
    def final(self) -> bool:
        return self.state in FINAL


def parse_squeue(text: str) -> dict[str, JobState]:
    """`squeue -h -r -t all -o '%i|%T|%N'`: one line per job or array task."""
    found = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) >= 2 and _JOB.fullmatch(fields[0]):
            node = fields[2] if len(fields) > 2 and fields[2] != "(null)" else ""
            found[fields[0]] = JobState(fields[0], fields[1].strip().upper(), node)
    return found


def state_of(states: Mapping[str, JobState], job: str) -> JobState | None:
    """The state of the task `job` ("123_4"): its own record, else its array's final one: a
    task cancelled (or failed to start) before Slurm split it from its array has no record
    of its own, only the array's (`123|CANCELLED`)."""
    found = states.get(job)
    array = states.get(job.partition("_")[0])
    if found is None and array is not None and array.final:
        return dataclasses.replace(array, job=job)
    return found


def parse_sacct(text: str) -> dict[str, JobState]:
    """`sacct -n -P -X -o JobID,State,ExitCode,NodeList`: "CANCELLED by 1000" is CANCELLED;
    ExitCode is "code:signal", and "0:0" says nothing but of a job COMPLETED (sacct shows it
    for one that timed out or was cancelled, pending or running)."""
    found = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 4 or not _JOB.fullmatch(fields[0]):
            continue
        code, _, signal = fields[2].partition(":")
        exit_code = (128 + int(signal) if signal.isdigit() and int(signal)
                     else int(code) if code.isdigit() else None)
        state = fields[1].split()[0].upper() if fields[1].strip() else "UNKNOWN"
        if exit_code == 0 and state != "COMPLETED":
            exit_code = None
        node = fields[3] if fields[3] not in ("None assigned", "(null)") else ""
        found[fields[0]] = JobState(fields[0], state, node, exit_code)
    return found


_JOB = re.compile(r"[0-9]+(?:_[0-9]+)?")
# What slurmstepd writes to a job's stderr when it stops it: the end state when neither
# squeue (the job is forgotten after MinJobAge) nor sacct (no accounting) knows the job.
_STEPD = re.compile(rb"\*\*\* JOB [0-9_]+ ON \S+ CANCELLED AT \S+(?: DUE TO ([A-Z ]+))?")


def state_from_stderr(stderr: bytes) -> str | None:
    """TIMEOUT, PREEMPTED or CANCELLED from slurmstepd's last word in the job's stderr; a
    requeue's ("DUE TO JOB REQUEUE") is no end: the job ran again after it."""
    found = [m for m in _STEPD.finditer(stderr) if (m[1] or b"").strip() != b"JOB REQUEUE"]
    if not found:
        return None
    reason = (found[-1][1] or b"").decode().strip()
    return {"TIME LIMIT": "TIMEOUT", "PREEMPTION": "PREEMPTED",
            "NODE FAILURE": "NODE_FAIL"}.get(reason, "CANCELLED")


def array_spec(count: int, throttle: int | None) -> str:
    """`--array` for `count` tasks, `throttle` of them at a time."""
    limit = f"%{throttle}" if throttle and throttle < count else ""
    return f"0-{count - 1}{limit}"


def job_ids(array_id: str, count: int) -> list[str]:
    return [f"{array_id}_{index}" for index in range(count)]


def parse_submitted(text: str) -> str | None:
    """`sbatch --parsable`: "123" or "123;cluster"."""
    first = text.strip().splitlines()[-1] if text.strip() else ""
    job = first.split(";")[0].strip()
    return job if job.isdigit() else None


def jobs_argument(jobs: Iterable[str]) -> str:
    """The `-j` list of squeue, sacct and scancel (ids are digits and `_`, safe as they are)."""
    return ",".join(sorted(set(jobs)))
