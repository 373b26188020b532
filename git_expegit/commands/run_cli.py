"""exec run: the original's manual workflow, `./run $(git expegit exec params)` in the
execution's folder, without a shell in between: the run gets exactly the stored argv."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from git_expegit import campaign
from git_expegit import catalog
from git_expegit import parameters
from git_expegit import placement
from git_expegit.catalog import Execution
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError


def run(cwd: Path, prefix: str | None) -> int:
    """Become the execution's `run`: same stdin, stdout, stderr, signals and exit code.
    It does not finish the execution: git expegit finish does, after."""
    found = campaign.find(cwd)
    execution = catalog.resolve(found, prefix, cwd)
    _refuse_state(execution)
    argv = parameters.split(execution.parameters)
    placement.prepare(found, execution.commit)  # fetches, if any, keep no writer waiting
    # Under the lock, a finish, reset or remove of this execution is either done (and seen
    # here) or waits until the code is placed.
    with found.locked():
        _refuse_state(catalog.resolve(found, execution.id, cwd))
        folder = placement.ensure(found, execution.id, execution.commit)
    handle = folder / placement.RUN
    if not (handle.is_file() and os.access(handle, os.X_OK)):
        raise ExpegitError(f"the experiment at {execution.commit[:12]} has no executable run "
                           "handle at its root: add one (ln -s your_script run; chmod +x) and "
                           "git expegit update-expe", ExitCode.INPUT)
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(folder)
    try:
        os.execv(placement.RUN, [f"./{placement.RUN}", *argv])
    except OSError as e:
        hint = ": give the script a #! line" if e.errno == errno.ENOEXEC else ""
        raise ExpegitError(f"starting {handle} failed ({e.strerror}){hint}",
                           ExitCode.INPUT) from None


def _refuse_state(execution: Execution) -> None:
    short = execution.id[:8]
    if execution.state in ("finished", "failed"):
        raise ExpegitError(f"execution {short} is already {execution.state}: use git expegit "
                           f"exec reset {short} to run it again", ExitCode.INPUT)
    if execution.state != "created":
        raise ExpegitError(f"execution {short} is {execution.state}: the agent runs it (see "
                           f"git expegit show {short})", ExitCode.INPUT)
