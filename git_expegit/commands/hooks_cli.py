"""hooks install, hooks uninstall, and the hook itself (hooks post-commit), as the user sees
them. EXPEGIT_AGENT=off in the environment keeps the hook from starting the agent: requests
are then spooled for the next `agent start`."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from git_expegit.commands.output import relative

if TYPE_CHECKING:
    from git_expegit.main import Args

# What git sets for a hook and must not leak into the agent the hook may start: a relative
# index, the author date of the commit just made, the repository of the commit (which may be
# the experiment, not the campaign)...
_HOOK_ENVIRONMENT = ("GIT_INDEX_FILE", "GIT_DIR", "GIT_WORK_TREE", "GIT_PREFIX",
                     "GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE", "GIT_EDITOR",
                     "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                     "GIT_COMMON_DIR", "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE",
                     "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE", "GIT_SHALLOW_FILE",
                     "GIT_QUARANTINE_PATH", "GIT_REFLOG_ACTION")


def dispatch(a: Args) -> int:
    if a.flag("post-commit"):
        return post_commit(a.cwd)
    from git_expegit import campaign
    from git_expegit import hooks

    found = campaign.find(a.cwd)
    path = a.opt("--experiment")
    experiment = None if path is None else Path(path).absolute()
    changes = (hooks.install if a.flag("install") else hooks.uninstall)(found, experiment)
    for change in changes:
        where = relative(change.hook, a.cwd)
        if change.done == "absent":
            print(f"no expegit hook in {where}: nothing to remove")
            continue
        chained = ""
        if change.chained:
            chained = (" (the hook that was there runs after it)" if a.flag("install")
                       else " (the hook that was there before is back)")
        print(f"{change.done} {where}{chained}")
    return 0


def post_commit(cwd: Path) -> int:
    """The hook: never fails, never blocks. A request is spooled and the agent woken; a bad
    one is said in one line on stderr and in .git/expegit/hook.log."""
    for name in _HOOK_ENVIRONMENT:
        os.environ.pop(name, None)
    from git_expegit import requests
    from git_expegit.errors import ExpegitError

    try:
        found = requests.on_commit(cwd)
    except Exception as e:
        # Not only RequestError: whatever happens, the commit is made and stays.
        what = str(e) if isinstance(e, requests.RequestError | ExpegitError) else (
            f"{type(e).__name__}: {e}")
        _say(cwd, f"expegit: this commit's batch request was not queued: {what}")
        return 0
    if found is None:
        return 0
    campaign, request = found
    started = ""
    try:
        from git_expegit.agent import control

        control.ensure_running(campaign)  # not with EXPEGIT_AGENT=off (tests, CI)
    except Exception as e:
        with contextlib.suppress(OSError):
            requests.log(campaign.git_dir, f"starting the agent failed: {type(e).__name__}: {e}")
        started = "; the agent did not start (see .git/expegit/hook.log): git expegit agent start"
    where = "" if not request.pin else f" on experiment commit {request.made[:12]}"
    print(f"expegit: batch request {request.key[:8]} handed to the agent{where}: "
          f"{request.sweep} on {request.profile}{started}", file=sys.stderr)
    return 0


def _say(cwd: Path, line: str) -> None:
    """One line on stderr and in the log of the campaign (or, when there is none, of the
    repository where the hook ran)."""
    import subprocess

    from git_expegit import requests

    print(line, file=sys.stderr)
    try:
        found = requests.where(cwd)
        git_dir = found[0].git_dir if found is not None else None
    except Exception:
        git_dir = None
    if git_dir is None:
        done = subprocess.run(["git", "rev-parse", "--absolute-git-dir"], cwd=cwd,
                              capture_output=True, text=True)
        git_dir = Path(done.stdout.strip()) if done.returncode == 0 else None
    if git_dir is not None:
        with contextlib.suppress(OSError):  # a full disk: stderr said it
            requests.log(git_dir, line.removeprefix("expegit: "))


if __name__ == "__main__":
    # The installed hook's way in (python -m git_expegit.commands.hooks_cli post-commit):
    # `git expegit hooks post-commit` without main's command line parser and its imports.
    sys.exit(post_commit(Path.cwd()) if sys.argv[1:] == ["post-commit"] else 2)
