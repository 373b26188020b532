"""The post-commit hook: install and uninstall (chaining, core.hooksPath), batch requests in
the campaign, in xprp/ and in the user's own clone of the experiment, exactly once.

Real git, real commits, the installed `git expegit`. EXPEGIT_AGENT=off keeps the hook from
starting the agent, so that the tests expand what is spooled themselves (expand_pending is
what the agent calls) and find the executions still queued.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from git_expegit import campaign as campaigns
from git_expegit import queue
from git_expegit import requests
from tests.conftest import expegit
from tests.conftest import git

SWEEP = "--lr=0.1,0.01"


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("EXPEGIT_AGENT", "off")
    yield


def commit(repo: Path, subject: str, *trailers: str, allow_empty: bool = True
           ) -> subprocess.CompletedProcess[str]:
    """`git commit` as a user types it, with --trailer for each of `trailers`."""
    args = ["git", "commit", "-q", "-m", subject]
    if allow_empty:
        args.append("--allow-empty")
    for trailer in trailers:
        args += ["--trailer", trailer]
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def request(repo: Path, *extra: str, sweep: str = SWEEP, profile: str = "local",
            subject: str = "lr sweep") -> subprocess.CompletedProcess[str]:
    return commit(repo, subject, f"Expegit-Sweep: {sweep}", f"Expegit-Profile: {profile}",
                  *extra)


def spooled(root: Path) -> list[dict[str, object]]:
    folder = root / ".git" / "expegit" / "requests"
    if not folder.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def expand(root: Path) -> list[queue.Batch]:
    return requests.expand_pending(campaigns.find(root))


def executions(root: Path) -> list[dict[str, Any]]:
    out = expegit("list", "--format=json", cwd=root).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def batch_of(execution: dict[str, Any]) -> str | None:
    log = execution["log"]
    assert isinstance(log, list)
    for line in log:
        if " created " in line:
            return next((w.split("=", 1)[1] for w in line.split() if w.startswith("batch=")),
                        None)
    return None


def pinned(root: Path) -> str:
    return git("rev-parse", "HEAD:xprp", cwd=root).strip()


def hook_dir(repo: Path) -> Path:
    return repo / git("rev-parse", "--git-path", "hooks", cwd=repo).strip()


def hook_log(root: Path) -> str:
    path = root / ".git" / "expegit" / "hook.log"
    return path.read_text() if path.exists() else ""


# Installing -----------------------------------------------------------------------------------

def test_install_chains_the_previous_hook_and_uninstall_restores_it(campaign: Path,
                                                                    tmp_path: Path) -> None:
    xprp = campaign / "xprp"
    # The campaign has git-lfs's post-commit already; xprp/ gets one of the user's, a
    # symlink-free script with an unusual mode, that leaves a trace when it runs.
    theirs = hook_dir(xprp) / "post-commit"
    theirs.parent.mkdir(exist_ok=True)
    marker = tmp_path / "ran"
    theirs.write_bytes(f"#!/bin/sh\n# mine\necho \"$@\" ran >> {marker}\n".encode())
    theirs.chmod(0o750)
    lfs = hook_dir(campaign) / "post-commit"
    before = {p: (p.read_bytes(), p.stat().st_mode) for p in (theirs, lfs)}

    out = expegit("hooks", "install", cwd=campaign).stdout
    assert "installed .git/hooks/post-commit (the hook that was there runs after it)" in out
    for hook in (lfs, theirs):
        assert "git-expegit post-commit hook" in hook.read_text()
        assert os.access(hook, os.X_OK)
        chained = hook.with_name("post-commit.expegit-chained")
        assert (chained.read_bytes(), chained.stat().st_mode) == before[hook]

    # The user's hook still runs after each commit, and so does the request's handling.
    commit(xprp, "code", allow_empty=True)
    assert marker.read_text() == "ran\n"

    # A second install changes nothing but the stub itself; the chained hook stays.
    assert "updated" in expegit("hooks", "install", cwd=campaign).stdout
    assert (theirs.with_name("post-commit.expegit-chained").read_bytes()
            == before[theirs][0])

    out = expegit("hooks", "uninstall", cwd=campaign).stdout
    assert "(the hook that was there before is back)" in out
    for hook in (lfs, theirs):
        assert (hook.read_bytes(), hook.stat().st_mode) == before[hook]
        assert not hook.with_name("post-commit.expegit-chained").exists()
    assert "nothing to remove" in expegit("hooks", "uninstall", cwd=campaign).stdout


def test_install_without_a_previous_hook_and_uninstall_removes_it(campaign: Path) -> None:
    hook = hook_dir(campaign) / "post-commit"
    hook.unlink()  # git-lfs's
    expegit("hooks", "install", cwd=campaign)
    text = hook.read_text()
    assert text.startswith("#!/bin/sh\n# git-expegit post-commit hook")
    # The Python that has git expegit is written in: the hook works without it on PATH.
    python = next(line for line in text.splitlines() if line.startswith("python="))[7:]
    assert subprocess.run([python, "-c", "import git_expegit"]).returncode == 0
    assert not hook.with_name("post-commit.expegit-chained").exists()
    expegit("hooks", "uninstall", cwd=campaign)
    assert not hook.exists()


def test_a_symlinked_hook_is_chained_and_restored_as_a_symlink(campaign: Path,
                                                               tmp_path: Path) -> None:
    shared = tmp_path / "shared-hook"
    marker = tmp_path / "ran"
    shared.write_text(f"#!/bin/sh\necho ran >> {marker}\n")
    shared.chmod(0o755)
    hook = hook_dir(campaign / "xprp") / "post-commit"
    hook.symlink_to(shared)
    expegit("hooks", "install", cwd=campaign)
    assert hook.with_name("post-commit.expegit-chained").readlink() == shared
    commit(campaign / "xprp", "code")
    assert marker.read_text() == "ran\n"
    expegit("hooks", "uninstall", cwd=campaign)
    assert hook.readlink() == shared and shared.read_text().startswith("#!/bin/sh")


def test_an_install_cut_between_its_two_renames_is_completed_or_undone(campaign: Path) -> None:
    """Killed after the previous hook was moved aside and before the stub was written:
    there is no post-commit, only the chained one. Install completes it; uninstall puts
    the previous hook back."""
    hook = hook_dir(campaign) / "post-commit"
    before = hook.read_bytes()
    hook.rename(hook.with_name("post-commit.expegit-chained"))
    expegit("hooks", "uninstall", cwd=campaign)
    assert hook.read_bytes() == before
    hook.rename(hook.with_name("post-commit.expegit-chained"))
    expegit("hooks", "install", cwd=campaign)
    assert "git-expegit post-commit hook" in hook.read_text()
    expegit("hooks", "uninstall", cwd=campaign)
    assert hook.read_bytes() == before


def test_a_foreign_hook_beside_a_chained_one_is_refused_before_any_change(
        campaign: Path) -> None:
    xprp_hooks = hook_dir(campaign / "xprp")
    (xprp_hooks / "post-commit").write_text("#!/bin/sh\n")
    (xprp_hooks / "post-commit.expegit-chained").write_text("#!/bin/sh\n")
    lfs = (hook_dir(campaign) / "post-commit").read_bytes()
    done = expegit("hooks", "install", cwd=campaign, check=False)
    assert done.returncode == 4 and "move one of them away" in done.stderr
    assert (hook_dir(campaign) / "post-commit").read_bytes() == lfs  # the campaign's too


def test_the_stub_is_the_top_level_hooks_file() -> None:
    top = Path(__file__).parent.parent / "hooks" / "post-commit"
    assert os.access(top, os.X_OK)
    from git_expegit import hooks

    installed = hooks.stub()
    assert installed.replace(f"python={sys.executable}\n", 'python=""\n') == top.read_text()


def test_core_hooks_path_of_the_repository_is_used(campaign: Path) -> None:
    git("config", "core.hooksPath", ".githooks", cwd=campaign)
    expegit("hooks", "install", cwd=campaign)
    assert "git-expegit post-commit hook" in (campaign / ".githooks" / "post-commit").read_text()
    commit(campaign, "a request", f"Expegit-Sweep: {SWEEP}", "Expegit-Profile: local")
    assert len(spooled(campaign)) == 1  # git ran it from there
    expegit("hooks", "uninstall", cwd=campaign)
    assert not (campaign / ".githooks" / "post-commit").exists()


def test_a_global_core_hooks_path_is_refused_with_a_hint(campaign: Path, home: Path) -> None:
    shared = home / "githooks"
    git("config", "--global", "core.hooksPath", str(shared), cwd=campaign)
    before = sorted(p.name for p in (campaign / ".git" / "hooks").iterdir())
    done = expegit("hooks", "install", cwd=campaign, check=False)
    assert done.returncode == 4
    assert done.stderr.count("\n") == 1
    assert "core.hooksPath" in done.stderr and "global" in done.stderr
    assert "config core.hooksPath .git/hooks" in done.stderr
    assert not shared.exists()
    assert sorted(p.name for p in (campaign / ".git" / "hooks").iterdir()) == before


def test_install_outside_a_campaign_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    git("init", "-q", cwd=plain)
    done = expegit("hooks", "install", cwd=plain, check=False)
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "not in a campaign" in done.stderr
    assert not (plain / ".git" / "hooks" / "post-commit").exists()


# Requests in the campaign ---------------------------------------------------------------------

@pytest.fixture
def hooked(campaign: Path) -> Path:
    expegit("hooks", "install", cwd=campaign)
    return campaign


def test_a_request_is_spooled_then_expanded_into_queued_executions(hooked: Path) -> None:
    first = pinned(hooked)
    # Another experiment commit, which the request names: short hashes work.
    done = request(hooked, "Expegit-Repeat: 2", "Expegit-Name: lr-sweep",
                   f"Expegit-Commit: {first[:8]}")
    assert "batch request" in done.stderr and "handed to the agent" in done.stderr
    [spool] = spooled(hooked)
    assert spool["sweep"] == SWEEP and spool["profile"] == "local" and spool["repeat"] == 2
    assert executions(hooked) == []  # the hook only spools

    [batch] = expand(hooked)
    assert batch.name == "lr-sweep" and len(batch.ids) == 4
    found = executions(hooked)
    assert [e["parameters"] for e in found] == ["--lr=0.1", "--lr=0.1", "--lr=0.01",
                                                "--lr=0.01"]
    assert {e["state"] for e in found} == {"queued"}
    assert {e["profile"] for e in found} == {"local"}
    assert {e["commit"] for e in found} == {first}
    assert {batch_of(e) for e in found} == {"lr-sweep"}
    assert all(f"request={spool['key']}" in e["log"][0] for e in found)
    assert spooled(hooked) == []
    assert expand(hooked) == []


def test_amend_cherry_pick_and_rebase_never_expand_a_request_twice(hooked: Path) -> None:
    request(hooked)
    git("commit", "--amend", "--allow-empty", "-q", "--no-edit", cwd=hooked)  # before the expansion
    assert len(spooled(hooked)) == 1  # the same request
    assert [len(b.ids) for b in expand(hooked)] == [2]
    made = git("log", "-1", "--format=%H", "--grep=lr sweep", cwd=hooked).strip()

    # Amend of the request itself after its expansion (the branch has moved on: the
    # expansion's commits), on a branch at the request.
    git("switch", "-q", "-c", "other", made, cwd=hooked)
    git("commit", "--amend", "--allow-empty", "-q", "-m",
        f"lr sweep, reworded\n\nExpegit-Sweep: {SWEEP}\nExpegit-Profile: local", cwd=hooked)
    assert len(spooled(hooked)) == 1
    git("switch", "-q", "main", cwd=hooked)
    git("cherry-pick", "--allow-empty", made, cwd=hooked)
    assert len(spooled(hooked)) == 1
    assert expand(hooked) == []
    assert "was expanded already" in hook_log(hooked)

    # A rebase replays it (and what follows) on a new base: the hook runs for each commit.
    git("switch", "-q", "other", cwd=hooked)
    commit(hooked, "after the request")
    git("rebase", "-q", "--force-rebase", "--keep-empty", "HEAD~2", cwd=hooked)
    assert len(spooled(hooked)) == 1
    assert expand(hooked) == []
    git("switch", "-q", "main", cwd=hooked)
    assert len(executions(hooked)) == 2


def test_a_changed_request_is_a_new_request(hooked: Path) -> None:
    request(hooked)
    request(hooked, sweep="--lr=0.5")
    assert sorted(len(b.ids) for b in expand(hooked)) == [1, 2]


def test_a_request_that_arrives_by_fetch_is_never_expanded(hooked: Path,
                                                          tmp_path: Path) -> None:
    other = tmp_path / "other"
    expegit("clone", str(tmp_path / "campaign.git"), str(other), cwd=tmp_path)
    expegit("hooks", "install", cwd=other)
    # A request made and pushed before any expansion, then one expanded and synced.
    request(hooked, sweep="--seed=1,2")
    git("push", "-q", "origin", "main", cwd=hooked)
    git("pull", "-q", "--no-rebase", "origin", "main", cwd=other)
    assert spooled(other) == []
    # A local commit of the other clone replayed on the fetched request by pull --rebase.
    commit(other, "a note of mine")
    request(hooked, sweep="--seed=3")
    expand(hooked)
    expegit("sync", cwd=hooked)
    git("pull", "-q", "--rebase", "origin", "main", cwd=other)
    expegit("sync", cwd=other)
    assert spooled(other) == []
    assert expand(other) == []
    # Those of the first clone, expanded and owned there.
    first = (hooked / ".git" / "expegit" / "clone-id").read_text().strip()
    assert [e["parameters"] for e in executions(other)] == ["--seed=1", "--seed=2", "--seed=3"]
    assert all(f"owner={first}" in e["log"][1] for e in executions(other))


def test_a_bad_trailer_does_not_fail_the_commit(hooked: Path) -> None:
    for trailers, says in [
        (["Expegit-Sweep: --lr=1", "Expegit-Repeat: zero", "Expegit-Profile: local"],
         "Expegit-Repeat must be a whole number"),
        (["Expegit-Sweep: --lr=1"], "needs Expegit-Profile"),
        (["Expegit-Sweep: --lr=1", "Expegit-Profile: no/such"], "invalid Expegit-Profile"),
        (["Expegit-Sweep: --lr=1", "Expegit-Profile: local", "Expegit-Repeats: 2"],
         "unknown trailer Expegit-Repeats"),
    ]:
        head = git("rev-parse", "HEAD", cwd=hooked)
        done = commit(hooked, "oops", *trailers)
        assert git("rev-parse", "HEAD", cwd=hooked) != head  # the commit is made
        assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
        assert says in hook_log(hooked).splitlines()[-1]
    # Not a trailer: the line is in the body, not in the last paragraph.
    done = commit(hooked, "oops\n\nExpegit-Sweep: --lr=1\n\nsigned off, sort of")
    assert "not a trailer" in done.stderr
    assert spooled(hooked) == []
    # A grammar error is found at expansion: dropped and logged, nothing created.
    request(hooked, sweep="--lr=0.1,,0.2")
    assert expand(hooked) == []
    assert spooled(hooked) == [] and executions(hooked) == []
    assert "Expegit-Sweep '--lr=0.1,,0.2'" in hook_log(hooked).splitlines()[-1]


def test_a_failing_spool_does_not_fail_the_commit(hooked: Path) -> None:
    """Whatever goes wrong in the hook (here the spool folder cannot be made), the commit is
    made, the hook says so in one line, and nothing half written stays."""
    state = hooked / ".git" / "expegit"
    state.mkdir(exist_ok=True)
    (state / "requests").write_text("not a folder")
    head = git("rev-parse", "HEAD", cwd=hooked)
    done = request(hooked)
    assert git("rev-parse", "HEAD", cwd=hooked) != head
    assert done.stderr.count("\n") == 1 and "was not queued" in done.stderr
    assert "was not queued" in hook_log(hooked)
    assert sorted(p.name for p in state.iterdir() if p.name.endswith(".tmp")) == []


def test_expansion_is_exactly_once_across_concurrent_calls_and_sigkill(hooked: Path) -> None:
    program = ("import sys; from pathlib import Path; from git_expegit import campaign, "
               "requests; requests.expand_pending(campaign.find(Path(sys.argv[1])))")
    sweeps = ["--seed=range(3)", "--seed=range(4)", "--seed=range(5)"]
    for sweep in sweeps:
        request(hooked, sweep=sweep)
    # Killed at different moments, then two at once.
    for delay in (0.05, 0.15, 0.3, 0.5, 0.8):
        child = subprocess.Popen([sys.executable, "-c", program, str(hooked)])
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
    children = [subprocess.Popen([sys.executable, "-c", program, str(hooked)])
                for _ in range(2)]
    assert [c.wait(timeout=120) for c in children] == [0, 0]
    assert spooled(hooked) == []
    params = sorted(e["parameters"] for e in executions(hooked))
    assert params == sorted(f"--seed={i}" for n in (3, 4, 5) for i in range(n))


@pytest.mark.parametrize("where", ["git_expegit.queue.wake", "git_expegit.requests._remember"])
def test_killed_after_publishing_a_batch_never_expands_it_again(hooked: Path,
                                                                where: str) -> None:
    """SIGKILL between the publish of the batch and the removal of its spool file (the
    narrowest window, hit on purpose): the next expansion finds the key in the notes."""
    module, name = where.rsplit(".", 1)
    program = (f"import os, sys, importlib; from pathlib import Path; "
               f"m = importlib.import_module({module!r}); "
               f"setattr(m, {name!r}, lambda *a, **k: os.kill(os.getpid(), 9)); "
               "from git_expegit import campaign, requests; "
               "requests.expand_pending(campaign.find(Path(sys.argv[1])))")
    request(hooked)
    killed = subprocess.run([sys.executable, "-c", program, str(hooked)])
    assert killed.returncode == -signal.SIGKILL
    assert len(spooled(hooked)) == 1 and len(executions(hooked)) == 2
    assert expand(hooked) == []
    assert spooled(hooked) == [] and len(executions(hooked)) == 2


def test_the_hook_path_imports_no_pygit2(hooked: Path) -> None:
    """pygit2 alone costs 0.1 s to import: the hook reads its commit with one git call. The
    agent's control module is on the path too (the hook starts the agent)."""
    request(hooked)
    program = ("import sys; from git_expegit.commands import hooks_cli; "
               "hooks_cli.post_commit(__import__('pathlib').Path.cwd()); "
               "import git_expegit.agent.control; "
               "print('pygit2' in sys.modules, 'git_expegit.queue' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", program], cwd=hooked, capture_output=True,
                         text=True, check=True).stdout
    assert out == "False False\n"


