"""What runaway reads back from Slurm, on recorded output of the states CI's cluster cannot
produce (no accounting, no OOM killer under task/none, no preemption), then the poll loop's
decisions end to end on a real host whose `sbatch`, `squeue` and `sacct` print that output.

Recorded output is Slurm 22.05's (`squeue -h -r -t all -o '%i|%T|%N'`, `sacct -n -P -X -o
JobID,State,ExitCode,NodeList`, slurmstepd's words in a job's stderr); the forms seen on the
CI cluster were copied from it (`slurmstepd-vm: error: ...`, a requeued task PENDING with no
node, an array task cancelled under its own job id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path

import pytest

from git_runaway import profiles
from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError
from git_runaway.execution import Job
from git_runaway.execution import Outcome
from git_runaway.execution import Runaway
from git_runaway.profiles import Profile
from git_runaway.schedulers import sbatch
from git_runaway.schedulers import slurm
from git_runaway.schedulers.slurm import JobState
from git_runaway.schedulers.slurm import Sbatch
from tests.conftest import needs_slurm
from tests.conftest import script
from tests.conftest import write_profile
from tests.slurm_cluster_test import remote as on_cluster

# --- Parsing recorded output --------------------------------------------------------------

SQUEUE = """\
4242_8|PENDING|
4242_9|PENDING|
4242_[10-99%4]|PENDING|
4242_0|RUNNING|node01
4242_1|COMPLETING|node01
4242_2|COMPLETED|node01
4242_3|FAILED|node01
4242_4|TIMEOUT|node02
4242_5|CANCELLED|node02
4242_6|OUT_OF_MEMORY|node03
4242_7|PREEMPTED|node03
4250|NODE_FAIL|node[04-05]
4251|PENDING|(null)
4252|CONFIGURING|node06
4253|REQUEUE_HOLD|
4254|SUSPENDED|node07
slurm_load_jobs error: Invalid job id specified
"""

SACCT = """\
4242_0|COMPLETED|0:0|node01
4242_1|FAILED|3:0|node01
4242_2|TIMEOUT|0:0|node02
4242_3|CANCELLED by 1000|0:15|node02
4242_4|PREEMPTED|0:15|node03
4242_5|OUT_OF_MEMORY|0:125|node03
4242_6|NODE_FAIL|1:0|node[04-05]
4242_7|PENDING|0:0|None assigned
4242_[8-99%4]|PENDING|0:0|None assigned
4243|RUNNING|0:0|node06
4244|CANCELLED by 0|0:0|None assigned
4245|COMPLETED|0:0|node01
"""


def test_parse_squeue_reads_each_job_and_array_task():
    found = slurm.parse_squeue(SQUEUE)
    # The unsplit pending range (without -r) and error text are no job.
    assert "4242_[10-99%4]" not in found and len(found) == 15
    assert found["4242_8"] == JobState("4242_8", "PENDING", "")
    assert found["4242_0"] == JobState("4242_0", "RUNNING", "node01")
    assert found["4250"] == JobState("4250", "NODE_FAIL", "node[04-05]")
    assert found["4251"].node == ""  # "(null)": no node yet
    assert {j: s.state for j, s in found.items() if s.final} == {
        "4242_2": "COMPLETED", "4242_3": "FAILED", "4242_4": "TIMEOUT", "4242_5": "CANCELLED",
        "4242_6": "OUT_OF_MEMORY", "4242_7": "PREEMPTED", "4250": "NODE_FAIL"}
    # Still to run, running, or held after a requeue: not over.
    assert not any(found[j].final for j in ("4242_8", "4242_0", "4242_1", "4251", "4252",
                                            "4253", "4254"))
    assert all(s.exit_code is None for s in found.values())  # squeue has no exit code


def test_parse_sacct_reads_states_exit_codes_and_nodes():
    found = slurm.parse_sacct(SACCT)
    assert "4242_[8-99%4]" not in found and len(found) == 11
    assert {j: (s.state, s.exit_code, s.node) for j, s in found.items()} == {
        "4242_0": ("COMPLETED", 0, "node01"),
        "4242_1": ("FAILED", 3, "node01"),  # "3:0": exit code 3, no signal
        "4242_2": ("TIMEOUT", None, "node02"),  # "0:0" is no success when it timed out
        "4242_3": ("CANCELLED", 143, "node02"),  # "CANCELLED by 1000", killed by TERM (15)
        "4242_4": ("PREEMPTED", 143, "node03"),
        "4242_5": ("OUT_OF_MEMORY", 253, "node03"),  # 0:125: Slurm's SIG_OOM, 253 = 128 + 125
        "4242_6": ("NODE_FAIL", 1, "node[04-05]"),
        "4242_7": ("PENDING", None, ""),  # "None assigned"
        "4243": ("RUNNING", None, "node06"),
        "4244": ("CANCELLED", None, ""),  # cancelled before it started
        "4245": ("COMPLETED", 0, "node01"),
    }
    assert [j for j, s in found.items() if not s.final] == ["4242_7", "4243"]


def test_end_states_and_their_names():
    assert slurm.FINAL == {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL",
                           "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"}
    assert set(slurm.END_NAMES) == slurm.FINAL  # every end has a name in the notes
    assert [slurm.END_NAMES[s] for s in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED",
                                        "PREEMPTED", "OUT_OF_MEMORY")] == [
        "completed", "failed", "timeout", "cancelled", "preempted", "oom"]
    # A requeued job goes on: none of the states it passes through is an end.
    for state in ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                  "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING",
                  "STAGE_OUT", "STOPPED", "SPECIAL_EXIT"):
        assert not JobState("1", state).final, state


AT = "2026-11-30T10:00:00"


@pytest.mark.parametrize(("stderr", "state"), [
    (f"slurmstepd: error: *** JOB 123 ON node01 CANCELLED AT {AT} DUE TO TIME LIMIT ***\n",
     "TIMEOUT"),
    (f"slurmstepd-vm: error: *** JOB 123 ON vm CANCELLED AT {AT} DUE TO PREEMPTION ***\n",
     "PREEMPTED"),
    (f"slurmstepd-vm: error: *** JOB 123 ON vm CANCELLED AT {AT} ***\n", "CANCELLED"),
    (f"slurmstepd: error: *** JOB 123 ON node01 CANCELLED AT {AT} DUE TO NODE FAILURE ***\n",
     "NODE_FAIL"),
    # An array task: slurmstepd names it by its own job id, or by the array's form.
    (f"slurmstepd-vm: error: *** JOB 72 ON vm CANCELLED AT {AT} DUE TO TIME LIMIT ***\n",
     "TIMEOUT"),
    (f"slurmstepd: error: *** JOB 4242_7 ON node03 CANCELLED AT {AT} DUE TO TIME LIMIT ***\n",
     "TIMEOUT"),
    # The script's own output around it, and a step's line before the job's.
    (f"epoch 1\nloss 0.3\nslurmstepd: error: *** STEP 123.0 ON node01 CANCELLED AT {AT} DUE"
     f" TO TIME LIMIT ***\nslurmstepd: error: *** JOB 123 ON node01 CANCELLED AT {AT} DUE TO "
     "TIME LIMIT ***\nsrun: error: node01: task 0: Terminated\n", "TIMEOUT"),
    # The last word counts: cancelled by hand after a warning.
    (f"*** JOB 1 ON n CANCELLED AT {AT} DUE TO PREEMPTION ***\n"
     f"*** JOB 1 ON n CANCELLED AT {AT} ***\n", "CANCELLED"),
    ("Traceback (most recent call last):\nMemoryError\n", None),
    ("slurmstepd: error: Detected 1 oom_kill event in StepId=123.batch. Some of the step "
     "tasks have been OOM Killed.\n", None),  # the OOM end comes from sacct, if anything
    ("", None),
])
def test_state_from_stderr(stderr: str, state: str | None):
    assert slurm.state_from_stderr(stderr.encode()) == state


def test_submitted_ids_and_arrays():
    assert slurm.parse_submitted("4242\n") == "4242"
    assert slurm.parse_submitted("4242;cluster2\n") == "4242"
    assert slurm.parse_submitted("sbatch: warning: x\n4242\n") == "4242"
    assert slurm.parse_submitted("") is None
    assert slurm.parse_submitted("sbatch: Job 26 to start at 2026-12-23T13:59:22\n") is None
    assert slurm.array_spec(100, None) == "0-99"
    assert slurm.array_spec(100, 8) == "0-99%8"
    assert slurm.array_spec(4, 8) == "0-3"
    assert slurm.job_ids("4242", 3) == ["4242_0", "4242_1", "4242_2"]
    assert slurm.jobs_argument(["4242_1", "4242_0", "4242_1"]) == "4242_0,4242_1"


# --- Per-batch overrides, and what reaches the script ---------------------------------------

BASE = Sbatch((("partition", "debug"), ("time", "30")), ("--qos=high",))


def test_replace_overrides_options_and_adds_extra():
    changed = BASE.replace({"time": "2:00:00", "mem": "4G", "extra": "#SBATCH --requeue"})
    assert changed.lines() == ["#SBATCH --mem=4G", "#SBATCH --partition=debug",
                               "#SBATCH --time=2:00:00", "#SBATCH --qos=high",
                               "#SBATCH --requeue"]
    assert BASE.lines() == ["#SBATCH --partition=debug", "#SBATCH --time=30",
                            "#SBATCH --qos=high"]  # the profile's own is unchanged


@pytest.mark.parametrize(("overrides", "message"), [
    ({"time": "soon"}, "--sbatch: key 'time' must be a time limit such as 30, 2:00:00 or "
     "1-12:00, not 'soon'"),
    ({"queue": "debug"}, "--sbatch: unknown key 'queue'; sbatch keys: partition, time, "
     "cpus_per_task, gpus, mem, signal, extra"),
    ({"cpus_per_task": "-1"}, "--sbatch: key 'cpus_per_task' must be a whole number of CPUs "
     "such as 4, not '-1'"),
    ({"partition": "debug\n#SBATCH --array=0-999"}, "--sbatch: key 'partition' must be a "
     "partition name such as debug, not 'debug\\n#SBATCH --array=0-999'"),
    ({"partition": "debug $(reboot)"}, "--sbatch: key 'partition' must be a partition name "
     "such as debug, not 'debug $(reboot)'"),
    ({"extra": "--array=0-999"}, "--sbatch: key 'extra' has '--array=0-999': each item is one "
     "sbatch option such as --qos=high, other than --array, --output, --error, --parsable, "
     "--wrap, --chdir, --job-name, --wait, --test-only"),
    ({"extra": "--outp=/tmp/x"}, "--sbatch: key 'extra' has '--outp=/tmp/x': each item is one "
     "sbatch option such as --qos=high, other than --array, --output, --error, --parsable, "
     "--wrap, --chdir, --job-name, --wait, --test-only"),
    ({"extra": "--qos=low\n#SBATCH --output=/tmp/x"}, "--sbatch: key 'extra' has "
     "'--qos=low\\n#SBATCH --output=/tmp/x': each item is one sbatch option such as "
     "--qos=high, other than --array, --output, --error, --parsable, --wrap, --chdir, "
     "--job-name, --wait, --test-only"),
    ({"extra": "touch pwned"}, "--sbatch: key 'extra' has 'touch pwned': each item is one "
     "sbatch option such as --qos=high, other than --array, --output, --error, --parsable, "
     "--wrap, --chdir, --job-name, --wait, --test-only"),
])
def test_a_bad_override_is_refused(overrides: dict[str, str], message: str):
    with pytest.raises(ValueError) as refused:
        BASE.replace(overrides)
    assert str(refused.value) == message


HOSTILE = ["x\n#SBATCH --array=0-9", "x\r\n#SBATCH -o /tmp/x", "$(touch pwned)", "`touch pwned`",
           "x; touch pwned", "x' 'y", 'x" "y', "x\0y", "x\\", "1\n", "--a", "\u2028x", "é"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_give_one_sbatch_line_each_or_are_refused(value: str):
    for key in (*slurm.OPTIONS, slurm.EXTRA):
        try:
            lines = BASE.replace({key: value}).lines()
        except ValueError:
            continue
        assert len(lines) == len(BASE.lines()) + (key not in dict(BASE.options))
        for line in lines:
            assert line.startswith("#SBATCH -") and "\n" not in line and "\r" not in line, line
            assert line.count("#SBATCH") == 1, line
        if key != slurm.EXTRA:  # an option's value is plain text: no shell or quote
            values = [line.removeprefix("#SBATCH ") for line in lines]
            assert not any(c in v for v in values for c in "$`;'\" \\\0"), lines


@pytest.fixture
def cluster(home: Path, ssh_host: str) -> list[str]:
    """The ssh command line of the test user on the real cluster (slurm_cluster_test's)."""
    needs_slurm()
    return ["ssh", "-F", str(home / ".ssh" / "config"), ssh_host]


def test_every_accepted_form_is_one_slurm_takes(cluster: list[str]):
    """The real sbatch (--test-only: checked, not queued) takes each form the checks let
    through; gpus are left out, as the CI node has none."""
    forms = {"time": ["30", "30:00", "2:00:00", "1-12", "1-12:30", "1-12:30:00", "UNLIMITED"],
             "cpus_per_task": ["1"], "mem": ["100M", "100"],
             "signal": ["USR1@120", "B:USR1@60", "SIGTERM"],
             "partition": [os.environ.get("EXPEGIT_TEST_SLURM_PARTITION", "debug")]}
    for key, values in forms.items():
        for value in values:
            lines = "\n".join(Sbatch().replace({key: value, "extra": "--requeue"}).lines())
            command = (f"printf '#!/bin/sh\\n%s\\ntrue\\n' '{lines}' >/tmp/$$.sh && "
                       f"sbatch --test-only /tmp/$$.sh 2>&1; rc=$?; rm -f /tmp/$$.sh; exit $rc")
            assert "to start at" in on_cluster(cluster, command), (key, value)


# --- The poll loop, on a real host whose scheduler prints recorded output -----------------------

ARRAY = "4242"
SBATCH = """#!/bin/sh
# A scheduler at the edge of the test: keeps the array's script and answers a job id.
for a; do f=$a; done
test -e {state}/refuse && {{ echo "sbatch: error: Batch job submission failed: Invalid \
partition name specified" >&2; exit 1; }}
cp "$f" {state}/script.new && mv {state}/script.new {state}/script && pwd >{state}/root
echo "{array};cluster"
"""
SQUEUE_BIN = """#!/bin/sh
echo "$*" >>{state}/squeue.args
test -e {state}/squeue.down && {{ echo "slurm_load_jobs error: Unable to contact slurm \
controller (connect failure)" >&2; exit 1; }}
cat {state}/squeue
"""
SACCT_BIN = """#!/bin/sh
echo "$*" >>{state}/sacct.args
cat {state}/sacct 2>/dev/null; :
"""


@dataclasses.dataclass
class FakeSlurm:
    """sbatch, squeue and sacct on the PATH of this machine's host processes: they print
    what the test writes; the test runs each task as slurmd would."""

    state: Path
    processes: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    def write(self, name: str, text: str) -> None:
        (self.state / f"{name}.new").write_text(text)
        (self.state / f"{name}.new").rename(self.state / name)

    def squeue(self, states: Mapping[int, str], node: str = "node01") -> None:
        self.write("squeue", "".join(
            f"{ARRAY}_{i}|{s}|{node if s not in ('PENDING', '') else ''}\n"
            for i, s in states.items() if s))

    @property
    def root(self) -> Path:
        return Path((self.state / "root").read_text().strip())

    def start(self, index: int, restarts: int = 0) -> subprocess.Popen[bytes]:
        """Task `index` of the array, as slurmd starts it: the script in the folder it was
        submitted from, output appended to slurm-%A_%a.out and .err, its own session."""
        job = f"{ARRAY}_{index}"
        env = {**os.environ, "SLURM_ARRAY_JOB_ID": ARRAY, "SLURM_ARRAY_TASK_ID": str(index),
               "SLURM_JOB_ID": str(5000 + index), "SLURM_RESTART_COUNT": str(restarts)}
        with open(self.root / f"slurm-{job}.out", "ab") as out, \
                open(self.root / f"slurm-{job}.err", "ab") as err:
            process = subprocess.Popen(["/bin/sh", str(self.state / "script")], cwd=self.root,
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                       env=env, start_new_session=True)
        self.processes.append(process)
        return process

    def stepd(self, index: int, words: str) -> None:
        with open(self.root / f"slurm-{ARRAY}_{index}.err", "a") as err:
            err.write(f"slurmstepd-node01: error: {words}\n")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    state = tmp_path / "scheduler"
    folder = tmp_path / "bin"
    for name, text in (("sbatch", SBATCH), ("squeue", SQUEUE_BIN), ("sacct", SACCT_BIN)):
        script(folder, name, text.format(state=state, array=ARRAY).removeprefix("#!/bin/sh\n"))
    state.mkdir()
    # The host processes of `local` (/bin/sh) find them first; ssh, git and tar as before.
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RUNAWAY_SLURM_POLL", "0.2")
    monkeypatch.setattr(sbatch, "FIRST_POLL", 0.1)  # the loop's pace, not what it decides
    fake = FakeSlurm(state)
    yield fake
    for process in fake.processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def cluster_profile(home: Path, tmp_path: Path, **sbatch_keys: object) -> Profile:
    write_profile(home / ".config" / "runaway", "cluster", host_directory=str(tmp_path / "host"),
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"],
                  sbatch={"partition": "debug", **sbatch_keys})
    return profiles.load("cluster", tmp_path)


RUN = """echo "start $1"
n=$(cat count 2>/dev/null || echo 0); n=$((n + 1)); echo $n >count; echo "attempt $n"
case $1 in
  completed) ;;
  failed) echo "bad input" >&2; exit 3;;
  requeued) test $n -ge 2 || exec sleep 60;;
  *) exec sleep 60;;
esac
"""


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk

    @property
    def text(self) -> str:
        return self.data.decode()


async def until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not after {seconds} s: {what}"
        await asyncio.sleep(0.02)


def jobs_of(work: Path, tmp_path: Path, names: list[str]) -> list[Job]:
    return [Job(work, "run.sh", name, results=tmp_path / "results" / name) for name in names]


# Each end: what squeue still says (None: it forgot the job), what sacct says, how the task
# ends (TERM as a time limit, scancel or preemption; KILL as the OOM killer or KillWait), what
# slurmstepd wrote, and the state and exit code the run must end with.
ENDS = {
    "oom": (None, "OUT_OF_MEMORY|0:125", signal.SIGKILL, "Detected 1 oom_kill event in "
            "StepId=5000.batch. Some of the step tasks have been OOM Killed.",
            "OUT_OF_MEMORY", 253),
    "preempted": (None, "PREEMPTED|0:15", signal.SIGTERM, f"*** JOB 5001 ON node01 "
                  f"CANCELLED AT {AT} DUE TO PREEMPTION ***", "PREEMPTED", 143),
    "timeout": ("TIMEOUT", None, signal.SIGTERM, f"*** JOB 5002 ON node01 CANCELLED AT {AT} "
                "DUE TO TIME LIMIT ***", "TIMEOUT", 143),
    # No accounting and forgotten by squeue: slurmstepd's words tell; killed, no exit code.
    "forgotten": (None, None, signal.SIGKILL, f"*** JOB 5003 ON node01 CANCELLED AT {AT} DUE "
                  "TO TIME LIMIT ***", "TIMEOUT", None),
    # sacct's 0:0 for a job that timed out, its task killed before it wrote a code: no
    # exit code, never 0.
    "killed": (None, "TIMEOUT|0:0", signal.SIGKILL, f"*** JOB 5004 ON node01 CANCELLED AT "
               f"{AT} DUE TO TIME LIMIT ***", "TIMEOUT", None),
    "failed": (None, "FAILED|3:0", None, "", "FAILED", 3),
    "completed": ("COMPLETED", None, None, "", "COMPLETED", 0),
    "cancelled": (None, "CANCELLED by 1000|0:15", signal.SIGTERM, f"*** JOB 5007 ON node01 "
                  f"CANCELLED AT {AT} ***", "CANCELLED", 143),
}


def test_each_end_state_reaches_the_outcome(fake: FakeSlurm, home: Path, tmp_path: Path):
    work = tmp_path / "work"
    script(work, "run.sh", RUN)
    profile = cluster_profile(home, tmp_path)
    names = list(ENDS)
    jobs = jobs_of(work, tmp_path, names)
    fake.squeue(dict.fromkeys(range(len(names)), "PENDING"))
    sinks = [(Sink(), Sink()) for _ in names]

    async def scenario() -> list[Outcome]:
        async with Runaway() as session:
            handles = await session.submit(profile, jobs)
            assert [h.job for h in handles] == [f"{ARRAY}_{i}" for i in range(len(names))]
            attached = [asyncio.ensure_future(session.attach(
                profile, dataclasses.replace(job, run_id=handle.run_id), out, err))
                for job, handle, (out, err) in zip(jobs, handles, sinks, strict=True)]
            processes = [fake.start(i) for i in range(len(names))]
            await until(lambda: all((fake.root / h.run_id / "count").exists()
                                    for h in handles), "every script started")
            fake.squeue(dict.fromkeys(range(len(names)), "RUNNING"))
            accounting = []
            for i, (name, process) in enumerate(zip(names, processes, strict=True)):
                _, in_sacct, kill, words, _, _ = ENDS[name]
                if kill is not None:
                    os.killpg(process.pid, kill)
                await asyncio.to_thread(process.wait)
                if words:
                    fake.stepd(i, words)
                if in_sacct:
                    state, code = in_sacct.split("|")
                    accounting.append(f"{ARRAY}_{i}|{state}|{code}|node01\n")
            # Every task is over: squeue knows some still, sacct the others.
            fake.write("sacct", "".join(accounting))
            fake.squeue({i: ENDS[name][0] or "" for i, name in enumerate(names)})
            return await asyncio.gather(*attached)

    outcomes = asyncio.run(scenario())
    for i, (name, outcome, (out, err)) in enumerate(zip(names, outcomes, sinks, strict=True)):
        *_, words, state, code = ENDS[name]
        assert (outcome.where["state"], outcome.exit_code) == (state, code), name
        assert outcome.where["job"] == f"{ARRAY}_{i}"
        assert outcome.where["node"] == os.uname().nodename  # from the task's .where
        assert out.text.startswith(f"start {name}\nattempt 1\n"), name
        assert words in err.text, name  # Slurm's stderr reaches the run's logs
        assert (tmp_path / "results" / name / "count").read_text() == "1\n"
    assert "bad input" in sinks[names.index("failed")][1].text
    # One squeue for all the runs of the host, asked about their array (a task cancelled
    # before Slurm split it has only the array's record); sacct only about those squeue
    # forgot.
    asked = [line.split() for line in (fake.state / "squeue.args").read_text().splitlines()]
    assert all(a[:4] == ["-h", "-r", "-t", "all"] and a[-2:] == ["-o", "%i|%T|%N"]
               for a in asked)
    assert asked[0][5] == ARRAY
    calls = (fake.state / "sacct.args").read_text().splitlines()
    assert all(c.startswith("-n -P -X -j ") and c.endswith(" -o JobID,State,ExitCode,NodeList")
               for c in calls)
    asked_sacct = {job for c in calls for job in c.split()[4].split(",")}
    assert asked_sacct == {f"{ARRAY}_{i}" for i in (0, 1, 3, 4, 5, 7)}
    # Everything collected: nothing of the runs is left on the host.
    left = [p.name for p in fake.root.iterdir() if not p.name.endswith((".tar", ".users"))]
    assert left == [".lock"], left


def test_a_requeued_job_is_followed_to_its_end(fake: FakeSlurm, home: Path, tmp_path: Path):
    work = tmp_path / "work"
    script(work, "run.sh", RUN)
    profile = cluster_profile(home, tmp_path)
    [job] = jobs_of(work, tmp_path, ["requeued"])
    fake.squeue({0: "PENDING"})
    heard: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue()
    out, err = Sink(), Sink()

    async def scenario() -> Outcome:
        async with Runaway() as session:
            [handle] = await session.submit(profile, [job])
            attached = asyncio.ensure_future(session.attach(
                profile, dataclasses.replace(job, run_id=handle.run_id), out, err,
                watch=lambda state, where: heard.put_nowait((state, dict(where)))))
            where = fake.root / f"{handle.run_id}.where"
            assert (await asyncio.wait_for(heard.get(), 30))[0] == "pending"
            first = fake.start(0)
            await until(lambda: (fake.root / handle.run_id / "count").exists(), "started")
            fake.squeue({0: "RUNNING"})
            state, seen = await asyncio.wait_for(heard.get(), 30)
            assert (state, seen["job"], seen["restarts"]) == ("running", "4242_0", "0")
            # scontrol requeue, or a preemption that requeues: TERM, then PENDING again,
            # with no node (as the CI cluster shows it).
            os.killpg(first.pid, signal.SIGTERM)
            await asyncio.to_thread(first.wait)
            fake.stepd(0, f"*** JOB 5000 ON node01 CANCELLED AT {AT} DUE TO JOB REQUEUE ***")
            fake.squeue({0: "PENDING"})
            assert (await asyncio.wait_for(heard.get(), 30))[0] == "requeued"
            assert not attached.done()
            second = fake.start(0, restarts=1)
            await until(lambda: "restarts=1" in where.read_text(), "started again")
            fake.squeue({0: "RUNNING"})
            state, seen = await asyncio.wait_for(heard.get(), 30)
            assert (state, seen["restarts"]) == ("running", "1")
            await asyncio.to_thread(second.wait)
            fake.squeue({0: "COMPLETED"})
            return await attached

    outcome = asyncio.run(scenario())
    assert (outcome.exit_code, outcome.where["state"]) == (0, "COMPLETED")
    assert (outcome.where["job"], outcome.where["restarts"]) == ("4242_0", "1")
    assert heard.empty()  # the end itself is no state change heard
    assert out.text == "start requeued\nattempt 1\nstart requeued\nattempt 2\n"
    # The second start found the run folder as the first left it: a checkpoint.
    assert (tmp_path / "results" / "requeued" / "count").read_text() == "2\n"


def test_a_scheduler_that_cannot_answer_ends_no_run(fake: FakeSlurm, home: Path,
                                                    tmp_path: Path):
    """squeue fails (slurmctld restarting): the jobs are not taken as forgotten, and a
    queued run keeps its task."""
    work = tmp_path / "work"
    script(work, "run.sh", RUN)
    profile = cluster_profile(home, tmp_path)
    [job] = jobs_of(work, tmp_path, ["completed"])
    fake.squeue({0: "PENDING"})
    calls = fake.state / "squeue.args"

    async def scenario() -> Outcome:
        async with Runaway() as session:
            [handle] = await session.submit(profile, [job])
            attached = asyncio.ensure_future(session.attach(
                profile, dataclasses.replace(job, run_id=handle.run_id), Sink(), Sink()))
            await until(calls.exists, "a first poll")
            (fake.state / "squeue.down").touch()
            asked = len(calls.read_text().splitlines())
            await until(lambda: attached.done() or len(calls.read_text().splitlines()) > asked,
                        "a poll while squeue is down")
            # Each poll after the touch met the failure; the runaway loop tries again later.
            assert not attached.done()
            assert (fake.root / f"{handle.run_id}.job").exists()
            (fake.state / "squeue.down").unlink()
            await asyncio.to_thread(fake.start(0).wait)
            fake.squeue({0: "COMPLETED"})
            return await attached

    outcome = asyncio.run(scenario())
    assert (outcome.exit_code, outcome.where["state"]) == (0, "COMPLETED")


def test_a_blocking_run_submits_one_task_and_mirrors_its_end(fake: FakeSlurm, home: Path,
                                                            tmp_path: Path):
    """`Runaway.run` on an sbatch profile; the profile's hostile but valid `extra` reaches
    sbatch as one comment line, never as shell text."""
    work = tmp_path / "work"
    script(work, "run.sh", RUN)
    hostile = "--comment=$(touch pwned) `touch pwned`; touch pwned 'q\"\\"
    profile = cluster_profile(home, tmp_path, time="1:00:00", extra=[hostile])
    fake.squeue({0: "PENDING"})
    out, err = Sink(), Sink()

    async def node() -> None:
        await until(lambda: (fake.state / "script").exists(), "a submission")
        await asyncio.to_thread(fake.start(0).wait)
        fake.squeue({0: "FAILED"})

    async def scenario() -> Outcome:
        async with Runaway() as session:
            done = await asyncio.gather(
                session.run(profile, Job(work, "run.sh", "failed"), out, err), node())
            return done[0]

    outcome = asyncio.run(scenario())
    assert (outcome.exit_code, outcome.where["state"]) == (3, "FAILED")
    assert out.text == "start failed\nattempt 1\n" and "bad input" in err.text
    lines = (fake.state / "script").read_text().splitlines()
    assert lines[:5] == ["#!/bin/sh", "#SBATCH --array=0-0", "#SBATCH --job-name=runaway-cluster",
                         "#SBATCH --partition=debug", "#SBATCH --time=1:00:00"]
    assert lines[5] == f"#SBATCH {hostile}"
    assert not lines[6].startswith("#")  # the options end there
    assert not list(tmp_path.rglob("pwned")) and not list(Path.cwd().glob("pwned"))


def test_a_refused_submission_says_why_and_leaves_no_task(fake: FakeSlurm, home: Path,
                                                          tmp_path: Path):
    work = tmp_path / "work"
    script(work, "run.sh", RUN)
    profile = cluster_profile(home, tmp_path)
    (fake.state / "refuse").touch()

    async def scenario() -> None:
        async with Runaway() as session:
            await session.submit(profile, jobs_of(work, tmp_path, ["a", "b"]))

    with pytest.raises(RunawayError) as refused:
        asyncio.run(scenario())
    assert refused.value.code == ExitCode.PROFILE
    assert str(refused.value) == ("sbatch refused the jobs on localhost: sbatch: error: Batch "
                                  "job submission failed: Invalid partition name specified")
    left = [p.name for p in (tmp_path / "host").iterdir() if not p.name.endswith(".tar")]
    assert left == [".lock"], left

