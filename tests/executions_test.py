"""exec new (single and --sweep), exec params, finish, reset, remove and ids, end to end."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import snapshot

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


def _new(campaign: Path, *args: str) -> list[Path]:
    out = expegit("exec", "new", *args, cwd=campaign).stdout.split()
    return [campaign / line for line in out]


def _trailer(repo: Path, key: str, count: int) -> list[str]:
    out = git("log", f"-{count}", "--reverse",
              f"--format=%(trailers:key={key},valueonly,separator=%x00)", cwd=repo)
    return [line for line in out.splitlines() if line]


def test_a_single_execution_has_its_folder_code_trailers_and_note(campaign: Path) -> None:
    [folder] = _new(campaign, "--", "--lr", "0.1", "--name", "a b")
    execution = folder.name
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}",
                        execution)
    assert folder.parent.name == execution[:2] and folder.parent.parent.name == "excs"
    assert (folder / "data" / "lfs" / ".gitattributes").read_text().startswith(
        "* filter=lfs diff=lfs merge=lfs -text\n")
    assert (folder / "run").is_file() and (folder / "model.py").is_file()  # the code, ignored
    assert git("status", "--porcelain", cwd=campaign) == ""
    commit = git("rev-parse", "HEAD:xprp", cwd=campaign).strip()
    assert _trailer(campaign, "Expegit-Execution", 1) == [execution]
    assert _trailer(campaign, "Expegit-Commit", 1) == [commit]
    assert _trailer(campaign, "Expegit-Parameters", 1) == ["--lr 0.1 --name 'a b'"]
    note = git("notes", "--ref=expegit", "show", "HEAD", cwd=campaign)
    assert re.fullmatch(rf"{STAMP} created by=\S+@\S+ commit={commit[:12]} seq=1 "
                        r"clone=[0-9a-f]{8}\n", note)
    assert expegit("exec", "params", execution[:6], cwd=campaign).stdout == \
        "--lr 0.1 --name 'a b'\n"


def test_the_seed_workflow_runs_and_finishes_with_lfs_results(campaign: Path) -> None:
    [folder] = _new(campaign, "--", "--seed", "3")
    # Inside its folder, an execution needs no ID: ./run $(git expegit exec params)
    params = expegit("exec", "params", cwd=folder / "data").stdout.split()
    with open(folder / "stdout", "w") as out:
        subprocess.run(["./run", *params], cwd=folder, stdout=out, check=True)
    expegit("exec", "finish", "--exit-code", "0", cwd=folder)
    assert sorted(p.name for p in folder.iterdir()) == [".gitignore", "data", "stdout"]
    assert git("status", "--porcelain", "--untracked-files=all", cwd=campaign) == ""
    base = f"HEAD:{folder.relative_to(campaign)}"
    assert git("show", f"{base}/stdout", cwd=campaign) == "ran with --seed 3\n"
    assert git("show", f"{base}/data/arguments.txt", cwd=campaign) == "--seed 3\n"
    assert git("show", f"{base}/data/lfs/weights.bin", cwd=campaign).startswith(
        "version https://git-lfs.github.com/spec/v1\n")
    assert (folder / "data" / "lfs" / "weights.bin").read_text() == "big --seed\nbig 3\n"
    assert _trailer(campaign, "Expegit-Status", 1) == ["finished"]
    assert _trailer(campaign, "Expegit-Exit-Code", 1) == ["0"]
    shown = expegit("show", folder.name[:8], cwd=campaign).stdout
    assert "state       finished" in shown and "(lfs)  data/lfs/weights.bin" in shown
    assert re.search(rf"  {STAMP} finished exit=0 seq=2 clone=[0-9a-f]{{8}}\n", shown)
    nowhere = expegit("exec", "params", cwd=campaign, check=False)
    assert (nowhere.returncode, nowhere.stderr) == (
        2, "expegit: which execution? give its ID, or run this inside its folder\n")
    again = expegit("finish", folder.name[:8], cwd=campaign, check=False)
    assert again.returncode == 4 and "is already finished" in again.stderr


def test_a_failed_run_is_recorded_as_failed(campaign: Path) -> None:
    [folder] = _new(campaign)
    expegit("finish", folder.name, "--exit-code", "3", cwd=campaign)
    [row] = json.loads(expegit("list", "--format=json", cwd=campaign).stdout)
    assert (row["state"], row["exit_code"]) == ("failed", "3")


def test_finish_refuses_a_dirty_folder_and_changes_nothing(campaign: Path) -> None:
    [folder] = _new(campaign)
    (folder / "data" / "result.txt").write_text("42\n")
    (folder / "data" / "lfs" / ".gitattributes").write_text("# emptied by mistake\n")
    before = snapshot(campaign)
    result = expegit("finish", folder.name, cwd=campaign, check=False)
    assert result.returncode == 6
    assert result.stderr.startswith(f"expegit: {folder.relative_to(campaign)} has changes to "
                                    "files git tracks (")
    assert len(result.stderr.splitlines()) == 1
    assert snapshot(campaign) == before
    assert (folder / "run").is_file()


def test_the_seed_sweep_creates_four_executions_in_order(campaign: Path) -> None:
    expression = " --param¤first;second¤--flag;"
    preview = expegit("exec", "new", "--sweep", expression, "--dry-run", cwd=campaign).stdout
    assert preview.split("\n") == [" --param first --flag", " --param first ",
                                   " --param second --flag", " --param second ", ""]
    loose = git("count-objects", cwd=campaign)
    folders = _new(campaign, "--sweep", expression, "--profile", "local")
    assert len(folders) == 4
    assert [f.name for f in folders] == _trailer(campaign, "Expegit-Execution", 4)
    assert _trailer(campaign, "Expegit-Parameters", 4) == [
        "--param first --flag", "--param first", "--param second --flag", "--param second"]
    assert _trailer(campaign, "Expegit-Profile", 4) == ["local"] * 4
    assert not (folders[0] / "run").exists()  # a batch does not copy the code 4 times
    assert git("status", "--porcelain", cwd=campaign) == ""
    assert git("count-objects", cwd=campaign) == loose  # no loose object: all in one pack
    notes = [git("notes", "--ref=expegit", "show", f"HEAD~{i}", cwd=campaign) for i in range(4)]
    batches = {re.search(r"batch=(\S+)", n).group(1) for n in notes}  # type: ignore[union-attr]
    assert len(batches) == 1


def test_dry_run_and_grammar_errors_create_nothing(campaign: Path) -> None:
    before = snapshot(campaign)
    out = expegit("exec", "new", "--sweep", "--lr=0.1,0.01 --seed=range(2)", "-r", "2",
                  "--dry-run", cwd=campaign).stdout
    assert Counter(out.splitlines()) == {f"--lr={lr} --seed={s}": 2
                                         for lr in ("0.1", "0.01") for s in (0, 1)}
    bad = expegit("exec", "new", "--sweep", "--lr=0.1,,0.2", cwd=campaign, check=False)
    assert bad.returncode == 4
    assert bad.stderr.startswith("expegit: bad --sweep expression at column 10: ")
    assert len(bad.stderr.splitlines()) == 1
    assert snapshot(campaign) == before


def test_ids_accept_unique_prefixes_and_name_ambiguous_ones(campaign: Path) -> None:
    expegit("exec", "new", "--sweep", "seed=range(1500)", cwd=campaign)
    ids = [json.loads(line)["id"] for line in
           [json.dumps(e) for e in json.loads(expegit("list", "--format=json",
                                                      cwd=campaign).stdout)]]
    assert len(ids) == 1500
    prefixes = Counter(i[:4] for i in ids)
    shared = next(p for p, n in prefixes.items() if n > 1)  # 1,500 ids in 65,536 prefixes
    result = expegit("exec", "params", shared, cwd=campaign, check=False)
    assert result.returncode == 4
    assert result.stderr.startswith(f"expegit: execution id '{shared}' is ambiguous: ")
    assert all(i in result.stderr for i in ids if i.startswith(shared))
    unique = next(i for i in ids if prefixes[i[:4]] == 1)
    assert expegit("exec", "params", unique[:4], cwd=campaign).stdout.startswith("seed=")
    missing = expegit("exec", "params", "ffff-no", cwd=campaign, check=False)
    assert (missing.returncode, missing.stderr) == (
        4, "expegit: no execution 'ffff-no' in this campaign: see git expegit list\n")


def test_reset_makes_an_execution_new_and_remove_deletes_it(campaign: Path) -> None:
    first, second = _new(campaign, "--sweep", "x=1,2")
    (first / "data" / "out.txt").write_text("result\n")
    expegit("finish", first.name, "--exit-code", "0", cwd=campaign)
    expegit("exec", "reset", first.name, cwd=campaign)
    assert not (first / "data" / "out.txt").exists()
    assert (first / "data" / "lfs" / ".gitattributes").is_file()
    assert git("status", "--porcelain", "--untracked-files=all", cwd=campaign) == ""
    note = git("notes", "--ref=expegit", "show", "HEAD~3", cwd=campaign).splitlines()
    assert [line.split()[1] for line in note] == ["created", "finished", "reset"]
    expegit("exec", "remove", second.name, cwd=campaign)
    assert not second.exists()
    assert _trailer(campaign, "Expegit-Status", 3) == ["finished", "reset", "removed"]
    rows = expegit("list", cwd=campaign).stdout.splitlines()
    assert [r.split()[:2] for r in rows] == [[first.name[:8], "created"]]
    status = expegit("status", cwd=campaign).stdout
    assert status.splitlines()[0] == "created   1" and status.endswith("total     1\n")


def test_list_filters(campaign: Path) -> None:
    folders = _new(campaign, "--sweep", "--lr=0.1,0.01 --bs=16,32", "--profile", "gpu")
    _new(campaign, "--", "--lr", "9")
    expegit("finish", folders[0].name, "--exit-code", "0", cwd=campaign)

    def ids(*filters: str) -> list[str]:
        return [r.split()[0] for r in expegit("list", *filters, cwd=campaign).stdout.split("\n")
                if r]

    assert len(ids()) == 5
    assert ids("--state=finished") == [folders[0].name[:8]]
    assert ids("--profile=gpu", "--grep=--bs=32") == [folders[1].name[:8],
                                                     folders[3].name[:8]]
    commit = git("rev-parse", "HEAD:xprp", cwd=campaign)[:7]
    assert len(ids(f"--commit={commit}")) == 5 and ids("--commit=0000000") == []
    bad = expegit("list", "--state=done", cwd=campaign, check=False)
    assert bad.returncode == 2 and "unknown state 'done'" in bad.stderr


def test_the_catalog_follows_plain_git_changes(campaign: Path) -> None:
    first, second = _new(campaign, "--sweep", "x=1,2")
    assert len(expegit("list", cwd=campaign).stdout.splitlines()) == 2
    git("rm", "-r", "-q", str(second.relative_to(campaign)), cwd=campaign)
    git("commit", "-q", "-m", "drop one by hand", cwd=campaign)
    git("notes", "--ref=expegit", "append", "-m", "2099-01-01T00:00:00.000000Z running host=h",
        "HEAD~2", cwd=campaign)
    rows = expegit("list", cwd=campaign).stdout.splitlines()
    assert [r.split()[:2] for r in rows] == [[first.name[:8], "running"]]
    (campaign / ".git" / "expegit" / "catalog.json").write_text("{not json")
    assert expegit("list", cwd=campaign).stdout.splitlines() == rows
    git("pack-refs", "--all", cwd=campaign)  # refs read from packed-refs: same answer
    assert expegit("list", cwd=campaign).stdout.splitlines() == rows
    git("notes", "--ref=expegit", "append", "-m", "2099-01-01T00:00:01.000000Z finished exit=0",
        "HEAD~2", cwd=campaign)  # a loose notes ref again, newer than the packed one
    assert expegit("list", cwd=campaign).stdout.split()[1] == "finished"
    git("reset", "-q", "--hard", "HEAD~1", cwd=campaign)  # history rewritten: rebuilt
    assert len(expegit("list", cwd=campaign).stdout.splitlines()) == 2


def test_concurrent_commands_in_one_clone_all_land(campaign: Path) -> None:
    procs = [subprocess.Popen(["git", "expegit", "exec", "new", "--sweep", f"w={i},{i}0"],
                              cwd=campaign, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(6)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(expegit("list", cwd=campaign).stdout.splitlines()) == 12
    assert git("status", "--porcelain", cwd=campaign) == ""
    assert git("fsck", "--strict", cwd=campaign) == ""


@pytest.mark.parametrize("args", [["exec", "new", "--sweep", "x=1", "-r", "0"],
                                  ["exec", "new", "--sweep", "x=1", "-r", "many"],
                                  ["finish", "abcd", "--exit-code", "ok"]])
def test_bad_numbers_are_usage_errors(campaign: Path, args: list[str]) -> None:
    result = expegit(*args, cwd=campaign, check=False)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1


def test_a_batch_that_cannot_move_the_branch_leaves_nothing(campaign: Path) -> None:
    before = snapshot(campaign)
    lock = campaign / ".git" / "refs" / "heads" / "main.lock"  # as if git were busy
    lock.write_text("")
    result = expegit("exec", "new", "--sweep", "x=range(50)", cwd=campaign, check=False)
    lock.unlink()
    assert result.returncode == 8
    assert result.stderr == (f"expegit: {lock} exists: another git command is moving that ref; "
                             f"if none is, one died there: remove {lock} and retry (nothing "
                             "was changed)\n")
    assert snapshot(campaign) == before
    assert expegit("list", cwd=campaign).stdout == ""


def test_an_unknown_commit_changes_nothing(campaign: Path) -> None:
    before = snapshot(campaign)
    for commit in ("0123abc", "no-such-branch"):
        result = expegit("exec", "new", commit, "--", "--x", "1", cwd=campaign, check=False)
        assert result.returncode == 4 and "git expegit update-expe" in result.stderr
    assert snapshot(campaign) == before


def test_reset_of_a_single_execution_places_its_code_again(campaign: Path) -> None:
    [folder] = _new(campaign, "--", "--x", "1")
    subprocess.run(["./run", "--x", "1"], cwd=folder, check=True, capture_output=True)
    expegit("finish", folder.name, "--exit-code", "0", cwd=campaign)
    assert not (folder / "run").exists()
    expegit("exec", "reset", folder.name, cwd=campaign)
    assert (folder / "run").is_file() and not (folder / "data" / "arguments.txt").exists()
    assert git("status", "--porcelain", "--untracked-files=all", cwd=campaign) == ""
    assert expegit("list", cwd=campaign).stdout.split()[1] == "created"


def test_results_ignored_by_the_users_own_rules_are_still_committed(home: Path,
                                                                   campaign: Path) -> None:
    (home / "excludes").write_text("*.log\n*.pt\n")
    git("config", "--global", "core.excludesFile", str(home / "excludes"), cwd=campaign)
    [folder] = _new(campaign)
    (folder / "data" / "metrics.log").write_text("loss 0.1\n")
    (folder / "data" / "lfs" / "model.pt").write_bytes(b"weights")
    expegit("finish", "--exit-code", "0", cwd=folder)
    base = f"HEAD:{folder.relative_to(campaign)}/data"
    assert git("show", f"{base}/metrics.log", cwd=campaign) == "loss 0.1\n"
    assert git("show", f"{base}/lfs/model.pt", cwd=campaign).startswith("version https://git-lfs")


def test_two_finishes_at_once_record_one(campaign: Path) -> None:
    [folder] = _new(campaign)
    procs = [subprocess.Popen(["git", "expegit", "finish", "--exit-code", str(code),
                               folder.name], cwd=campaign, stderr=subprocess.PIPE, text=True)
             for code in (0, 3)]
    results = sorted((p.wait(timeout=120), p.stderr.read()) for p in procs)  # type: ignore
    assert results[0][0] == 0 and results[1][0] == 4 and "is already" in results[1][1]
    assert len(_trailer(campaign, "Expegit-Status", 1)) == 1
    log = json.loads(expegit("list", "--format=json", cwd=campaign).stdout)[0]["log"]
    assert [line.split()[1] for line in log][1:] in (["finished"], ["failed"])


def test_an_uninitialised_experiment_is_named(tmp_path: Path, campaign: Path) -> None:
    copy = tmp_path / "plain-clone"
    git("clone", "-q", str(tmp_path / "campaign.git"), str(copy), cwd=tmp_path)
    before = snapshot(copy)
    for args in (["exec", "new"], ["exec", "new", "main"]):
        result = expegit(*args, cwd=copy, check=False)
        assert result.returncode in (3, 4) and len(result.stderr.splitlines()) == 1, args
        assert "submodule" in result.stderr or "update-expe" in result.stderr
    assert snapshot(copy) == before


def test_a_linked_worktree_of_a_campaign_works(tmp_path: Path, campaign: Path) -> None:
    git("worktree", "add", "-q", str(tmp_path / "wt"), "-b", "other", cwd=campaign)
    wt = tmp_path / "wt"
    missing = expegit("exec", "new", cwd=wt, check=False)
    assert (missing.returncode, missing.stderr) == (3, "expegit: the experiment submodule xprp/ "
                                                       "is missing: run git submodule update "
                                                       "--init\n")
    git("-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init", cwd=wt)
    folders = _new(wt, "--sweep", "x=1,2")
    assert [f.parent.parent.parent for f in folders] == [wt, wt]
    assert len(expegit("list", cwd=wt).stdout.splitlines()) == 2
    assert expegit("list", cwd=campaign).stdout == ""  # another branch
    assert git("fsck", "--strict", cwd=campaign) == ""
