"""exec params, status, list and show: reading the catalog."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from git_expegit import campaign
from git_expegit import catalog
from git_expegit import parameters
from git_expegit.catalog import Execution
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

if TYPE_CHECKING:
    import pygit2


def params(cwd: Path, prefix: str | None) -> int:
    stored = catalog.resolve(campaign.find(cwd), prefix, cwd).parameters
    print(stored, flush=True)
    if parameters.quoted(stored):
        # A shell does not re-read the quotes that $(...) gives it.
        print("expegit: these parameters hold quotes, which ./run $(git expegit exec params) "
              "passes on as literal characters: git expegit exec run passes the exact words",
              file=sys.stderr)
    return 0


def status(cwd: Path) -> int:
    counts = Counter(e.state for e in catalog.executions(campaign.find(cwd)))
    for state in catalog.STATES:
        print(f"{state:<9} {counts.get(state, 0)}")
    print(f"{'total':<9} {sum(counts.values())}")
    return 0


def list_executions(cwd: Path, state: str | None, profile: str | None, grep: str | None,
                    commit: str | None, form: str) -> int:
    if state is not None and state not in catalog.STATES:
        raise ExpegitError(f"unknown state {state!r}: use one of {', '.join(catalog.STATES)}",
                           ExitCode.USAGE)
    if form not in ("table", "json"):
        raise ExpegitError(f"unknown format {form!r}: use table or json", ExitCode.USAGE)
    chosen = [e for e in catalog.executions(campaign.find(cwd))
              if (state is None or e.state == state)
              and (profile is None or e.profile == profile)
              and (grep is None or grep in e.parameters)
              and (commit is None or e.commit.startswith(commit.lower()))]
    if form == "json":
        print(json.dumps([e.as_json() for e in chosen]))
    else:
        for e in chosen:
            print(_row(e))
    return 0


def _row(e: Execution) -> str:
    return (f"{e.id[:8]}  {e.state:<8}  {e.commit[:7]}  {e.profile or '-':<8}  "
            f"{e.field('exit') or '-':>4}  {e.parameters}")


def show(cwd: Path, prefix: str | None) -> int:
    found = campaign.find(cwd)
    e = catalog.resolve(found, prefix, cwd)
    print(f"execution   {e.id}\nstate       {e.state}\ncommit      {e.commit}\n"
          f"parameters  {e.parameters}\nprofile     {e.profile or '-'}\n"
          f"folder      {campaign.folder(e.id)}\n\nlife:")
    print("\n".join(f"  {line}" for line in e.log))
    print("\nfiles:")
    for path, size in _files(found, campaign.folder(e.id)):
        print(f"  {size:>10}  {path}")
    return 0


def _files(found: campaign.Campaign, folder: str) -> list[tuple[str, str]]:
    """The files git holds for the execution; LFS files with their real size."""
    import pygit2  # show reads trees; the other reading commands do without it

    head = found.head()
    out: list[tuple[str, str]] = []

    def walk(tree: pygit2.Tree, prefix: str) -> None:
        for entry in tree:
            path, obj = prefix + (entry.name or ""), found.repo[entry.id]
            if isinstance(obj, pygit2.Tree):
                walk(obj, path + "/")
            elif isinstance(obj, pygit2.Blob):
                out.append((path, _size(obj.data)))

    if head is not None:
        walk(found.repo[head.tree[folder].id].peel(pygit2.Tree), "")
    return out


def _size(data: bytes) -> str:
    if data.startswith(b"version https://git-lfs"):
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("size "):
                return f"{line[5:]} (lfs)"
    return str(len(data))
