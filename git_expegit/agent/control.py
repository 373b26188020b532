"""Starting, stopping and asking after this clone's agent.

One agent per clone. Its pid file, `.git/expegit/agent.pid`, is also its lock: the agent
holds an exclusive flock on it for its whole life and writes its pid in it, so the lock
says whether an agent runs (the kernel drops it when the agent dies, even by SIGKILL) and
the file says which. The agent is detached: its own session (no terminal, no SIGHUP or
Ctrl-C from the shell that started it), stdin from /dev/null, stdout and stderr to
`.git/expegit/agent.log`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from git_expegit import locks
from git_expegit.campaign import Campaign
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.record import State

if TYPE_CHECKING:
    from git_expegit.catalog import Execution

PID = "agent.pid"
LOG = "agent.log"
LOG_LIMIT = 1 << 20  # agent.log is moved to agent.log.1 at a start when it is bigger
STARTING = 10.0  # seconds `agent start` waits for the new agent to hold its lock
# `agent stop` waits for the agent's grace period (loop.GRACE: running runs end, or are
# cancelled) plus this, then gives up with a hint.
STOPPING = 60.0

# The variables that bind git to one repository, index or configuration: a hook runs with
# them set (GIT_DIR, GIT_INDEX_FILE...), and the agent outlives the hook. As `git
# rev-parse --local-env-vars` lists them.
_GIT_LOCAL = ("GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS",
              "GIT_CONFIG_COUNT", "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE",
              "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE", "GIT_INDEX_FILE",
              "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE", "GIT_PREFIX",
              "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_COMMON_DIR")


def pid_path(campaign: Campaign) -> Path:
    return campaign.state_dir / PID


def log_path(campaign: Campaign) -> Path:
    return campaign.state_dir / LOG


# The lock --------------------------------------------------------------------------------------

@contextlib.contextmanager
def holding(campaign: Campaign) -> Iterator[bool]:
    """Held by the agent for its whole life (`agent run`). Yields False when another agent
    holds it."""
    with locks.held(pid_path(campaign), wait=False, pid=True) as ours:
        yield ours


def running(campaign: Campaign) -> int | None:
    """The pid of this clone's agent, or None when none runs."""
    return locks.holder(pid_path(campaign))


# Commands -----------------------------------------------------------------------------------

def ensure_running(campaign: Campaign) -> None:
    """Start this clone's agent unless it runs. For the hook, `jobs run --detach` and `jobs
    wait`: returns at once (it does not wait for the agent to be up) and never raises, so
    that it cannot fail the user's commit; a failure is one line on stderr."""
    if os.environ.get("EXPEGIT_AGENT") == "off":  # tests and CI: the queue is run by hand
        return
    try:
        if running(campaign) is None:
            _spawn(campaign)
    except Exception as e:  # the caller's work is done and must stand: say it, go on
        print(f"expegit: warning: could not start the agent ({e}); start it with git "
              "expegit agent start", file=sys.stderr, flush=True)


def start(campaign: Campaign, verbose: bool = False) -> int:
    """Start the agent and return its pid once it holds its lock. `verbose`: its log has
    what runaway says too (connections, uploads), not only the state changes."""
    pid = running(campaign)
    if pid is not None:
        raise ExpegitError(f"the agent runs already (pid {pid})", ExitCode.FAILED)
    child = _spawn(campaign, verbose)
    deadline = time.monotonic() + STARTING
    while time.monotonic() < deadline:
        pid = running(campaign)
        if pid is not None:
            return pid  # ours, or one started at the same moment (ours then exits)
        if child.poll() is not None:
            break
        time.sleep(0.02)
    pid = running(campaign)
    if pid is not None:
        return pid
    raise ExpegitError(f"the agent did not start: see {log_path(campaign)}", ExitCode.FAILED)


def _spawn(campaign: Campaign, verbose: bool = False) -> subprocess.Popen[bytes]:
    """`git expegit agent run`, detached: its own session, no terminal, its own log."""
    log = log_path(campaign)
    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_LIMIT:
            os.replace(log, log.with_name(LOG + ".1"))
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCAL}
    with open(log, "ab") as out:
        command = [sys.executable, "-m", "git_expegit", *(["-v"] if verbose else []),
                   "agent", "run"]
        return subprocess.Popen(command,
                                cwd=campaign.root, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, close_fds=True,
                                start_new_session=True)


def stop(campaign: Campaign, grace: float) -> int:
    """SIGTERM the agent and wait until it is gone; returns its pid."""
    pid = running(campaign)
    if pid is None:
        raise ExpegitError("the agent is not running", ExitCode.FAILED)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid  # it ended between our look and the signal
    deadline = time.monotonic() + grace + STOPPING
    while time.monotonic() < deadline:
        if running(campaign) != pid:
            return pid
        time.sleep(0.05)
    raise ExpegitError(f"the agent (pid {pid}) did not stop in {grace + STOPPING:.0f} s: see "
                       f"{log_path(campaign)}, or kill it with kill -9 {pid} (its runs are "
                       "recovered at its next start)", ExitCode.FAILED)


@dataclass(frozen=True)
class Status:
    pid: int | None
    queued: int  # owned by this clone
    running: list[Execution]  # owned by this clone


def status(campaign: Campaign) -> Status:
    from git_expegit import queue  # here: the hook imports this module, and queue pygit2

    owned = queue.mine(campaign, states=(State.QUEUED, State.RUNNING))
    return Status(running(campaign),
                  sum(1 for e in owned if e.state == State.QUEUED),
                  [e for e in owned if e.state == State.RUNNING])
