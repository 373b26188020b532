"""The one error type of expegit, and its exit codes (documented in the usage text)."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    CAMPAIGN = 3
    INPUT = 4
    TOOLS = 5
    DIRTY = 6
    REMOTE = 7
    GIT = 8
    INTERNAL = 9
    INTERRUPTED = 130


class ExpegitError(Exception):
    """An expected failure: its message is one line that says what is wrong and what to do."""

    def __init__(self, message: str, code: ExitCode, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail  # what a failed git command said in full, shown with -v


class Busy(ExpegitError):
    """Another writer got in the way (a ref moved, a lock held): nothing was changed, and
    the same change may go through if tried again. The agent and the runner retry it."""
