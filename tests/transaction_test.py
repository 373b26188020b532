"""The write path under fire: killed at many moments, a full disk, a lock left behind.

Whatever moment a writer dies, either the index matches the branch, or `.git/index.lock`
keeps plain git from committing the half state; and the next expegit command sees the
change whole or not at all.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import snapshot

SWEEP = 1500


def _count(campaign: Path) -> int:
    return len(expegit("list", "--format=json", cwd=campaign).stdout.split('"id"')) - 1


def _start(campaign: Path, *args: str) -> subprocess.Popen[bytes]:
    # Its own process group, signalled whole, as a terminal's Ctrl-C or a killed job is:
    # `git expegit` is git running git-expegit, and the git commands expegit runs.
    return subprocess.Popen(["git", "expegit", *args], cwd=campaign, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)


def _half_state_is_fenced(campaign: Path) -> None:
    """Right after a death: the index matches HEAD, or our lock stops plain git."""
    tracked = git("status", "--porcelain", "--untracked-files=no", cwd=campaign)
    lock = campaign / ".git" / "index.lock"
    if tracked:
        assert lock.exists(), tracked[:300]
        commit = subprocess.run(["git", "commit", "-qam", "by hand"], cwd=campaign,
                                capture_output=True, text=True)
        assert commit.returncode != 0 and "index.lock" in commit.stderr


def _whole(campaign: Path, expected: set[int]) -> int:
    """After the next expegit command: no lock, a clean tree, whole batches only."""
    count = _count(campaign)  # a reading command completes what the dead one left
    assert not (campaign / ".git" / "index.lock").exists()
    assert not (campaign / ".git" / "expegit" / "publish.json").exists()
    assert git("status", "--porcelain", cwd=campaign) == ""
    assert count in expected
    return count


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_sweep_killed_at_any_moment_is_whole_or_absent(campaign: Path,
                                                          sig: signal.Signals) -> None:
    started = time.monotonic()
    expegit("exec", "new", "--sweep", f"--x=range({SWEEP})", cwd=campaign)
    duration = time.monotonic() - started
    count = _whole(campaign, {SWEEP})
    for step in range(1, 12):
        proc = _start(campaign, "exec", "new", "--sweep", f"--x=range({SWEEP})")
        time.sleep(duration * step / 12)
        _signal(proc, sig)
        _half_state_is_fenced(campaign)
        count = _whole(campaign, {count, count + SWEEP})
    assert git("fsck", "--connectivity-only", "--no-dangling", cwd=campaign) == ""


def test_a_sync_killed_at_any_moment_is_whole_or_absent(tmp_path: Path,
                                                        campaign: Path) -> None:
    other = tmp_path / "other"
    expegit("clone", str(tmp_path / "campaign.git"), str(other), cwd=tmp_path)
    expegit("exec", "new", "-p", "--sweep", f"--x=range({SWEEP})", cwd=other)
    tip = git("rev-parse", "HEAD", cwd=campaign).strip()  # the campaign has no notes yet
    started = time.monotonic()
    expegit("sync", cwd=campaign)
    duration = time.monotonic() - started

    def forget() -> None:  # so that the next sync receives the batch again
        git("reset", "-q", "--hard", tip, cwd=campaign)
        git("update-ref", "-d", "refs/notes/expegit", cwd=campaign)

    forget()
    for step in range(1, 10):
        proc = _start(campaign, "sync")
        time.sleep(duration * step / 10)
        _signal(proc, signal.SIGKILL)
        _half_state_is_fenced(campaign)
        _whole(campaign, {0, SWEEP})
        expegit("sync", cwd=campaign)
        assert _whole(campaign, {SWEEP}) == SWEEP
        forget()


def test_a_lock_left_by_a_dead_publish_is_recognised(campaign: Path) -> None:
    lock = campaign / ".git" / "index.lock"
    lock.write_bytes(b"git expegit: publish in progress\n")  # as a SIGKILL leaves it
    expegit("exec", "new", cwd=campaign)
    assert not lock.exists()
    lock.write_bytes(b"")  # another program's lock: never removed, and named
    before = snapshot(campaign)
    result = expegit("exec", "new", cwd=campaign, check=False)
    assert result.returncode == 6
    assert result.stderr == (f"expegit: {lock} exists: another git command is running in "
                             "this repository; if none is, a git command died there: remove "
                             f"{lock} and retry\n")
    assert lock.exists()
    lock.unlink()
    assert snapshot(campaign) == before


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 3 MB tmpfs, on which a campaign soon fills the disk (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_changes_nothing_and_says_so(tmp_path: Path, experiment: Path,
                                                 small_disk: Path) -> None:
    campaign = small_disk / "campaign"
    campaign.mkdir()
    expegit("init", str(experiment), cwd=campaign)
    expegit("exec", "new", cwd=campaign)
    before = snapshot(campaign)
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last block
        while True:
            os.write(fd, b"x" * 512)
    except OSError:
        os.close(fd)
    result = expegit("exec", "new", "--sweep", "--x=range(200)", cwd=campaign, check=False)
    assert result.returncode in (8, 9) and len(result.stderr.splitlines()) == 1, result.stderr
    assert "at the same time" not in result.stderr and "Traceback" not in result.stderr
    assert "space" in result.stderr.lower() or "full" in result.stderr.lower()
    filler.unlink()
    assert snapshot(campaign) == before
    assert not (campaign / ".git" / "index.lock").exists()
    expegit("exec", "new", cwd=campaign)  # and the campaign still works


def _lingering_git(tmp_path: Path, before: bool = False) -> tuple[dict[str, str], Path]:
    """A git that lingers after (or before) moving refs, and the file it touches then: a
    signal sent once it appears lands past (or before) the commit point. (Run git-expegit
    directly: `git expegit` would put git's own folder first on PATH.)"""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    moved = tmp_path / "moved"
    linger = f'case "$*" in *update-ref*) touch "{moved}"; sleep 5;; esac\n'
    real = f'"{shutil.which("git")}" "$@"; code=$?\n'
    (bin_ / "git").write_text("#!/bin/sh\n" + (linger + real if before else real + linger)
                              + "exit $code\n")
    (bin_ / "git").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}, moved


