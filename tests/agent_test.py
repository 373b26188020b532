"""git expegit agent: one detached process per clone that runs its queue, woken by inotify,
syncing in batches, surviving its own SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from git_expegit import campaign as campaigns
from git_expegit import catalog
from git_expegit import executions
from git_expegit import queue
from git_expegit import record
from git_expegit.agent import control
from git_expegit.record import State
from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import script
from tests.conftest import until

T = TypeVar("T")

RUN = """
# Counts its runs outside the campaign, then takes as long as the file `pause` says.
echo "$*" >> {outside}/runs
sleep "$(cat {outside}/pause 2>/dev/null || echo 0)"
mkdir -p data
echo "$*" > data/out
"""


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@pytest.fixture
def experiment(tmp_path: Path, home: Path, outside: Path) -> Path:
    """An experiment whose run counts its runs in `outside/runs` and sleeps `outside/pause`."""
    work = tmp_path / "expe"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    script(work, "run", RUN.format(outside=outside))
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "counting", cwd=work)
    bare = tmp_path / "expe.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    return bare


@pytest.fixture
def clone(campaign: Path) -> Iterator[Path]:
    """The campaign; an agent a test leaves running is killed at the end."""
    git("config", "expegit.agentIdleSeconds", "600", cwd=campaign)
    yield campaign
    pid = control.running(campaigns.find(campaign))
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


def find(path: Path) -> campaigns.Campaign:
    return campaigns.find(path)


def enqueue(path: Path, count: int, wake: bool = True) -> list[str]:
    """Queue `count` executions on `local`, as jobs run --detach does (without starting the
    agent); without `wake`, the wake file is not touched: only the refs move."""
    found = find(path)
    commit = executions.experiment_commit(found, None)
    strings = [f"--x={i}" for i in range(count)]
    if wake:
        return list(queue.enqueue(found, commit, strings, "local").ids)
    return list(executions.create(found, commit, strings, "local", batch="b", queued=True))


def states(path: Path) -> Counter[str]:
    return Counter(str(e.state) for e in catalog.executions(find(path)))


def all_finished(path: Path, count: int) -> bool:
    return states(path) == Counter({"finished": count})


def start(path: Path) -> int:
    result = expegit("agent", "start", cwd=path)
    pid = control.running(find(path))
    assert pid is not None and f"pid {pid}" in result.stdout
    return pid


def log(path: Path) -> str:
    return (path / ".git" / "expegit" / "agent.log").read_text()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def synced(path: Path, remote: Path) -> bool:
    """The remote has our branch and our notes."""
    ours = git("rev-parse", "HEAD", "refs/notes/expegit", cwd=path)
    theirs = subprocess.run(["git", "rev-parse", "main", "refs/notes/expegit"], cwd=remote,
                            capture_output=True, text=True).stdout
    return ours == theirs


def finished_events(path: Path) -> dict[str, int]:
    return {e.id: sum(1 for ev in record.events(e.log) if ev.kind == "finished")
            for e in catalog.executions(find(path))}


def runs(outside: Path) -> Counter[str]:
    text = (outside / "runs").read_text() if (outside / "runs").exists() else ""
    return Counter(text.splitlines())


# The process ----------------------------------------------------------------------------------

def test_start_status_a_second_start_and_stop(clone: Path) -> None:
    pid = start(clone)
    status = expegit("agent", "status", cwd=clone).stdout
    assert f"running (pid {pid})" in status and "queued   0" in status
    second = expegit("agent", "start", cwd=clone, check=False)
    assert second.returncode == 1
    assert second.stderr == f"expegit: the agent runs already (pid {pid})\n"
    foreground = expegit("agent", "run", cwd=clone, check=False)
    assert foreground.returncode == 1 and f"pid {pid}" in foreground.stderr
    assert control.running(find(clone)) == pid  # the refused ones did not disturb it
    stopped = expegit("agent", "stop", cwd=clone)
    assert stopped.stdout == f"agent stopped (pid {pid})\n"
    assert control.running(find(clone)) is None  # stop returns once it is gone
    assert "not running" in expegit("agent", "status", cwd=clone).stdout
    again = expegit("agent", "stop", cwd=clone, check=False)
    assert (again.returncode, again.stderr) == (1, "expegit: the agent is not running\n")
    assert log(clone).splitlines()[-1].endswith(" stopped")


def test_the_agent_is_detached(clone: Path) -> None:
    pid = start(clone)
    assert os.getsid(pid) == pid  # its own session: no terminal, no Ctrl-C from ours
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/1").endswith("/.git/expegit/agent.log")
    assert Path(f"/proc/{pid}/cwd").resolve() == clone.resolve()


def test_it_exits_after_the_idle_time(clone: Path) -> None:
    git("config", "expegit.agentIdleSeconds", "1", cwd=clone)
    start(clone)
    until(lambda: control.running(find(clone)) is None, "the idle agent to exit", 30)
    assert log(clone).splitlines()[-1].endswith("idle: exiting")


def test_sigterm_while_idle_and_sigkill(clone: Path) -> None:
    pid = start(clone)
    os.kill(pid, signal.SIGTERM)
    until(lambda: control.running(find(clone)) is None, "the agent to stop on SIGTERM", 30)
    assert log(clone).splitlines()[-1].endswith(" stopped")
    pid = start(clone)
    os.kill(pid, signal.SIGKILL)  # leaves its pid in the pid file: the lock says it is gone
    until(lambda: control.running(find(clone)) is None, "the lock of a killed agent", 30)
    assert "not running" in expegit("agent", "status", cwd=clone).stdout
    assert start(clone) != pid


def agent_processes(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            here = (entry / "cwd").resolve() == path.resolve()
        except (OSError, ValueError):
            continue
        if here and command[-3:] == [b"agent", b"run", b""] and (entry / "stat").read_text(
                ).rsplit(")", 1)[1].split()[0] != "Z":
            found.append(int(entry.name))
    return found


def test_ensure_running_returns_at_once_and_starts_one_agent(clone: Path) -> None:
    found = find(clone)
    began = time.monotonic()
    control.ensure_running(found)
    control.ensure_running(found)  # at once: the first is not up yet, both spawn
    assert time.monotonic() - began < 0.5
    pid = until(lambda: control.running(found), "an agent to run")
    until(lambda: agent_processes(clone) == [pid], "one agent and no other", 30)
    control.ensure_running(found)  # it runs: nothing is started
    assert agent_processes(clone) == [pid]


def test_the_hook_environment_does_not_leak_into_the_agent(clone: Path) -> None:
    """A hook runs with GIT_DIR and GIT_INDEX_FILE set; the agent outlives it."""
    os.environ["GIT_INDEX_FILE"] = str(clone / ".git" / "elsewhere")
    try:
        control.ensure_running(find(clone))
    finally:
        del os.environ["GIT_INDEX_FILE"]
    pid = until(lambda: control.running(find(clone)), "an agent to run")
    assert b"GIT_INDEX_FILE=" not in Path(f"/proc/{pid}/environ").read_bytes()


def test_outside_a_campaign(tmp_path: Path) -> None:
    result = expegit("agent", "start", cwd=tmp_path, check=False)
    assert result.returncode == 3 and "not in a campaign" in result.stderr


# Waking ---------------------------------------------------------------------------------------

def test_an_idle_agent_sleeps_then_wakes_on_the_queue(clone: Path, outside: Path) -> None:
    pid = start(clone)
    until(lambda: "started" in log(clone), "the agent's first line")
    before = cpu_seconds(pid)
    deadline = time.monotonic() + 2  # no busy polling: 2 s idle cost next to nothing
    until(lambda: time.monotonic() > deadline, "2 s")
    assert cpu_seconds(pid) - before < 0.5  # a polling loop would burn the 2 s
    enqueue(clone, 3)
    until(lambda: all_finished(clone, 3), "the queued batch to finish")
    assert runs(outside) == Counter({"--x=0": 1, "--x=1": 1, "--x=2": 1})


def test_a_commit_with_a_request_runs_its_batch(clone: Path, outside: Path) -> None:
    """The hook spools the request after the commit moved the refs: the agent wakes on the
    spool too."""
    expegit("hooks", "install", cwd=clone)
    start(clone)
    until(lambda: "started" in log(clone), "the agent's first line")
    git("commit", "-q", "--allow-empty", "-m", "sweep", "--trailer", "Expegit-Sweep: --x=0,1",
        "--trailer", "Expegit-Profile: local", cwd=clone)
    until(lambda: all_finished(clone, 2), "the requested batch to finish")
    assert "request expanded: batch" in log(clone)
    assert runs(outside) == Counter({"--x=0": 1, "--x=1": 1})


def test_it_wakes_on_the_refs(clone: Path) -> None:
    """Executions queued without the wake file (a commit, a fetch): the refs moved."""
    start(clone)
    until(lambda: "started" in log(clone), "the agent's first line")
    enqueue(clone, 2, wake=False)
    until(lambda: all_finished(clone, 2), "the batch to finish")


# Running and syncing --------------------------------------------------------------------------

def test_a_batch_ends_finished_and_synced(clone: Path, tmp_path: Path) -> None:
    ids = enqueue(clone, 5)
    start(clone)
    until(lambda: all_finished(clone, 5), "the batch to finish")
    until(lambda: synced(clone, tmp_path / "campaign.git"), "the remote to have it all")
    fresh = tmp_path / "fresh"
    expegit("clone", str(tmp_path / "campaign.git"), str(fresh), cwd=tmp_path)
    for execution in ids:
        out = fresh / campaigns.folder(campaigns.ExecutionId(execution)) / "data" / "out"
        assert out.read_text().startswith("--x=")
    text = log(clone)
    assert text.count(" finished (exit 0) --x=") == 5 and "synced" in text
    assert git("status", "--porcelain", cwd=clone) == ""


def test_it_waits_for_a_foreground_runner_then_takes_over(clone: Path) -> None:
    found = find(clone)
    with queue.runner_lock(found) as ours:  # as jobs run in the foreground holds it
        assert ours
        enqueue(clone, 2)
        start(clone)
        until(lambda: "waiting for this clone's runner to end" in log(clone), "the agent to wait")
        assert states(clone) == Counter({"queued": 2})
    until(lambda: all_finished(clone, 2), "the agent to take over")


def test_stop_while_it_waits_for_a_foreground_runner(clone: Path) -> None:
    with queue.runner_lock(find(clone)) as ours:
        assert ours
        enqueue(clone, 1)
        start(clone)
        until(lambda: "waiting for this clone's runner to end" in log(clone), "the agent to wait")
        expegit("agent", "stop", cwd=clone)
        assert states(clone) == Counter({"queued": 1})


def test_no_batch_is_left_behind_by_an_agent_leaving(clone: Path) -> None:
    """With no idle time, agents leave as soon as the queue is empty, while batches keep
    coming, each followed by ensure_running (as jobs run --detach does)."""
    git("config", "expegit.agentIdleSeconds", "0", cwd=clone)
    for _ in range(6):
        enqueue(clone, 1)
        control.ensure_running(find(clone))
        until(lambda: states(clone)["queued"] == 0, "the batch to be taken")
    until(lambda: all_finished(clone, 6), "every batch to finish")


def test_offline_it_finishes_here_and_syncs_when_the_remote_is_back(
        clone: Path, tmp_path: Path) -> None:
    git("config", "expegit.agentIdleSeconds", "1", cwd=clone)
    remote = tmp_path / "campaign.git"
    away = tmp_path / "away.git"
    remote.rename(away)
    enqueue(clone, 3)
    pid = start(clone)
    until(lambda: all_finished(clone, 3), "the batch to finish offline")
    until(lambda: "sync failed, results kept here" in log(clone), "a failed sync")
    ended = time.monotonic()
    until(lambda: time.monotonic() > ended + 2, "twice the idle time")
    assert control.running(find(clone)) == pid  # it does not leave with results to push
    away.rename(remote)
    until(lambda: synced(clone, remote), "the sync once the remote is back", 60)
    until(lambda: "remote reachable again" in log(clone), "the agent to say so")
    until(lambda: control.running(find(clone)) is None, "the idle exit after the sync", 30)


def test_stop_lets_the_running_runs_end(clone: Path, outside: Path) -> None:
    (outside / "pause").write_text("2\n")
    enqueue(clone, 4)
    start(clone)
    until(lambda: states(clone)["running"] >= 1, "a run to start")
    began = time.monotonic()
    expegit("agent", "stop", cwd=clone)
    assert time.monotonic() - began < 20  # far less than the grace period
    count = states(clone)
    assert count["running"] == 0 and count["finished"] >= 1 and count["failed"] == 0
    assert count["queued"] >= 1  # never started: stays queued for the next agent
    start(clone)
    until(lambda: all_finished(clone, 4), "the next agent to run the rest")
    assert set(runs(outside).values()) == {1}


def test_a_second_sigterm_cancels_the_running_runs(clone: Path, outside: Path) -> None:
    (outside / "pause").write_text("120\n")
    enqueue(clone, 1)
    pid = start(clone)
    until(lambda: states(clone)["running"] == 1, "the run to start")
    os.kill(pid, signal.SIGTERM)
    until(lambda: "stopping: no new run starts" in log(clone), "the first signal's effect")
    os.kill(pid, signal.SIGTERM)
    until(lambda: control.running(find(clone)) is None, "the agent to stop", 60)
    [execution] = catalog.executions(find(clone))
    assert execution.state == State.FAILED and execution.field("reason") == "cancelled"


# Crash recovery -------------------------------------------------------------------------------

def test_sigkill_in_the_middle_of_a_batch(clone: Path, outside: Path, tmp_path: Path) -> None:
    (outside / "pause").write_text("2\n")
    ids = enqueue(clone, 6)
    pid = start(clone)
    until(lambda: states(clone)["finished"] >= 1 and states(clone)["running"] >= 1,
          "some finished, some running")
    os.kill(pid, signal.SIGKILL)
    until(lambda: control.running(find(clone)) is None, "the killed agent's lock")
    done_before = {e.parameters for e in catalog.executions(find(clone))
                   if e.state == State.FINISHED}
    start(clone)
    until(lambda: all_finished(clone, 6), "the batch to finish after the restart")
    assert finished_events(clone) == dict.fromkeys(ids, 1)  # each finished exactly once
    counted = runs(outside)
    assert all(counted[p] == 1 for p in done_before)  # nothing finished ran again
    assert set(counted) == {f"--x={i}" for i in range(6)}
    until(lambda: synced(clone, tmp_path / "campaign.git"), "the sync after recovery")


def test_without_a_remote_results_stay_here(clone: Path) -> None:
    git("remote", "remove", "origin", cwd=clone)
    enqueue(clone, 1)
    start(clone)
    until(lambda: all_finished(clone, 1), "the run to finish")
    until(lambda: "no remote origin" in log(clone), "the agent to say it")


def test_the_log_is_kept_short(clone: Path) -> None:
    path = find(clone).state_dir / "agent.log"
    path.write_bytes(b"old line\n" * (control.LOG_LIMIT // 9 + 1))
    start(clone)
    assert (path.parent / "agent.log.1").stat().st_size > control.LOG_LIMIT
    until(lambda: "started" in log(clone), "the new log")
    assert "old line" not in log(clone)


# Other writers ------------------------------------------------------------------------------

def test_an_execution_queued_in_another_clone_is_never_run_here(
        clone: Path, tmp_path: Path, outside: Path) -> None:
    other = tmp_path / "other"
    expegit("clone", str(tmp_path / "campaign.git"), str(other), cwd=tmp_path)
    start(other)
    until(lambda: "started" in log(other), "the other agent's first line")
    ids = enqueue(clone, 2)  # queued for `clone`, whose agent does not run yet
    expegit("sync", cwd=clone)
    expegit("sync", cwd=other)  # the refs move there: its agent wakes and looks
    assert states(other) == Counter({"queued": 2})
    status = expegit("agent", "status", cwd=other).stdout
    assert "queued   0" in status  # none of them is its own
    start(clone)
    until(lambda: all_finished(clone, 2), "the owner's agent to run them")
    expegit("agent", "stop", cwd=other)  # it syncs, then leaves
    assert " running (" not in log(other)
    assert sorted(runs(outside)) == ["--x=0", "--x=1"] and len(ids) == 2


def test_user_commits_during_a_batch(clone: Path, outside: Path) -> None:
    """The user commits in a loop while the agent finishes runs on the same branch: every
    commit of both lands, nothing is lost or corrupted (a user's commit that races the
    agent's may fail, as with any two git writers, and is retried)."""
    (outside / "pause").write_text("0.3\n")
    enqueue(clone, 8)
    start(clone)
    made, last = 0, False
    deadline = time.monotonic() + 120
    while not (last and made >= 10 and all_finished(clone, 8)):
        assert time.monotonic() < deadline, f"{made} commits, {states(clone)}: {log(clone)}"
        (clone / "notes.txt").write_text(f"{made}\n")
        subprocess.run(["git", "add", "notes.txt"], cwd=clone, capture_output=True)
        subprocess.run(["git", "commit", "-q", "-m", f"user {made}"], cwd=clone,
                       capture_output=True)
        # A commit that raced the agent's may fail (index.lock taken): retried. Whether it
        # was made, the log tells (git commit once said it failed after making it).
        last = f"user {made}" in git("log", "-20", "--format=%s", cwd=clone).splitlines()
        made += last
    subjects = git("log", "--format=%s", cwd=clone).splitlines()
    assert {f"user {i}" for i in range(made)} <= set(subjects)
    assert sum(1 for s in subjects if s.startswith("Finish execution")) == 8
    git("fsck", "--no-progress", cwd=clone)
    assert git("status", "--porcelain", cwd=clone) == ""
    assert (clone / "notes.txt").read_text() == f"{made - 1}\n"
