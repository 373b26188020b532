"""Code placement of experiments with Git LFS files and submodules, against real git-lfs and
bare remotes: the folder gets the real content, and a missing object is fetched or named."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from git_expegit.placement import _relative_url
from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import script
from tests.conftest import snapshot

WEIGHTS = bytes(range(256)) * 40  # what the experiment keeps in LFS
TABLE = b"lib's own LFS table\n" * 100


def _lfs_repo(work: Path) -> None:
    git("init", "-q", "-b", "main", cwd=work)
    git("lfs", "install", "--local", cwd=work)
    git("lfs", "track", "*.bin", cwd=work)


def _publish(work: Path, bare: Path) -> None:
    """Push to a new bare remote through the git CLI, so LFS's pre-push hook sends the
    LFS objects too (a `clone --bare` would not)."""
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=work.parent)
    git("remote", "add", "origin", str(bare), cwd=work)
    git("push", "-q", "origin", "main", cwd=work)


@pytest.fixture
def experiment(tmp_path: Path, home: Path) -> Path:
    """An experiment with an LFS file and a submodule `vendor/lib` (a relative URL) that has
    an LFS file of its own; both pushed to bare remotes."""
    lib = tmp_path / "lib"
    lib.mkdir()
    _lfs_repo(lib)
    (lib / "lib.py").write_text("print('lib')\n")
    (lib / "table.bin").write_bytes(TABLE)
    git("add", ".", cwd=lib)
    git("commit", "-q", "-m", "lib", cwd=lib)
    _publish(lib, tmp_path / "lib.git")
    work = tmp_path / "expe"
    work.mkdir()
    _lfs_repo(work)
    script(work, "run", 'echo "ran with $@"\n')
    (work / "weights.bin").write_bytes(WEIGHTS)
    git("-c", "protocol.file.allow=always", "submodule", "--quiet", "add", "../lib.git",
        "vendor/lib", cwd=work)
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "first version", cwd=work)
    _publish(work, tmp_path / "expe.git")
    return tmp_path / "expe.git"


def _new(campaign: Path, *args: str) -> Path:
    return campaign / expegit("exec", "new", *args, cwd=campaign).stdout.strip()


def _placed(folder: Path) -> None:
    assert (folder / "weights.bin").read_bytes() == WEIGHTS
    assert (folder / "vendor" / "lib" / "lib.py").read_text() == "print('lib')\n"
    assert (folder / "vendor" / "lib" / "table.bin").read_bytes() == TABLE
    assert not (folder / "vendor" / "lib" / ".git").exists()
    assert (folder / "run").is_file()


def test_exec_new_places_the_lfs_content_and_the_submodules(campaign: Path) -> None:
    # A fresh campaign has neither: xprp/ holds pointers, its submodule is not initialised.
    assert (campaign / "xprp" / "weights.bin").read_bytes().startswith(b"version https://")
    folder = _new(campaign, "--", "--x", "1")
    _placed(folder)
    assert git("status", "--porcelain", "--untracked-files=all", cwd=campaign) == ""
    # The submodule's git dir is where `git submodule update --init --recursive` in xprp/
    # looks for it, and that command works after us.
    modules = campaign / ".git" / "modules" / "xprp" / "modules" / "vendor" / "lib"
    assert (modules / "HEAD").is_file()
    git("-c", "protocol.file.allow=always", "submodule", "--quiet", "update", "--init",
        "--recursive", cwd=campaign / "xprp")
    assert (campaign / "xprp" / "vendor" / "lib" / "lib.py").is_file()
    # finish commits the results only and drops the code, submodule included.
    expegit("finish", "--exit-code", "0", cwd=folder)
    assert sorted(p.name for p in folder.iterdir()) == [".gitignore", "data"]


def test_objects_already_here_are_used_without_the_remotes(tmp_path: Path,
                                                           campaign: Path) -> None:
    xprp = campaign / "xprp"
    git("-c", "protocol.file.allow=always", "submodule", "--quiet", "update", "--init",
        "--recursive", cwd=xprp)
    git("lfs", "fetch", cwd=xprp)
    git("lfs", "fetch", cwd=xprp / "vendor" / "lib")
    for remote in ("expe.git", "lib.git"):
        shutil.move(tmp_path / remote, tmp_path / f"{remote}.away")
    _placed(_new(campaign))


def test_a_submodule_commit_not_on_its_remote_fails_and_changes_nothing(
        tmp_path: Path, campaign: Path) -> None:
    # The experiment pins a lib commit that was never pushed.
    work = tmp_path / "expe"
    (work / "vendor" / "lib" / "lib.py").write_text("print('lib v2')\n")
    git("commit", "-q", "-am", "lib v2, not pushed", cwd=work / "vendor" / "lib")
    git("commit", "-q", "-am", "use lib v2", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    expegit("update-expe", cwd=campaign)
    before = snapshot(campaign)
    result = expegit("exec", "new", cwd=campaign, check=False)
    assert result.returncode == 7, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "vendor/lib" in lines[0], lines
    assert snapshot(campaign) == before


def test_an_lfs_object_missing_everywhere_fails_and_changes_nothing(tmp_path: Path,
                                                                    campaign: Path) -> None:
    shutil.rmtree(tmp_path / "expe.git" / "lfs")
    before = snapshot(campaign)
    result = expegit("exec", "new", cwd=campaign, check=False)
    assert result.returncode == 7, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "weights.bin" in lines[0], lines
    assert snapshot(campaign) == before


def test_a_file_that_only_looks_like_a_pointer_is_placed_as_is(tmp_path: Path,
                                                               campaign: Path) -> None:
    # LFS's own test data, say: pointer text in a file that no attribute sends to LFS.
    work = tmp_path / "expe"
    pointer = git("cat-file", "-p", "HEAD:weights.bin", cwd=work)
    (work / "pointer.txt").write_text(pointer)
    git("add", "pointer.txt", cwd=work)
    git("commit", "-q", "-m", "a pointer as text", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    expegit("update-expe", cwd=campaign)
    folder = _new(campaign)
    assert (folder / "pointer.txt").read_text() == pointer
    _placed(folder)



def test_a_placement_interrupted_before_run_is_done_again(campaign: Path) -> None:
    # `run` is written last: a folder without it is placed again, whole.
    folder = _new(campaign)
    (folder / "run").unlink()
    (folder / "weights.bin").write_bytes(b"half")
    shutil.rmtree(folder / "vendor")
    subprocess.run(["git", "expegit", "exec", "run"], cwd=folder, check=True,
                   capture_output=True)
    _placed(folder)


@pytest.mark.parametrize(("url", "base", "resolved"), [
    ("../lib.git", "/srv/git/expe.git", "/srv/git/lib.git"),
    ("./lib.git", "/srv/git/expe.git/", "/srv/git/expe.git/lib.git"),
    ("../../other/lib.git", "https://host/group/expe.git", "https://host/other/lib.git"),
    ("../lib.git", "git@host:group/expe.git", "git@host:group/lib.git"),
    ("../lib.git", "git@host:expe.git", "git@host:lib.git"),
    ("../../other/lib.git", "git@host:group/expe.git", "git@host:other/lib.git"),
    ("../../other/lib.git", "/srv/git/expe.git/", "/srv/other/lib.git"),
    ("https://host/lib.git", "/srv/git/expe.git", "https://host/lib.git"),
])
def test_relative_submodule_urls_resolve_as_git_does(url: str, base: str, resolved: str) -> None:
    assert _relative_url(url, base) == resolved
