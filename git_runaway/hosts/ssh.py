"""An ssh host through asyncssh, configured by ~/.ssh/config like OpenSSH.

One connection per host alias carries every concurrent run to it, one channel per command,
at most `CHANNELS` at a time (OpenSSH's default MaxSessions). Runs hold their channel while
they wait for an upload of their code: uploads and the other short commands have channels
of their own, so that they never wait for the runs that wait for them. The connection is compressed
(zlib@openssh.com) when the server allows it: archives stay named by the hash of the
uncompressed tar, so code reuse does not depend on a zlib version.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from collections.abc import Iterator

import asyncssh

from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError
from git_runaway.hosts import CHUNK
from git_runaway.hosts import Process
from git_runaway.remote import launcher

CHANNELS = 10
SHORT_CHANNELS = 2  # of CHANNELS, for the commands other than runs
COMPRESSION = ("zlib@openssh.com", "zlib", "none")
CLOSE_GRACE = 10.0  # seconds a program gets to stop its script once its channel closes


class SshProcess:
    def __init__(self, host: SshHost, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._host = host
        self._process = process

    async def read(self) -> bytes:
        with self._host.lost():
            return await self._process.stdout.read(CHUNK)

    async def read_stderr(self) -> bytes:
        with self._host.lost():
            return await self._process.stderr.read(CHUNK)

    async def write(self, data: bytes) -> None:
        with self._host.lost():
            self._process.stdin.write(data)
            await self._process.stdin.drain()

    def write_eof(self) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            self._process.stdin.write_eof()

    async def wait(self) -> int | None:
        with self._host.lost():
            result = await self._process.wait(check=False)
        if result.exit_signal:
            return None
        if result.exit_status is None:
            self._host.alive = False
            raise RunawayError(f"connection to {self._host.name!r} lost: the channel closed "
                               "without an exit status", ExitCode.CONNECTION)
        return result.exit_status


class SshHost:
    def __init__(self, name: str, connection: asyncssh.SSHClientConnection) -> None:
        self.name = name
        self.alive = True
        self._connection = connection
        self._runs = asyncio.Semaphore(CHANNELS - SHORT_CHANNELS)
        self._short = asyncio.Semaphore(SHORT_CHANNELS)

    @classmethod
    async def connect(cls, alias: str) -> SshHost:
        try:
            # asyncssh reads ~/.ssh/config (HostName, User, Port, IdentityFile, ProxyJump,
            # UserKnownHostsFile) and verifies the host key against known_hosts.
            connection = await asyncssh.connect(alias, compression_algs=COMPRESSION)
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

    @contextlib.contextmanager
    def lost(self) -> Iterator[None]:
        try:
            yield
        except (OSError, asyncssh.Error) as e:
            self.alive = False
            raise RunawayError(f"connection to {self.name!r} lost: {_reason(e)}",
                               ExitCode.CONNECTION) from None

    @contextlib.asynccontextmanager
    async def open(self, tag: str) -> AsyncIterator[Process]:
        async with self._runs if tag == "run" else self._short:
            with self.lost():
                process = await self._connection.create_process(launcher(tag), encoding=None)
            try:
                yield SshProcess(self, process)
            finally:
                # The end of stdin: the program stops its script and keeps the run folder.
                # Then close the channel; never a signal mid-packet (see commands/run.py).
                with contextlib.suppress(OSError, asyncssh.Error):
                    process.stdin.write_eof()
                process.close()

    async def close(self) -> None:
        self._connection.close()
        with contextlib.suppress(Exception):
            await self._connection.wait_closed()


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__
