"""A real ssh server on loopback, in-process, that can misbehave on purpose.

`FakeSshd` runs an asyncssh server in a background thread with its own event loop, so a
`git runaway` subprocess connects to it like to any sshd. Each command it receives runs for
real with `/bin/sh -c` as the current user (stdin, stdout, stderr and the exit code are
relayed), unless `faults` says to misbehave:

  drop_upload_after  abort the connection after that many bytes of stdin of the upload
                     command; the child then sees EOF on stdin like under
                     OpenSSH's sshd, or is killed at once with `upload_child="kill"`;
  drop_run_after     abort the connection that many seconds into the run command
                     (`... & wait $!`); the child's pipes are closed like sshd does;
  fetch_archive      in the output of the run command, put these bytes in place of the
                     results' tar (between the markers `exit` and `end`), as a host would
                     that sends a hostile archive.

Nothing is mocked on the client side: keys are real, the client reads ~/.ssh/config and
known_hosts, and the connection is a TCP socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import os
import re
import signal
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from typing import Literal
from typing import TypeVar

import asyncssh

from git_runaway.remote import launcher

UPLOAD = launcher("upload")  # git_runaway.remote.upload
RUN = launcher("run")  # git_runaway.remote.run, which also sends the results back
CHUNK = 16384

T = TypeVar("T")


@dataclasses.dataclass
class Faults:
    drop_upload_after: int | None = None
    upload_child: Literal["eof", "kill"] = "eof"
    drop_run_after: float | None = None
    fetch_archive: bytes | None = None


class FakeSshd:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key_path = directory / "id_ed25519"
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key.write_private_key(str(self.client_key_path))
        self.client_key_path.chmod(0o600)
        client_key.write_public_key(str(directory / "id_ed25519.pub"))
        self.authorized_keys = directory / "authorized_keys"
        client_key.write_public_key(str(self.authorized_keys))
        self.faults = Faults()
        self.commands: list[str] = []  # every command received, in order
        self.drops = 0  # connections aborted on purpose
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-sshd",
                                        daemon=True)
        self._server: asyncssh.SSHAcceptor | None = None
        self._children: set[asyncio.subprocess.Process] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    # -- control, from the test's thread -------------------------------------------------

    def start(self) -> FakeSshd:
        self._thread.start()
        self._server = self._call(self._listen())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._shutdown(self._server))
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every command the server started has ended (a dropped connection
        leaves its child to finish on its own, as under sshd)."""
        self._call(self._settle(), timeout + 1)

    def known_hosts_line(self, key: asyncssh.SSHKey | None = None) -> str:
        key = key or self.host_key
        return f"[127.0.0.1]:{self.port} {key.export_public_key().decode().strip()}\n"

    def write_client_config(self, home: Path, alias: str, known_hosts: str | None) -> Path:
        """Write `home/.ssh/config` with a Host block for this server, and its
        UserKnownHostsFile with the text `known_hosts` (no file when None)."""
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        known = ssh / "fake_known_hosts"
        if known_hosts is None:
            known.unlink(missing_ok=True)
        else:
            known.write_text(known_hosts)
        config = ssh / "config"
        config.write_text(
            f"Host {alias}\n"
            f"    HostName 127.0.0.1\n"
            f"    Port {self.port}\n"
            f"    User {getpass.getuser()}\n"
            f"    IdentityFile {self.client_key_path}\n"
            f"    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {known}\n")
        config.chmod(0o600)
        return config

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # -- the server, in its own thread -----------------------------------------------------

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            host="127.0.0.1", port=0, server_host_keys=[self.host_key],
            authorized_client_keys=str(self.authorized_keys), process_factory=self._handle,
            encoding=None, allow_scp=False, agent_forwarding=False, x11_forwarding=False,
            line_editor=False)

    async def _shutdown(self, server: asyncssh.SSHAcceptor) -> None:
        server.close()
        await server.wait_closed()
        for child in list(self._children):
            _kill_group(child)
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await asyncio.gather(*(c.wait() for c in self._children), return_exceptions=True)

    async def _settle(self) -> None:
        while self._children or self._handlers:
            await asyncio.sleep(0.02)

    async def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(process)
        finally:
            self._handlers.discard(task)

    async def _serve(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command or ""
        self.commands.append(command)
        faults = self.faults
        limit = faults.drop_upload_after if UPLOAD in command else None
        delay = faults.drop_run_after if RUN in command else None
        pipe = asyncio.subprocess.PIPE
        child = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=pipe, stdout=pipe, stderr=pipe,
            start_new_session=True)  # like sshd: the session leads its own process group
        self._children.add(child)
        drop = asyncio.Event()
        # Like sshd, the exit status goes out when the child ends, whether or not the
        # client has closed stdin (runaway holds it open during a run).
        feeding = asyncio.create_task(self._relay_stdin(process, child, limit, drop))
        hostile = faults.fetch_archive if command == RUN else None
        relays: asyncio.Future[Any] = asyncio.gather(
            _relay(child.stdout, process.stdout) if hostile is None else
            _relay_replacing_results(child.stdout, process.stdout, hostile),
            _relay(child.stderr, process.stderr))
        timer = asyncio.create_task(_set_after(drop, delay))
        dropped: asyncio.Future[Any] = asyncio.create_task(drop.wait())
        try:
            await asyncio.wait([relays, dropped], return_when=asyncio.FIRST_COMPLETED)
            if drop.is_set():
                self.drops += 1
                process.get_extra_info("connection").abort()
                relays.cancel()
                feeding.cancel()
                with contextlib.suppress(BaseException):
                    await relays
                with contextlib.suppress(BaseException):
                    await feeding
                if limit is not None and faults.upload_child == "kill":
                    _kill_group(child)
                _close_pipes(child)  # EOF on stdin, EPIPE on the next write, like sshd
                await child.wait()
                return
            await relays
            code = await child.wait()
            feeding.cancel()
            with contextlib.suppress(BaseException):
                await feeding
            if code < 0:
                process.exit_with_signal(signal.Signals(-code).name[3:])
            else:
                process.exit(code)
        finally:
            timer.cancel()
            dropped.cancel()
            if child.returncode is None:
                _kill_group(child)
                await child.wait()
            self._children.discard(child)

    async def _relay_stdin(self, process: asyncssh.SSHServerProcess[bytes],
                           child: asyncio.subprocess.Process, limit: int | None,
                           drop: asyncio.Event) -> None:
        assert child.stdin is not None
        received = 0
        try:
            while chunk := await process.stdin.read(CHUNK):
                if limit is not None and received + len(chunk) >= limit:
                    child.stdin.write(chunk[:limit - received])
                    await child.stdin.drain()
                    drop.set()
                    await asyncio.Event().wait()  # until cancelled by the drop
                received += len(chunk)
                child.stdin.write(chunk)
                await child.stdin.drain()
        except (BrokenPipeError, ConnectionResetError, asyncssh.Error):
            pass
        finally:
            child.stdin.close()


