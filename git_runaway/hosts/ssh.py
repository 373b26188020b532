"""An ssh host through asyncssh, configured by ~/.ssh/config like OpenSSH.

One connection per host alias carries every concurrent run to it, one channel per command,
at most `CHANNELS` at a time (OpenSSH's default MaxSessions).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncssh

from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError
from git_runaway.hosts import Completed
from git_runaway.hosts import Sink
from git_runaway.hosts import killed
from git_runaway.hosts import read

CHANNELS = 10
TERMINATE_GRACE = 5.0  # seconds the remote trap gets to stop the process group


class SshHost:
    def __init__(self, name: str, connection: asyncssh.SSHClientConnection) -> None:
        self.name = name
        self.alive = True
        self._connection = connection
        self._channels = asyncio.Semaphore(CHANNELS)

    @classmethod
    async def connect(cls, alias: str) -> SshHost:
        try:
            # asyncssh reads ~/.ssh/config (HostName, User, Port, IdentityFile, ProxyJump,
            # UserKnownHostsFile) and verifies the host key against known_hosts.
            connection = await asyncssh.connect(alias)
        except asyncssh.HostKeyNotVerifiable as e:
            raise RunawayError(
                f"host key of {alias!r} is unknown or has changed ({e}); check it, accept it "
                f"with `ssh {alias}` (or ssh-keyscan into ~/.ssh/known_hosts), then retry",
                ExitCode.CONNECTION) from None
        except FileNotFoundError as e:
            raise RunawayError(
                f"cannot verify the host key of {alias!r}: {e.filename} does not exist; "
                f"accept the key with `ssh {alias}` first", ExitCode.CONNECTION) from None
        except (OSError, asyncssh.Error) as e:
            raise RunawayError(f"cannot connect to {alias!r}: {_reason(e)}; check `ssh {alias}`",
                               ExitCode.CONNECTION) from None
        return cls(alias, connection)

    async def run(self, command: str, stdin: bytes = b"", stdout: Sink | None = None,
                  stderr: Sink | None = None, hold_stdin: bool = False) -> Completed:
        async with self._channels:
            try:
                return await self._run(command, stdin, stdout, stderr, hold_stdin)
            except (OSError, asyncssh.Error) as e:
                self.alive = False
                raise RunawayError(f"connection to {self.name!r} lost: {_reason(e)}",
                                   ExitCode.CONNECTION) from None

    async def _run(self, command: str, stdin: bytes, stdout: Sink | None,
                   stderr: Sink | None, hold_stdin: bool) -> Completed:
        process = await self._connection.create_process(command, encoding=None)
        try:
            out, err, _ = await asyncio.gather(
                read(process.stdout, stdout), read(process.stderr, stderr),
                _write(process.stdin, stdin, hold_stdin))
            result = await process.wait(check=False)
        except asyncio.CancelledError:
            await asyncio.shield(_terminate(process))
            raise
        if result.exit_signal:
            return killed(result.exit_signal[0], out, err)
        if result.exit_status is None:
            raise asyncssh.ConnectionLost("the channel closed without an exit status")
        return Completed(result.exit_status, out, err)

    async def close(self) -> None:
        self._connection.close()
        with contextlib.suppress(Exception):
            await self._connection.wait_closed()


async def _terminate(process: asyncssh.SSHClientProcess[bytes]) -> None:
    with contextlib.suppress(OSError, asyncssh.Error):
        process.terminate()
        try:
            await asyncio.wait_for(process.wait_closed(), TERMINATE_GRACE)
        except TimeoutError:
            process.close()


async def _write(stream: asyncssh.SSHWriter[bytes], data: bytes, hold: bool) -> None:
    if data:
        stream.write(data)
        await stream.drain()
    if not hold:
        stream.write_eof()


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__
