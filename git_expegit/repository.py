"""Making, cloning and updating campaign repositories (expegit init, clone, update-expe)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
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
    """A local path made absolute and normal (git would read it relative to another folder,
    and `../expe` as relative to the campaign's own remote)."""
    return str(Path(url).resolve()) if _local_path(url, Path.cwd()) and Path(url).exists() else url


def _local_path(url: str, base: Path) -> Path | None:
    """The folder a local address names (relative ones from `base`), None for a remote one:
    git reads `host:path` (a colon before any slash) and `scheme://` as remote."""
    if url.startswith("file://"):
        return Path(url.removeprefix("file://")).resolve()
    if "://" in url or re.match(r"^[^/]*:", url):
        return None
    return (base / url).resolve()


def init(experiment_url: str, path: Path, campaign_url: str | None) -> Campaign:
    """Make `path` a campaign; with `campaign_url`, create the remote there (a local path
    becomes a bare repository) and make it `origin`."""
    experiment_url = absolute_url(experiment_url)
    git.require_lfs(path if path.is_dir() else Path.cwd())
    if path.exists() and not path.is_dir():
        raise ExpegitError(f"{path} exists and is not a folder: choose another PATH",
                           ExitCode.INPUT)
    if (path / CONFIG).exists():
        raise ExpegitError(f"{path} is already a campaign ({CONFIG} exists)", ExitCode.CAMPAIGN)
    _require_identity(next(p for p in (path, *path.parents) if p.is_dir()))
    if campaign_url is not None:
        _refuse_itself(path, campaign_url, Path.cwd())
    origin = _origin_url(path)
    if origin is not None:
        _refuse_itself(path, origin, path)
    git.run(["ls-remote", "--quiet", experiment_url], Path.cwd(), code=ExitCode.INPUT,
            what=f"reading the experiment at {experiment_url}")
    undo = _Undo.record(path)
    remote = None if campaign_url is None else _local_path(campaign_url, Path.cwd())
    new_remote = remote is not None and not remote.exists()
    # A new folder is made under a hidden name beside it and renamed once whole and pushed:
    # a kill halfway leaves that folder, never a half-made PATH that the next init trips on.
    work = path.parent / f".{path.name}.expegit-init-{os.getpid()}" if undo.created else path
    try:
        work.mkdir(parents=True, exist_ok=True)
        _make(work, experiment_url)
        if campaign_url is not None:
            _create_remote(work, campaign_url)
        if work != path:
            work.rename(path)
    except BaseException:
        if work != path:
            shutil.rmtree(work, ignore_errors=True)
        if new_remote and remote is not None:
            shutil.rmtree(remote, ignore_errors=True)
        undo.run()
        raise
    return find(path)


def _require_identity(cwd: Path) -> None:
    """Before anything is made: init commits, and git's own message for a missing identity
    says nothing about what to do."""
    for ident in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT"):
        if subprocess.run(["git", "var", ident], cwd=cwd, capture_output=True).returncode:
            raise ExpegitError('git does not know who you are: run git config --global '
                               'user.name "Your Name" and git config --global user.email '
                               'you@example.org, then retry', ExitCode.GIT)


def _refuse_itself(path: Path, url: str, base: Path) -> None:
    """A campaign whose remote is itself (or lies inside it) pushes nowhere while -p and
    sync say they did."""
    remote = _local_path(url, base)
    root = path.resolve()
    if remote is not None and (remote == root or root in remote.parents):
        raise ExpegitError(f"the campaign's remote {url} is the campaign {path} itself: give "
                           "another CAMPAIGN_URL (init EXPERIMENT_URL CAMPAIGN_URL PATH)",
                           ExitCode.INPUT)


def _origin_url(path: Path) -> str | None:
    """The origin of the repository at `path` itself (not of one enclosing it), if any."""
    if not (path / ".git").exists():
        return None
    done = subprocess.run(["git", "remote", "get-url", "origin"], cwd=path, capture_output=True)
    return done.stdout.decode().strip() if done.returncode == 0 else None


def check_origin(path: Path) -> None:
    """For `init -p` without CAMPAIGN_URL, before anything is made: the folder's origin is
    another repository, and it answers."""
    url = _origin_url(path)
    if url is None:
        raise ExpegitError(f"-p needs a remote: give CAMPAIGN_URL, or add origin to {path} "
                           "first", ExitCode.USAGE)
    _refuse_itself(path, url, path)
    git.run(["ls-remote", "--quiet", "origin"], path, code=ExitCode.REMOTE,
            what=f"reading the campaign's remote {url} (nothing was changed)")


@dataclass(frozen=True)
class _Undo:
    """What init may add to a folder of the user's, recorded before it starts, so that a
    failure takes back exactly that and never what was there before."""

    path: Path
    created: bool  # the folder itself
    added: list[Path]  # the names init adds that were not there
    branch: str | None  # in an existing repository: its branch and tip, its config
    tip: str | None
    modules: bool
    origin: bool

    @staticmethod
    def record(path: Path) -> _Undo:
        added = [path / name for name in (".git", ".gitmodules", EXPERIMENT, EXECUTIONS, CONFIG)
                 if not (path / name).exists() and not (path / name).is_symlink()]
        branch = tip = None
        modules = origin = False
        if path.is_dir() and path / ".git" not in added:
            branch = _quiet(["symbolic-ref", "-q", "HEAD"], path)
            tip = _quiet(["rev-parse", "-q", "--verify", "HEAD"], path)
            git_dir = Path(git.run(["rev-parse", "--absolute-git-dir"], path).strip())
            modules = (git_dir / "modules" / EXPERIMENT).exists()
            origin = _origin_url(path) is not None
        return _Undo(path, not path.exists(), added, branch, tip, modules, origin)

    def run(self) -> None:
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        if self.path / ".git" not in self.added and (self.path / ".git").exists():
            self._restore_repository()
        for target in self.added:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)

    def _restore_repository(self) -> None:
        """Best effort, the failure being reported already: the branch back at its tip, the
        index entries init staged, the submodule's clone and config, the remote it added."""
        path = self.path
        if self.branch is not None and self.tip != _quiet(["rev-parse", "-q", "--verify",
                                                           "HEAD"], path):
            _quiet(["update-ref", self.branch, self.tip] if self.tip else
                   ["update-ref", "-d", self.branch], path)
        names = [str(target.relative_to(path)) for target in self.added]
        if names:
            _quiet(["reset", "-q", "--", *names], path)
        if not self.modules:
            git_dir = _quiet(["rev-parse", "--absolute-git-dir"], path)
            if git_dir:
                shutil.rmtree(Path(git_dir) / "modules" / EXPERIMENT, ignore_errors=True)
            _quiet(["config", "--remove-section", f"submodule.{EXPERIMENT}"], path)
        if not self.origin:
            _quiet(["remote", "remove", "origin"], path)


