"""logs: an execution's stdout and stderr, and with -f, what it writes while it runs.

The run's stdout goes to our stdout and its stderr to our stderr, byte for byte, as
`docker logs` does: `git expegit logs ID > out.txt` gives exactly what the script printed,
`2>/dev/null` hides its warnings, and `2>&1` merges them. On a terminal, where both land on
one screen, each part gets a header line (`==> excs/.../stdout <==`, as tail names files).

While an execution runs, the runner streams its output into `stdout` and `stderr` in its
folder; at finish they are committed there. So the work tree is read first, then git (a
folder the user cleaned).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

from git_expegit import campaign
from git_expegit import catalog
from git_expegit import watch
from git_expegit.campaign import Campaign
from git_expegit.catalog import Execution
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.record import State

NAMES = ("stdout", "stderr")
POLL = 0.2  # seconds between two looks at the files while following
STATE_EVERY = 0.5  # seconds between two looks at the execution's state
FOLLOWED = (State.QUEUED, State.RUNNING)


def logs(cwd: Path, prefix: str, follow: bool) -> int:
    found = campaign.find(cwd)
    execution = catalog.resolve(found, prefix, cwd)
    if follow and execution.state in FOLLOWED:
        try:
            return _follow(found, execution, cwd)
        except KeyboardInterrupt:  # the usual way to stop following, as with tail -f
            return int(ExitCode.INTERRUPTED)
    shown = False
    for name in NAMES:
        data = _read(found, execution, name)
        if data:
            out = _stream(name)
            if out.isatty():
                _write(out, f"==> {execution.folder}/{name} <==\n".encode())
            _write(out, data if data.endswith(b"\n") or not out.isatty() else data + b"\n")
            shown = True
    if not shown:
        print(f"expegit: execution {execution.id[:8]} has no output ({execution.state})",
              file=sys.stderr)
    return 0


def _stream(name: str) -> BinaryIO:
    return sys.stdout.buffer if name == "stdout" else sys.stderr.buffer


def _write(out: BinaryIO, data: bytes) -> None:
    """All of `data`: a large write can be cut short (a closed pipe answers the next one
    with BrokenPipeError, which main turns into a quiet exit)."""
    view = memoryview(data)
    while view:
        view = view[out.write(view) or 0:]
    out.flush()


def _read(found: Campaign, execution: Execution, name: str) -> bytes:
    """A log from the work tree, else as committed; empty when there is none."""
    try:
        return (found.root / execution.folder / name).read_bytes()
    except FileNotFoundError:
        pass
    head = found.head()
    path = f"{execution.folder}/{name}"
    if head is None or path not in head.tree:
        return b""
    return bytes(found.repo[head.tree[path].id].read_raw())


class _Tail:
    """One log file followed: what was written of it, and which file it was."""

    def __init__(self, path: Path, out: BinaryIO) -> None:
        self.path, self.out = path, out
        self.offset, self.inode = 0, -1

    def pump(self) -> None:
        """Write what was appended since the last look; a file that was replaced or cut
        (a new attempt) is shown again from its start."""
        try:
            with self.path.open("rb") as f:
                info = os.fstat(f.fileno())
                if info.st_ino != self.inode or info.st_size < self.offset:
                    if self.inode != -1:
                        print(f"expegit: {self.path.name} started again (a new attempt)",
                              file=sys.stderr, flush=True)
                    self.inode, self.offset = info.st_ino, 0
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            _write(self.out, data)


def _follow(found: Campaign, execution: Execution, cwd: Path) -> int:
    """Print the logs as they grow until the execution ends (or leaves the queue)."""
    folder = found.root / execution.folder
    tails = [_Tail(folder / name, _stream(name)) for name in NAMES]
    key, checked = watch.refs_key(found), time.monotonic()
    while True:
        for tail in tails:
            tail.pump()
        if time.monotonic() - checked >= STATE_EVERY:
            checked = time.monotonic()
            now = watch.refs_key(found)
            if now is None or now != key:
                key = now
                state = _state(found, execution, cwd)
                if state not in FOLLOWED:
                    break
        time.sleep(POLL)
    for tail in tails:  # what the run wrote last, before its end was recorded
        tail.pump()
        if not tail.path.exists():  # not in the work tree: as committed
            _write(tail.out, _read(found, execution, tail.path.name)[tail.offset:])
    return 0


def _state(found: Campaign, execution: Execution, cwd: Path) -> State:
    try:
        return catalog.resolve(found, execution.id, cwd).state
    except ExpegitError:
        raise ExpegitError(f"execution {execution.id[:8]} was removed while followed",
                           ExitCode.FAILED) from None
