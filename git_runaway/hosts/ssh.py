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
import getpass
import os
from collections.abc import AsyncIterator
from collections.abc import Iterator
from pathlib import Path

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
            raise _host_key_error(alias, e) from None
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


def _host_key_error(alias: str, error: asyncssh.HostKeyNotVerifiable) -> RunawayError:
    """An unknown key is accepted once checked; a changed or revoked one may be an attack,
    and accepting it is the last thing to advise."""
    files, host, port = _known_hosts(alias)
    where = " and ".join(files) or "~/.ssh/known_hosts"
    recorded = _recorded(files, host, port)
    if "revoked" in str(error) or recorded == "revoked":
        message = (f"the host key of {alias!r} is marked @revoked in {where}: someone may be "
                   "impersonating the host (a man-in-the-middle attack); do not accept it, ask "
                   "the host's administrators")
    elif recorded == "changed":
        message = (f"WARNING: the host key of {alias!r} has changed since it was recorded in "
                   f"{where}: someone may be impersonating the host (a man-in-the-middle "
                   "attack), or its key was replaced; confirm the new key with the host's "
                   f"administrators before removing the old one (ssh-keygen -R {host})")
    else:
        message = (f"host key of {alias!r} is unknown (not in {where}); check it, accept it "
                   f"with `ssh {alias}` (or ssh-keyscan into {where}), then retry")
    return RunawayError(message, ExitCode.CONNECTION)


def _known_hosts(alias: str) -> tuple[list[str], str, int]:
    """The known_hosts files, host name and port that ~/.ssh/config gives `alias`, as
    asyncssh reads them (UserKnownHostsFile, HostKeyAlias, HostName, Port)."""
    from asyncssh.config import SSHClientConfig

    path = Path("~/.ssh/config").expanduser()
    try:
        config = SSHClientConfig.load(None, [path] if path.exists() else [], False, False,
                                      False, getpass.getuser(), "", alias, ())
        files = config.get("UserKnownHostsFile") or ["~/.ssh/known_hosts"]
        host = config.get("HostKeyAlias") or config.get("Hostname") or alias
        port = config.get("Port") or 22
        if isinstance(files, list) and isinstance(port, int):
            return [str(f) for f in files], str(host), port
    except (OSError, asyncssh.Error, ValueError):
        pass
    return [], alias, 22  # the message is then less precise, never wrong


def _recorded(files: list[str], host: str, port: int) -> str | None:
    """What known_hosts holds for `host`: "revoked", "changed" (a key, but not the one
    refused) or None. The port goes into the name, as OpenSSH writes it: asyncssh's own
    lookup retries without the port when it finds no trusted key, losing @revoked entries."""
    from asyncssh.known_hosts import match_known_hosts

    name = host if port == 22 else f"[{host}]:{port}"
    verdict = None
    for file in files:
        try:
            trusted, authorities, revoked, *_ = match_known_hosts(os.path.expanduser(file),
                                                                  name, "", None)
        except (OSError, ValueError):
            continue
        if revoked:
            return "revoked"
        if trusted or authorities:
            verdict = "changed"
    return verdict


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__