def _quiet(args: list[str], cwd: Path) -> str | None:
    """`git ARGS`'s output, or None when it fails (for reading state and for undoing)."""
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True)
    return done.stdout.decode().strip() if done.returncode == 0 else None


def _make(path: Path, experiment_url: str) -> None:
    """The campaign's first commit in the folder `path`: submodule, excs/, settings."""
    if pygit2.discover_repository(str(path)) is None or not (path / ".git").exists():
        git.run(["init", "--quiet", "-b", "main"], path)
    _configure(path)
    git.run([*git.FILE_PROTOCOL, "submodule", "--quiet", "add", experiment_url, EXPERIMENT],
            path, code=ExitCode.INPUT, what=f"cloning the experiment {experiment_url}")
    (path / EXECUTIONS).mkdir(exist_ok=True)
    (path / EXECUTIONS / ".gitkeep").write_text("# Added by git expegit. Do not remove.\n")
    write_config(path / CONFIG, experiment_url)
    git.run(["add", "--", CONFIG, ".gitmodules", EXPERIMENT, f"{EXECUTIONS}/.gitkeep"], path)
    git.run(["commit", "--quiet", "--no-verify", "-m", "Initialize campaign"], path)


def _configure(path: Path) -> None:
    """LFS filters and hooks, notes that follow rewritten commits and show in git log, and
    git's own setting for large work trees: a campaign grows to tens of thousands of
    folders, and feature.manyFiles (the untracked cache, index version 4) halves what a
    plain `git status` costs there (bench/README.md, P7)."""
    git.run(["lfs", "install", "--local"], path, code=ExitCode.TOOLS)
    for key, value in (("notes.rewriteRef", NOTES_REF), ("notes.displayRef", NOTES_REF),
                       ("feature.manyFiles", "true")):
        git.run(["config", key, value], path)


def _create_remote(path: Path, url: str) -> None:
    remote = _local_path(url, Path.cwd())
    if remote is not None:
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
    point_remote_head(path)


def point_remote_head(root: Path) -> None:
    """A bare remote of this machine whose HEAD names a branch it lacks (`git init --bare`
    names master; ours may be main) gets its HEAD pointed at the campaign's branch, so that
    git clone checks the campaign out. A HEAD that names a real branch is the owner's."""
    url = _origin_url(root)
    remote = None if url is None else _local_path(url, root)
    if remote is None or _quiet(["rev-parse", "--is-bare-repository"], remote) != "true":
        return
    if _quiet(["rev-parse", "-q", "--verify", "HEAD"], remote) is None:
        branch = git.run(["symbolic-ref", "HEAD"], root).strip()
        git.run(["symbolic-ref", "HEAD", branch], remote, code=ExitCode.REMOTE,
                what=f"pointing the HEAD of {remote} at {branch}")


