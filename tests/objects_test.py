"""Objects built in memory and written as one pack, read back by git itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pygit2

from git_expegit.objects import BLOB
from git_expegit.objects import Entry
from git_expegit.objects import ObjectStore
from tests.conftest import git


def test_an_edit_undone_in_one_store_makes_a_readable_pack(tmp_path: Path) -> None:
    git("init", "-q", "-b", "main", str(tmp_path / "r"), cwd=tmp_path)
    repo = pygit2.Repository(str(tmp_path / "r"))
    store = ObjectStore(repo)
    blobs = [store.blob(f"{i}".encode()) for i in range(200)]  # a tree big enough for deltas
    first = store.tree({f"f{i:03}": Entry(BLOB, b) for i, b in enumerate(blobs)})
    entries = store.entries(first)
    entries["zz"] = Entry(BLOB, blobs[0])
    second = store.tree(entries, base=first)
    del entries["zz"]
    assert store.tree(entries, base=second) == first  # back where it was: no delta cycle
    ident = "Ada <ada@example.org> 946684800 +0000"
    tip = store.commit(first, [store.commit(second, [], "second\n", ident)], "first\n", ident)
    store.write()
    git("update-ref", "refs/heads/main", str(tip), cwd=tmp_path / "r")
    fsck = subprocess.run(["git", "fsck", "--strict"], cwd=tmp_path / "r", capture_output=True,
                          text=True, timeout=60)
    assert (fsck.returncode, fsck.stderr) == (0, "")
    assert git("ls-tree", "--name-only", "HEAD~1", cwd=tmp_path / "r").splitlines()[-1] == "zz"
