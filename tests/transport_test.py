"""The transport of `git runaway` on real hosts and faults (issue 8, sections 1, 3 and 4):
nothing fetched into .git, results kept on the host until they are whole here, any login
shell and its startup output, signals the script sends, leftovers and `--clean`, a closed
stdout, concurrent fetches into one folder."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from git_runaway import profiles
from git_runaway.errors import ExitCode
from git_runaway.execution import Job
from git_runaway.execution import Runaway
from tests.conftest import Target
from tests.conftest import git
from tests.conftest import runaway
from tests.conftest import script
from tests.conftest import ssh_user_home
from tests.conftest import write_profile

RUN_FOLDER = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def run_folders(host: Path) -> list[Path]:
    return [p for p in host.iterdir() if RUN_FOLDER.fullmatch(p.name)] if host.exists() else []


def sink(chunk: bytes) -> None:
    pass


# -- 1. nothing lost, nothing planted -----------------------------------------------------


def test_git_is_not_sent_and_nothing_under_git_comes_back(target: Target, work: Path):
    git("init", "-q", "-b", "main", cwd=work)
    script(work, "run.sh", "ls -a; echo \"commit=$RUNAWAY_COMMIT\"\n"
           "mkdir -p .git/hooks sub/.git; echo planted > .git/hooks/pre-commit;"
           " echo x > .git/index; echo y > sub/.git/config; echo ok > out.txt\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "code", cwd=work)
    head = git("rev-parse", "HEAD", cwd=work).strip()
    index = (work / ".git" / "index").read_bytes()

    done = runaway(target.profile, "run.sh", cwd=work)
    assert done.returncode == 0, done.stderr
    assert ".git" not in done.stdout.split()  # not sent
    assert f"commit={head}" in done.stdout.splitlines()
    assert (work / "out.txt").read_text() == "ok\n"
    assert not (work / ".git" / "hooks" / "pre-commit").exists()
    assert (work / ".git" / "index").read_bytes() == index
    assert not (work / "sub").exists()

    (work / ".sendignore").write_text("!.git/\n")  # the user opts in: sent, still not fetched
    done = runaway(target.profile, "run.sh", cwd=work)
    assert ".git" in done.stdout.split()
    assert not (work / ".git" / "hooks" / "pre-commit").exists()


def limited_file_size(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_during_the_fetch_keeps_the_results_on_the_host(target: Target,
                                                                    work: Path):
    # RLIMIT_FSIZE makes every write past 1 MiB fail (EFBIG), as a full disk would. Over ssh
    # only: with `local`, the host's processes would inherit the limit too.
    if target.profile == "local":
        pytest.skip("the limit would apply to the host's side too")
    script(work, "run.sh", "head -c 3000000 /dev/zero > big.bin; echo small > small.txt\n")
    done = subprocess.run(["git-runaway", target.profile, "run.sh"], cwd=work,
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: limited_file_size(1 << 20))
    assert done.returncode == 255, done.stderr  # runaway's own failure, as ssh's
    [line] = done.stderr.splitlines()
    found = re.fullmatch(r"runaway: cannot store the results here \(.+\); they are kept on "
                         r"\S+:(\S+)", line)
    assert found is not None, line
    kept = target.host_directory / Path(found.group(1)).name
    assert (kept / "big.bin").stat().st_size == 3000000
    assert (kept / "small.txt").read_text() == "small\n"
    assert sorted(p.name for p in work.iterdir()) == ["run.sh"]  # nothing truncated here
    assert not list(target.host_directory.glob("*.users/*"))  # the run is over: no marker


def test_concurrent_library_runs_fetch_into_one_folder(tmp_path: Path):
    folder = tmp_path / "work"
    script(folder, "run.sh", 'echo "$1" > "out-$1.txt"; mkdir -p shared;'
           ' echo "$1" > shared/last.txt\n')

    async def main() -> list[int]:
        async with Runaway() as session:
            outcomes = await asyncio.gather(*(
                session.run(profiles.LOCAL, Job(folder, "run.sh", str(i)), sink, sink)
                for i in range(30)))
        return [o.exit_code for o in outcomes]

    assert asyncio.run(main()) == [0] * 30
    assert sorted(p.name for p in folder.glob("out-*.txt")) == sorted(
        f"out-{i}.txt" for i in range(30))
    assert (folder / "shared" / "last.txt").read_text().strip() in {str(i) for i in range(30)}
    assert not list(folder.glob(".runaway-fetch-*"))


def test_a_script_signalling_its_process_group_runs_once(target: Target, work: Path):
    script(work, "run.sh", "trap 'echo caught' USR1 USR2; echo ran >> ran.txt;"
           " kill -USR2 0; kill -USR1 0; sleep 0.2; echo end\n")
    done = runaway(target.profile, "run.sh", cwd=work)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert (work / "ran.txt").read_text() == "ran\n"
    assert done.stdout.splitlines()[-1] == "end"


# -- login shells that print or are not POSIX ---------------------------------------------


@pytest.fixture
def tcsh_host(ssh_host: str) -> str:
    host = os.environ.get("EXPEGIT_TEST_SSH_TCSH_HOST")
    if not host:
        pytest.skip("no tcsh test user (re-run .ci/services.sh)")
    return host


def test_a_tcsh_login_shell_that_prints_banners(tcsh_host: str, home: Path, work: Path):
    write_profile(home / ".runaway", "tcsh", ssh_config=tcsh_host,
                  host_directory=f"~/runaway-tests/{uuid.uuid4().hex[:12]}",
                  before_execution=["export GREETING=hi"],
                  execution=["echo \"$GREETING $RUNAWAY_UUID\" > env.txt",
                             "$SCRIPT_NAME $SCRIPT_ARGS"])
    script(work, "run.sh", 'echo "out $1"; echo err >&2; echo made > made.txt; exit 5\n')
    done = runaway("tcsh", "run.sh", "--", "\"it's\"", cwd=work)
    assert (done.returncode, done.stdout, done.stderr) == (5, "out it's\n", "err\n")
    assert (work / "made.txt").read_text() == "made\n"
    assert (work / "env.txt").read_text().startswith("hi ")

    again = runaway("-v", "tcsh", "run.sh", cwd=work)  # the code is reused
    assert "runaway: the host already had this code: nothing uploaded" in again.stderr \
        or "runaway: uploading" not in again.stderr or again.returncode == 5

    check = runaway("--check", "tcsh", cwd=work)
    assert check.returncode == 255
    assert re.search(r"^FAIL  quiet shell startup: the login shell printed \d+ bytes before "
                     r"the command ran \('Welcome: module banner on stdout'", check.stdout,
                     re.M), check.stdout
    assert "ok    before_execution" in check.stdout


# -- leftovers ----------------------------------------------------------------------------


def test_a_killed_runaway_leaves_no_marker_and_clean_removes_what_ended_runs_left(
        ssh_profile: str, home: Path, work: Path):
    host = ssh_user_home() / "runaway-tests"
    profile_path = home / ".config" / "runaway" / f"{ssh_profile}.yml"
    host = host / profile_path.read_text().split("runaway-tests/")[1].split()[0]
    script(work, "run.sh", 'echo started; sleep "${1:-0}"; echo done > done.txt\n')
    assert runaway("--leave=everything", ssh_profile, "run.sh", cwd=work).returncode == 0
    killed = subprocess.Popen(["git-runaway", ssh_profile, "run.sh", "--", "30"], cwd=work,
                              stdout=subprocess.PIPE, text=True)
    assert killed.stdout is not None and killed.stdout.readline() == "started\n"
    killed.kill()
    killed.wait()
    deadline = time.monotonic() + 10
    while list(host.glob("*.users/*")):  # the host notices by itself and unmarks the run
        assert time.monotonic() < deadline, list(host.glob("*.users/*"))
        time.sleep(0.1)
    (host / f"{'0' * 64}.tar.{uuid.uuid4()}.part").write_bytes(b"half")
    assert len(run_folders(host)) == 2

    live = subprocess.Popen(["git-runaway", "--leave=code", ssh_profile, "run.sh", "--", "3"],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert live.stdout is not None and live.stdout.readline() == "started\n"
    cleaned = runaway("--clean", ssh_profile, cwd=work)
    assert cleaned.returncode == 0, cleaned.stderr
    removed = cleaned.stdout.splitlines()
    assert len([line for line in removed if line.endswith("(run folder)")]) == 2, removed
    assert len([line for line in removed if line.endswith("(upload)")]) == 1, removed
    assert all(line.startswith(f"removed testhost:{host}/") for line in removed), removed
    _, err = live.communicate(timeout=30)
    assert (live.returncode, err) == (0, "")  # the live run was left alone
    assert (work / "done.txt").exists()
    assert [p.name for p in host.glob("*.tar")] != []  # --leave=code kept its archive
    assert run_folders(host) == []

    cleaned = runaway("--clean", ssh_profile, cwd=work)  # nothing runs: the archive goes
    assert [line.endswith("(archive)") for line in cleaned.stdout.splitlines()] == [True]
    assert sorted(p.name for p in host.iterdir()) == [".lock"]


def test_a_marker_whose_run_is_over_does_not_pin_the_archive(ssh_profile: str, tmp_path: Path):
    profile = profiles.load(ssh_profile, tmp_path)
    host = ssh_user_home() / profile.host_directory[2:]
    script(tmp_path / "code", "run.sh", "echo ok\n")

    async def main() -> None:
        async with Runaway() as session:
            await session.run(profile, Job(tmp_path / "code", "run.sh"), sink, sink)
            # A run on this archive that was SIGKILLed: its marker is there, unlocked.
            [users] = host.glob("*.users")
            (users / str(uuid.uuid4())).write_text("")

    asyncio.run(main())
    assert sorted(p.name for p in host.iterdir()) == [".lock"]


# -- 4. a closed stdout -------------------------------------------------------------------


def test_a_closed_stdout_stops_the_run_cleans_up_and_exits_quietly(target: Target,
                                                                   work: Path):
    token = f"{time.time() % 1000:.6f}"
    script(work, "run.sh", f"while :; do echo line; sleep 0.0{token.replace('.', '')}; done\n")
    start = time.monotonic()
    done = subprocess.run(f"git-runaway {target.profile} run.sh | head -1; "
                          "echo \"status=${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                          cwd=work, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 20
    assert (done.stdout, done.stderr) == ("line\nstatus=141\n", "")
    assert subprocess.run(["pgrep", "-f", f"sleep 0.0{token.replace('.', '')}"]
                          ).returncode == 1
    assert sorted(p.name for p in target.host_directory.iterdir()) == [".lock"]


def test_two_sigints_at_once_are_one_ctrl_c(target: Target, work: Path):
    """A terminal's Ctrl-C reaches runaway twice: directly, and forwarded by `git`."""
    script(work, "run.sh", "echo started; sleep 20; echo finished > finished.txt\n")
    for _ in range(3):
        process = subprocess.Popen(["git-runaway", target.profile, "run.sh"], cwd=work,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        assert process.stdout is not None and process.stdout.readline() == "started\n"
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert (process.returncode, stderr) == (ExitCode.INTERRUPTED, "runaway: interrupted\n")
        assert sorted(p.name for p in target.host_directory.iterdir()) == [".lock"]