async def _relay(source: asyncio.StreamReader | None,
                 sink: asyncssh.SSHWriter[bytes]) -> None:
    assert source is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, asyncssh.Error):
        while chunk := await source.read(CHUNK):
            sink.write(chunk)
            await sink.drain()


async def _relay_replacing_results(source: asyncio.StreamReader | None,
                                   sink: asyncssh.SSHWriter[bytes], archive: bytes) -> None:
    """Relay the run's output, with `archive` in place of the results' tar. Complete lines
    go through at once: the client answers some markers."""
    assert source is not None
    buffer, nonce = b"", b""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, asyncssh.Error):
        while chunk := await source.read(CHUNK):
            buffer += chunk
            if not nonce:
                found = re.search(rb"([0-9a-f]{32}):exit [0-9]+\n", buffer)
                if found is None:
                    ready = buffer.rfind(b"\n") + 1
                    sink.write(buffer[:ready])
                    buffer = buffer[ready:]
                else:
                    nonce = found.group(1)
                    sink.write(buffer[:found.end()])
                    buffer = buffer[found.end():]
            if nonce and nonce != b"done":
                end = re.search(re.escape(nonce) + rb":end [0-9]+\n", buffer)
                if end is not None:
                    sink.write(archive + nonce + b":end 0\n" + buffer[end.end():])
                    buffer = b""
                    nonce = b"done"
            if nonce == b"done":
                sink.write(buffer)
                buffer = b""
            await sink.drain()
        sink.write(buffer)


async def _set_after(event: asyncio.Event, delay: float | None) -> None:
    if delay is not None:
        await asyncio.sleep(delay)
        event.set()


def _close_pipes(child: asyncio.subprocess.Process) -> None:
    transport = child._transport  # type: ignore[attr-defined]
    for fd in (0, 1, 2):
        pipe = transport.get_pipe_transport(fd)
        if pipe is not None:
            pipe.close()


def _kill_group(child: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
