"""exec params, status, list and show: reading the catalog."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from git_expegit import campaign
from git_expegit import catalog
from git_expegit import parameters
from git_expegit.catalog import Execution
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

HEADER = f"{'ID':<8}  {'STATE':<8}  {'COMMIT':<7}  {'PROFILE':<8}  {'EXIT':>4}  PARAMETERS"


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
    counts = catalog.counts(campaign.find(cwd))
    for state in catalog.STATES:
        print(f"{state:<9} {counts.get(state, 0)}")
    print(f"{'total':<9} {sum(counts.values())}")
    return 0


def list_executions(cwd: Path, state: str | None, profile: str | None, grep: str | None,
                    commit: str | None, form: str) -> int:
    if form not in ("table", "json"):
        raise ExpegitError(f"unknown format {form!r}: use table or json", ExitCode.USAGE)
    catalog.select([], state)  # a bad --state is refused before the catalog is read
    chosen = catalog.select(catalog.executions(campaign.find(cwd)), state, profile, grep,
                            commit)
    if form == "json":
        print(json.dumps([e.as_json() for e in chosen]))
        return 0
    if sys.stdout.isatty():  # a header for the eyes; scripts reading a pipe get rows only
        print(HEADER)
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
          f"folder      {e.folder}\n\nlife:")
    print("\n".join(f"  {line}" for line in e.log))
    print("\nfiles:")
    for f in catalog.files(found, e.id):
        size = f"{f.size} (lfs)" if f.lfs else str(f.size)
        print(f"  {size:>10}  {f.path}")
    return 0