# Requests in the experiment -------------------------------------------------------------------

def test_a_request_in_xprp_pins_the_campaign_and_runs_there(hooked: Path,
                                                            tmp_path: Path) -> None:
    xprp = hooked / "xprp"
    git("switch", "-q", "-c", "faster", cwd=xprp)
    (xprp / "model.py").write_text("print('faster model')\n")
    git("add", "model.py", cwd=xprp)
    done = commit(xprp, "a faster model", f"Expegit-Sweep: {SWEEP}", "Expegit-Profile: local",
                  allow_empty=False)
    assert "on experiment commit" in done.stderr
    new = git("rev-parse", "HEAD", cwd=xprp).strip()
    assert pinned(hooked) != new  # the hook only spools
    [batch] = expand(hooked)
    assert pinned(hooked) == new
    assert {e["commit"] for e in executions(hooked)} == {new}
    assert len(batch.ids) == 2
    # The user's xprp/ stays on their branch; the campaign is clean.
    assert git("symbolic-ref", "--short", "HEAD", cwd=xprp).strip() == "faster"
    assert git("status", "--porcelain", cwd=hooked) == ""
    # Sync puts the commit on the experiment's remote, on the user's branch, first.
    expegit("sync", cwd=hooked)
    assert git("rev-parse", "faster", cwd=tmp_path / "expe.git").strip() == new
    assert git("rev-parse", "main:xprp", cwd=tmp_path / "campaign.git").strip() == new


