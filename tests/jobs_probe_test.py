"""Attacks on jobs run, the runner and the queue: SIGKILL at awkward moments, hostile
requests and parameters."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import expegit
from tests.conftest import git

# A publish killed inside `git update-ref`, as a SIGKILL of jobs run's process group does:
# git held the refs' .lock files (and had moved `moved` of them) when it died.
KILLED_IN_UPDATE_REF = """
import os, signal, sys
from pathlib import Path
from git_expegit import campaign, executions, git
moved = int(sys.argv[1])
real = git.update_refs
def dies(cwd, moves, message):
    refs = sorted(moves)
    for ref in refs[moved:]:
        (Path(cwd) / ".git" / ref).parent.mkdir(parents=True, exist_ok=True)
        (Path(cwd) / ".git" / (ref + ".lock")).touch()
    real(cwd, {ref: moves[ref] for ref in refs[:moved]}, message)
    os.kill(os.getpid(), signal.SIGKILL)
git.update_refs = dies
c = campaign.find(Path.cwd())
executions.create(c, executions.experiment_commit(c, None), ["--a=1"], "local", queued=True)
"""


def _listing(campaign: Path) -> list[dict[str, object]]:
    return json.loads(expegit("list", "--format=json", cwd=campaign).stdout)


@pytest.mark.parametrize("moved", [0, 1])
def test_a_publish_killed_inside_update_ref_leaves_no_lock_that_blocks_the_next(
        campaign: Path, moved: int) -> None:
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_UPDATE_REF, str(moved)],
                            cwd=campaign, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert list((campaign / ".git" / "refs").rglob("*.lock"))
    start = time.monotonic()
    done = expegit("jobs", "run", "local", "", "--b=2", cwd=campaign, check=False)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 20
    assert not list((campaign / ".git" / "refs").rglob("*.lock"))
    assert git("status", "--porcelain", "--untracked-files=all", cwd=campaign) == ""
    git("fsck", "--strict", "--no-progress", cwd=campaign)


def test_a_script_that_writes_files_named_stdout_and_stderr_keeps_its_real_logs(
        campaign: Path, experiment: Path, tmp_path: Path) -> None:
    from tests.jobs_test import _commit_run
    from tests.jobs_test import _pin

    _commit_run(experiment, tmp_path, "echo real-out; echo real-err >&2\n"
                                      "echo fake > stdout; echo fake > stderr\n")
    _pin(campaign)
    expegit("jobs", "run", "local", "", "a", cwd=campaign)
    [e] = _listing(campaign)
    assert e["state"] == "finished"
    assert git("show", f"HEAD:{e['folder']}/stdout", cwd=campaign) == "real-out\n"
    assert git("show", f"HEAD:{e['folder']}/stderr", cwd=campaign) == "real-err\n"
    assert git("status", "--porcelain", "--untracked-files=all", cwd=campaign) == ""


def test_a_request_whose_parameters_cannot_be_split_creates_nothing(
        campaign: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As jobs run and exec new --sweep refuse it: dropped and logged, not executions that
    can only fail."""
    from git_expegit import campaign as campaigns
    from git_expegit import requests

    monkeypatch.setenv("EXPEGIT_AGENT", "off")
    expegit("hooks", "install", cwd=campaign)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "q", "--trailer",
                    'Expegit-Sweep: --x="a;b', "--trailer", "Expegit-Profile: local"],
                   cwd=campaign, check=True, capture_output=True)
    assert requests.expand_pending(campaigns.find(campaign)) == []
    assert _listing(campaign) == []
    log = (campaign / ".git" / "expegit" / "hook.log").read_text()
    assert "cannot be split" in log.splitlines()[-1] and "dropped" in log.splitlines()[-1]
