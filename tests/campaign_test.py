"""git expegit init, clone and update-expe, and what is refused, on real git and git-lfs."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import snapshot


def test_init_makes_the_seed_layout_and_pushes_to_a_new_bare_remote(tmp_path: Path,
                                                                    experiment: Path) -> None:
    expegit("init", str(experiment), str(tmp_path / "c.git"), "c", cwd=tmp_path)
    root = tmp_path / "c"
    assert yaml.safe_load((root / ".expegit.yml").read_text()) == {
        "experiment": str(experiment), "layout": 1}
    assert (root / "excs" / ".gitkeep").is_file()
    assert (root / "xprp" / "run").is_file()
    pinned = git("ls-tree", "HEAD", "xprp", cwd=root).split()
    assert pinned[:2] == ["160000", "commit"]
    assert pinned[2] == git("rev-parse", "main", cwd=experiment).strip()
    assert git("config", "notes.rewriteRef", cwd=root).strip() == "refs/notes/expegit"
    assert git("config", "feature.manyFiles", cwd=root).strip() == "true"
    assert git("rev-parse", "main", cwd=tmp_path / "c.git") == git("rev-parse", "HEAD", cwd=root)
    assert git("status", "--porcelain", cwd=root) == ""


def test_init_in_an_existing_repository_keeps_its_history(tmp_path: Path,
                                                          experiment: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    git("init", "-q", "-b", "main", cwd=root)
    (root / "notes.md").write_text("my notes\n")
    git("add", ".", cwd=root)
    git("commit", "-q", "-m", "mine", cwd=root)
    expegit("init", str(experiment), cwd=root)
    assert git("log", "--format=%s", cwd=root).splitlines() == ["Initialize campaign", "mine"]


def test_init_twice_is_refused_and_changes_nothing(campaign: Path, experiment: Path) -> None:
    before = snapshot(campaign)
    result = expegit("init", str(experiment), cwd=campaign, check=False)
    assert result.returncode == 3
    assert result.stderr.strip().endswith("is already a campaign (.expegit.yml exists)")
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(campaign) == before


def test_init_with_an_unreachable_experiment_leaves_no_folder(tmp_path: Path) -> None:
    result = expegit("init", str(tmp_path / "missing.git"), str(tmp_path / "c.git"), "c",
                     cwd=tmp_path, check=False)
    assert result.returncode == 4
    assert result.stderr.startswith("expegit: reading the experiment at ")
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.git").exists()


def test_clone_brings_the_submodule_the_notes_and_lfs_files(tmp_path: Path,
                                                            campaign: Path) -> None:
    path = expegit("exec", "new", "--", "--lr", "0.1", cwd=campaign).stdout.strip()
    run = campaign / path / "run"
    assert run.is_file()
    subprocess_run(campaign / path)
    expegit("finish", "-p", Path(path).name[:8], "--exit-code", "0", cwd=campaign)
    expegit("clone", str(tmp_path / "campaign.git"), "copy", cwd=tmp_path)
    copy = tmp_path / "copy"
    assert (copy / "xprp" / "run").is_file()
    weights = copy / path / "data" / "lfs" / "weights.bin"
    assert weights.read_text() == "big --lr\nbig 0.1\n"  # the real content, checked out
    pointer = git("cat-file", "-p", f"HEAD:{path}/data/lfs/weights.bin", cwd=copy)
    assert pointer.startswith("version https://git-lfs.github.com/spec/v1\n")
    assert (copy / path / "data" / "arguments.txt").read_text() == "--lr 0.1\n"  # plain git
    assert "finished exit=0" in git("notes", "--ref=expegit", "show",
                                    _creation(copy, Path(path).name), cwd=copy)
    assert expegit("list", cwd=copy).stdout.split()[1] == "finished"


def subprocess_run(folder: Path) -> None:
    """The seed's manual workflow: ./run $(git expegit exec params ID) > stdout."""
    params = expegit("exec", "params", folder.name, cwd=folder).stdout.split()
    with open(folder / "stdout", "w") as out:
        subprocess.run(["./run", *params], cwd=folder, stdout=out, check=True)


def _creation(repo: Path, execution: str) -> str:
    return git("log", "--format=%H", f"--grep=Expegit-Execution: {execution}",
               "--grep=Create execution", "--all-match", cwd=repo).strip()


