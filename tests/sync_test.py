"""git expegit sync: many clones, one bare remote, nothing lost."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from pathlib import Path

from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import snapshot


def _clone(tmp_path: Path, name: str) -> Path:
    expegit("clone", str(tmp_path / "campaign.git"), name, cwd=tmp_path)
    return tmp_path / name


def _work(clone: Path, label: str, count: int, errors: list[str]) -> None:
    """One collaborator: create, run by hand, finish and sync, `count` times."""
    for i in range(count):
        [path] = expegit("exec", "new", "--", "--who", label, "--i", str(i),
                         cwd=clone).stdout.split()
        folder = clone / path
        (folder / "data" / "score.txt").write_text(f"{label} {i}\n")
        (folder / "data" / "lfs" / "model.bin").write_bytes(f"{label}-{i}".encode() * 100)
        expegit("finish", folder.name, "--exit-code", "0", cwd=clone)
        result = expegit("sync", cwd=clone, check=False)
        if result.returncode != 0:
            errors.append(result.stderr)


def test_three_clones_syncing_at_once_lose_nothing(tmp_path: Path, campaign: Path) -> None:
    clones = [_clone(tmp_path, f"clone{i}") for i in range(3)]
    errors: list[str] = []
    threads = [threading.Thread(target=_work, args=(c, c.name, 20, errors)) for c in clones]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for c in clones:
        expegit("sync", cwd=c)
    fresh = _clone(tmp_path, "fresh")
    rows = json.loads(expegit("list", "--format=json", cwd=fresh).stdout)
    assert len(rows) == 60 and len({r["id"] for r in rows}) == 60
    assert Counter(r["parameters"].split()[1] for r in rows) == {f"clone{i}": 20
                                                                for i in range(3)}
    assert {r["state"] for r in rows} == {"finished"}
    assert all([line.split()[1] for line in r["log"]] == ["created", "finished"] for r in rows)
    creations = git("log", "--format=%H", "--grep=^Create execution", cwd=fresh).split()
    assert len(creations) == 60
    listed = git("notes", "--ref=expegit", "list", cwd=fresh).splitlines()
    assert {line.split()[1] for line in listed} == set(creations)
    for row in rows[:5]:  # LFS objects made it through the remote
        path = fresh / "excs" / row["id"][:2] / row["id"] / "data" / "lfs" / "model.bin"
        who, i = row["parameters"].split()[1], row["parameters"].split()[3]
        assert path.read_bytes() == f"{who}-{i}".encode() * 100
    assert all(git("status", "--porcelain", cwd=c) == "" for c in clones)


def test_the_same_note_written_in_two_clones_is_united(tmp_path: Path, campaign: Path) -> None:
    [path] = expegit("exec", "new", "-p", cwd=campaign).stdout.split()
    a, b = _clone(tmp_path, "a"), _clone(tmp_path, "b")
    creation = git("rev-parse", "HEAD", cwd=a).strip()
    git("notes", "--ref=expegit", "append", "-m", "2030-01-01T00:00:00.000000Z queued by=a",
        creation, cwd=a)
    git("notes", "--ref=expegit", "append", "-m", "2030-01-01T00:00:01.000000Z running host=b",
        creation, cwd=b)
    expegit("sync", cwd=a)
    expegit("sync", cwd=b)
    expegit("sync", cwd=a)
    for clone in (a, b):
        lines = git("notes", "--ref=expegit", "show", creation, cwd=clone).splitlines()
        assert [line.split()[1] for line in lines] == ["created", "queued", "running"]
    assert expegit("list", cwd=a).stdout.split()[1] == "running"
    assert Path(path).name[:8] == expegit("list", cwd=b).stdout.split()[0]


def test_without_the_network_nothing_changes(tmp_path: Path, campaign: Path) -> None:
    git("remote", "set-url", "origin", "ssh://expegit-test.invalid/campaign.git", cwd=campaign)
    before = snapshot(campaign)
    for args in (["sync"], ["exec", "new", "-p", "--", "--x", "1"],
                 ["exec", "new", "-p", "--sweep", "x=1,2"], ["update-expe", "-p"]):
        result = subprocess.run(["git", "expegit", *args], cwd=campaign, capture_output=True,
                                text=True, timeout=60,
                                env=_no_ssh())
        assert result.returncode == 7, (args, result.stderr)
        assert result.stderr.startswith("expegit: fetching from origin (nothing was changed) "
                                        "failed: "), result.stderr
        assert len(result.stderr.splitlines()) == 1
        assert snapshot(campaign) == before


def _no_ssh() -> dict[str, str]:
    import os
    return {**os.environ, "GIT_SSH_COMMAND": "ssh -o ConnectTimeout=2 -o BatchMode=yes"}


def test_a_campaign_without_a_remote_cannot_sync(tmp_path: Path, campaign: Path) -> None:
    git("remote", "remove", "origin", cwd=campaign)
    result = expegit("sync", cwd=campaign, check=False)
    assert (result.returncode, result.stderr) == (
        7, "expegit: the campaign has no remote 'origin': add one with git remote add origin "
           "URL\n")


def test_a_real_conflict_is_reported_and_leaves_the_clone_as_it_was(tmp_path: Path,
                                                                    campaign: Path) -> None:
    [path] = expegit("exec", "new", "-p", cwd=campaign).stdout.split()
    other = _clone(tmp_path, "other")
    for clone, text in ((campaign, "mine\n"), (other, "theirs\n")):
        (clone / path / "data" / "result.txt").write_text(text)
        expegit("finish", Path(path).name, cwd=clone)
    expegit("sync", cwd=other)
    before = snapshot(campaign)
    result = expegit("sync", cwd=campaign, check=False)
    assert result.returncode == 7
    assert result.stderr.startswith(f"expegit: sync: this clone and origin both changed {path}/")
    assert snapshot(campaign)[1:] == before[1:]  # only the remote-tracking refs moved


def test_verbose_shows_what_git_said_in_full(tmp_path: Path, campaign: Path) -> None:
    git("remote", "set-url", "origin", str(tmp_path / "gone.git"), cwd=campaign)
    quiet = expegit("sync", cwd=campaign, check=False)
    verbose = expegit("-v", "sync", cwd=campaign, check=False)
    assert quiet.returncode == verbose.returncode == 7
    assert len(quiet.stderr.splitlines()) == 1
    detail = verbose.stderr.splitlines()[:-1]
    assert detail and all(line.startswith("expegit: | ") for line in detail)
    assert any("does not appear to be a git repository" in line for line in detail)
    assert verbose.stderr.splitlines()[-1] == quiet.stderr.strip()


def test_removing_on_both_sides_while_creating_does_not_conflict(tmp_path: Path,
                                                                 campaign: Path) -> None:
    [path] = expegit("exec", "new", "-p", cwd=campaign).stdout.split()
    other = _clone(tmp_path, "other")
    expegit("exec", "remove", "-p", Path(path).name, cwd=other)
    expegit("exec", "remove", Path(path).name, cwd=campaign)
    expegit("exec", "new", cwd=campaign)  # same .gitignore: no rename may be guessed
    expegit("sync", cwd=campaign)
    assert len(expegit("list", cwd=campaign).stdout.splitlines()) == 1


def test_sync_brings_the_experiment_another_clone_pinned(tmp_path: Path, campaign: Path,
                                                         experiment: Path) -> None:
    other = _clone(tmp_path, "other")
    work = tmp_path / "expe"
    (work / "model.py").write_text("print('v2')\n")
    git("commit", "-q", "-am", "v2", cwd=work)
    git("push", "-q", str(experiment), "main", cwd=work)
    expegit("update-expe", "-p", cwd=campaign)
    expegit("sync", cwd=other)
    assert (other / "xprp" / "model.py").read_text() == "print('v2')\n"
    assert git("status", "--porcelain", cwd=other) == ""


def test_update_expe_with_local_changes_in_the_experiment_changes_nothing(
        tmp_path: Path, campaign: Path, experiment: Path) -> None:
    work = tmp_path / "expe"
    (work / "model.py").write_text("print('v2')\n")
    git("commit", "-q", "-am", "v2", cwd=work)
    git("push", "-q", str(experiment), "main", cwd=work)
    (campaign / "xprp" / "model.py").write_text("print('my local edit')\n")
    before = git("rev-parse", "HEAD", cwd=campaign)
    result = expegit("update-expe", cwd=campaign, check=False)
    assert result.returncode == 6 and "commit or stash your changes there first" in result.stderr
    assert git("rev-parse", "HEAD", cwd=campaign) == before
    assert (campaign / "xprp" / "model.py").read_text() == "print('my local edit')\n"
