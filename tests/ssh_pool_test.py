"""N runs at once to one ssh host are N runs at once (issue 9, section 1): sshd allows
MaxSessions channels per connection (10 by default), so the host's pool opens more
connections when one is full or refuses a channel. Against the real sshd of
`.ci/services.sh` (MaxSessions 100) and against sshds of our own, started from its
configuration with OpenSSH's default MaxSessions, a lower one, or 0."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from git_runaway import profiles
from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError
from git_runaway.execution import Job
from git_runaway.execution import Runaway
from git_runaway.hosts.ssh import CHANNELS
from git_runaway.hosts.ssh import SshHost
from tests.conftest import script
from tests.conftest import write_profile

# Each run marks its start in a folder on the host shared by the runs, and waits (5 s at
# most) until all N have started: the runs overlap fully only if N run at once.
RUN = """date +%s.%N > "start-$1"
barrier="$RUNAWAY_PATH/barrier-$2"
mkdir -p "$barrier" && touch "$barrier/$1"
i=0
while [ "$(ls "$barrier" | wc -l)" -lt "$3" ] && [ "$i" -lt 100 ]; do
  sleep 0.05; i=$((i + 1))
done
sleep 0.5
date +%s.%N > "end-$1"
"""


def sink(chunk: bytes) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Sshd:
    alias: str
    log: Path

    def ports(self, pattern: str) -> list[str]:
        return re.findall(pattern + r" 127\.0\.0\.1 port (\d+)", self.log.read_text())

    def accepted(self) -> list[str]:
        """The client ports of the connections this sshd accepted, in order."""
        return self.ports(r"Accepted publickey for \S+ from")

    def disconnected(self) -> list[str]:
        return self.ports(r"Disconnected from user \S+")


@pytest.fixture
def start_sshd(ssh_host: str, home: Path, tmp_path: Path) -> Iterator[Callable[[int | None],
                                                                                 Sshd]]:
    """Start an sshd of our own, as `.ci/services.sh` configures its own but on another
    port and with `MaxSessions` as given (None: OpenSSH's default, 10), for a Host alias of
    its own in ~/.ssh/config; its log counts the connections."""
    if os.geteuid() != 0:
        pytest.skip("an sshd that logs in other users needs root, as .ci/services.sh does")
    shared = Path(os.environ["EXPEGIT_TEST_SSH_CONFIG"]).parent
    started: list[int] = []

    def start(max_sessions: int | None) -> Sshd:
        name = f"pool{len(started)}"
        folder = tmp_path / name
        folder.mkdir()
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        lines = [line for line in (shared / "sshd_config").read_text().splitlines()
                 if not line.startswith(("Port ", "PidFile ", "MaxSessions "))]
        lines += [f"Port {port}", f"PidFile {folder / 'sshd.pid'}"]
        if max_sessions is not None:
            lines.append(f"MaxSessions {max_sessions}")
        (folder / "sshd_config").write_text("\n".join(lines) + "\n")
        key = (shared / "host_ed25519.pub").read_text().split()[:2]
        (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(key)}\n")
        config = home / ".ssh" / "config"
        block = config.read_text().split("Host ")[1]  # the test host's block
        assert block.startswith(f"{ssh_host}\n"), block
        block = re.sub(r"Port \d+", f"Port {port}", block.replace(ssh_host, name, 1))
        block = re.sub(r"UserKnownHostsFile \S+", f"UserKnownHostsFile {folder / 'known_hosts'}",
                       block)
        with config.open("a") as file:
            file.write(f"Host {block}")
        log = folder / "sshd.log"
        subprocess.run(["/usr/sbin/sshd", "-f", str(folder / "sshd_config"), "-E", str(log)],
                       check=True)
        deadline = time.monotonic() + 10
        while not (folder / "sshd.pid").exists() or not _listening(port):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(0.02)
        started.append(int((folder / "sshd.pid").read_text()))
        return Sshd(name, log)

    yield start
    for pid in started:  # the listeners; the sessions ended with their connections
        os.kill(pid, signal.SIGTERM)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that hold one same instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def profile_for(alias: str, home: Path, tmp_path: Path) -> profiles.Profile:
    write_profile(home / ".config" / "runaway", alias, ssh_config=alias,
                  host_directory=f"~/runaway-tests/{uuid.uuid4().hex[:12]}",
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"])
    return profiles.load(alias, tmp_path)


async def run_at_once(session: Runaway, profile: profiles.Profile, work: Path, n: int) -> int:
    """N runs of RUN at once in `session`: how many ran at once (all must succeed)."""
    barrier = uuid.uuid4().hex
    outcomes = await asyncio.gather(*(
        session.run(profile, Job(work, "run.sh", f"{i} {barrier} {n}"), sink, sink)
        for i in range(n)))
    assert [o.exit_code for o in outcomes] == [0] * n
    return overlap([(float((work / f"start-{i}").read_text()),
                     float((work / f"end-{i}").read_text())) for i in range(n)])


@pytest.mark.parametrize("n", [16, 25])
def test_n_runs_at_once_to_one_host_run_at_once(ssh_host: str, home: Path, tmp_path: Path,
                                                 work: Path, n: int):
    profile = profile_for(ssh_host, home, tmp_path)
    script(work, "run.sh", RUN)

    async def main() -> None:
        async with Runaway() as session:
            assert await run_at_once(session, profile, work, n) == n
            host = await session.host(profile)
            assert isinstance(host, SshHost)
            # 10 channels a connection, give or take one: n runs and an upload.
            assert host.connections <= (n + 1 + 9) // 10 + 1

    asyncio.run(main())


@pytest.mark.parametrize(("max_sessions", "n"), [(None, 16), (None, 25), (3, 16)],
                         ids=["default-16", "default-25", "3-16"])
def test_a_host_that_refuses_channels_gets_more_connections(
        start_sshd: Callable[[int | None], Sshd], home: Path, tmp_path: Path, work: Path,
        max_sessions: int | None, n: int):
    sshd = start_sshd(max_sessions)
    profile = profile_for(sshd.alias, home, tmp_path)
    script(work, "run.sh", RUN)

    async def main() -> int:
        async with Runaway() as session:
            return await run_at_once(session, profile, work, n)

    assert asyncio.run(main()) == n
    log = sshd.log.read_text()
    if max_sessions == 3:  # refused at 3 channels, never reported: 6 connections at least
        assert len(sshd.accepted()) >= 6, log
        assert "no more sessions" in log  # sshd's refusals
    else:  # 10 channels a connection: no connection more than needed (sshd may refuse one
        # channel where it frees a session a moment late: the pool opens it again there)
        assert log.count("no more sessions") <= 1, log
        assert len(sshd.accepted()) == (n + 1 + 9) // 10, log


def test_a_long_batch_at_the_limit_keeps_its_connections(
        start_sshd: Callable[[int | None], Sshd], home: Path, tmp_path: Path, work: Path):
    """Runs that end and start all the time: a channel opened where one just closed is
    seldom refused (sshd frees a session a moment after its channel closed), and then opened
    again on the same connection, so the pool does not grow as it goes."""
    sshd = start_sshd(None)
    profile = profile_for(sshd.alias, home, tmp_path)
    script(work, "run.sh", "echo \"$1\" > \"out-$1\"\n")

    async def main() -> list[int]:
        workers = asyncio.Semaphore(20)

        async def one(i: int) -> int:
            async with workers:
                outcome = await session.run(profile, Job(work, "run.sh", str(i)), sink, sink)
                return outcome.exit_code

        async with Runaway() as session:
            codes = await asyncio.gather(*(one(i) for i in range(100)))
            host = await session.host(profile)
            assert isinstance(host, SshHost)
            # Each connection's room for channels is still sshd's default.
            assert [link.room for link in host._links] == [CHANNELS] * 3
            return codes

    assert asyncio.run(main()) == [0] * 100
    assert len(list(work.glob("out-*"))) == 100
    log = sshd.log.read_text()
    assert len(sshd.accepted()) == 3, log  # 20 runs, and the uploads and other commands


def test_one_run_opens_one_connection_and_close_closes_them_all(
        start_sshd: Callable[[int | None], Sshd], home: Path, tmp_path: Path, work: Path):
    sshd = start_sshd(None)
    profile = profile_for(sshd.alias, home, tmp_path)
    script(work, "run.sh", RUN)

    async def main() -> None:
        session = Runaway()
        assert await run_at_once(session, profile, work, 1) == 1
        host = await session.host(profile)
        assert isinstance(host, SshHost)
        assert host.connections == 1
        assert len(sshd.accepted()) == 1, sshd.log.read_text()

        assert await run_at_once(session, profile, work, 12) == 12
        assert host.connections == 2  # the upload had room on the second
        await session.close()
        assert host.connections == 0

    asyncio.run(main())
    assert len(sshd.accepted()) == 2
    deadline = time.monotonic() + 10
    while sorted(sshd.disconnected()) != sorted(sshd.accepted()):
        assert time.monotonic() < deadline, sshd.log.read_text()
        time.sleep(0.05)


def test_a_host_that_runs_no_command_is_one_error(start_sshd: Callable[[int | None], Sshd],
                                                  home: Path, tmp_path: Path, work: Path):
    sshd = start_sshd(0)  # sshd then allows no session at all
    profile = profile_for(sshd.alias, home, tmp_path)
    script(work, "run.sh", RUN)

    async def main() -> None:
        async with Runaway() as session:
            await session.run(profile, Job(work, "run.sh", "0 x 1"), sink, sink)

    with pytest.raises(RunawayError) as refused:
        asyncio.run(main())
    assert refused.value.code == ExitCode.CONNECTION
    assert re.fullmatch(rf"'{sshd.alias}' refuses to run commands: .+", str(refused.value))
    assert len(sshd.accepted()) == 1  # not a connection per refusal
