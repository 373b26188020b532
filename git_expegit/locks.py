"""File locks (flock(2)) that a SIGKILL releases with the process: the campaign's write lock,
the runner's and the agent's. The last two also say who holds them: the holder's pid is in
the file while it holds it, so a pid found there under a held lock is a live process's."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

# A probe (holder()) holds a lock for microseconds: a taker that does not wait retries for
# this long before it decides that another process has it.
_PROBE_TRIES = 50


@contextlib.contextmanager
def held(path: Path, wait: bool = True, pid: bool = False) -> Iterator[bool]:
    """Hold the lock on `path`; without `wait`, yield False when another process holds
    it. With `pid`, our pid is in the file while we hold it (and a probe by holder() is
    not taken for a holder)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _take(fd, wait, _PROBE_TRIES if pid else 1):
            yield False
            return
        if not pid:
            yield True
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield True
        finally:
            os.ftruncate(fd, 0)  # emptied while still held
    finally:
        os.close(fd)


def _take(fd: int, wait: bool, tries: int) -> bool:
    if wait:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < tries - 1:
                time.sleep(0.01)
    return False


def holder(path: Path) -> int | None:
    """The pid of the process that holds the lock on `path` (with `pid`), or None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it: a pid left in it is a dead process's
        except BlockingIOError:
            pass
    finally:
        os.close(fd)
    for _ in range(100):  # the holder writes its pid right after taking the lock
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            time.sleep(0.01)
    return None
