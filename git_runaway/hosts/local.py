"""This machine, with no ssh: each command is `/bin/sh -c` in its own process group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from git_runaway.hosts import Completed
from git_runaway.hosts import Sink
from git_runaway.hosts import killed
from git_runaway.hosts import read


class LocalHost:
    name = "localhost"
    alive = True

    async def run(self, command: str, stdin: bytes = b"", stdout: Sink | None = None,
                  stderr: Sink | None = None, hold_stdin: bool = False) -> Completed:
        pipe = asyncio.subprocess.PIPE
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=pipe, stdout=pipe, stderr=pipe,
            start_new_session=True,  # like sshd's setsid: the trap can stop the whole group
        )
        try:
            out, err, _ = await asyncio.gather(
                read(_stream(process.stdout), stdout), read(_stream(process.stderr), stderr),
                _write(process.stdin, stdin, hold_stdin),
            )
            code = await process.wait()
            assert process.stdin is not None
            process.stdin.close()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)  # the shell's trap stops its group
            await asyncio.shield(process.wait())
            raise
        if code < 0:
            return killed(signal.Signals(-code).name.removeprefix("SIG"), out, err)
        return Completed(code, out, err)

    async def close(self) -> None:
        pass


async def _write(stream: asyncio.StreamWriter | None, data: bytes, hold: bool) -> None:
    assert stream is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            stream.write(data)
            await stream.drain()
        if not hold:
            stream.close()


def _stream(stream: asyncio.StreamReader | None) -> asyncio.StreamReader:
    assert stream is not None  # the pipes were asked for
    return stream
