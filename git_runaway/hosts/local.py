"""This machine, with no ssh: each command is `/bin/sh -s` in its own process group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

from git_runaway.hosts import CHUNK
from git_runaway.hosts import Process

GRACE = 10.0  # seconds a program gets to stop its script and keep its run folder


class LocalProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin and process.stdout and process.stderr  # the pipes were asked for
        self._process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._stderr = process.stderr

    async def read(self) -> bytes:
        return await self._stdout.read(CHUNK)

    async def read_stderr(self) -> bytes:
        return await self._stderr.read(CHUNK)

    async def write(self, data: bytes) -> None:
        self._stdin.write(data)
        await self._stdin.drain()

    def write_eof(self) -> None:
        with contextlib.suppress(OSError):
            self._stdin.close()

    async def wait(self) -> int | None:
        code = await self._process.wait()
        return None if code < 0 else code


class LocalHost:
    name = "localhost"
    alive = True

    @contextlib.asynccontextmanager
    async def open(self, tag: str) -> AsyncIterator[Process]:
        pipe = asyncio.subprocess.PIPE
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-s", tag, stdin=pipe, stdout=pipe, stderr=pipe,
            start_new_session=True,  # like sshd's setsid
        )
        try:
            yield LocalProcess(process)
        finally:
            # Like a closed ssh channel: the end of stdin, which the program answers by
            # stopping its script and keeping the run folder, and EPIPE on its writes.
            _close_pipes(process)
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), GRACE)
            except (TimeoutError, asyncio.CancelledError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await asyncio.shield(process.wait())

    async def close(self) -> None:
        pass


def _close_pipes(process: asyncio.subprocess.Process) -> None:
    transport = process._transport  # type: ignore[attr-defined]
    for fd in (0, 1, 2):
        pipe = transport.get_pipe_transport(fd)
        if pipe is not None:
            pipe.close()