def _signal_after_the_move(campaign: Path, tmp_path: Path, sig: signal.Signals,
                           *args: str, before: bool = False) -> subprocess.Popen[bytes]:
    env, moved = _lingering_git(tmp_path, before)
    proc = subprocess.Popen(["git-expegit", *args], cwd=campaign, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not moved.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    _signal(proc, sig)
    return proc


def test_an_interrupt_just_after_the_refs_moved_completes_the_change(tmp_path: Path,
                                                                    campaign: Path) -> None:
    proc = _signal_after_the_move(campaign, tmp_path, signal.SIGINT,
                                  "exec", "new", "--sweep", "--x=range(10)")
    assert proc.returncode == 130
    # Whole at once, before any other command: index and work tree follow the refs.
    assert not (campaign / ".git" / "index.lock").exists()
    assert git("status", "--porcelain", cwd=campaign) == ""
    assert _count(campaign) == 10


@pytest.mark.parametrize("before", [True, False])
def test_update_expe_killed_moves_the_experiment_with_the_pin(
        tmp_path: Path, campaign: Path, experiment: Path, before: bool) -> None:
    work = tmp_path / "expe"
    pinned = git("rev-parse", "HEAD", cwd=work).strip()
    (work / "model.py").write_text("print('v2')\n")
    git("commit", "-q", "-am", "v2", cwd=work)
    git("push", "-q", str(experiment), "main", cwd=work)
    newest = pinned if before else git("rev-parse", "HEAD", cwd=work).strip()
    _signal_after_the_move(campaign, tmp_path, signal.SIGKILL, "update-expe", before=before)
    expegit("status", cwd=campaign)  # the next command completes it, or clears it
    assert git("rev-parse", "HEAD:xprp", cwd=campaign).strip() == newest
    assert git("rev-parse", "HEAD", cwd=campaign / "xprp").strip() == newest
    assert git("status", "--porcelain", cwd=campaign) == ""
