"""A campaign repository: where it is, its settings, its layout, and its one lock.

Layout (the seed's, with one change): an execution lives in `excs/<2 hex>/<uuid>/`.
The two-character fan-out, as in git's own object store, keeps every tree small, so a
new execution rewrites three small trees instead of a 10,000-entry `excs/` tree.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from git_expegit import locks
from git_expegit import refs
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.record import ExecutionId as ExecutionId  # re-exported

if TYPE_CHECKING:
    import pygit2

CONFIG = ".expegit.yml"
EXPERIMENT = "xprp"
EXECUTIONS = "excs"
NOTES_REF = "refs/notes/expegit"
LAYOUT = 1


@dataclass(frozen=True)
class Campaign:
    root: Path
    git_dir: Path

    @functools.cached_property
    def repo(self) -> pygit2.Repository:
        # Imported when first needed: status and list answered from the cache never are.
        import pygit2

        return pygit2.Repository(str(self.root))

    def tip_and_notes(self) -> tuple[str | None, str | None]:
        """The ids of the branch tip and of the notes, read from the ref files (no pygit2):
        what the catalog and every cache of it are keyed by. Either may be refs.UNKNOWN."""
        return refs.read(self.git_dir, "HEAD"), refs.read(self.git_dir, NOTES_REF)

    @property
    def state_dir(self) -> Path:
        """Expegit's state outside git: caches, the lock; never in the work tree."""
        path = self.git_dir / "expegit"
        path.mkdir(exist_ok=True)
        return path

    def branch(self) -> str:
        if self.repo.head_is_detached:
            raise ExpegitError("HEAD is detached: check out the campaign's branch "
                               "(git switch main) and retry", ExitCode.CAMPAIGN)
        return self.repo.lookup_reference("HEAD").target  # type: ignore[return-value]

    def head(self) -> pygit2.Commit | None:
        """The commit at the tip of the current branch, or None in an empty repository."""
        import pygit2

        target = self.repo.references.get(self.branch())
        if target is None:
            return None
        try:
            return self.repo[target.target].peel(pygit2.Commit)
        except KeyError:
            raise ExpegitError(f"the campaign's branch points to {target.target}, which is not "
                               "in the repository: it is damaged (see git fsck); restore it "
                               "from a clone or the remote", ExitCode.CAMPAIGN) from None

    def notes(self) -> pygit2.Commit | None:
        import pygit2

        ref = self.repo.references.get(NOTES_REF)
        return None if ref is None else self.repo[ref.target].peel(pygit2.Commit)

    def experiment(self) -> pygit2.Repository:
        import pygit2

        try:
            # NO_SEARCH: without it, an uninitialised xprp/ would open the campaign itself.
            return pygit2.Repository(str(self.root / EXPERIMENT),
                                     pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        except pygit2.GitError:
            raise ExpegitError(f"the experiment submodule {EXPERIMENT}/ is missing: run "
                               "git submodule update --init", ExitCode.CAMPAIGN) from None

    @contextmanager
    def locked(self, wait: bool = True) -> Iterator[bool]:
        """All writes to the campaign go through this lock: CLI, hook, agent and web UI.
        Without `wait`, it yields False at once when another process holds it."""
        with locks.held(self.state_dir / "lock", wait) as ours:
            yield ours

    def clone_id(self) -> str:
        """This clone's id, which orders the events two clones wrote at the same step."""
        path = self.state_dir / "clone-id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        value = secrets.token_hex(4)
        tmp = path.with_name(f".clone-id-{value}.tmp")
        tmp.write_text(value + "\n")
        try:
            os.link(tmp, path)  # the first writer wins; a concurrent one reads its id
        except FileExistsError:
            value = path.read_text().strip()
        finally:
            tmp.unlink()
        return value


def folder(execution: ExecutionId) -> str:
    """An execution's folder, relative to the campaign root."""
    return f"{EXECUTIONS}/{execution[:2]}/{execution}"


def find(cwd: Path) -> Campaign:
    """The campaign enclosing `cwd`: the nearest folder with a `.git`, as git finds it,
    that has a `.expegit.yml`."""
    for folder in (cwd.absolute(), *cwd.absolute().parents):
        dot_git = folder / ".git"
        if dot_git.exists():
            if (folder / CONFIG).is_file():
                return Campaign(folder, _git_dir(dot_git))
            break
    raise ExpegitError(f"{cwd} is not in a campaign (no {CONFIG} at the root of its git "
                       "repository): use git expegit init or git expegit clone",
                       ExitCode.CAMPAIGN)


def _git_dir(dot_git: Path) -> Path:
    """`.git` itself, or where a `.git` file (`gitdir: PATH`) points, as in submodules."""
    if dot_git.is_dir():
        return dot_git
    text = dot_git.read_text().strip()
    return (dot_git.parent / text.removeprefix("gitdir:").strip()).resolve()


def write_config(path: Path, experiment_url: str) -> None:
    import yaml

    path.write_text(yaml.safe_dump({"experiment": experiment_url, "layout": LAYOUT}))