def test_clone_of_a_plain_repository_is_refused_and_leaves_nothing(tmp_path: Path,
                                                                   experiment: Path) -> None:
    result = expegit("clone", str(experiment), "copy", cwd=tmp_path, check=False)
    assert result.returncode == 3
    assert "is not a campaign (no .expegit.yml)" in result.stderr
    assert not (tmp_path / "copy").exists()


def test_commands_outside_a_campaign_say_so(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    git("init", "-q", cwd=plain)
    for args in (["status"], ["list"], ["exec", "new"], ["sync"], ["show", "abcd"]):
        result = expegit(*args, cwd=plain, check=False)
        assert result.returncode == 3, args
        assert result.stderr == (f"expegit: {plain} is not in a campaign (no .expegit.yml at "
                                 "the root of its git repository): use git expegit init or git "
                                 "expegit clone\n")


def test_update_expe_pins_the_newest_experiment_commit(tmp_path: Path, campaign: Path,
                                                       experiment: Path) -> None:
    work = tmp_path / "expe"
    (work / "model.py").write_text("print('model v2')\n")
    git("commit", "-q", "-am", "second version", cwd=work)
    git("push", "-q", str(experiment), "main", cwd=work)
    newest = git("rev-parse", "HEAD", cwd=work).strip()
    unknown = expegit("exec", "new", newest[:7], cwd=campaign, check=False)
    assert unknown.returncode == 4
    assert unknown.stderr == (f"expegit: unknown experiment commit {newest[:7]!r}: run git "
                              "expegit update-expe to fetch the experiment's new commits\n")
    expegit("update-expe", cwd=campaign)
    assert git("ls-tree", "HEAD", "xprp", cwd=campaign).split()[2] == newest
    assert git("status", "--porcelain", cwd=campaign) == ""
    path = expegit("exec", "new", cwd=campaign).stdout.strip()
    assert (campaign / path / "model.py").read_text() == "print('model v2')\n"
    commits = git("log", "--format=%H", cwd=campaign)
    expegit("update-expe", cwd=campaign)  # already there: no new commit
    assert git("log", "--format=%H", cwd=campaign) == commits


def test_without_git_lfs_finish_and_init_refuse_and_change_nothing(tmp_path: Path,
                                                                   campaign: Path) -> None:
    path = expegit("exec", "new", cwd=campaign).stdout.strip()
    (campaign / path / "data" / "result.txt").write_text("42\n")
    bin_dir = tmp_path / "bin"  # git and git-expegit, but no git-lfs
    bin_dir.mkdir()
    for tool in ("git", "git-expegit"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir)}
    before = snapshot(campaign)
    result = expegit("finish", Path(path).name, cwd=campaign, check=False, env=env)
    assert result.returncode == 5
    assert result.stderr == ("expegit: git-lfs is not installed: install it (e.g. apt-get "
                             "install git-lfs) and retry\n")
    assert snapshot(campaign) == before
    result = expegit("init", str(tmp_path / "expe.git"), "other", cwd=tmp_path, check=False,
                     env=env)
    assert result.returncode == 5 and not (tmp_path / "other").exists()


def test_help_and_usage_errors(tmp_path: Path) -> None:
    assert expegit("-h", cwd=tmp_path).stdout.startswith("Organise, archive and collaborate")
    done = expegit(cwd=tmp_path, check=False)
    assert (done.returncode, done.stderr) == (2, "expegit: invalid command line; see git "
                                                 "expegit -h\n")
    # `--help` through git: tests/manpage_test.py


def test_a_failed_init_in_a_users_folder_takes_back_what_it_added(tmp_path: Path,
                                                                  experiment: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "xprp").write_text("in the way\n")
    (folder / "notes.md").write_text("mine\n")
    result = expegit("init", str(experiment), cwd=folder, check=False)
    assert result.returncode == 4 and len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["notes.md", "xprp"]
    assert (folder / "xprp").read_text() == "in the way\n"


