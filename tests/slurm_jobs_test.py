"""jobs run and the agent on Slurm, for real: the single-node cluster of `.ci/services.sh`, the
test user submitting over the loopback sshd. One job array per batch, the end states Slurm
gives, detach and re-attach, requeue, cancel."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import needs_slurm
from tests.conftest import snapshot
from tests.conftest import until as poll_until
from tests.conftest import write_profile
from tests.jobs_test import _commit_run
from tests.slurm_cluster_test import remote

T = TypeVar("T")


@pytest.fixture
def slurm(home: Path, ssh_host: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ssh command line to the cluster's login node (as in slurm_cluster_test); polls of
    at most a second, so that tests see ends quickly."""
    needs_slurm()
    monkeypatch.setenv("RUNAWAY_SLURM_POLL", "1")
    return ["ssh", "-F", str(home / ".ssh" / "config"), ssh_host]


def _profile(home: Path, ssh_host: str, name: str = "cluster", **keys: object) -> str:
    sbatch = {"partition": os.environ.get("EXPEGIT_TEST_SLURM_PARTITION", "debug"),
              "time": 2, **keys.pop("sbatch", {})}  # type: ignore[dict-item]
    write_profile(home / ".config" / "runaway", name, ssh_config=ssh_host,
                  host_directory=f"~/runaway-tests/{uuid.uuid4().hex[:12]}",
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"], sbatch=sbatch, **keys)
    return name


@pytest.fixture
def cluster(slurm: list[str], home: Path, ssh_host: str) -> str:
    return _profile(home, ssh_host, concurrency=2)


# Each check asks the cluster over ssh: a third of a second between two.
until = functools.partial(poll_until, every=0.3)


def listing(campaign: Path) -> list[dict[str, object]]:
    return json.loads(expegit("list", "--format=json", cwd=campaign).stdout)


def events(execution: dict[str, object], kind: str) -> list[dict[str, str]]:
    found = []
    for line in execution["log"]:  # type: ignore[attr-defined]
        words = line.split()
        if words[1] == kind:
            found.append({k: urllib.parse.unquote(v) for k, _, v in
                          (w.partition("=") for w in words[2:] if "=" in w)})
    return found


def words(execution: dict[str, object]) -> str:
    """The parameters as the script's `$*` gives them."""
    return " ".join(str(execution["parameters"]).split())


def submitted(campaign: Path, count: int) -> bool:
    """All `count` executions of the campaign were submitted (one reading of the notes)."""
    found = listing(campaign)
    return len(found) == count and all(events(e, "submitted") for e in found)


def job_of(execution: dict[str, object]) -> str:
    return events(execution, "submitted")[-1]["job"]


def scontrol(slurm: list[str], job: str) -> dict[str, str]:
    line = remote(slurm, f"scontrol show job -o {job}").splitlines()[0]
    return dict(f.split("=", 1) for f in line.split() if "=" in f)


def squeue_state(slurm: list[str], job: str) -> str:
    """The task's state, or its array's when the array ended before it was split."""
    array = job.split("_")[0]
    out = remote(slurm, f"squeue -h -r -t all -j {array} -o '%i %T' 2>/dev/null || true")
    states = dict(line.split() for line in out.splitlines())
    return states.get(job) or states.get(array) or ""


def test_a_batch_is_one_throttled_job_array_with_its_overrides(
        campaign: Path, cluster: str, slurm: list[str], tmp_path: Path) -> None:
    done = expegit("jobs", "run", "--sbatch", "time=3", "--sbatch", "extra=--comment=sweep",
                   cluster, "", "--x ¤1;2;3¤", cwd=campaign)
    assert "3 finished" in done.stderr
    executions = listing(campaign)
    jobs = [job_of(e) for e in executions]
    arrays = {job.split("_")[0] for job in jobs}
    assert len(arrays) == 1, jobs  # one sbatch for the whole batch
    assert sorted(job.split("_")[1] for job in jobs) == ["0", "1", "2"]
    for e in executions:
        [finished] = events(e, "finished")
        assert finished["job"] == job_of(e) and finished["slurm"] == "completed"
        assert finished["exit"] == "0" and finished["host"]
        folder = campaign / str(e["folder"])
        assert (folder / "stdout").read_text() == f"ran with {words(e)}\n"
        assert (folder / "data" / "arguments.txt").read_text().strip() == words(e)
    # The profile's concurrency throttles the array; --sbatch replaced its time limit.
    [array] = arrays
    shown = scontrol(slurm, f"{array}_0")
    assert shown["ArrayTaskThrottle"] == "2"
    assert shown["TimeLimit"] == "00:03:00"
    assert shown["Comment"] == "sweep"
    remote_head = git("rev-parse", "main", cwd=tmp_path / "campaign.git")
    assert remote_head == git("rev-parse", "HEAD", cwd=campaign)


def test_a_failing_run_keeps_its_exit_code_and_slurm_logs(
        campaign: Path, experiment: Path, cluster: str, tmp_path: Path) -> None:
    _commit_run(experiment, tmp_path, 'echo "to stdout $1"\necho "to stderr" >&2\nexit 3\n')
    expegit("update-expe", cwd=campaign)
    done = expegit("jobs", "run", cluster, "", "--x ¤7¤", cwd=campaign, check=False)
    assert done.returncode == 1, done.stderr
    [e] = listing(campaign)
    [finished] = events(e, "failed")
    assert finished["exit"] == "3" and finished["slurm"] == "failed"
    folder = campaign / str(e["folder"])
    assert (folder / "stdout").read_text() == "to stdout --x\n"
    assert (folder / "stderr").read_text() == "to stderr\n"


@pytest.mark.parametrize("option, why", [
    ("time=forever", "key 'time' must be"), ("nodes=2", "unknown key 'nodes'"),
    ("extra=--array=1-3", "extra"), ("partition", "KEY=VALUE")])
def test_a_bad_override_is_refused_before_anything_is_created(
        campaign: Path, cluster: str, option: str, why: str) -> None:
    before = snapshot(campaign)
    done = expegit("jobs", "run", "--sbatch", option, cluster, "", "--x ¤1;2¤", cwd=campaign,
                   check=False)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and why in done.stderr, done.stderr
    assert snapshot(campaign) == before


def test_an_override_needs_an_sbatch_profile(campaign: Path) -> None:
    before = snapshot(campaign)
    done = expegit("jobs", "run", "--sbatch", "time=5", "local", "", cwd=campaign, check=False)
    assert done.returncode != 0 and "has no sbatch: key" in done.stderr
    assert snapshot(campaign) == before


def _sleeping_run(experiment: Path, tmp_path: Path, campaign: Path, seconds: int) -> None:
    _commit_run(experiment, tmp_path, f'sleep {seconds}\nmkdir -p data\necho "done $*" > '
                                      'data/result.txt\necho "slept $*"\n')
    expegit("update-expe", cwd=campaign)


def _submitted_then_agent_stops(campaign: Path, cluster: str, expression: str,
                                count: int) -> None:
    """`jobs run --detach`: the agent submits the batch; then it stops, the jobs go on."""
    expegit("jobs", "run", "--detach", cluster, "", expression, cwd=campaign)
    until(lambda: submitted(campaign, count), "the agent to submit the batch")
    expegit("agent", "stop", cwd=campaign)


def test_detach_stop_the_agent_and_a_new_agent_collects_without_resubmitting(
        campaign: Path, experiment: Path, cluster: str, slurm: list[str],
        tmp_path: Path) -> None:
    _sleeping_run(experiment, tmp_path, campaign, 4)
    _submitted_then_agent_stops(campaign, cluster, "--x ¤1;2;3¤", 3)  # the laptop closes
    jobs = [job_of(e) for e in listing(campaign)]
    assert all(e["state"] in ("queued", "running") for e in listing(campaign))
    until(lambda: all(squeue_state(slurm, job) == "COMPLETED" for job in jobs),
          "the jobs to end on the cluster")
    assert all(e["state"] in ("queued", "running") for e in listing(campaign))
    expegit("agent", "start", cwd=campaign)
    until(lambda: all(e["state"] == "finished" for e in listing(campaign)),
          "the new agent to collect the results")
    for e in listing(campaign):
        assert len(events(e, "submitted")) == 1  # nothing was submitted twice
        assert events(e, "finished")[0]["job"] == job_of(e)
        folder = campaign / str(e["folder"])
        assert (folder / "data" / "result.txt").read_text() == f"done {words(e)}\n"
        assert (folder / "stdout").read_text() == f"slept {words(e)}\n"
    assert len({job.split("_")[0] for job in jobs}) == 1
    expegit("agent", "stop", cwd=campaign)


def test_a_requeued_job_is_followed_to_its_end(
        campaign: Path, experiment: Path, cluster: str, slurm: list[str],
        tmp_path: Path) -> None:
    # The first start waits to be requeued; the second ends at once. The run folder stays
    # between them, as a checkpoint would.
    _commit_run(experiment, tmp_path, 'mkdir -p data\necho "start ${SLURM_RESTART_COUNT:-0}" >> '
                                      'data/starts.txt\n'
                                      'test "${SLURM_RESTART_COUNT:-0}" = 0 && sleep 60\n'
                                      'exit 0\n')
    expegit("update-expe", cwd=campaign)
    running = subprocess.Popen(["git", "expegit", "jobs", "run", cluster, ""], cwd=campaign,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        [e] = until(lambda: [e for e in listing(campaign) if events(e, "running")],
                    "the job to start")
        job = job_of(e)
        remote(slurm, f"scontrol requeue {job}")
        # A requeued job waits for its begin time; bring it forward.
        until(lambda: subprocess.run([*slurm, f"scontrol update jobid={job} StartTime=now"],
                                     capture_output=True).returncode == 0,
              "the requeued job to be pending")
        _, err = running.communicate(timeout=120)
    finally:
        running.kill()
    assert running.returncode == 0, err
    [e] = listing(campaign)
    assert e["state"] == "finished"
    assert [r.get("restarts") for r in events(e, "running")] == ["0", "1"]
    assert len(events(e, "requeued")) == 1 and len(events(e, "submitted")) == 1
    assert events(e, "finished")[0]["slurm"] == "completed"
    starts = (campaign / str(e["folder"]) / "data" / "starts.txt").read_text()
    assert starts == "start 0\nstart 1\n"


def test_ctrl_c_twice_cancels_the_jobs(campaign: Path, experiment: Path, cluster: str,
                                       slurm: list[str], tmp_path: Path) -> None:
    _sleeping_run(experiment, tmp_path, campaign, 60)
    # git-expegit itself: git, killed by the same SIGINT, would hide its exit code.
    running = subprocess.Popen(["git-expegit", "jobs", "run", cluster, "", "--x ¤1;2¤"],
                               cwd=campaign, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        until(lambda: submitted(campaign, 2), "the batch to be submitted")
        jobs = [job_of(e) for e in listing(campaign)]
        os.killpg(running.pid, signal.SIGINT)
        time.sleep(1)  # two presses, a moment apart (0.5 s is the same press)
        os.killpg(running.pid, signal.SIGINT)
        _, err = running.communicate(timeout=90)
    finally:
        running.kill()
    assert running.returncode == 130, err
    for e in listing(campaign):
        [failed] = events(e, "failed")
        assert failed["reason"] == "cancelled" and failed["slurm"] == "cancelled", failed
    assert {squeue_state(slurm, job) for job in jobs} == {"CANCELLED"}


def test_jobs_delete_and_exec_reset_cancel_the_jobs_of_a_stopped_agent(
        campaign: Path, experiment: Path, cluster: str, slurm: list[str],
        tmp_path: Path) -> None:
    _sleeping_run(experiment, tmp_path, campaign, 60)
    _submitted_then_agent_stops(campaign, cluster, "--x ¤1;2¤", 2)
    first, second = listing(campaign)
    done = expegit("jobs", "delete", str(first["id"])[:8], cwd=campaign)
    assert f"cancelled Slurm job {job_of(first)}" in done.stderr
    done = expegit("exec", "reset", str(second["id"])[:8], cwd=campaign)
    assert f"cancelled Slurm job {job_of(second)}" in done.stderr
    until(lambda: {squeue_state(slurm, job_of(e)) for e in (first, second)} == {"CANCELLED"},
          "the jobs to be cancelled")
    [left] = listing(campaign)
    assert left["state"] == "created"
    assert not list((campaign / ".git" / "expegit" / "claims").iterdir())


def test_a_running_agent_cancels_its_job_for_jobs_delete(
        campaign: Path, experiment: Path, cluster: str, slurm: list[str],
        tmp_path: Path) -> None:
    _sleeping_run(experiment, tmp_path, campaign, 60)
    expegit("jobs", "run", "--detach", cluster, "", cwd=campaign)
    [e] = until(lambda: [e for e in listing(campaign) if events(e, "running")],
                "the job to start")
    expegit("jobs", "delete", str(e["id"])[:8], cwd=campaign)
    assert listing(campaign) == []
    until(lambda: squeue_state(slurm, job_of(e)) == "CANCELLED", "the job to be cancelled")
    expegit("agent", "stop", cwd=campaign)


def test_a_time_limit_warns_with_a_signal_then_ends_as_timeout(
        campaign: Path, experiment: Path, slurm: list[str], home: Path, ssh_host: str,
        tmp_path: Path) -> None:
    # Slurm's time limits have a minute's resolution: this one test waits for one.
    profile = _profile(home, ssh_host, "short", sbatch={"time": 1, "signal": "B:USR1@50"})
    _commit_run(experiment, tmp_path, "mkdir -p data\n"
                                      "trap 'echo checkpoint > data/checkpoint.txt' USR1\n"
                                      "while :; do sleep 1; done\n")
    expegit("update-expe", cwd=campaign)
    done = expegit("jobs", "run", profile, "", cwd=campaign, check=False)
    assert done.returncode == 1, done.stderr
    [e] = listing(campaign)
    [failed] = events(e, "failed")
    assert failed["slurm"] == "timeout" and failed["reason"] == "slurm: timeout", failed
    folder = campaign / str(e["folder"])
    assert (folder / "data" / "checkpoint.txt").read_text() == "checkpoint\n"
    assert "DUE TO TIME LIMIT" in (folder / "stderr").read_text()


def test_the_seeds_srun_profile_runs_through_jobs_run_and_the_agent(
        campaign: Path, slurm: list[str], home: Path, ssh_host: str) -> None:
    partition = os.environ.get("EXPEGIT_TEST_SLURM_PARTITION", "debug")
    write_profile(home / ".config" / "runaway", "srun", ssh_config=ssh_host,
                  host_directory=f"~/runaway-tests/{uuid.uuid4().hex[:12]}",
                  execution=[f"srun -p {partition} -t 1 $SCRIPT_NAME $SCRIPT_ARGS"])
    expegit("jobs", "run", "srun", "", "--x ¤1;2¤", cwd=campaign)
    expegit("jobs", "run", "--detach", "srun", "", "--y ¤3¤", cwd=campaign)
    until(lambda: [e["state"] for e in listing(campaign)] == ["finished"] * 3,
          "the agent to run the second batch")
    for e in listing(campaign):
        folder = campaign / str(e["folder"])
        assert (folder / "stdout").read_text() == f"ran with {words(e)}\n"
    expegit("agent", "stop", cwd=campaign)
