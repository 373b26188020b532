"""No silent loss and no half-applied state: the write side's own rules, end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import snapshot


def _new(campaign: Path, *args: str) -> Path:
    [path] = expegit("exec", "new", *args, cwd=campaign).stdout.split()
    return campaign / path


def _state(campaign: Path, folder: Path) -> str:
    return expegit("show", folder.name, cwd=campaign).stdout.split("\n")[1].split()[1]


def _clone(tmp_path: Path, name: str) -> Path:
    expegit("clone", str(tmp_path / "campaign.git"), name, cwd=tmp_path)
    return tmp_path / name


def test_state_follows_causal_order_not_clocks(tmp_path: Path, campaign: Path) -> None:
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (.ci/services.sh installs it)")
    folder = _new(campaign, "-p", "--", "--x", "1")
    late = _clone(tmp_path, "late")  # a clone whose clock is an hour behind
    (folder / "data" / "r.txt").write_text("1\n")
    expegit("finish", "-p", "--exit-code", "0", folder.name, cwd=campaign)
    slow = ["faketime", "-f", "-1h", "git", "expegit"]
    for args in (["sync"], ["exec", "reset", folder.name[:8]]):
        subprocess.run([*slow, *args], cwd=late, check=True, capture_output=True)
    subprocess.run([*slow, "sync"], cwd=late, check=True, capture_output=True)
    expegit("sync", cwd=campaign)
    for clone in (campaign, late):  # the reset came after the finish, whatever its stamp
        assert _state(clone, folder) == "created"
    note = expegit("show", folder.name, cwd=campaign).stdout
    stamps = {line.split()[1]: line.split()[0] for line in note.splitlines()
              if "seq=" in line}
    assert stamps["reset"] < stamps["finished"]  # sorted by time, it would look finished


def test_finish_names_the_files_the_run_left_outside_data(campaign: Path) -> None:
    folder = _new(campaign)
    (folder / "performance.csv").write_text("acc,0.9\n")
    (folder / "logs").mkdir()
    (folder / "logs" / "a b.txt").write_text("x\n")
    (folder / "data" / "kept.txt").write_text("kept\n")
    result = expegit("finish", "--exit-code", "0", folder.name, cwd=campaign)
    assert "outside data/" in result.stderr and "performance.csv" in result.stderr
    assert "logs/a b.txt" in result.stderr
    shown = expegit("show", folder.name, cwd=campaign).stdout
    assert "lost=logs/a%20b.txt,performance.csv" in shown
    assert not (folder / "performance.csv").exists() and (folder / "data" / "kept.txt").exists()


def test_remove_refuses_uncommitted_results_without_force(campaign: Path) -> None:
    folder = _new(campaign)
    (folder / "data" / "result.txt").write_text("precious\n")
    before = snapshot(campaign)
    refused = expegit("exec", "remove", folder.name, cwd=campaign, check=False)
    assert refused.returncode == 6 and len(refused.stderr.splitlines()) == 1
    assert "--force" in refused.stderr and "data/result.txt" in refused.stderr
    assert snapshot(campaign) == before and (folder / "data" / "result.txt").exists()
    expegit("exec", "remove", "--force", folder.name, cwd=campaign)
    assert not folder.exists() and git("status", "--porcelain", cwd=campaign) == ""


def test_reset_without_the_experiment_changes_nothing(campaign: Path) -> None:
    folder = _new(campaign)
    expegit("finish", folder.name, cwd=campaign)
    shutil.rmtree(campaign / "xprp")
    (campaign / "xprp").mkdir()
    before = snapshot(campaign)
    result = expegit("exec", "reset", folder.name, cwd=campaign, check=False)
    assert result.returncode == 3 and "git submodule update --init" in result.stderr
    assert snapshot(campaign) == before
    assert _state(campaign, folder) == "finished"


def test_remove_here_and_finish_there_keeps_the_folder_whole(tmp_path: Path,
                                                             campaign: Path) -> None:
    folder = _new(campaign, "-p")
    other = _clone(tmp_path, "other")
    mirror = other / folder.relative_to(campaign)
    (mirror / "data" / "r.txt").write_text("result\n")
    expegit("finish", "-p", "--exit-code", "0", folder.name, cwd=other)
    expegit("exec", "remove", folder.name, cwd=campaign)
    result = expegit("sync", cwd=campaign)
    assert "was removed in one clone and changed in another" in result.stderr
    for name in (".gitignore", "data/lfs/.gitattributes", "data/r.txt"):
        assert git("cat-file", "-t", f"HEAD:{folder.relative_to(campaign)}/{name}",
                   cwd=campaign).strip() == "blob"
    fresh = _clone(tmp_path, "fresh")
    assert git("status", "--porcelain", cwd=fresh) == ""
    expegit("exec", "reset", folder.name, cwd=fresh)  # the folder works as any other
    assert _state(fresh, folder) == "created"


def test_results_in_a_nested_repository_are_refused(campaign: Path) -> None:
    folder = _new(campaign)
    nested = folder / "data" / "checkout"
    nested.mkdir()
    git("init", "-q", str(nested), cwd=campaign)
    (nested / "file.txt").write_text("never pushed\n")
    before = snapshot(campaign)
    result = expegit("finish", folder.name, cwd=campaign, check=False)
    assert result.returncode == 4 and len(result.stderr.splitlines()) == 1
    assert "data/checkout is a git repository" in result.stderr
    assert snapshot(campaign) == before


@pytest.mark.parametrize("command", ["reset", "remove"])
def test_a_stale_index_stat_is_no_local_change(tmp_path: Path, campaign: Path,
                                               command: str) -> None:
    folder = _new(campaign)
    (folder / "data" / "r.txt").write_text("1\n")
    expegit("finish", folder.name, cwd=campaign)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(campaign), str(copy)], check=True)
    (copy / folder.relative_to(campaign) / "data" / "r.txt").touch()
    expegit("exec", command, folder.name, cwd=copy)
    assert git("status", "--porcelain", cwd=copy) == ""


@pytest.mark.parametrize("profile", ["gpu\nExpegit-Execution: 00000000-0000-4000-8000-0",
                                     "a b", "-x", "gpu\r", "", "p" * 101])
def test_a_profile_cannot_inject_trailers(campaign: Path, profile: str) -> None:
    before = snapshot(campaign)
    for args in (["--profile", profile], ["--sweep", "x=1,2", "--profile", profile]):
        result = expegit("exec", "new", *args, cwd=campaign, check=False)
        assert result.returncode == 4 and len(result.stderr.splitlines()) == 1, result.stderr
        assert "profile" in result.stderr
    assert snapshot(campaign) == before


@pytest.mark.parametrize("code", ["256", "-1", "99999999999999999999"])
def test_exit_codes_are_bytes(campaign: Path, code: str) -> None:
    folder = _new(campaign)
    before = snapshot(campaign)
    result = expegit("finish", folder.name, f"--exit-code={code}", cwd=campaign, check=False)
    assert result.returncode == 2 and "from 0 to 255" in result.stderr
    assert snapshot(campaign) == before


def test_a_finish_without_results_keeps_the_repository_readable(campaign: Path) -> None:
    # Enough executions for excs/ to be a large tree, stored as a delta when it changes.
    expegit("exec", "new", "--sweep", "--x=range(300)", cwd=campaign)
    folder = _new(campaign)
    expegit("finish", folder.name, cwd=campaign)  # nothing in data/: the same trees again
    assert git("fsck", "--strict", "--no-dangling", cwd=campaign) == ""
    assert _state(campaign, folder) == "finished"


@pytest.mark.parametrize("empty", [False, True])
def test_update_expe_without_the_experiment_says_so(campaign: Path, empty: bool) -> None:
    shutil.rmtree(campaign / "xprp")
    if empty:
        (campaign / "xprp").mkdir()  # as a clone without --recurse-submodules leaves it
    before = snapshot(campaign)
    result = expegit("update-expe", cwd=campaign, check=False)
    assert (result.returncode, result.stderr) == (
        3, "expegit: the experiment submodule xprp/ is missing: run git submodule update "
           "--init\n")
    assert snapshot(campaign) == before


def test_a_reset_forgets_the_exit_code_and_ties_keep_the_results(campaign: Path) -> None:
    from git_expegit import record

    folder = _new(campaign)
    expegit("finish", "--exit-code", "7", folder.name, cwd=campaign)
    expegit("exec", "reset", folder.name, cwd=campaign)
    [row] = json.loads(expegit("list", "--format=json", cwd=campaign).stdout)
    assert (row["state"], row["exit_code"]) == ("created", None)
    # A reset and a finish at the same step, in two clones: sync keeps the finished folder,
    # and the state agrees with it, whichever clone id sorts first.
    for clones in (("a", "b"), ("b", "a")):
        log = ["2026-01-01T00:00:00.000000Z created seq=1 clone=a",
               f"2026-01-01T00:00:02.000000Z reset seq=2 clone={clones[0]}",
               f"2026-01-01T00:00:01.000000Z finished exit=0 seq=2 clone={clones[1]}"]
        assert record.state(log) == "finished"


def test_a_git_folder_in_any_case_is_refused(campaign: Path) -> None:
    folder = _new(campaign)
    (folder / "data" / "y" / ".GIT").mkdir(parents=True)
    (folder / "data" / "y" / ".GIT" / "HEAD").write_text("x\n")
    before = snapshot(campaign)
    result = expegit("finish", folder.name, cwd=campaign, check=False)
    assert result.returncode == 4 and "is a git repository" in result.stderr
    assert snapshot(campaign) == before


@pytest.mark.parametrize("command", [["status"], ["list"], ["exec", "new"]])
def test_a_branch_on_a_missing_object_is_one_line(campaign: Path, command: list[str]) -> None:
    (campaign / ".git" / "refs" / "heads" / "main").write_text("1" * 40 + "\n")
    result = expegit(*command, cwd=campaign, check=False)
    assert result.returncode == 3 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "damaged" in result.stderr and "Traceback" not in result.stderr