def test_init_push_without_a_remote_is_refused_first(tmp_path: Path, experiment: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    result = expegit("init", "-p", str(experiment), cwd=folder, check=False)
    assert (result.returncode, result.stderr) == (
        2, f"expegit: -p needs a remote: give CAMPAIGN_URL, or add origin to {folder} first\n")
    assert list(folder.iterdir()) == []


# The original's commands, verbatim ---------------------------------------------------------


def test_init_with_two_arguments_is_experiment_and_path(tmp_path: Path, experiment: Path) -> None:
    # The original's `expegit init EXPERIMENT_URL PATH`: no remote is made, none is origin.
    expegit("init", str(experiment), "mine", cwd=tmp_path)
    assert (tmp_path / "mine" / ".expegit.yml").is_file()
    assert git("remote", cwd=tmp_path / "mine") == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expe", "expe.git", "home", "mine"]
    result = expegit("init", "-p", str(experiment), "other", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "-p needs a remote" in result.stderr
    assert not (tmp_path / "other").exists()


def test_init_push_in_a_clone_of_an_empty_remote_with_a_relative_experiment(
        tmp_path: Path, experiment: Path) -> None:
    remote = tmp_path / "campaign.git"
    git("init", "-q", "--bare", str(remote), cwd=tmp_path)  # plain: its HEAD names master
    git("clone", "-q", str(remote), "mine", cwd=tmp_path)
    mine = tmp_path / "mine"
    expegit("init", "-p", "../expe.git", ".", cwd=mine)
    assert yaml.safe_load((mine / ".expegit.yml").read_text())["experiment"] == str(
        experiment.resolve())
    branch = git("symbolic-ref", "HEAD", cwd=mine).strip()
    assert git("rev-parse", branch, cwd=remote) == git("rev-parse", "HEAD", cwd=mine)
    assert git("symbolic-ref", "HEAD", cwd=remote).strip() == branch
    assert git("status", "--porcelain", cwd=mine) == ""
    expegit("clone", str(remote), "copy", cwd=tmp_path)
    assert (tmp_path / "copy" / "xprp" / "run").is_file()


def test_a_campaign_whose_remote_is_itself_is_refused(tmp_path: Path, experiment: Path) -> None:
    result = expegit("init", str(experiment), "c", "c", cwd=tmp_path, check=False)
    assert result.returncode == 4 and len(result.stderr.splitlines()) == 1
    assert "is the campaign" in result.stderr and not (tmp_path / "c").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    git("init", "-q", cwd=mine)
    git("remote", "add", "origin", ".", cwd=mine)
    before = snapshot(mine)
    for args in (["-p", str(experiment)], [str(experiment)]):
        result = expegit("init", *args, cwd=mine, check=False)
        assert result.returncode == 4, result.stderr
        assert result.stderr == (f"expegit: the campaign's remote . is the campaign {mine} "
                                 "itself: give another CAMPAIGN_URL (init EXPERIMENT_URL "
                                 "CAMPAIGN_URL PATH)\n")
        assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == [".git"]


def test_a_failed_init_in_a_repository_takes_back_its_commit_and_index(
        tmp_path: Path, experiment: Path) -> None:
    refusing = tmp_path / "refusing.git"
    git("init", "-q", "--bare", str(refusing), cwd=tmp_path)
    hook = refusing / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho no >&2\nexit 1\n")
    hook.chmod(0o755)
    mine = tmp_path / "mine"
    mine.mkdir()
    git("init", "-q", "-b", "main", cwd=mine)
    (mine / "notes.md").write_text("mine\n")
    git("add", ".", cwd=mine)
    git("commit", "-q", "-m", "mine", cwd=mine)
    before = snapshot(mine)
    result = expegit("init", str(experiment), str(refusing), ".", cwd=mine, check=False)
    assert result.returncode == 7 and len(result.stderr.splitlines()) == 1
    assert snapshot(mine) == before
    assert git("remote", cwd=mine) == "" and not (mine / ".git" / "modules" / "xprp").exists()
    config = subprocess.run(["git", "config", "--get-regexp", r"^(submodule|remote)\."],
                            cwd=mine, capture_output=True, text=True)
    assert config.stdout == ""
    # Nothing left behind stops a second try (here with a relative experiment path).
    expegit("init", "../expe.git", cwd=mine)
    assert git("log", "--format=%s", cwd=mine).splitlines() == ["Initialize campaign", "mine"]


def test_clone_of_a_plain_bare_remote_finds_the_campaigns_branch(tmp_path: Path,
                                                                 experiment: Path) -> None:
    remote = tmp_path / "plain.git"
    git("init", "-q", "--bare", str(remote), cwd=tmp_path)  # its HEAD names master
    expegit("init", str(experiment), str(remote), "c", cwd=tmp_path)
    # init points the remote's HEAD at the campaign's branch: plain git clone works too.
    assert git("symbolic-ref", "HEAD", cwd=remote) == "refs/heads/main\n"
    git("clone", "-q", str(remote), "plain-clone", cwd=tmp_path)
    assert (tmp_path / "plain-clone" / ".expegit.yml").is_file()
    # A remote pushed to otherwise still names master: clone finds main.
    git("symbolic-ref", "HEAD", "refs/heads/master", cwd=remote)
    expegit("clone", str(remote), "copy", cwd=tmp_path)
    copy = tmp_path / "copy"
    assert (copy / ".expegit.yml").is_file() and (copy / "xprp" / "run").is_file()
    assert git("rev-parse", "--abbrev-ref", "main@{upstream}", cwd=copy) == "origin/main\n"
    assert git("status", "--porcelain", cwd=copy) == ""
    assert expegit("status", cwd=copy).returncode == 0


def test_clone_into_a_file_or_a_users_empty_folder(tmp_path: Path, campaign: Path,
                                                   experiment: Path) -> None:
    (tmp_path / "file").write_text("mine\n")
    result = expegit("clone", str(tmp_path / "campaign.git"), "file", cwd=tmp_path, check=False)
    assert result.stderr == (f"expegit: {tmp_path / 'file'} exists and is not a folder: "
                             "choose another PATH\n")
    assert result.returncode == 4 and (tmp_path / "file").read_text() == "mine\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = expegit("clone", str(experiment), "empty", cwd=tmp_path, check=False)
    assert result.returncode == 3 and "is not a campaign" in result.stderr
    assert empty.is_dir() and list(empty.iterdir()) == []


def test_init_without_a_git_identity_says_how_to_set_one(tmp_path: Path, home: Path,
                                                         experiment: Path) -> None:
    (home / ".gitconfig").write_text("[user]\n\tuseConfigOnly = true\n")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_", "EMAIL"))}
    result = expegit("init", str(experiment), "c", cwd=tmp_path, check=False, env=env)
    assert result.returncode == 8
    assert result.stderr == ('expegit: git does not know who you are: run git config --global '
                             'user.name "Your Name" and git config --global user.email '
                             'you@example.org, then retry\n')
    assert not (tmp_path / "c").exists()


def test_an_unreachable_remote_is_reported_with_gits_reason(tmp_path: Path,
                                                            campaign: Path) -> None:
    missing = tmp_path / "missing.git"
    git("remote", "set-url", "origin", str(missing), cwd=campaign)
    result = expegit("sync", cwd=campaign, check=False)
    assert (result.returncode, result.stderr) == (
        7, f"expegit: fetching from origin (nothing was changed) failed: fatal: '{missing}' "
           "does not appear to be a git repository\n")


def test_version_is_the_package_version(tmp_path: Path) -> None:
    done = expegit("--version", cwd=tmp_path)
    assert done.stdout == f"git expegit {importlib.metadata.version('git-expegit')}\n"


def test_init_killed_at_any_moment_leaves_no_half_made_campaign(tmp_path: Path,
                                                                experiment: Path) -> None:
    command = shutil.which("git-expegit")
    assert command is not None
    started = time.monotonic()
    expegit("init", str(experiment), str(tmp_path / "whole.git"), "whole", cwd=tmp_path)
    duration = time.monotonic() - started
    for step in range(8):  # kill points spread over a whole init
        name = f"c{step}"
        process = subprocess.Popen([command, "init", str(experiment), f"{name}.git", name],
                                   cwd=tmp_path, stderr=subprocess.DEVNULL)
        time.sleep(duration * step / 8)
        process.kill()
        process.wait()
        time.sleep(0.2)  # git commands it started finish on their own
        path = tmp_path / name
        if path.exists():  # whole: committed and pushed
            assert git("status", "--porcelain", cwd=path) == ""
            assert git("rev-parse", "main", cwd=tmp_path / f"{name}.git") == git(
                "rev-parse", "HEAD", cwd=path)
        else:  # a second init goes through
            expegit("init", str(experiment), f"{name}-retry.git", name, cwd=tmp_path)
