"""The single-node Slurm cluster that `.ci/services.sh` starts: the test user submits over ssh.

Groundwork for the Slurm support: checks, on the real cluster, the behaviour that support relies
on (no accounting, so `scontrol show job` reports the end state and the exit code).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import needs_slurm

END_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
              "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture
def slurm(home: Path, ssh_host: str) -> list[str]:
    """The ssh command line that runs a command as the test user on the cluster's login node."""
    needs_slurm()
    # ssh reads the config of the passwd home, not $HOME: name the test's copy.
    return ["ssh", "-F", str(home / ".ssh" / "config"), ssh_host]


def remote(slurm: list[str], command: str) -> str:
    done = subprocess.run([*slurm, command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done.stdout


def submit(slurm: list[str], options: str) -> str:
    partition = os.environ.get("EXPEGIT_TEST_SLURM_PARTITION", "debug")
    out = remote(slurm, f"sbatch --parsable -p {partition} -t 1 -o /dev/null {options}")
    return out.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"


def jobs(slurm: list[str], job_id: str) -> list[dict[str, str]]:
    """`scontrol show job -o`: one record per job, or per task of an array once it is split."""
    records = []
    for line in remote(slurm, f"scontrol show job -o {job_id}").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        records.append(fields)
    return records


def wait_ended(slurm: list[str], job_id: str, count: int) -> list[dict[str, str]]:
    """Poll until `count` records of the job have an end state (a trivial job takes 2-3 s)."""
    deadline = time.monotonic() + 60
    while True:
        records = jobs(slurm, job_id)
        if len(records) == count and all(r["JobState"] in END_STATES for r in records):
            return records
        assert time.monotonic() < deadline, f"job {job_id} not ended after 60 s: {records}"
        time.sleep(0.3)


def test_exit_code_and_throttled_array_over_ssh(slurm: list[str]) -> None:
    failing = submit(slurm, "--wrap 'exit 3'")
    array = submit(slurm, "--array=0-2%2 --wrap 'echo task $SLURM_ARRAY_TASK_ID'")
    assert failing.isdigit() and array.isdigit()
    # Both are known to squeue, or have already ended.
    queued = remote(slurm, f"squeue -h -o '%i %T' -j {failing},{array}")
    assert all(line.split()[0].startswith((failing, array)) for line in queued.splitlines())

    [failed] = wait_ended(slurm, failing, 1)
    assert failed["JobState"] == "FAILED"
    assert failed["ExitCode"] == "3:0"
    assert failed["UserId"].startswith("expegit-test(")

    tasks = wait_ended(slurm, array, 3)
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1", "2"]
    assert {t["ArrayJobId"] for t in tasks} == {array}
    assert all(t["JobState"] == "COMPLETED" and t["ExitCode"] == "0:0" for t in tasks)
    assert all(t.get("ArrayTaskThrottle") == "2" for t in tasks), tasks
    assert remote(slurm, f"squeue -h -j {failing},{array}").strip() == ""
