"""Writing a pack where it cannot be written: a read-only object store, a full disk, a file
size limit; and the partial packs that killed processes leave (issue 7, §3)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.catalog_test import read_only
from tests.conftest import expegit
from tests.conftest import snapshot

SWEEP = "--i=range(3000)"  # a pack of about a megabyte


def _pack_dir(campaign: Path) -> Path:
    return campaign / ".git" / "objects" / "pack"


def _assert_refused(campaign: Path, done: subprocess.CompletedProcess[str],
                    before: tuple[str, str, str], reason: str) -> None:
    assert done.returncode == 8, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("expegit: writing the new objects into ")
    assert reason in lines[0] and "nothing was changed" in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert list(_pack_dir(campaign).glob(".tmp-*")) == []
    assert snapshot(campaign) == before


def test_a_read_only_object_store_is_one_line_and_changes_nothing(campaign: Path) -> None:
    before = snapshot(campaign)
    with read_only(_pack_dir(campaign)):
        done = expegit("exec", "new", f"--sweep={SWEEP}", cwd=campaign, check=False)
    _assert_refused(campaign, done, before, "check that you can write")


def test_a_file_size_limit_while_writing_the_pack(campaign: Path) -> None:
    before = snapshot(campaign)
    done = subprocess.run(["prlimit", "--fsize=65536", "git", "expegit", "exec", "new",
                           f"--sweep={SWEEP}"], cwd=campaign, capture_output=True, text=True,
                          timeout=300)
    _assert_refused(campaign, done, before, "free some space")


def test_a_full_disk_while_writing_the_pack(tmp_path: Path, campaign: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    packs = _pack_dir(campaign)
    saved = tmp_path / "packs"
    shutil.copytree(packs, saved)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(packs)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        for path in saved.iterdir():
            shutil.copy2(path, packs / path.name)
        free = shutil.disk_usage(packs).free
        (packs / "filler").write_bytes(b"\0" * max(0, free - 200_000))
        before = snapshot(campaign)
        done = expegit("exec", "new", f"--sweep={SWEEP}", cwd=campaign, check=False)
        (packs / "filler").unlink()
        _assert_refused(campaign, done, before, "No space left on device")
    finally:
        subprocess.run(["umount", "-l", str(packs)], check=True)


def test_partial_packs_of_killed_processes_are_swept_after_an_hour(campaign: Path) -> None:
    old, recent = _pack_dir(campaign) / ".tmp-old", _pack_dir(campaign) / ".tmp-recent"
    for path in (old, recent):
        path.write_bytes(b"PACK partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    expegit("exec", "new", "--", "--x", cwd=campaign)
    assert not old.exists()
    assert recent.exists()  # may be another process's pack being written right now
