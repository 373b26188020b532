"""Attacks on the Slurm support, on the real cluster: runners killed at the worst moments,
hostile values, a cluster that refuses, large arrays. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from git_runaway.remote import poll as remote_poll
from tests.conftest import expegit
from tests.conftest import runaway
from tests.conftest import script
from tests.conftest import ssh_user_home
from tests.conftest import write_profile
from tests.slurm_cluster_test import remote
from tests.slurm_jobs_test import events
from tests.slurm_jobs_test import job_of
from tests.slurm_jobs_test import listing
from tests.slurm_jobs_test import slurm  # noqa: F401 (a fixture)
from tests.slurm_jobs_test import squeue_state
from tests.slurm_jobs_test import until
from tests.slurm_jobs_test import words


def _cluster(home: Path, ssh_host: str, name: str = "cluster", **keys: object) -> Path:
    """A profile `name` for the cluster; its host_directory, seen from here."""
    folder = uuid.uuid4().hex[:12]
    sbatch = {"partition": os.environ.get("EXPEGIT_TEST_SLURM_PARTITION", "debug"), "time": 2,
              **keys.pop("sbatch", {})}  # type: ignore[dict-item]
    write_profile(home / ".config" / "runaway", name, ssh_config=ssh_host,
                  host_directory=f"~/runaway-tests/{folder}",
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"], sbatch=sbatch, **keys)
    return ssh_user_home() / "runaway-tests" / folder


def _claims(campaign: Path) -> list[dict[str, object]]:
    folder = campaign / ".git" / "expegit" / "claims"
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in folder.iterdir() if not p.name.startswith(".")]


def _hold_lock(slurm: list[str], folder: Path) -> subprocess.Popen[str]:  # noqa: F811
    """Hold the host_directory's .lock (as a submission in progress does) until stdin closes."""
    holder = subprocess.Popen([*slurm, f"mkdir -p {folder} && cd {folder} && exec 9>.lock && "
                                       "flock 9 && echo locked && read x"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


def _agent_collects(campaign: Path) -> None:
    expegit("agent", "start", cwd=campaign)
    try:
        done = subprocess.run(["git", "expegit", "jobs", "wait"], cwd=campaign,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    finally:
        expegit("agent", "stop", cwd=campaign)


@pytest.mark.parametrize("left", ["nothing", "unsubmitted"])
def test_a_runner_killed_during_submission_leaves_runs_that_run_once(
        campaign: Path, slurm: list[str], home: Path, ssh_host: str,  # noqa: F811
        left: str) -> None:
    """`jobs run` is SIGKILLed while its submission waits for the host's lock: the claims
    have no job. With `unsubmitted`, the submit program died too after writing its `.slurm`
    files as "- DIGEST" (before sbatch). A new agent runs each execution exactly once."""
    folder = _cluster(home, ssh_host)
    holder = _hold_lock(slurm, folder)
    running = subprocess.Popen(["git-expegit", "jobs", "run", "cluster", "", "--x ¤1;2¤"],
                               cwd=campaign, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        claims = until(lambda: len(_claims(campaign)) == 2 and _claims(campaign),
                       "the runs to be claimed")
    finally:
        running.kill()
        running.wait()
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    assert all(c["job"] is None for c in claims)
    if left == "unsubmitted":
        remote(slurm, "; ".join(f"echo '- {'0' * 64}' >{folder}/{c['run']}.slurm"
                                for c in claims))
    _agent_collects(campaign)
    for e in listing(campaign):
        assert e["state"] == "finished", e
        assert len(events(e, "submitted")) == 1 and len(events(e, "finished")) == 1
        assert (campaign / str(e["folder"]) / "stdout").read_text() == f"ran with {words(e)}\n"
    assert _claims(campaign) == []
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]


def test_a_host_directory_with_a_percent_sign_and_a_space(
        slurm: list[str], home: Path, ssh_host: str, work: Path) -> None:  # noqa: F811
    """Slurm expands `%A`, `%j`... in the whole path of a job's output, the submission
    folder included: a host_directory named so must still hold the job's logs."""
    name = f"{uuid.uuid4().hex[:12]} 50%A%j"
    write_profile(home / ".config" / "runaway", "pct", ssh_config=ssh_host,
                  host_directory=f'"$HOME/runaway-tests/{name}"',
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"],
                  sbatch={"partition": os.environ.get("EXPEGIT_TEST_SLURM_PARTITION", "debug"),
                          "time": 1})
    script(work, "run.sh", 'echo "out $1"\necho "err $1" >&2\nexit 3\n')
    done = runaway("pct", "run.sh", "--", "x", cwd=work)
    assert (done.returncode, done.stdout) == (3, "out x\n"), done.stderr
    assert "err x" in done.stderr
    assert sorted(p.name for p in (ssh_user_home() / "runaway-tests" / name).iterdir()) == [
        ".lock"]


def test_a_poll_costs_the_host_the_same_few_processes_for_300_runs(tmp_path: Path) -> None:
    """One poll serves every run a session watches on a host: it must not start processes
    per run (a `cat` or a `grep` each: 900 processes a second on a login node for 300 runs)."""
    root, bin_folder, calls = tmp_path / "root", tmp_path / "bin", tmp_path / "calls"
    root.mkdir()
    bin_folder.mkdir()
    runs = [str(uuid.uuid4()) for _ in range(300)]
    for index, run in enumerate(runs):
        (root / f"{run}.slurm").write_text(f"77_{index} {'0' * 64}\n")
        if index % 2:
            (root / f"{run}.exit").write_text("0\n")
            (root / f"{run}.where").write_text("node=n1 restarts=0\n")
    for name in ("cat", "grep", "flock", "sort", "tr", "sed", "squeue", "sacct"):
        real = subprocess.run(["sh", "-c", f"command -v {name} || echo /bin/false"],
                              capture_output=True, text=True).stdout.strip()
        body = ("printf '77_%s|COMPLETED|n1\\n' $(seq 0 149)" if name == "squeue"
                else f'exec {real} "$@"')
        script(bin_folder, name, f"echo {name} >>{calls}\n{body}\n")
    env = {**os.environ, "PATH": f"{bin_folder}:{os.environ['PATH']}"}
    done = subprocess.run(["sh"], input=remote_poll("n0nce", str(root), runs), env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    tasks = [line.split("|") for line in done.stdout.splitlines() if line.startswith("task|")]
    assert len(tasks) == 300 and tasks[1] == ["task", runs[1], "77_1", "0", "node=n1 restarts=0"]
    assert tasks[0] == ["task", runs[0], "77_0", "", ""]
    assert done.stdout.count("|COMPLETED|") == 150
    started = calls.read_text().split()
    assert len(started) < 20, sorted(set(started))


def test_a_job_that_starts_and_ends_during_a_poll_is_seen_where_it_ran(tmp_path: Path) -> None:
    """A short job may start and end between the poll's read of the run's files and its
    squeue: squeue then says COMPLETED, and the files read must say where it ran (else its
    start is never heard: no `running` event, no host in the notes)."""
    root, bin_folder = tmp_path / "root", tmp_path / "bin"
    root.mkdir()
    run = str(uuid.uuid4())
    (root / f"{run}.slurm").write_text(f"77_0 {'0' * 64}\n")
    # squeue, as the job runs: it writes where it runs and its exit code, then ends.
    script(bin_folder, "squeue", f"echo 'node=n1 restarts=0' >{root}/{run}.where\n"
                                 f"echo 0 >{root}/{run}.exit\necho '77_0|COMPLETED|n1'\n")
    env = {**os.environ, "PATH": f"{bin_folder}:{os.environ['PATH']}"}
    done = subprocess.run(["sh"], input=remote_poll("n0nce", str(root), [run]), env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"task|{run}|77_0|0|node=n1 restarts=0" in done.stdout.splitlines()
    assert "77_0|COMPLETED|n1" in done.stdout.splitlines()


@pytest.mark.parametrize("extra", ["--comment=x --array=0-3", "--qos=normal\t-o /tmp/x",
                                   "--comment=x  --wait", "--comment=a -Qo/tmp/x"])
def test_an_extra_option_cannot_hide_one_runaway_sets_after_a_space(
        campaign: Path, home: Path, ssh_host: str, work: Path, extra: str) -> None:
    """sbatch reads every option of an `#SBATCH` line, not only its first: a second one of
    those runaway sets (--array: tasks that run no run) is refused like a first one."""
    folder = _cluster(home, ssh_host, sbatch={"extra": [extra]})
    script(work, "run.sh", "echo ran\n")
    done = runaway("cluster", "run.sh", cwd=work)
    assert done.returncode != 0 and "key 'sbatch.extra' has" in done.stderr, done.stderr
    assert not folder.exists()
    _cluster(home, ssh_host)
    done = expegit("jobs", "run", "--sbatch", f"extra={extra}", "cluster", "", cwd=campaign,
                   check=False)
    assert done.returncode != 0 and "key 'extra' has" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert listing(campaign) == []


def test_a_claim_left_without_its_job_learns_it_so_jobs_delete_cancels_it(
        campaign: Path, slurm: list[str], home: Path, ssh_host: str) -> None:  # noqa: F811
    """A runner killed between sbatch's answer and its claims' update leaves claims with no
    job: the next runner follows the runs by their run id, and must write their job into
    the claims (and the notes), or a later `jobs delete` leaves the jobs queued on the
    cluster, running code of executions that no longer exist."""
    _cluster(home, ssh_host)
    running = subprocess.Popen(["git-expegit", "jobs", "run", "--sbatch",
                                "extra=--begin=now+600", "cluster", "", "--x ¤1;2¤"],
                               cwd=campaign, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        claims = until(lambda: len(_claims(campaign)) == 2
                       and all(c["job"] for c in _claims(campaign)) and _claims(campaign),
                       "the batch to be submitted")
    finally:
        running.kill()
        running.wait()
    jobs = sorted(str(c["job"]) for c in claims)
    folder = campaign / ".git" / "expegit" / "claims"
    for c in claims:
        (folder / str(c["execution"])).write_text(json.dumps({**c, "job": None}))
    expegit("agent", "start", cwd=campaign)
    try:
        until(lambda: sorted(str(c["job"]) for c in _claims(campaign)) == jobs,
              "the agent to learn the jobs", timeout=30)
    finally:
        expegit("agent", "stop", cwd=campaign)
    for e in listing(campaign):
        assert [s["job"] for s in events(e, "submitted")] == [job_of(e)]  # once
    done = expegit("jobs", "delete", *(str(e["id"])[:8] for e in listing(campaign)),
                   cwd=campaign)
    assert all(f"cancelled Slurm job {job}" in done.stderr for job in jobs), done.stderr
    until(lambda: {squeue_state(slurm, job) for job in jobs} == {"CANCELLED"},
          "the jobs to be cancelled")


def test_jobs_run_submits_again_a_run_whose_job_is_gone(
        campaign: Path, slurm: list[str], home: Path, ssh_host: str) -> None:  # noqa: F811
    """A run whose job vanished (no `.slurm`, squeue forgot it) goes back to the queue: the
    `jobs run` that watched it submits it again (its --retries), instead of ending with
    it left queued, unreported, and exit 0."""
    folder = _cluster(home, ssh_host)
    running = subprocess.Popen(["git-expegit", "jobs", "run", "--sbatch",
                                "extra=--begin=now+600", "cluster", "", "--x ¤1¤"],
                               cwd=campaign, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        [first] = until(lambda: [c for c in _claims(campaign) if c["job"]], "a submission")
        remote(slurm, f"scancel {first['job']} && rm {folder}/{first['run']}.slurm")
        found = until(lambda: running.poll() is not None or
                      [c for c in _claims(campaign) if c["job"] and c["run"] != first["run"]],
                      "the run to be submitted again")
        assert found is not True, f"jobs run ended: {running.communicate()}"
        [again] = found
        remote(slurm, f"scontrol update jobid={again['job']} StartTime=now")
        _, err = running.communicate(timeout=90)
    finally:
        running.kill()
    assert running.returncode == 0, err
    [e] = listing(campaign)
    assert e["state"] == "finished"
    assert [s["job"] for s in events(e, "submitted")] == [first["job"], again["job"]]
    assert [s["attempt"] for s in events(e, "submitted")] == ["1", "2"]
    assert len(events(e, "lost")) == 1
