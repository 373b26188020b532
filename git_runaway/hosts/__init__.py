"""Hosts: where the shell commands of `git_runaway.remote` run.

Every backend implements `Host`: run one shell command with bytes on stdin, stream or
capture its output, and return its exit code. Runaway's whole protocol is built from that one
primitive, so the built-in `local` profile goes through exactly the same steps as ssh.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from typing import Protocol

Sink = Callable[[bytes], None]


@dataclasses.dataclass(frozen=True)
class Completed:
    exit_code: int
    stdout: bytes  # empty when streamed to a sink
    stderr: bytes
    signal: str | None = None  # "TERM", "USR2"...: the command was killed by this signal


class Host(Protocol):
    name: str
    alive: bool  # False once the connection is lost: the next run reconnects

    async def run(self, command: str, stdin: bytes = b"", stdout: Sink | None = None,
                  stderr: Sink | None = None, hold_stdin: bool = False) -> Completed:
        """Run `command` in a shell. With `hold_stdin`, its stdin stays open until it ends,
        so that it can tell when runaway goes away. When the caller is cancelled, the
        command's process group is sent SIGTERM before the cancellation goes on."""

    async def close(self) -> None: ...


class Readable(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


async def read(stream: Readable, sink: Sink | None) -> bytes:
    """All of `stream`, or, with a sink, each chunk to it as it arrives (and b"")."""
    if sink is None:
        return await stream.read()
    while chunk := await stream.read(65536):
        sink(chunk)
    return b""


def killed(signal_name: str, stdout: bytes, stderr: bytes) -> Completed:
    """What a shell reports for a process killed by a signal: 128 + its number."""
    number = getattr(signal, f"SIG{signal_name}", signal.SIGTERM)
    return Completed(128 + number, stdout, stderr, signal_name)
