"""Making, cloning and updating campaign repositories (expegit init, clone, update-expe)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pygit2

from git_expegit import git
from git_expegit import transaction
from git_expegit.campaign import CONFIG
from git_expegit.campaign import EXECUTIONS
from git_expegit.campaign import EXPERIMENT
from git_expegit.campaign import NOTES_REF
from git_expegit.campaign import Campaign
from git_expegit.campaign import find
from git_expegit.campaign import write_config
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.objects import GITLINK
from git_expegit.objects import Entry


def default_path(url: str) -> str:
    """The folder git clone would pick for `url`: its last part without `.git`."""
    name = re.sub(r"(\.git)?/*$", "", url.rstrip("/")).rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return name or "campaign"


def absolute_url(url: str) -> str:
    """A local path made absolute (git would read it relative to another folder)."""
    return str(Path(url).absolute()) if Path(url).exists() else url


def init(experiment_url: str, path: Path, campaign_url: str | None) -> Campaign:
    """Make `path` a campaign; with `campaign_url`, create the remote there (a local path
    becomes a bare repository) and make it `origin`."""
    experiment_url = absolute_url(experiment_url)
    git.require_lfs(path if path.is_dir() else Path.cwd())
    if (path / CONFIG).exists():
        raise ExpegitError(f"{path} is already a campaign ({CONFIG} exists)", ExitCode.CAMPAIGN)
    git.run(["ls-remote", "--quiet", experiment_url], Path.cwd(), code=ExitCode.INPUT,
            what=f"reading the experiment at {experiment_url}")
    created = not path.exists()
    # What init may add to a folder of the user's; on failure, only what it added goes.
    added = [path / name for name in (".git", ".gitmodules", EXPERIMENT, EXECUTIONS, CONFIG)
             if not (path / name).exists() and not (path / name).is_symlink()]
    try:
        _init_repository(path)
        _configure(path)
        git.run([*git.FILE_PROTOCOL, "submodule", "--quiet", "add", experiment_url, EXPERIMENT],
                path, code=ExitCode.INPUT, what=f"cloning the experiment {experiment_url}")
        (path / EXECUTIONS).mkdir(exist_ok=True)
        (path / EXECUTIONS / ".gitkeep").write_text("# Added by git expegit. Do not remove.\n")
        write_config(path / CONFIG, experiment_url)
        git.run(["add", "--", CONFIG, ".gitmodules", EXPERIMENT, f"{EXECUTIONS}/.gitkeep"], path)
        git.run(["commit", "--quiet", "--no-verify", "-m", "Initialize campaign"], path)
        if campaign_url is not None:
            _create_remote(path, campaign_url)
    except BaseException:
        for target in [path] if created else added:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        raise
    return find(path)


def _init_repository(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if pygit2.discover_repository(str(path)) is None or not (path / ".git").exists():
        git.run(["init", "--quiet", "-b", "main"], path)


def _configure(path: Path) -> None:
    """LFS filters and hooks, and notes that follow rewritten commits and show in git log."""
    git.run(["lfs", "install", "--local"], path, code=ExitCode.TOOLS)
    for key, value in (("notes.rewriteRef", NOTES_REF), ("notes.displayRef", NOTES_REF)):
        git.run(["config", key, value], path)


def _create_remote(path: Path, url: str) -> None:
    if "://" not in url and not re.match(r"^[\w.-]+@?[\w.-]*:", url):
        remote = Path(url).absolute()
        if not remote.exists():
            git.run(["init", "--quiet", "--bare", "-b", "main", str(remote)], path)
        url = str(remote)
    repo = pygit2.Repository(str(path))
    if "origin" in repo.remotes.names():
        if repo.remotes["origin"].url != url:
            raise ExpegitError(f"{path} already has a remote origin "
                               f"({repo.remotes['origin'].url})", ExitCode.CAMPAIGN)
    else:
        git.run(["remote", "add", "origin", url], path)
    git.run(["push", "--quiet", "-u", "origin", "HEAD"], path, code=ExitCode.REMOTE,
            what=f"pushing to {url}")


def clone(url: str, path: Path) -> Campaign:
    """Clone a campaign with its experiment submodule, its notes and its LFS files."""
    git.require_lfs(Path.cwd())
    if path.exists() and any(path.iterdir()):
        raise ExpegitError(f"{path} exists and is not empty: choose another PATH",
                           ExitCode.INPUT)
    try:
        git.run([*git.FILE_PROTOCOL, "clone", "--quiet", "--recurse-submodules", url, str(path)],
                Path.cwd(), code=ExitCode.REMOTE, what=f"cloning {url}",
                env={"GIT_LFS_SKIP_SMUDGE": "1"})
        if not (path / CONFIG).is_file():
            raise ExpegitError(f"{url} is not a campaign (no {CONFIG}): use git clone for "
                               "other repositories", ExitCode.CAMPAIGN)
        _configure(path)
        git.run(["fetch", "--quiet", "origin", f"+{NOTES_REF}*:{NOTES_REF}*"], path,
                code=ExitCode.REMOTE, what="fetching the notes")
        git.run(["lfs", "pull"], path, code=ExitCode.REMOTE, what="fetching LFS files")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return find(path)


def update_experiment(campaign: Campaign) -> str | None:
    """Fetch the experiment and pin its newest commit; None when it is already pinned."""
    root = campaign.root
    git.run([*git.FILE_PROTOCOL, "fetch", "--quiet", "origin"], root / EXPERIMENT,
            code=ExitCode.REMOTE, what="fetching the experiment")
    newest = git.run(["rev-parse", "--verify", "refs/remotes/origin/HEAD^{commit}"],
                     root / EXPERIMENT, what="finding the experiment's default branch").strip()
    with transaction.begin(campaign) as tx:
        pinned = str(tx.head.tree[EXPERIMENT].id) if EXPERIMENT in tx.head.tree else None
        # The submodule moves first: local changes there stop everything before a commit.
        _check_out(root, newest)
        if pinned == newest:
            return None
        tx.set_entry(EXPERIMENT, Entry(GITLINK, pygit2.Oid(hex=newest)))
        tx.commit(f"Update the experiment to {newest[:12]}\n")
        try:
            tx.publish("update-expe", worktree=False)
        except ExpegitError:
            if pinned is not None:
                _check_out(root, pinned)
            raise
    return newest


def _check_out(root: Path, commit: str) -> None:
    """Put the experiment submodule's work tree at `commit`."""
    git.run(["checkout", "--quiet", "--detach", commit], root / EXPERIMENT, code=ExitCode.DIRTY,
            what=f"checking out {commit[:12]} in {EXPERIMENT}/ (commit or stash your changes "
                 "there first)")


def follow_experiment(root: Path) -> None:
    """After a sync brought another clone's update-expe: the submodule to the new pin."""
    git.run([*git.FILE_PROTOCOL, "submodule", "--quiet", "update", "--init", "--", EXPERIMENT],
            root, code=ExitCode.DIRTY, what=f"updating {EXPERIMENT}/ to the pinned commit")
