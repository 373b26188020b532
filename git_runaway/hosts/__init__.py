"""Hosts: where the programs of `git_runaway.remote` run.

Every backend implements `Host`: start `exec /bin/sh -s TAG` and give a `Process` with its
stdin, stdout and stderr. Runaway's whole protocol is built on that one primitive, so the
built-in `local` profile goes through exactly the same steps as ssh. `Session` reads the
markers of a program (see `remote`) and sets aside what the login shell printed before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Protocol

from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError

Sink = Callable[[bytes], None]
CHUNK = 65536
MARKER_LINE = 4096  # a marker line longer than this is not one of ours


class Process(Protocol):
    async def read(self) -> bytes:
        """A chunk of stdout; b"" at its end."""

    async def read_stderr(self) -> bytes: ...

    async def write(self, data: bytes) -> None:
        """Write to stdin and wait until it is sent (bounded memory)."""

    def write_eof(self) -> None: ...

    async def wait(self) -> int | None:
        """The exit code, or None when the command ended without one (a signal)."""


class Host(Protocol):
    name: str
    alive: bool  # False once the connection is lost: the next run reconnects

    def open(self, tag: str) -> contextlib.AbstractAsyncContextManager[Process]:
        """Start `remote.launcher(tag)`. Leaving the context ends the command: whatever
        still runs of it sees the end of its stdin (and over ssh, the channel closes)."""

    async def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Completed:
    exit_code: int
    stdout: bytes  # after the start marker
    stderr: bytes
    noise: bytes  # what the login shell printed before the program started


class Collect:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def __call__(self, chunk: bytes) -> None:
        self.parts.append(chunk)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def discard(chunk: bytes) -> None:
    pass


class Scanner:
    """A stream cut at markers `NONCE:WORDS\\n`; the bytes between go to sinks as they come,
    minus a tail short enough to be the start of a marker."""

    def __init__(self, read: Callable[[], Awaitable[bytes]], nonce: str) -> None:
        self._read = read
        self._token = nonce.encode() + b":"
        self._buffer = bytearray()

    async def until(self, sink: Sink) -> str | None:
        """Send everything up to the next marker to `sink`, and return the marker's words;
        None at the end of the stream."""
        token = self._token
        while True:
            found = self._buffer.find(token)
            if found >= 0:
                end = self._buffer.find(b"\n", found)
                if found:
                    sink(bytes(self._buffer[:found]))
                    del self._buffer[:found]
                if end >= 0:
                    words = self._buffer[len(token):end - found].decode(errors="replace")
                    del self._buffer[:end - found + 1]
                    return words
                if len(self._buffer) > MARKER_LINE:
                    raise RunawayError("the host sent a garbled marker", ExitCode.HOST)
            else:
                # Hold back only what may be the start of a marker: output stays live.
                ready = len(self._buffer) - _partial(self._buffer, token)
                if ready:
                    sink(bytes(self._buffer[:ready]))
                    del self._buffer[:ready]
            chunk = await self._read()
            if not chunk:
                if self._buffer:
                    sink(bytes(self._buffer))
                    self._buffer.clear()
                return None
            self._buffer += chunk


def _partial(buffer: bytearray, token: bytes) -> int:
    """The length of the longest end of `buffer` that begins `token`."""
    for length in range(min(len(token) - 1, len(buffer)), 0, -1):
        if buffer.endswith(token[:length]):
            return length
    return 0


class Session:
    """A started program: its stdout is read marker by marker by the caller, its stderr in
    the background: the login shell's noise, then each marker on stderr moves to the next
    of `stderr_sinks`, and the last one collects this program's own messages."""

    def __init__(self, process: Process, nonce: str, stderr_sinks: tuple[Sink, ...] = ()
                 ) -> None:
        self.process = process
        self.stdout = Scanner(process.read, nonce)
        self.noise = Collect()
        self.messages = Collect()
        self._stderr = asyncio.ensure_future(self._pump(
            Scanner(process.read_stderr, nonce), (self.noise, *stderr_sinks, self.messages)))

    async def _pump(self, scanner: Scanner, sinks: tuple[Sink, ...]) -> None:
        for sink in sinks[:-1]:
            if await scanner.until(sink) is None:
                return
        while await scanner.until(sinks[-1]) is not None:
            pass

    async def expect(self, word: str, sink: Sink = discard) -> None:
        found = await self.stdout.until(sink)
        if found != word:
            raise RunawayError(f"the host command ended before it said {word!r}: "
                               f"{await self.last_message()}", ExitCode.HOST)

    async def answer(self, word: str) -> None:
        """A line on stdin; the command may be over already (it then has no use for it)."""
        with contextlib.suppress(RunawayError, OSError):
            await self.process.write(f"{word}\n".encode())

    async def finish(self) -> int | None:
        code = await self.process.wait()
        await self._stderr
        return code

    async def last_message(self) -> str:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._stderr), 5)
        text = (self.messages.bytes() or self.noise.bytes()).decode(errors="replace")
        lines = text.strip().splitlines()
        return lines[-1] if lines else "no message"

    def cancel(self) -> None:
        self._stderr.cancel()


@contextlib.asynccontextmanager
async def session(host: Host, tag: str, program: str, nonce: str,
                  stderr_sinks: tuple[Sink, ...] = ()) -> AsyncIterator[Session]:
    """Start `program` on `host` and wait for its start marker."""
    async with host.open(tag) as process:
        started = Session(process, nonce, stderr_sinks)
        try:
            await process.write(program.encode())
            noise = Collect()
            await started.expect("start", noise)
            started.noise.parts[:0] = noise.parts  # stdout's noise, then stderr's
            yield started
        finally:
            started.cancel()


async def run(host: Host, tag: str, program: str, nonce: str) -> Completed:
    """Run a short program to its end: its output after the start marker, and its code."""
    async with session(host, tag, program, nonce) as started:
        started.process.write_eof()
        out = Collect()
        await started.stdout.until(out)
        code = await started.finish()
        return Completed(-1 if code is None else code, out.bytes(), started.messages.bytes(),
                         started.noise.bytes())


def nonce() -> str:
    return secrets.token_hex(16)

