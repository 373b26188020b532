"""Where the CLI's own words go: results on stdout, messages on stderr prefixed "expegit:"."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from git_expegit.errors import ExitCode

Log = Callable[[str], None]


def logger(verbose: bool) -> Log:
    def log(message: str) -> None:
        if verbose:
            print(f"expegit: {message}", file=sys.stderr, flush=True)

    return log


def warn(message: str) -> None:
    print(f"expegit: warning: {message}", file=sys.stderr, flush=True)


def fail(message: str, code: ExitCode) -> int:
    print(f"expegit: {message}", file=sys.stderr)
    return int(code)


def relative(path: Path, cwd: Path) -> str:
    """A path as the user would type it from where they are."""
    return os.path.relpath(path, cwd)
