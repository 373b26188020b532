"""The one error type of runaway, and its exit codes.

The script's own exit code is runaway's exit code, so runaway's failures use a few small
codes (documented in the usage text) that never exceed 255.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    USAGE = 2
    PROFILE = 3
    CONNECTION = 4
    SEND = 5
    FETCH = 6
    HOST = 7
    INTERNAL = 9
    INTERRUPTED = 130


class RunawayError(Exception):
    """An expected failure: its message is one line that says what to do."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code
