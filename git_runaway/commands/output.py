"""Where the CLI's own words go: stderr, prefixed, and only with -v."""

from __future__ import annotations

import sys

from git_runaway.execution import Log


def logger(verbose: bool) -> Log:
    def log(message: str) -> None:
        if verbose:
            print(f"runaway: {message}", file=sys.stderr, flush=True)

    return log


def stdout_sink(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def stderr_sink(chunk: bytes) -> None:
    sys.stderr.buffer.write(chunk)
    sys.stderr.buffer.flush()
