"""The one error type of runaway, and its exit codes.

`git runaway` mirrors the script's exit code, so none of runaway's own failures may look like
one: like ssh, runaway exits 255 for every failure of its own (the one-line message says
which), and 130 when interrupted. The library API tells the failures apart by the error's
`code`, an `ExitCode` member naming the kind of failure; the script's exit code is never raised,
it is the `Outcome`'s.
"""

from __future__ import annotations

import enum

FAILED = 255  # the exit status of every failure of runaway's own, as ssh's


class ExitCode(enum.IntEnum):
    """The kind of a runaway failure (the command exits `FAILED` for each but INTERRUPTED)."""

    OK = 0
    USAGE = 2
    PROFILE = 3
    CONNECTION = 4
    SEND = 5
    FETCH = 6
    HOST = 7
    INTERNAL = 9
    INTERRUPTED = 130

    @property
    def status(self) -> int:
        """The command's exit status for a failure of this kind."""
        return int(self) if self in (ExitCode.OK, ExitCode.INTERRUPTED) else FAILED


class RunawayError(Exception):
    """An expected failure: its message is one line that says what to do."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code
