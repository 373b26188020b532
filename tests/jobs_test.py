"""jobs run end to end on real parts: the built-in `local` profile and the loopback sshd, real
git, git-lfs and bare remotes; Ctrl-C and SIGKILL in the middle of a batch."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Target
from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import snapshot
from tests.conftest import until
from tests.conftest import write_profile

SEED = " --param¤first;second¤--flag;"


def _listing(campaign: Path) -> list[dict[str, object]]:
    return json.loads(expegit("list", "--format=json", cwd=campaign).stdout)


def _events(execution: dict[str, object], kind: str) -> list[str]:
    return [line for line in execution["log"] if line.split()[1] == kind]  # type: ignore[union-attr]


def _commit_run(experiment: Path, tmp_path: Path, body: str) -> None:
    """Replace the experiment's run script, push it, and pin it in the campaign."""
    work = tmp_path / "expe-work"
    if not work.exists():
        git("clone", "-q", str(experiment), str(work), cwd=tmp_path)
    (work / "run").write_text("#!/bin/sh\n" + body)
    (work / "run").chmod(0o755)
    git("commit", "-qam", "new run", cwd=work)
    git("push", "-q", "origin", "HEAD", cwd=work)


def _pin(campaign: Path) -> None:
    expegit("update-expe", cwd=campaign)


def test_the_seed_example_runs_finishes_and_pushes(campaign: Path, target: Target,
                                                   tmp_path: Path) -> None:
    done = expegit("jobs", "run", target.profile, "", SEED, cwd=campaign)
    executions = _listing(campaign)
    assert [e["parameters"] for e in executions] == [
        "--param first --flag", "--param first", "--param second --flag", "--param second"]
    for e in executions:
        assert e["state"] == "finished" and e["exit_code"] == "0"
        assert len(_events(e, "finished")) == 1
        [running] = _events(e, "running")
        assert "argv=" in running and "node=" in running and "cpus=" in running
        folder = campaign / str(e["folder"])
        assert (folder / "data" / "arguments.txt").read_text().strip() == e["parameters"]
        assert (folder / "stdout").read_text() == f"ran with {e['parameters']}\n"
        assert not (folder / "run").exists()  # the code is never placed in the folder
    # One batch, named; the LFS result is a pointer in git; everything is pushed.
    assert len({e["log"][0].split("batch=")[1].split()[0] for e in executions}) == 1
    lfs = git("show", f"HEAD:{executions[0]['folder']}/data/lfs/weights.bin", cwd=campaign)
    assert lfs.startswith("version https://git-lfs")
    assert git("status", "--porcelain", "--untracked-files=all", cwd=campaign) == ""
    remote = tmp_path / "campaign.git"
    assert git("rev-parse", "main", cwd=remote) == git("rev-parse", "HEAD", cwd=campaign)
    assert git("rev-parse", "refs/notes/expegit", cwd=remote) == git(
        "rev-parse", "refs/notes/expegit", cwd=campaign)
    # Without a terminal: one plain line per state change.
    lines = done.stderr.splitlines()
    assert sum(" running " in line for line in lines) == 4
    assert sum(" finished " in line for line in lines) == 4
    assert "\x1b[" not in done.stderr


def test_failures_give_exit_1_and_are_named_with_their_logs(
        campaign: Path, experiment: Path, tmp_path: Path) -> None:
    _commit_run(experiment, tmp_path, 'echo "out $1"; echo "err $1" >&2\n'
                                      'test "$1" = bad && exit 3; exit 0\n')
    _pin(campaign)
    done = expegit("jobs", "run", "local", "", "good;bad;good2", cwd=campaign, check=False)
    assert done.returncode == 1, done.stderr
    [bad] = [e for e in _listing(campaign) if e["parameters"] == "bad"]
    assert bad["state"] == "failed" and bad["exit_code"] == "3"
    assert re.search(rf"{str(bad['id'])[:8]}  exit 3  logs in .*{bad['folder']}", done.stderr)
    assert (campaign / str(bad["folder"]) / "stderr").read_text() == "err bad\n"
    assert git("show", f"HEAD:{bad['folder']}/stdout", cwd=campaign) == "out bad\n"
    assert sorted(e["state"] for e in _listing(campaign)) == ["failed", "finished", "finished"]