def clone(url: str, path: Path) -> Campaign:
    """Clone a campaign with its experiment submodule, its notes and its LFS files."""
    git.require_lfs(Path.cwd())
    if path.exists() and not path.is_dir():
        raise ExpegitError(f"{path} exists and is not a folder: choose another PATH",
                           ExitCode.INPUT)
    if path.exists() and any(path.iterdir()):
        raise ExpegitError(f"{path} exists and is not empty: choose another PATH",
                           ExitCode.INPUT)
    created = not path.exists()
    # A new folder is cloned under a hidden name beside it and renamed once whole: a kill
    # halfway leaves that folder, never a half-made PATH.
    work = path.parent / f".{path.name}.expegit-clone-{os.getpid()}" if created else path
    try:
        git.run([*git.FILE_PROTOCOL, "clone", "--quiet", "--recurse-submodules", url, str(work)],
                Path.cwd(), code=ExitCode.REMOTE, what=f"cloning {url}",
                env={"GIT_LFS_SKIP_SMUDGE": "1"})
        _check_out_campaign(work, url)
        _configure(work)
        git.run(["fetch", "--quiet", "origin", f"+{NOTES_REF}*:{NOTES_REF}*"], work,
                code=ExitCode.REMOTE, what="fetching the notes")
        git.run(["lfs", "pull"], work, code=ExitCode.REMOTE, what="fetching LFS files")
        if work != path:
            work.rename(path)
    except BaseException:
        if created:
            shutil.rmtree(work, ignore_errors=True)
        else:  # the user's empty folder stays; everything in it is the clone's
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    return find(path)


def _check_out_campaign(root: Path, url: str) -> None:
    """When the remote's HEAD is not the campaign (a plain `git init --bare` names master,
    which does not exist), check out the branch that holds one."""
    if (root / CONFIG).is_file():
        return
    names = git.run(["for-each-ref", "--format=%(refname:lstrip=3)", "refs/remotes/origin"],
                    root).split()
    branches = [name for name in names if name != "HEAD" and _quiet(
        ["cat-file", "-e", f"refs/remotes/origin/{name}:{CONFIG}"], root) is not None]
    if not branches:
        raise ExpegitError(f"{url} is not a campaign (no {CONFIG}): use git clone for "
                           "other repositories", ExitCode.CAMPAIGN)
    preferred = [name for name in ("main", "master") if name in branches]
    if len(branches) > 1 and not preferred:
        raise ExpegitError(f"{url} holds campaigns on several branches ({', '.join(branches)}) "
                           "and its HEAD names none: point it at one (git symbolic-ref HEAD "
                           "refs/heads/BRANCH in the remote) and retry", ExitCode.CAMPAIGN)
    branch = (preferred or branches)[0]
    env = {"GIT_LFS_SKIP_SMUDGE": "1"}
    git.run(["checkout", "--quiet", "--track", f"origin/{branch}"], root, env=env,
            what=f"checking out the campaign's branch {branch}")
    git.run([*git.FILE_PROTOCOL, "submodule", "--quiet", "update", "--init", "--recursive"],
            root, code=ExitCode.REMOTE, env=env, what=f"cloning the experiment into {EXPERIMENT}/")


def update_experiment(campaign: Campaign) -> str | None:
    """Fetch the experiment and pin its newest commit; None when it is already pinned."""
    root = campaign.root
    # Checked first: in an empty xprp/, git would find and fetch the campaign itself.
    campaign.experiment()
    git.run([*git.FILE_PROTOCOL, "fetch", "--quiet", "origin"], root / EXPERIMENT,
            code=ExitCode.REMOTE, what="fetching the experiment")
    newest = git.run(["rev-parse", "--verify", "refs/remotes/origin/HEAD^{commit}"],
                     root / EXPERIMENT, what="finding the experiment's default branch").strip()
    return newest if pin(campaign, newest) else None


def pin(campaign: Campaign, commit: str, check_out: bool = True) -> bool:
    """Pin the experiment `commit` (in xprp/ already); with `check_out`, xprp/ is checked
    out there too (update-expe), else its work tree is left alone (a request made in xprp/,
    where the user works). False when it is pinned already."""
    root = campaign.root
    with transaction.begin(campaign) as tx:
        pinned = str(tx.head.tree[EXPERIMENT].id) if EXPERIMENT in tx.head.tree else None
        if pinned == commit:
            if check_out:
                _check_out(root, commit)
            return False
        # Local changes there stop everything before a commit; the submodule itself moves
        # with the publish (and with its completion, should this process die).
        if check_out and git.run(["status", "--porcelain", "--untracked-files=no"],
                                 root / EXPERIMENT):
            raise ExpegitError(f"{EXPERIMENT}/ has local changes: commit or stash your changes "
                               "there first", ExitCode.DIRTY)
        tx.set_entry(EXPERIMENT, Entry(GITLINK, pygit2.Oid(hex=commit)))
        tx.commit(f"Update the experiment to {commit[:12]}\n")
        tx.publish("update-expe", worktree=check_out)
    return True


def _check_out(root: Path, commit: str) -> None:
    """Put the experiment submodule's work tree at `commit`."""
    git.run(["checkout", "--quiet", "--detach", commit], root / EXPERIMENT, code=ExitCode.DIRTY,
            what=f"checking out {commit[:12]} in {EXPERIMENT}/ (commit or stash your changes "
                 "there first)")


def follow_experiment(root: Path) -> None:
    """After a sync brought another clone's update-expe: the submodule to the new pin."""
    git.run([*git.FILE_PROTOCOL, "submodule", "--quiet", "update", "--init", "--", EXPERIMENT],
            root, code=ExitCode.DIRTY, what=f"updating {EXPERIMENT}/ to the pinned commit")
