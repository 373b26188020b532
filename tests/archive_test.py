"""Packing is deterministic and honours .sendignore; extraction refuses hostile archives."""

from __future__ import annotations

import io
import os
import posixpath
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from git_runaway.archive import MTIME
from git_runaway.archive import pack
from git_runaway.archive import safe_extract
from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError
from tests import hostile_archives
from tests.hostile_archives import Case


def tree(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


FILES = {"run": "#!/bin/sh\necho hi\n", "data/a.csv": "1,2\n", "data/b.csv": "3,4\n",
         "src/model.py": "print(1)\n", "README": "read me\n"}


# -- pack: the same content always gives the same bytes ----------------------------------


def test_pack_twice_gives_the_same_digest(tmp_path: Path):
    folder = tree(tmp_path / "a", FILES)
    first, second = pack(folder), pack(folder)
    assert first.data == second.data
    assert first.digest == second.digest
    assert first.files == ("README", "data", "data/a.csv", "data/b.csv", "run", "src",
                           "src/model.py")


def test_pack_ignores_mtimes_ownership_permissions_and_creation_order(tmp_path: Path):
    one = tree(tmp_path / "one", FILES)
    two = tree(tmp_path / "two", dict(reversed(FILES.items())))
    (one / "run").chmod(0o755)
    (two / "run").chmod(0o700)  # still "executable": both travel as 0755
    (two / "README").chmod(0o600)
    for path in two.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
        if os.geteuid() == 0:
            os.chown(path, 12345, 54321)
    assert pack(one).digest == pack(two).digest
    with tarfile.open(fileobj=io.BytesIO(pack(two).data)) as tar:
        for info in tar.getmembers():
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (
                MTIME, 0, 0, "", "")


def test_pack_changes_with_one_byte_or_the_executable_bit(tmp_path: Path):
    folder = tree(tmp_path / "a", FILES)
    before = pack(folder).digest
    (folder / "data/b.csv").write_text("3,5\n")
    changed = pack(folder).digest
    assert changed != before
    (folder / "data/b.csv").write_text("3,4\n")
    assert pack(folder).digest == before
    (folder / "README").chmod(0o755)
    assert pack(folder).digest != before


def test_pack_keeps_symlinks_as_symlinks(tmp_path: Path):
    folder = tree(tmp_path / "a", FILES)
    (folder / "latest").symlink_to("data/a.csv")
    with tarfile.open(fileobj=io.BytesIO(pack(folder).data)) as tar:
        latest = tar.getmember("latest")
    assert latest.issym() and latest.linkname == "data/a.csv"


# -- .sendignore: gitignore semantics ------------------------------------------------------

IGNORE_TREE = {
    "run": "", "a.log": "", "keep.log": "", "sub/b.log": "", "sub/keep.log": "",
    "build/out.o": "", "build/keep": "", "sub/build/out.o": "", "src/build.py": "",
    "doc/build": "",  # a file named build: `build/` only matches folders
    "top.txt": "", "sub/top.txt": "", "doc/a.md": "", "doc/deep/b.md": "",
    "cache/x": "", "cache/y": "", "notes.tmp": "", "sub/deep/notes.tmp": "",
}
SENDIGNORE = """\
# a comment, then a blank line

*.log
!keep.log
build/
!build/keep
/top.txt
doc/*.md
cache/*
!cache/y
**/deep/*.tmp
"""


def test_sendignore_has_gitignore_semantics(tmp_path: Path):
    folder = tree(tmp_path / "a", {**IGNORE_TREE, ".sendignore": SENDIGNORE})
    files = {name for name in pack(folder).files if not (folder / name).is_dir()}
    assert files == {
        ".sendignore", "run", "keep.log", "sub/keep.log",
        "doc/build", "src/build.py",  # `build/` is a folder pattern
        # build/keep stays out: git cannot re-include a file of an excluded folder
        "sub/top.txt",  # `/top.txt` is anchored at the root
        "doc/deep/b.md",  # `doc/*.md`: `*` does not cross `/`
        "cache/y", "notes.tmp",
    }


def test_sendignore_agrees_with_git(tmp_path: Path):
    folder = tree(tmp_path / "a", {**IGNORE_TREE, ".sendignore": SENDIGNORE})
    git = tmp_path / "git"
    subprocess.run(["git", "init", "-q", "--bare", str(git)], check=True)
    listed = subprocess.run(
        ["git", f"--git-dir={git}", f"--work-tree={folder}", "ls-files", "--others",
         "--exclude-from=.sendignore"], cwd=folder, capture_output=True, text=True, check=True)
    files = {name for name in pack(folder).files if not (folder / name).is_dir()}
    assert files == set(listed.stdout.splitlines())


def test_ignored_folders_are_not_sent_at_all(tmp_path: Path):
    folder = tree(tmp_path / "a", {"run": "", "venv/lib/x.py": "", ".sendignore": "venv/\n"})
    assert pack(folder).files == (".sendignore", "run")


def test_ignore_files_always_travel(tmp_path: Path):
    folder = tree(tmp_path / "a", {
        "run": "", ".fetchignore": "*.ckpt\n", "sub/.fetchignore": "",
        ".sendignore": ".sendignore\n.fetchignore\n.*\n*ignore\n"})
    # Only the root's ignore files are runaway's: a nested one is an ordinary file.
    assert pack(folder).files == (".fetchignore", ".sendignore", "run", "sub")


def test_ignore_files_travel_when_the_rules_exclude_everything(tmp_path: Path):
    folder = tree(tmp_path / "a", {"run": "", ".fetchignore": "", ".sendignore": "*\n!run\n"})
    assert pack(folder).files == (".fetchignore", ".sendignore", "run")


def normalised(names: list[str]) -> list[str]:
    return sorted(posixpath.normpath(name) for name in names)


# -- safe_extract: hostile archives ------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def refuse(case: Case, local: Path, outside: Path) -> RunawayError:
    data = case.archive(local, outside)
    with pytest.raises(RunawayError) as refused:
        safe_extract(data, local)
    return refused.value


@pytest.mark.parametrize("case", hostile_archives.params())
def test_safe_extract_refuses_hostile_archive(case: Case, local: Path, tmp_path: Path):
    outside = hostile_archives.prepare(case, local, tmp_path)
    try:
        error = refuse(case, local, outside)
    finally:
        hostile_archives.assert_untouched(outside)
    assert error.code == ExitCode.FETCH
    assert str(error).startswith("refused the fetched archive: ")
    assert re.search(case.why, str(error))
    assert str(error).endswith(f"; nothing outside {local} was written")
    assert "\n" not in str(error)


@pytest.mark.parametrize("case", hostile_archives.params(nothing_extracted=True))
def test_safe_extract_extracts_nothing_from_a_refused_archive(case: Case, local: Path,
                                                              tmp_path: Path):
    outside = hostile_archives.prepare(case, local, tmp_path)
    refuse(case, local, outside)
    assert sorted(os.listdir(local)) == ([] if case.local_link is None else ["out"])


def test_safe_extract_names_the_refused_entry(local: Path, tmp_path: Path):
    data = hostile_archives.tar_bytes([hostile_archives.symlink("evil", str(tmp_path))])
    with pytest.raises(RunawayError, match=r"entry 'evil' is a symlink pointing outside"):
        safe_extract(data, local)


def test_safe_extract_refuses_garbage(local: Path):
    with pytest.raises(RunawayError, match=r"^refused the fetched archive: ") as refused:
        safe_extract(b"this is not a tar archive" * 100, local)
    assert refused.value.code == ExitCode.FETCH


def test_safe_extract_accepts_ordinary_results(local: Path):
    h = hostile_archives
    data = h.tar_bytes([
        h.directory("results"), h.file("results/a.csv", b"1\n"), h.file("./log.txt", b"ok\n"),
        h.symlink("latest", "results/a.csv"), h.symlink("results/up", "../log.txt"),
        h.hardlink("copy.csv", "results/a.csv")])
    assert normalised(safe_extract(data, local)) == ["log.txt", "results/a.csv"]
    assert (local / "latest").read_text() == "1\n"
    assert (local / "results/up").read_text() == "ok\n"
    assert (local / "copy.csv").read_text() == "1\n"


def test_safe_extract_overwrites_local_files(local: Path):
    (local / "result.txt").write_text("old")
    data = hostile_archives.tar_bytes([hostile_archives.file("result.txt", b"new")])
    assert normalised(safe_extract(data, local)) == ["result.txt"]
    assert (local / "result.txt").read_text() == "new"


def test_safe_extract_accepts_gnu_tar_results_twice(tmp_path: Path, local: Path):
    """What the host's `tar` sends for a run that made hard links and symlinks, fetched into
    a folder that already has the previous run's copies."""
    run = tree(tmp_path / "run", {"a.txt": "a\n", "sub/c.txt": "c\n"})
    os.link(run / "a.txt", run / "b.txt")
    (run / "latest").symlink_to("a.txt")
    (run / "sub/up").symlink_to("../a.txt")
    data = subprocess.run(
        "find . \\( -type f -o -type l \\) -print0 | tar --null --no-recursion -T - -cf -",
        shell=True, cwd=run, capture_output=True, check=True).stdout
    for _ in range(2):
        # GNU tar stores one of the two hard-linked names as a link to the other.
        assert normalised(safe_extract(data, local)) in (
            ["a.txt", "sub/c.txt"], ["b.txt", "sub/c.txt"])
        for name, text in {"a.txt": "a\n", "b.txt": "a\n", "latest": "a\n",
                           "sub/up": "a\n", "sub/c.txt": "c\n"}.items():
            assert (local / name).read_text() == text
        assert (local / "latest").readlink() == Path("a.txt")