def test_new_only_grows_a_sweep_without_running_the_done_again(campaign: Path) -> None:
    expegit("jobs", "run", "local", "", "--seed=range(2)", cwd=campaign)
    done = expegit("jobs", "run", "--new-only", "local", "", "--seed=range(4)", cwd=campaign)
    assert "skipped 2 execution(s) that already finished" in done.stderr
    assert sorted(str(e["parameters"]) for e in _listing(campaign)) == [
        f"--seed={i}" for i in range(4)]
    again = expegit("jobs", "run", "--new-only", "local", "", "--seed=range(4)", cwd=campaign)
    assert "0 execution(s)" in again.stderr and len(_listing(campaign)) == 4


def test_a_profile_timeout_stops_the_run_and_says_so(
        campaign: Path, experiment: Path, tmp_path: Path, home: Path) -> None:
    _commit_run(experiment, tmp_path, "mkdir -p data; echo partial > data/p; sleep 60\n")
    _pin(campaign)
    write_profile(home / ".config" / "runaway", "short", host_directory="~/.cache/short",
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"], timeout="1s")
    start = time.monotonic()
    done = expegit("jobs", "run", "short", cwd=campaign, check=False)
    assert done.returncode == 1 and time.monotonic() - start < 30
    [e] = _listing(campaign)
    assert e["state"] == "failed"
    assert "reason=timeout%20after%201%20s" in _events(e, "failed")[0]
    assert git("show", f"HEAD:{e['folder']}/data/p", cwd=campaign) == "partial\n"


@pytest.mark.parametrize("args", [
    ["jobs", "run", "nosuchprofile", "", "a;b"],
    ["jobs", "run", "local", "", "--x¤a;b¤--y=1,2"],  # two grammars mixed
    ["jobs", "run", "local", "0123456789abcdef", "a;b"],
    ["jobs", "run", "--name", "bad name", "local", "", "a"],
])
def test_bad_input_creates_nothing(campaign: Path, args: list[str]) -> None:
    before = snapshot(campaign)
    done = expegit(*args, cwd=campaign, check=False)
    assert done.returncode == 4, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert snapshot(campaign) == before


def test_a_commit_without_a_run_handle_creates_nothing(
        campaign: Path, experiment: Path, tmp_path: Path) -> None:
    work = tmp_path / "expe-work"
    git("clone", "-q", str(experiment), str(work), cwd=tmp_path)
    git("rm", "-q", "run", cwd=work)
    git("commit", "-qm", "no run", cwd=work)
    git("push", "-q", "origin", "HEAD", cwd=work)
    _pin(campaign)
    before = snapshot(campaign)
    done = expegit("jobs", "run", "local", cwd=campaign, check=False)
    assert done.returncode == 4 and "no executable run handle" in done.stderr
    assert snapshot(campaign) == before


def _slow_batch(campaign: Path, experiment: Path, tmp_path: Path, seconds: float
                ) -> tuple[Path, subprocess.Popen[str]]:
    """A batch of 4 runs, 1 at a time, each sleeping; every run appends to a count file."""
    counts = tmp_path / "counts"
    counts.mkdir()
    _commit_run(experiment, tmp_path, f'echo x >> {counts}/"$1"; sleep {seconds}\n'
                                      'mkdir -p data; echo "$1" > data/done\n')
    _pin(campaign)
    # git-expegit itself: git, killed by the same SIGINT, would hide its exit code.
    process = subprocess.Popen(["git-expegit", "jobs", "run", "-w", "1", "local", "",
                                "a;b;c;d"], cwd=campaign, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    until(lambda: (counts / "a").exists(), "run a to start", 60)
    return counts, process


def test_ctrl_c_lets_the_running_run_end_and_keeps_the_rest_queued(
        campaign: Path, experiment: Path, tmp_path: Path) -> None:
    counts, process = _slow_batch(campaign, experiment, tmp_path, 2)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    states = Counter(str(e["state"]) for e in _listing(campaign))
    assert states == {"finished": 1, "queued": 3}, err
    assert sorted(p.name for p in counts.iterdir()) == ["a"]
    assert "3 execution(s) left queued" in err
    assert git("status", "--porcelain", "--untracked-files=all", cwd=campaign) == ""


def test_ctrl_c_twice_stops_the_running_run_and_records_it(
        campaign: Path, experiment: Path, tmp_path: Path) -> None:
    _, process = _slow_batch(campaign, experiment, tmp_path, 60)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    executions = _listing(campaign)
    assert Counter(str(e["state"]) for e in executions) == {"failed": 1, "queued": 3}
    [stopped] = [e for e in executions if e["state"] == "failed"]
    assert "reason=cancelled" in _events(stopped, "failed")[0]


RESUME = """
import asyncio, sys
from pathlib import Path
from git_expegit import campaign, queue, runner
c = campaign.find(Path.cwd())
with queue.runner_lock(c, wait=True):
    s = asyncio.run(runner.Runner(c).run(lambda: queue.mine(c)))
print(len(s.finished), len(s.failed))
"""


def test_after_sigkill_a_new_runner_collects_what_ended_and_reruns_what_was_lost(
        campaign: Path, experiment: Path, tmp_path: Path) -> None:
    counts, process = _slow_batch(campaign, experiment, tmp_path, 1.5)
    until(lambda: (counts / "b").exists(), "run b to start", 60)  # a finished; b runs
    os.killpg(process.pid, signal.SIGSTOP)  # b ends on its host while no one listens
    time.sleep(2.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = subprocess.run([sys.executable, "-c", RESUME], cwd=campaign, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    executions = _listing(campaign)
    assert all(e["state"] == "finished" for e in executions), executions
    for e in executions:
        assert len(_events(e, "finished")) == 1
        assert (campaign / str(e["folder"]) / "data" / "done").read_text().strip() == \
            e["parameters"]
    # a and b ran once each: b was collected, not run again.
    assert {p.name: len(p.read_text().split()) for p in counts.iterdir()} == {
        "a": 1, "b": 1, "c": 1, "d": 1}
    [b] = [e for e in executions if e["parameters"] == "b"]
    assert "collected=1" in _events(b, "finished")[0]
    assert git("status", "--porcelain", "--untracked-files=all", cwd=campaign) == ""


def test_a_run_without_parameters_keeps_its_profile(campaign: Path) -> None:
    """An empty Expegit-Parameters trailer must not swallow the Expegit-Profile after it."""
    expegit("jobs", "run", "local", cwd=campaign)
    [e] = _listing(campaign)
    assert (e["state"], e["profile"], e["parameters"]) == ("finished", "local", "")


def test_a_profiles_record_commands_are_kept_with_the_results(campaign: Path,
                                                              home: Path) -> None:
    write_profile(home / ".config" / "runaway", "described", host_directory="~/.cache/d",
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"],
                  record=["echo versions $((40 + 2))", "false"])
    expegit("jobs", "run", "described", "", "--a=1", cwd=campaign)
    [e] = _listing(campaign)
    assert e["state"] == "finished"  # a failing record command does not fail the run
    text = git("show", f"HEAD:{e['folder']}/environment.txt", cwd=campaign)
    assert text == "$ echo versions $((40 + 2))\nversions 42\n$ false\n"


def test_an_unreachable_remote_leaves_the_results_committed_here(
        campaign: Path, tmp_path: Path) -> None:
    os.rename(tmp_path / "campaign.git", tmp_path / "moved.git")
    done = expegit("jobs", "run", "local", "", "a;b", cwd=campaign)
    assert "not synced" in done.stderr and "git expegit sync" in done.stderr
    assert [e["state"] for e in _listing(campaign)] == ["finished", "finished"]
    os.rename(tmp_path / "moved.git", tmp_path / "campaign.git")
    expegit("sync", cwd=campaign)
    assert git("rev-parse", "main", cwd=tmp_path / "campaign.git") == git(
        "rev-parse", "HEAD", cwd=campaign)


def test_reschedule_queues_failed_ones_again_as_a_new_attempt(
        campaign: Path, experiment: Path, tmp_path: Path) -> None:
    flag = tmp_path / "pass"
    _commit_run(experiment, tmp_path, f'test -e {flag} || exit 5; mkdir -p data; '
                                      'echo ok > data/r\n')
    _pin(campaign)
    assert expegit("jobs", "run", "local", "", "x;y", cwd=campaign, check=False).returncode == 1
    first = _listing(campaign)
    assert [e["state"] for e in first] == ["failed", "failed"]
    flag.touch()
    expegit("jobs", "reschedule", "--failed", cwd=campaign)
    assert [e["state"] for e in _listing(campaign)] == ["queued", "queued"]
    done = subprocess.run([sys.executable, "-c", RESUME], cwd=campaign, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == ["2", "0"], done.stderr
    for e in _listing(campaign):
        assert e["state"] == "finished"
        assert [line.split("attempt=")[1].split()[0] for line in _events(e, "running")] == [
            "1", "2"]
        # The first attempt's logs stay in the history.
        assert git("log", "--format=%s", "--", f"{e['folder']}/stderr", cwd=campaign)


def test_delete_removes_queued_executions(campaign: Path) -> None:
    done = expegit("jobs", "run", "--detach", "local", "", "a;b", cwd=campaign,
                   env={**os.environ, "EXPEGIT_AGENT": "off"})
    ids = [str(e["id"]) for e in _listing(campaign)]
    assert [e["state"] for e in _listing(campaign)] == ["queued", "queued"], done.stderr
    expegit("jobs", "delete", ids[0][:8], cwd=campaign)
    assert [e["id"] for e in _listing(campaign)] == [ids[1]]


def test_user_commits_during_a_batch_all_land_and_nothing_is_corrupted(
        campaign: Path, experiment: Path, tmp_path: Path) -> None:
    _commit_run(experiment, tmp_path, "sleep 0.2; mkdir -p data; echo \"$1\" > data/r\n")
    _pin(campaign)
    process = subprocess.Popen(["git-expegit", "jobs", "run", "-w", "4", "local", "",
                                "--i=range(24)"], cwd=campaign, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    made, refused = [], 0
    while process.poll() is None or len(made) < 5:
        message = f"user note {len(made)}"
        (campaign / "notes.txt").write_text(message + "\n")
        add = subprocess.run(["git", "add", "notes.txt"], cwd=campaign, capture_output=True)
        commit = subprocess.run(["git", "commit", "-qm", message], cwd=campaign,
                                capture_output=True, text=True)
        if add.returncode == 0 and commit.returncode == 0:
            made.append(message)
        else:  # another git writer held the index: retry, as with any two writers
            assert "index.lock" in commit.stderr + add.stderr.decode(), commit.stderr
            refused += 1
        time.sleep(0.05)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    subjects = git("log", "--format=%s", cwd=campaign).splitlines()
    assert all(message in subjects for message in made)
    assert Counter(e["state"] for e in _listing(campaign)) == {"finished": 24}
    assert git("status", "--porcelain", "--untracked-files=all", cwd=campaign) == ""
    git("fsck", "--strict", "--no-progress", cwd=campaign)


def test_more_workers_than_sshd_sessions_all_run_at_once(
        campaign: Path, experiment: Path, tmp_path: Path, ssh_host: str, home: Path) -> None:
    """-w 14 means 14 at once over ssh, end to end. (sshd's default of 10 sessions per
    connection is tested against an sshd of its own in ssh_pool_test.)"""
    # Where the host's user (another account) can write: pytest's folders are private.
    starts = Path(tempfile.mkdtemp(prefix="expegit-starts-", dir="/tmp"))
    starts.chmod(0o777)
    _commit_run(experiment, tmp_path, f"touch {starts}/$1; n=0\n"
                f"while [ $(ls {starts} | wc -l) -lt 14 ] && [ $n -lt 100 ]; do sleep 0.1; "
                "n=$((n+1)); done\nmkdir -p data; ls " f"{starts} | wc -l > data/seen\n")
    _pin(campaign)
    write_profile(home / ".config" / "runaway", "wide", ssh_config=ssh_host,
                  host_directory=f"~/runaway-tests/{tmp_path.name}",
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"])
    expegit("jobs", "run", "-w", "14", "wide", "", "--i=range(14)", cwd=campaign)
    seen = [int(git("show", f"HEAD:{e['folder']}/data/seen", cwd=campaign))
            for e in _listing(campaign)]
    shutil.rmtree(starts)
    assert seen == [14] * 14  # each saw all 14 started while it ran


def test_a_runner_killed_before_committing_a_fetched_run_does_not_run_it_again(
        campaign: Path, experiment: Path, tmp_path: Path) -> None:
    counts = tmp_path / "counts"
    counts.mkdir()
    go = tmp_path / "go"
    _commit_run(experiment, tmp_path, f'echo x >> {counts}/"$1"; mkdir -p data; '
                                      f'echo "$1" > data/done; until [ -e {go} ]; do '
                                      'sleep 0.05; done\n')
    _pin(campaign)
    process = subprocess.Popen(["git-expegit", "jobs", "run", "local", "", "a"], cwd=campaign,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    until(lambda: (counts / "a").exists(), "run a to start", 60)
    # The campaign's lock held: the run ends, its results come back, and its end waits.
    lock = campaign / ".git" / "expegit" / "lock"
    holder = subprocess.Popen(["flock", str(lock), "sleep", "60"], start_new_session=True)
    until(lambda: subprocess.run(["flock", "-n", str(lock), "true"]).returncode != 0,
          "the runner to hold its lock", 60)
    go.touch()
    claims = campaign / ".git" / "expegit" / "claims"
    until(lambda: any("exit_code\": 0" in p.read_text() for p in claims.iterdir()),
          "a claim with its end", 60)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    os.killpg(holder.pid, signal.SIGKILL)  # sleep too: it holds the lock's descriptor
    holder.wait()
    done = subprocess.run([sys.executable, "-c", RESUME], cwd=campaign, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == ["1", "0"], done.stderr
    [e] = _listing(campaign)
    assert e["state"] == "finished" and len(_events(e, "finished")) == 1
    assert (counts / "a").read_text() == "x\n"  # ran once
    assert git("show", f"HEAD:{e['folder']}/data/done", cwd=campaign) == "a\n"
    assert not list(claims.iterdir())


def test_a_batch_name_in_use_is_refused(campaign: Path) -> None:
    expegit("jobs", "run", "--name", "first", "local", cwd=campaign)
    before = snapshot(campaign)
    done = expegit("jobs", "run", "--name", "first", "local", cwd=campaign, check=False)
    assert done.returncode == 4 and "named 'first' already" in done.stderr
    assert snapshot(campaign) == before


def test_runs_start_in_expansion_order(campaign: Path, experiment: Path,
                                       tmp_path: Path) -> None:
    """The original popped a LIFO queue; runs start here in the order of the expression."""
    order = tmp_path / "order"
    _commit_run(experiment, tmp_path, f'echo "$1" >> {order}\n')
    _pin(campaign)
    expegit("jobs", "run", "-w", "1", "local", "", "--s=range(6)", cwd=campaign)
    assert order.read_text().split() == [f"--s={i}" for i in range(6)]


def test_a_collected_run_keeps_its_logs_from_a_file_named_stdout(
        campaign: Path, experiment: Path, tmp_path: Path) -> None:
    """A run collected after its runner died goes by the code's .fetchignore too: a file
    the script names `stdout` does not replace its logs."""
    started = tmp_path / "started"
    _commit_run(experiment, tmp_path, f"touch {started}; echo fake > stdout; sleep 1\n")
    _pin(campaign)
    process = subprocess.Popen(["git-expegit", "jobs", "run", "local", "", "a"], cwd=campaign,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    until(started.exists, "the run to start", 60)
    os.killpg(process.pid, signal.SIGSTOP)  # the script ends while no one listens
    time.sleep(2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = subprocess.run([sys.executable, "-c", RESUME], cwd=campaign, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == ["1", "0"], done.stderr
    [e] = _listing(campaign)
    assert "collected=1" in _events(e, "finished")[0]
    assert "fake" not in git("show", f"HEAD:{e['folder']}/stdout", cwd=campaign)