def test_a_request_in_the_users_clone_pins_the_campaign(hooked: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    git("clone", "-q", str(tmp_path / "expe.git"), str(mine), cwd=tmp_path)
    out = expegit("hooks", "install", "--experiment", str(mine), cwd=hooked).stdout
    assert str(hook_dir(mine).relative_to(tmp_path)) in out.replace("../", "")
    (mine / "model.py").write_text("print('model 2')\n")
    git("add", "model.py", cwd=mine)
    commit(mine, "model 2", "Expegit-Sweep: --seed=range(3)", "Expegit-Profile: local",
           "Expegit-Name: model-2", allow_empty=False)
    new = git("rev-parse", "HEAD", cwd=mine).strip()
    [batch] = expand(hooked)
    assert batch.name == "model-2" and len(batch.ids) == 3
    assert pinned(hooked) == new
    assert git("rev-parse", "HEAD", cwd=hooked / "xprp").strip() == new  # as update-expe
    assert git("status", "--porcelain", cwd=hooked) == ""
    expegit("sync", cwd=hooked)
    assert git("rev-parse", "main", cwd=tmp_path / "expe.git").strip() == new

    # A commit on no branch cannot be pushed for the user: sync refuses, with a hint.
    git("switch", "-q", "--detach", cwd=mine)
    commit(mine, "detached", "Expegit-Sweep: --seed=9", "Expegit-Profile: local")
    expand(hooked)
    done = expegit("sync", cwd=hooked, check=False)
    assert done.returncode == 7
    assert "which the experiment's remote does not have" in done.stderr
    assert "push origin" in done.stderr

    expegit("hooks", "uninstall", "--experiment", str(mine), cwd=hooked)
    assert not (hook_dir(mine) / "post-commit").exists()
    assert subprocess.run(["git", "config", "expegit.campaign"], cwd=mine).returncode == 1


def test_install_experiment_needs_a_clone(hooked: Path, tmp_path: Path) -> None:
    done = expegit("hooks", "install", "--experiment", str(tmp_path / "nowhere"), cwd=hooked,
                   check=False)
    assert done.returncode == 4 and "not a clone" in done.stderr


# Speed ----------------------------------------------------------------------------------------

def test_the_hook_hands_a_thousand_executions_to_the_agent_unexpanded(hooked: Path) -> None:
    """The hook only spools: the expansion is the agent's (its latency is bench/p8_hook.py's
    to measure, not a test's)."""
    for i in range(5):
        commit(hooked, "big", "Expegit-Sweep: --seed=range(1000)", "Expegit-Profile: local",
               f"Expegit-Name: b{i}")
    assert len(spooled(hooked)) == 5
    assert expegit("list", "--format=json", cwd=hooked).stdout.strip() == "[]"
