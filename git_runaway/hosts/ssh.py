"""An ssh host through asyncssh, configured by ~/.ssh/config like OpenSSH.

A host alias is a small pool of connections, one channel per command. sshd allows
`MaxSessions` channels per connection (10 by default, fewer on some clusters), so a
connection takes at most `CHANNELS`, and one that refuses a channel is known to be full at
what it holds: the channel is opened on another connection of the pool, opened when none has
room. A single run opens one connection, as `ssh` would; N concurrent runs open about N / 10.
Runs hold their channel while they wait for an upload of their code, which takes a channel
of its own: the pool grows for it, so that it never waits for the runs that wait for it.
The connections are compressed (zlib@openssh.com) when the server allows it: archives stay
named by the hash of the uncompressed tar, so code reuse does not depend on a zlib version.
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

CHANNELS = 10  # per connection: OpenSSH's default MaxSessions
COMPRESSION = ("zlib@openssh.com", "zlib", "none")
CLOSE_GRACE = 10.0  # seconds a program gets to stop its script once its channel closes


class SshProcess:
    def __init__(self, link: _Link, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._link = link
        self._process = process

    async def read(self) -> bytes:
        with self._link.lost():
            return await self._process.stdout.read(CHUNK)

    async def read_stderr(self) -> bytes:
        with self._link.lost():
            return await self._process.stderr.read(CHUNK)

    async def write(self, data: bytes) -> None:
        with self._link.lost():
            self._process.stdin.write(data)
            await self._process.stdin.drain()

    def write_eof(self) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            self._process.stdin.write_eof()

    async def wait(self) -> int | None:
        with self._link.lost():
            result = await self._process.wait(check=False)
        if result.exit_signal:
            return None
        if result.exit_status is None:
            self._link.drop()
            raise RunawayError(f"connection to {self._link.pool.name!r} lost: the channel "
                               "closed without an exit status", ExitCode.CONNECTION)
        return result.exit_status


class _Link:
    """One connection of a pool and the channels it carries."""

    def __init__(self, pool: SshHost, connection: asyncssh.SSHClientConnection) -> None:
        self.pool = pool
        self.connection = connection
        self.channels = 0  # open or being opened
        self.opened = 0  # channels the server ever accepted on it
        self.room = CHANNELS  # lowered to what the server holds when it refuses one
        self.gone = False

    @contextlib.contextmanager
    def lost(self) -> Iterator[None]:
        try:
            yield
        except (OSError, asyncssh.Error) as e:
            self.drop()
            raise self.error(e) from None

    def error(self, error: BaseException) -> RunawayError:
        return RunawayError(f"connection to {self.pool.name!r} lost: {_reason(error)}",
                            ExitCode.CONNECTION)

    def drop(self) -> None:
        """This connection is lost, and likely the others with it: the pool takes no new
        channel, as the one connection did (the session opens a new pool for the next run);
        each connection closes once its last channel does."""
        self.gone = True
        self.pool.alive = False
        self.pool.retire()

    def close(self) -> None:
        self.connection.close()


class SshHost:
    """The pool of connections to one host alias (the `Host` interface)."""

    def __init__(self, name: str, connection: asyncssh.SSHClientConnection) -> None:
        self.name = name
        self.alive = True
        self._links = [_Link(self, connection)]
        self._growing = asyncio.Lock()  # one connection opened at a time (sshd's MaxStartups)
        self._change = asyncio.Event()  # set, and replaced, when a channel opens or closes
        self._closed = False
        self._closing: set[asyncio.Future[None]] = set()  # channels being closed

    @classmethod
    async def connect(cls, alias: str) -> SshHost:
        return cls(alias, await _connect(alias))

    @property
    def connections(self) -> int:
        """How many connections the pool holds open now."""
        return len(self._links)

    def connection(self) -> asyncssh.SSHClientConnection:
        """A connection of the pool, for plain ssh commands (the benchmarks')."""
        return self._links[0].connection

    @contextlib.asynccontextmanager
    async def open(self, tag: str) -> AsyncIterator[Process]:
        link, process = await self._channel(tag)
        try:
            yield SshProcess(link, process)
        finally:
            # The end of stdin: the program stops its script and keeps the run folder.
            # Then close the channel; never a signal mid-packet (see commands/run.py).
            with contextlib.suppress(OSError, asyncssh.Error):
                process.stdin.write_eof()
            process.close()
            # The channel counts until the server closed it too: a new one opened on this
            # connection before that would be refused (sshd frees its session then).
            closing = asyncio.ensure_future(self._release_when_closed(link, process))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _release_when_closed(self, link: _Link,
                                   process: asyncssh.SSHClientProcess[bytes]) -> None:
        try:
            with contextlib.suppress(OSError, asyncssh.Error):
                await process.wait_closed()
        finally:
            self._release(link)

    async def _channel(self, tag: str
                       ) -> tuple[_Link, asyncssh.SSHClientProcess[bytes]]:
        """A channel running `launcher(tag)`: a refused one is opened on another connection."""
        again: _Link | None = None
        while True:
            link = again or await self._link(tag)
            link.channels += 1
            try:
                process = await link.connection.create_process(launcher(tag), encoding=None)
            except asyncssh.ChannelOpenError as e:
                self._release(link)
                if again is None and link.opened and link.channels < link.room:
                    # Below its known room: sshd frees the session of a channel just closed
                    # only after reading the next packets; once more here, a round trip later.
                    again = link
                    continue
                again = None
                # Full at what it holds now (MaxSessions): never below one.
                link.room = max(1, min(link.room, link.channels))
                while not link.opened and link.channels:  # others are being opened on it
                    await self._change.wait()
                if link.gone:
                    raise link.error(e) from None
                if not link.opened:  # a connection that accepts no channel at all
                    raise RunawayError(f"{self.name!r} refuses to run commands: {_reason(e)}",
                                       ExitCode.CONNECTION) from None
                continue
            except (OSError, asyncssh.Error) as e:
                link.drop()
                self._release(link)
                raise link.error(e) from None
            except BaseException:
                self._release(link)
                raise
            link.opened += 1
            self._changed()
            return link, process

    async def _link(self, tag: str) -> _Link:
        """The oldest connection with room for a channel, or a new one."""
        while True:
            async with self._growing:
                if self._closed:
                    raise RunawayError(f"the connections to {self.name!r} are closed",
                                       ExitCode.CONNECTION)
                live = [link for link in self._links if not link.gone]
                if not live:  # the pool's connections were lost: reported by their runs
                    raise RunawayError(f"connection to {self.name!r} lost", ExitCode.CONNECTION)
                free = [link for link in live if link.channels < link.room]
                if free:
                    return free[0]
                freed = self._change
                try:
                    connection = await _connect(self.name)
                except RunawayError:
                    # The host takes no more connections now: a run waits for a channel of
                    # those open. Not the other commands: the runs may be waiting for them.
                    if tag != "run":
                        raise
                else:
                    if self._closed:
                        connection.close()
                        continue
                    link = _Link(self, connection)
                    self._links.append(link)
                    return link
            await freed.wait()  # not holding the lock: an upload may connect meanwhile

    def _release(self, link: _Link) -> None:
        link.channels -= 1
        self._changed()
        if link.channels == 0 and (link.gone or not self.alive):
            self._remove(link)

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _remove(self, link: _Link) -> None:
        if link in self._links:
            self._links.remove(link)
            link.close()

    def retire(self) -> None:
        for link in list(self._links):
            if link.channels == 0:
                self._remove(link)

    async def close(self) -> None:
        self._closed = True
        self.alive = False
        links, self._links = self._links, []
        for link in links:
            link.close()
        for link in links:
            with contextlib.suppress(Exception):
                await link.connection.wait_closed()
        await asyncio.gather(*self._closing, return_exceptions=True)


async def _connect(alias: str) -> asyncssh.SSHClientConnection:
    try:
        # asyncssh reads ~/.ssh/config (HostName, User, Port, IdentityFile, ProxyJump,
        # UserKnownHostsFile) and verifies the host key against known_hosts.
        return await asyncssh.connect(alias, compression_algs=COMPRESSION)
    except asyncssh.HostKeyNotVerifiable as e:
        raise _host_key_error(alias, e) from None
    except FileNotFoundError as e:
        raise RunawayError(
            f"cannot verify the host key of {alias!r}: {e.filename} does not exist; "
            f"accept the key with `ssh {alias}` first", ExitCode.CONNECTION) from None
    except (OSError, asyncssh.Error) as e:
        raise RunawayError(f"cannot connect to {alias!r}: {_reason(e)}; check `ssh {alias}`",
                           ExitCode.CONNECTION) from None


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
