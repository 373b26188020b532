"""An ssh host through asyncssh, configured by ~/.ssh/config like OpenSSH.

One connection per host alias carries every concurrent run to it, one channel per command,
at most `CHANNELS` at a time (OpenSSH's default MaxSessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
from pathlib import Path

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
            raise _host_key_error(alias, e) from None
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
