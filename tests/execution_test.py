"""The library API that `jobs run` and the agent use: many runs from one asyncio loop."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from git_runaway import profiles
from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError
from git_runaway.execution import Job
from git_runaway.execution import Leave
from git_runaway.execution import Runaway
from tests.conftest import script
from tests.conftest import ssh_user_home


class Output:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def __call__(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def text(self) -> str:
        return b"".join(self.chunks).decode()


def folders(tmp_path: Path, count: int, body: str) -> list[Path]:
    script(tmp_path / "code", "run.sh", body)
    copies = [tmp_path / f"run{i}" for i in range(count)]
    for copy in copies:
        shutil.copytree(tmp_path / "code", copy)
    return copies


@pytest.mark.parametrize("leave", [Leave.NOTHING, Leave.CODE])
def test_concurrent_runs_share_connections(ssh_profile: str, tmp_path: Path, leave: Leave):
    profile = profiles.load(ssh_profile, tmp_path)
    work = folders(tmp_path, 12, 'echo "$1" > out.txt; echo "${SSH_CLIENT% *}"; exit "$1"\n')

    async def main() -> list[tuple[int, str]]:
        async with Runaway() as runaway:
            outputs = [Output() for _ in work]
            outcomes = await asyncio.gather(*(
                runaway.run(profile, Job(folder, "run.sh", str(i), leave), out, Output())
                for i, (folder, out) in enumerate(zip(work, outputs, strict=True))))
        return [(o.exit_code, out.text()) for o, out in zip(outcomes, outputs, strict=True)]

    results = asyncio.run(main())
    assert [code for code, _ in results] == list(range(12))
    assert [(f / "out.txt").read_text() for f in work] == [f"{i}\n" for i in range(12)]
    # A client port per connection: 10 channels on the first (sshd's default MaxSessions),
    # the rest on a second.
    assert len({client for _, client in results}) == 2


def test_unchanged_code_is_uploaded_once(ssh_profile: str, tmp_path: Path):
    profile = profiles.load(ssh_profile, tmp_path)
    first, second, changed = folders(tmp_path, 3, "echo ok\n")
    (changed / "more.txt").write_text("more")

    async def main() -> list[int]:
        async with Runaway() as runaway:
            return [(await runaway.run(profile, Job(f, "run.sh", leave=Leave.CODE), Output(),
                                       Output())).uploaded for f in (first, second, changed)]

    sent = asyncio.run(main())
    assert sent[0] == sent[2] == 10240 and sent[1] == 0


def host_directory(profile: profiles.Profile) -> Path:
    """The profile's host_directory, seen from here (the test sshd is on this machine)."""
    assert profile.host_directory.startswith("~/")
    return ssh_user_home() / profile.host_directory[2:]


def test_a_session_uploads_code_once_even_with_leave_nothing(ssh_profile: str, tmp_path: Path):
    profile = profiles.load(ssh_profile, tmp_path)
    work = folders(tmp_path, 3, "echo ok > out.txt\n")
    host = host_directory(profile)

    async def main() -> tuple[list[int], int]:
        async with Runaway() as runaway:
            sent = [(await runaway.run(profile, Job(f, "run.sh"), Output(), Output())).uploaded
                    for f in work]
            return sent, len(list(host.glob("*.tar")))  # kept until the session closes

    assert asyncio.run(main()) == ([10240, 0, 0], 1)
    assert [p.name for p in host.iterdir()] == [".lock"]  # then deleted


def test_concurrent_runs_of_one_session_share_one_upload(ssh_profile: str, tmp_path: Path):
    profile = profiles.load(ssh_profile, tmp_path)
    work = folders(tmp_path, 6, 'echo "$1" > out.txt\n')

    async def main() -> list[int]:
        async with Runaway() as runaway:
            outcomes = await asyncio.gather(*(
                runaway.run(profile, Job(f, "run.sh", str(i)), Output(), Output())
                for i, f in enumerate(work)))
        return [o.uploaded for o in outcomes]

    assert sorted(asyncio.run(main())) == [0] * 5 + [10240]
    assert [(f / "out.txt").read_text() for f in work] == [f"{i}\n" for i in range(6)]
    assert [p.name for p in host_directory(profile).iterdir()] == [".lock"]


@pytest.mark.parametrize(("leaves", "archives"), [
    ((Leave.NOTHING, Leave.CODE), 1), ((Leave.CODE, Leave.NOTHING), 0)])
def test_the_last_run_of_a_session_decides_whether_its_code_stays(
        ssh_profile: str, tmp_path: Path, leaves: tuple[Leave, Leave], archives: int):
    profile = profiles.load(ssh_profile, tmp_path)
    work = folders(tmp_path, 2, "echo ok\n")

    async def main() -> None:
        async with Runaway() as runaway:
            for folder, leave in zip(work, leaves, strict=True):
                await runaway.run(profile, Job(folder, "run.sh", leave=leave), Output(),
                                  Output())

    asyncio.run(main())
    assert len(list(host_directory(profile).glob("*.tar"))) == archives


def test_local_and_ssh_runs_in_one_loop(ssh_profile: str, tmp_path: Path):
    work = folders(tmp_path, 4, "hostname > where.txt; whoami >> where.txt\n")
    names = ["local", ssh_profile, "local", ssh_profile]

    async def main() -> None:
        async with Runaway() as runaway:
            await asyncio.gather(*(
                runaway.run(profiles.load(n, tmp_path), Job(f, "run.sh"), Output(), Output())
                for n, f in zip(names, work, strict=True)))

    asyncio.run(main())
    users = [(f / "where.txt").read_text().split()[1] for f in work]
    assert users[0] == users[2] != users[1] == users[3]


def test_cancelling_one_run_leaves_the_others_alone(tmp_path: Path):
    slow, fast = folders(tmp_path, 2, 'echo begun > begun.txt; sleep "$1"; echo done > done.txt\n')
    profile = profiles.LOCAL

    async def main() -> int:
        async with Runaway() as runaway:
            slow_run = asyncio.create_task(
                runaway.run(profile, Job(slow, "run.sh", "30"), Output(), Output()))
            fast_outcome = await runaway.run(profile, Job(fast, "run.sh", "0.5"), Output(),
                                             Output())
            slow_run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow_run
            return fast_outcome.exit_code

    assert asyncio.run(main()) == 0
    assert (fast / "done.txt").exists()
    assert (slow / "begun.txt").exists() and not (slow / "done.txt").exists()


def test_errors_are_runaway_errors_with_codes(tmp_path: Path):
    (tmp_path / "code").mkdir()

    async def main() -> None:
        async with Runaway() as runaway:
            await runaway.run(profiles.LOCAL, Job(tmp_path / "code", "missing.sh"), Output(),
                              Output())

    with pytest.raises(RunawayError) as error:
        asyncio.run(main())
    assert error.value.code == ExitCode.USAGE
