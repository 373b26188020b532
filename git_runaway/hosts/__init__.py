"""Hosts: where the shell commands of `git_runaway.remote` run.

Every backend implements `Host`: run one shell command with bytes on stdin, stream or
capture its output, and return its exit code. Runaway's whole protocol is built from that one
primitive, so the built-in `local` profile goes through exactly the same steps as ssh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

Sink = Callable[[bytes], None]


@dataclasses.dataclass(frozen=True)
class Completed:
    exit_code: int
    stdout: bytes  # empty when streamed to a sink
    stderr: bytes


class Host(Protocol):
    name: str
    alive: bool  # False once the connection is lost: the next run reconnects

    async def run(self, command: str, stdin: bytes = b"", stdout: Sink | None = None,
                  stderr: Sink | None = None) -> Completed:
        """Run `command` in a shell. When the caller is cancelled, the command's process
        group is sent SIGTERM before the cancellation goes on."""

    async def close(self) -> None: ...


def signal_exit_code(signal_number: int) -> int:
    return 128 + signal_number  # what a shell reports for a process killed by a signal
