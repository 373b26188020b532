"""The read side: the catalog's sharded cache, its values for the CLI, and reading commands
that keep working where the campaign cannot be written or the output is closed."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from git_expegit import campaign as campaigns
from git_expegit import catalog
from git_expegit.campaign import ExecutionId
from git_expegit.errors import ExpegitError
from tests.conftest import expegit
from tests.conftest import git


def _sweep(campaign: Path, n: int) -> list[str]:
    out = expegit("exec", "new", f"--sweep=--i=range({n})", cwd=campaign).stdout
    return [Path(line).name for line in out.split()]


def _cache(campaign: Path) -> Path:
    return campaign / ".git" / "expegit" / "catalog"


def _shards(campaign: Path) -> dict[str, tuple[int, bytes]]:
    """Each shard file: its inode (a rewrite replaces it) and its content."""
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in _cache(campaign).glob("??.json")}


# --- values for the CLI (issue 7, §0) ------------------------------------------------------

def test_select_and_files_are_values_of_the_data_layer(campaign: Path) -> None:
    ids = _sweep(campaign, 3)
    expegit("exec", "new", "--profile", "gpu", "--", "--lr", "9", cwd=campaign)
    data = campaign / campaigns.folder(ExecutionId(ids[0])) / "data"
    (data / "result.txt").write_text("0.5\n")
    (data / "lfs" / "big.bin").write_text("x" * 100)
    expegit("finish", ids[0], "--exit-code", "0", cwd=campaign)
    found = campaigns.find(campaign)
    every = catalog.executions(found)
    assert [e.id for e in catalog.select(every, state="finished")] == [ids[0]]
    assert [e.parameters for e in catalog.select(every, profile="gpu")] == ["--lr 9"]
    assert [e.id for e in catalog.select(every, grep="--i=1")] == [ids[1]]
    assert len(catalog.select(every, commit=every[0].commit[:7].upper())) == 4
    with pytest.raises(ExpegitError, match="unknown state 'done'"):
        catalog.select(every, state="done")
    files = {f.path: f for f in catalog.files(found, ExecutionId(ids[0]))}
    assert files["data/result.txt"] == catalog.File("data/result.txt", 4, False)
    assert files["data/lfs/big.bin"] == catalog.File("data/lfs/big.bin", 100, True)


def test_list_json_gives_each_folder_and_a_terminal_gets_a_header(campaign: Path) -> None:
    ids = _sweep(campaign, 2)
    rows = json.loads(expegit("list", "--format=json", cwd=campaign).stdout)
    assert [r["folder"] for r in rows] == [f"excs/{i[:2]}/{i}" for i in ids]
    assert all((campaign / r["folder"]).is_dir() for r in rows)
    piped = expegit("list", cwd=campaign).stdout.splitlines()
    assert [r.split()[0] for r in piped] == [i[:8] for i in ids]  # no header in a pipe
    primary, secondary = os.openpty()
    try:
        done = subprocess.run(["git", "expegit", "list"], cwd=campaign, stdout=secondary,
                              stderr=subprocess.PIPE, timeout=60)
        os.close(secondary)
        shown = os.read(primary, 65536).decode().splitlines()
    finally:
        os.close(primary)
    assert done.returncode == 0, done.stderr
    assert shown[0].split() == ["ID", "STATE", "COMMIT", "PROFILE", "EXIT", "PARAMETERS"]
    assert shown[1:] == piped


# --- the cache's cost and its safety (issue 7, §6 and §3) ----------------------------------

def test_status_reads_the_index_alone_and_a_damaged_cache_is_rebuilt(campaign: Path) -> None:
    _sweep(campaign, 300)
    status, listing = (expegit("status", cwd=campaign).stdout,
                       expegit("list", cwd=campaign).stdout)
    files = [p for p in _cache(campaign).glob("*.json") if p.name != "index.json"]
    assert files  # the executions' records
    for path in files:
        path.write_text("{damaged")
    assert expegit("status", cwd=campaign).stdout == status  # opened the index alone
    assert status.endswith("total     300\n")
    assert expegit("list", cwd=campaign).stdout == listing  # found them damaged: rebuilt
    assert all(p.read_text() != "{damaged" for p in _cache(campaign).glob("*.json")
               if _listed(campaign, p))


def _listed(campaign: Path, path: Path) -> bool:
    index = json.loads((_cache(campaign) / "index.json").read_text())
    return path.stem in index["shards"]


def _journal(campaign: Path) -> dict[str, list[object]]:
    data = json.loads((_cache(campaign) / "journal.json").read_text())
    return data["executions"]  # type: ignore[no-any-return]


def test_a_change_rewrites_what_it_changed_not_the_campaign(campaign: Path) -> None:
    ids = _sweep(campaign, catalog.JOURNAL_MAX + 100)  # past the journal: into shards
    expegit("status", cwd=campaign)
    before = _shards(campaign)
    # One shard per prefix in use (random ids leave one of the 256 empty now and then).
    assert {name[:2] for name in before} == {i[:2] for i in ids} and _journal(campaign) == {}
    new = Path(expegit("exec", "new", "--", "--one", cwd=campaign).stdout.strip()).name
    folder = campaign / campaigns.folder(ExecutionId(new))
    (folder / "data" / "r.txt").write_text("1")
    expegit("finish", "--exit-code", "0", cwd=folder)
    status = expegit("status", cwd=campaign).stdout
    assert "finished  1" in status
    assert _shards(campaign) == before and list(_journal(campaign)) == [new]
    swept = _sweep(campaign, 300)  # a sweep's first status writes its 300, not the rest
    status = expegit("status", cwd=campaign).stdout
    assert status.endswith(f"total     {catalog.JOURNAL_MAX + 401}\n")
    assert _shards(campaign) == before and set(_journal(campaign)) == {new, *swept}
    listing = expegit("list", "--format=json", cwd=campaign).stdout
    subprocess.run(["rm", "-rf", str(_cache(campaign))], check=True)
    assert expegit("list", "--format=json", cwd=campaign).stdout == listing  # read again
    assert expegit("status", cwd=campaign).stdout == status


def test_resolving_an_id_reads_its_shard_only(campaign: Path) -> None:
    ids = _sweep(campaign, catalog.JOURNAL_MAX + 100)
    expegit("status", cwd=campaign)
    target = ids[7]
    for path in _cache(campaign).glob("??.json"):
        if path.name != f"{target[:2]}.json":
            path.write_text("{damaged")
    shown = expegit("show", target[:8], cwd=campaign).stdout
    assert f"execution   {target}" in shown and "--i=7" in shown
    assert expegit("exec", "params", target[:6], cwd=campaign).stdout == "--i=7\n"
    damaged = [p for p in _cache(campaign).glob("??.json") if p.read_text() == "{damaged"]
    assert len(damaged) == len(list(_cache(campaign).glob("??.json"))) - 1  # not rebuilt


def test_a_writer_killed_halfway_leaves_a_cache_that_is_rebuilt(campaign: Path) -> None:
    ids = _sweep(campaign, 20)
    expegit("status", cwd=campaign)
    # What a writer killed between its records and its index leaves: the index marked, and
    # records that say something the refs do not (here: one execution finished).
    index = json.loads((_cache(campaign) / "index.json").read_text())
    (_cache(campaign) / "index.json").write_text(json.dumps({**index, "writing": True}))
    journal = json.loads((_cache(campaign) / "journal.json").read_text())
    journal["executions"][ids[0]][6] += "2099-01-01T00:00:00.000000Z finished exit=0\n"
    (_cache(campaign) / "journal.json").write_text(json.dumps(journal))
    status = expegit("status", cwd=campaign).stdout
    assert status.startswith("created   20\n") and "finished  0" in status
    assert "finished" not in expegit("list", cwd=campaign).stdout


@pytest.mark.parametrize("damage", [
    ("catalog.json", {"version": 3, "head": 5, "history": [1], "present": 7, "buckets": []}),
    ("catalog/index.json", {"version": catalog.CACHE_VERSION, "generation": "x", "head": 5,
                            "counts": [1, 2]}),
    ("catalog/index.json", {"version": catalog.CACHE_VERSION, "generation": 1,
                            "writing": False, "head": None, "notes": None, "next": 0,
                            "shards": ["../x"], "counts": {"ab": {"created": "1"}}}),
    ("catalog/journal.json", {"version": catalog.CACHE_VERSION, "generation": 1,
                              "executions": {"ab": [1, 2, 3]}}),
])
def test_a_cache_with_the_wrong_types_is_no_cache(campaign: Path,
                                                  damage: tuple[str, object]) -> None:
    _sweep(campaign, 3)
    status = expegit("status", cwd=campaign).stdout
    path = campaign / ".git" / "expegit" / damage[0]
    path.write_text(json.dumps(damage[1]))
    assert expegit("status", cwd=campaign).stdout == status
    assert len(expegit("list", cwd=campaign).stdout.splitlines()) == 3


# --- reading what cannot be written, and closed pipes (issue 7, §3) ------------------------

@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` read-only even for root: a read-only bind mount (root ignores file modes);
    without root, the modes."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")] if not p.is_symlink()}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount as root here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("cache", ["none", "behind", "fresh"])
def test_a_campaign_that_cannot_be_written_can_be_read(tmp_path: Path, campaign: Path,
                                                       cache: str) -> None:
    ids = _sweep(campaign, 5)
    expegit("finish", ids[1], "--exit-code", "1", cwd=campaign)
    if cache == "none":
        subprocess.run(["rm", "-rf", str(campaign / ".git" / "expegit")], check=True)
    else:
        expegit("status", cwd=campaign)
        if cache == "behind":
            expegit("exec", "new", "--", "--late", cwd=campaign)
    before = sorted(p.name for p in (campaign / ".git").rglob("*"))
    with read_only(campaign):
        status = expegit("status", cwd=campaign).stdout
        listing = expegit("list", cwd=campaign).stdout.splitlines()
        shown = expegit("show", ids[1][:8], cwd=campaign).stdout
    total = 6 if cache == "behind" else 5
    assert status.splitlines()[4] == "failed    1" and status.endswith(f"total     {total}\n")
    assert len(listing) == total and "state       failed" in shown
    assert sorted(p.name for p in (campaign / ".git").rglob("*")) == before


@pytest.mark.parametrize("command", [["list"], ["show", "{id}"],
                                     ["exec", "new", "--sweep=--i=range(5000)", "--dry-run"]])
def test_a_closed_pipe_stops_quietly(campaign: Path, command: list[str]) -> None:
    ids = _sweep(campaign, 3)
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the first line, as `| head -0` would be
    try:
        done = subprocess.run(["git", "expegit", *[c.format(id=ids[0]) for c in command]],
                              cwd=campaign, stdout=writer, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(writer)
    assert done.returncode in (0, 141) and done.stderr == b""
    args = shlex.join(["git", "expegit", *[c.format(id=ids[0]) for c in command]])
    piped = subprocess.run(f"{args} | head -1",
                           shell=True, cwd=campaign, capture_output=True, text=True, timeout=60)
    assert piped.stderr == "" and len(piped.stdout.splitlines()) == 1
    assert git("status", "--porcelain", cwd=campaign) == ""
