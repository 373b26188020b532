"""The git CLI, for what must go through it: pushes and fetches (credentials, the LFS
pre-push hook), LFS filters, submodules, and updating the work tree and index safely.

Objects and refs are built with pygit2 and `objects.py`; refs are moved here with
`git update-ref --stdin`, a compare-and-swap transaction over several refs at once.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from git_expegit.errors import Busy
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

if TYPE_CHECKING:
    import pygit2

ZERO = "0" * 40
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
# Submodules from local paths are refused by default since git 2.38.1; the user named the
# experiment's address, so expegit allows it for its own submodule commands.
FILE_PROTOCOL = ("-c", "protocol.file.allow=always")
# git fetch and push may start a gc in the background, which deletes packs that git-lfs or a
# later step is reading: sync turns that off and runs gc itself, in the foreground, at the end.
NO_AUTO_GC = ("-c", "gc.auto=0", "-c", "maintenance.auto=false")


def run(args: Sequence[str], cwd: Path, *, env: Mapping[str, str] | None = None,
        input: bytes | None = None, code: ExitCode = ExitCode.GIT,
        what: str | None = None) -> str:
    """Run `git ARGS`; on failure raise an ExpegitError with git's last line of stderr."""
    result = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True,
                            env=None if env is None else {**os.environ, **env})
    if result.returncode != 0:
        raise ExpegitError(f"{what or 'git ' + args[0]} failed: {last_line(result.stderr)}",
                           code, result.stderr.decode(errors="replace"))
    return result.stdout.decode(errors="replace")


def last_line(stderr: bytes) -> str:
    """The line of git's stderr that says what went wrong: the first `fatal:` or `error:`
    (git's last line may be advice, as in "...and the repository exists."), else the last."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()
             if line.strip() and not line.startswith("hint:")]
    first = next((line for line in lines if line.startswith(("fatal:", "error:"))), None)
    return first or (lines[-1] if lines else "no message")


def ident(cwd: Path) -> str:
    """The committer identity and time as git would write them (config and GIT_* env).
    Who is asked of git once per process and folder (the agent writes often); the time
    is now, unless GIT_COMMITTER_DATE fixes it, when git is asked each time."""
    if os.environ.get("GIT_COMMITTER_DATE"):
        return _ident(cwd)
    who = _who(cwd, os.environ.get("GIT_COMMITTER_NAME"), os.environ.get("GIT_COMMITTER_EMAIL"))
    offset = time.localtime().tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    return f"{who} {int(time.time())} {sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"


@functools.lru_cache(maxsize=16)
def _who(cwd: Path, name: str | None, email: str | None) -> str:
    return _ident(cwd).rsplit(" ", 2)[0]


def _ident(cwd: Path) -> str:
    return run(["var", "GIT_COMMITTER_IDENT"], cwd,
               what="finding your git identity (set user.name and user.email)").strip()


def update_refs(cwd: Path, moves: Mapping[str, tuple[str | None, str | None]],
                message: str) -> None:
    """Move refs all at once, each only if it still has its expected old value.

    `moves` maps a ref to (old, new); None means "absent" (old) or "delete" (new).
    """
    lines = ["start"]
    for ref, (old, new) in moves.items():
        lines.append(f"update {ref} {new or ZERO} {old or ZERO}")
    lines += ["prepare", "commit"]
    try:
        run(["update-ref", "-m", message, "--stdin"], cwd,
            input="\n".join(lines).encode() + b"\n", what="moving refs")
    except ExpegitError as e:
        # Only a ref that is not where it was read is a race; a full disk or a read-only
        # repository is reported as what it is.
        if "but expected" in e.detail or "reference already exists" in e.detail:
            raise Busy("someone changed the repository at the same time (a ref moved "
                       "while this was built): nothing was changed; retry",
                       ExitCode.GIT, e.detail) from None
        busy = re.search(r"Unable to create '([^']+\.lock)': File exists", e.detail)
        if busy:
            raise Busy(f"{busy[1]} exists: another git command is moving that ref; "
                       f"if none is, one died there: remove {busy[1]} and retry "
                       "(nothing was changed)", ExitCode.GIT, e.detail) from None
        raise ExpegitError(f"{e}; nothing was changed", ExitCode.GIT, e.detail) from None


def collect_garbage(cwd: Path) -> None:
    """What fetch and push would have started in the background, done now, in the
    foreground, under the campaign's lock: repack when git thinks it is time."""
    run(["-c", "gc.autoDetach=false", "gc", "--auto", "--quiet"], cwd, what="git gc --auto")


def require_lfs(cwd: Path, repo: pygit2.Repository | None = None) -> None:
    """Fail early, before anything is written, when git-lfs is missing; with `repo`, also
    set up its filters and hooks there when they are not."""
    if shutil.which("git-lfs") is None:
        raise ExpegitError("git-lfs is not installed: install it (e.g. apt-get install "
                           "git-lfs) and retry", ExitCode.TOOLS)
    if repo is not None and not ("filter.lfs.process" in repo.config
                                 and (Path(repo.path) / "hooks" / "pre-push").is_file()):
        run(["lfs", "install", "--local"], cwd, what="git lfs install --local",
            code=ExitCode.TOOLS)
