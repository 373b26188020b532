"""Installing and removing the post-commit hook, in a campaign, its `xprp/` clone and the
user's own clones of the experiment.

The hook is the stub `hooks/post-commit` (git_expegit/post-commit links to it), with the
path of the Python that runs git expegit written in. A hook already there is renamed
`post-commit.expegit-chained`, which the stub runs after itself, and renamed back on
uninstall: a rename keeps its bytes, its mode, even a symlink, exactly.

Where git looks for hooks is `core.hooksPath` when it is set: in the repository's own
config, the hook goes there; set for all repositories (global, system), installing there
would run it in every repository, so install refuses and says what to do.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from git_expegit import git
from git_expegit.campaign import EXPERIMENT
from git_expegit.campaign import Campaign
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

HOOK = "post-commit"
CHAINED = f"{HOOK}.expegit-chained"
MARK = "# git-expegit post-commit hook"  # the stub's second line: how ours is known
CAMPAIGN_KEY = "expegit.campaign"  # in a user's clone of the experiment: the campaign's root
_PYTHON_LINE = 'python=""\n'


@dataclass(frozen=True)
class Change:
    """What install or uninstall did in one repository."""

    repository: Path
    hook: Path
    done: str  # "installed", "updated", "removed", "absent", "skipped"
    chained: bool = False  # a previous hook is chained (install) or was restored (uninstall)


def stub() -> str:
    """The hook's text, with this Python written in."""
    text = (Path(__file__).parent / HOOK).read_text()
    assert _PYTHON_LINE in text and MARK in text, "the stub hooks/post-commit lost its marks"
    return text.replace(_PYTHON_LINE, f"python={shlex.quote(sys.executable)}\n", 1)


def targets(campaign: Campaign, mine: Path | None) -> list[Path]:
    """The repositories `hooks install` acts on: the campaign, its xprp/ clone when it is
    there, and the user's own clone of the experiment when given."""
    found = [campaign.root]
    if (campaign.root / EXPERIMENT / ".git").exists():
        found.append(campaign.root / EXPERIMENT)
    return found if mine is None else [*found, mine]


def _experiment_clone(campaign: Campaign, path: Path) -> Path:
    """The top of the user's clone at `path`, refused when it is not one."""
    done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path,
                          capture_output=True, text=True) if path.is_dir() else None
    if done is None or done.returncode != 0 or not done.stdout.strip():
        raise ExpegitError(f"--experiment {path}: not a clone of the experiment with a work "
                           "tree (give the folder of your own git clone)", ExitCode.INPUT)
    top = Path(done.stdout.strip()).resolve()
    if top == campaign.root.resolve():
        raise ExpegitError(f"--experiment {path} is the campaign itself: give your own clone "
                           "of the experiment", ExitCode.INPUT)
    return top


def install(campaign: Campaign, experiment: Path | None = None) -> list[Change]:
    """Install the hook in the campaign, its xprp/ clone, and with `experiment` the user's
    own clone of the experiment too; every place is checked before any changes, so a
    refusal changes nothing."""
    mine = None if experiment is None else _experiment_clone(campaign, experiment)
    places = [(repo, hooks_dir(repo)) for repo in targets(campaign, mine)]
    if mine is not None:  # the user's clone: where its requests go
        git.run(["config", "--local", CAMPAIGN_KEY, str(campaign.root.resolve())], mine,
                what=f"setting {CAMPAIGN_KEY} in {mine}")
    for _, folder in places:
        _refuse_two_hooks(folder)
    text = stub()
    return [_install_one(repo, folder, text) for repo, folder in places]


def uninstall(campaign: Campaign, experiment: Path | None = None) -> list[Change]:
    mine = None if experiment is None else _experiment_clone(campaign, experiment)
    places = [(repo, hooks_dir(repo)) for repo in targets(campaign, mine)]
    changes = [_uninstall_one(repo, folder) for repo, folder in places]
    if mine is not None:
        subprocess.run(["git", "config", "--local", "--unset", CAMPAIGN_KEY], cwd=mine,
                       capture_output=True)  # absent already: nothing to do
    return changes


def hooks_dir(repo: Path) -> Path:
    """Where git runs `repo`'s hooks from; refused when core.hooksPath is shared by every
    repository."""
    scope = subprocess.run(["git", "config", "--show-scope", "--get", "core.hooksPath"],
                           cwd=repo, capture_output=True, text=True).stdout.split("\t", 1)[0]
    if scope and scope not in ("local", "worktree"):
        value = git.run(["config", "--get", "core.hooksPath"], repo).strip()
        raise ExpegitError(
            f"core.hooksPath is set to {value} in your {scope} git config, for every "
            f"repository: the hook is not installed there. Either add `git expegit hooks "
            f"post-commit` to {value}/{HOOK} yourself, or give {repo} its own hooks "
            f"(git -C {shlex.quote(str(repo))} config core.hooksPath .git/hooks) and install "
            "again", ExitCode.INPUT)
    folder = git.run(["rev-parse", "--git-path", "hooks"], repo).strip()
    return (repo / folder).absolute()


def is_ours(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return MARK.encode() in f.read(4096)
    except (FileNotFoundError, IsADirectoryError):
        return False


def _refuse_two_hooks(folder: Path) -> None:
    """A hook that is not ours and a chained one both there: which one to keep is the
    user's to say."""
    hook, chained = folder / HOOK, folder / CHAINED
    if _there(hook) and _there(chained) and not is_ours(hook):
        raise ExpegitError(f"{hook} is not expegit's, and {chained} is there too: move one "
                           "of them away and install again", ExitCode.INPUT)


def _there(path: Path) -> bool:
    return path.exists() or path.is_symlink()  # a dangling symlink is a hook too


def _install_one(repo: Path, folder: Path, text: str) -> Change:
    hook, chained = folder / HOOK, folder / CHAINED
    folder.mkdir(parents=True, exist_ok=True)
    ours = is_ours(hook)
    if not ours and _there(hook):
        os.rename(hook, chained)  # kept as it was, bytes, mode, symlink and all
    _write(hook, text)
    return Change(repo, hook, "updated" if ours else "installed", _there(chained))


def _uninstall_one(repo: Path, folder: Path) -> Change:
    hook, chained = folder / HOOK, folder / CHAINED
    kept = _there(chained)
    if not is_ours(hook):
        if kept and not _there(hook):
            os.rename(chained, hook)  # an install cut between its two renames
            return Change(repo, hook, "removed", True)
        return Change(repo, hook, "absent")
    if kept:
        os.replace(chained, hook)
    else:
        hook.unlink()
    return Change(repo, hook, "removed", kept)


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a temporary file renamed over the hook."""
    tmp = path.with_name(f".{path.name}.expegit-{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
