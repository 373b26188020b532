"""End to end: the installed `git runaway`, on this machine and on the real loopback sshd."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from git_runaway.errors import FAILED
from git_runaway.errors import ExitCode
from tests.conftest import Target
from tests.conftest import runaway
from tests.conftest import script
from tests.conftest import ssh_user_home
from tests.conftest import write_profile


def test_output_and_exit_code_are_the_scripts(target: Target, work: Path):
    script(work, "run.sh", "echo to-stdout; echo to-stderr >&2; exit 7\n")
    done = runaway(target.profile, "run.sh", cwd=work)
    assert (done.returncode, done.stdout, done.stderr) == (7, "to-stdout\n", "to-stderr\n")


def test_verbose_steps_go_to_stderr_prefixed(target: Target, work: Path):
    script(work, "run.sh", "echo to-stdout; echo to-stderr >&2\n")
    done = runaway("-v", target.profile, "run.sh", cwd=work)
    assert (done.returncode, done.stdout) == (0, "to-stdout\n")
    ours = [line for line in done.stderr.splitlines() if line != "to-stderr"]
    assert len(ours) >= 4 and all(line.startswith("runaway: ") for line in ours)
    assert "runaway: uploading 10240 bytes" in ours


def test_arguments_are_split_like_a_shell_and_never_executed(target: Target, work: Path):
    script(work, "run.sh", 'for a in "$@"; do printf "[%s]\\n" "$a"; done\n')
    args = ["--name 'a b'", "$(touch pwned1)", ";", "touch", "pwned2", "`touch pwned3`", "&&",
            "|", "x>y", '"$HOME"']
    done = runaway(target.profile, "run.sh", "--", *args, cwd=work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "[--name]", "[a b]", "[$(touch]", "[pwned1)]", "[;]", "[touch]", "[pwned2]",
        "[`touch]", "[pwned3`]", "[&&]", "[|]", "[x>y]", "[$HOME]"]
    assert not list(work.glob("pwned*")) and not list(target.host_directory.rglob("pwned*"))


def test_created_and_changed_files_come_back_minus_fetchignore(target: Target, work: Path):
    (work / "kept.txt").write_text("same")
    os.utime(work / "kept.txt", (1_000_000_000, 1_000_000_000))
    (work / "changed.txt").write_text("before\n")
    (work / ".fetchignore").write_text("*.tmp\nbig/\n")
    script(work, "run.sh", "echo after >> changed.txt; mkdir -p sub big; echo n > new.txt;"
           " echo d > sub/deep.txt; echo t > x.tmp; echo b > big/file; ln -s new.txt link\n")
    done = runaway(target.profile, "run.sh", cwd=work)
    assert done.returncode == 0, done.stderr
    assert (work / "changed.txt").read_text() == "before\nafter\n"
    assert (work / "new.txt").read_text() == "n\n"
    assert (work / "sub" / "deep.txt").read_text() == "d\n"
    assert os.readlink(work / "link") == "new.txt"
    assert not (work / "x.tmp").exists() and not (work / "big").exists()
    assert os.stat(work / "kept.txt").st_mtime == 1_000_000_000  # unchanged: not fetched


def test_sendignore_has_gitignore_rules_and_always_travels(target: Target, work: Path):
    (work / ".sendignore").write_text("secret/\n*.bin\n!keep.bin\n.sendignore\n")
    for name in ("secret/key", "a.bin", "keep.bin", "sub/b.bin", "sub/c.txt"):
        (work / name).parent.mkdir(exist_ok=True)
        (work / name).write_text(name)
    script(work, "run.sh", "find . -type f | sort\n")
    done = runaway(target.profile, "run.sh", cwd=work)
    assert done.stdout.split() == ["./.sendignore", "./keep.bin", "./run.sh", "./sub/c.txt"]


def test_runaway_variables_are_exported(target: Target, work: Path):
    script(work, "run.sh", "env | grep ^RUNAWAY | sort\n")
    done = runaway(target.profile, "run.sh", "--", "--lr", "0.1", cwd=work,
                   env={**os.environ, "RUNAWAY_CUSTOM": "forwarded"})
    env = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert re.fullmatch(r"[0-9a-f-]{36}", env["RUNAWAY_UUID"])
    assert env["RUNAWAY_PWD"] == f"{target.host_directory}/{env['RUNAWAY_UUID']}"
    assert env["RUNAWAY_PATH"] == str(target.host_directory)
    assert env["RUNAWAY_ARGUMENTS"] == "--lr 0.1"
    assert env["RUNAWAY_PROFILE"] == env["RUNAWAY_REMOTE"] == target.profile
    assert env["RUNAWAY_CUSTOM"] == "forwarded"
    assert len(env["RUNAWAY_SEND_HASH"]) == 64


@pytest.mark.parametrize(("leave", "archives", "folders"), [
    ("nothing", 0, 0), ("code", 1, 0), ("everything", 1, 1)])
def test_leave(target: Target, work: Path, leave: str, archives: int, folders: int):
    script(work, "run.sh", "echo x > out.txt\n")
    done = runaway(f"--leave={leave}", target.profile, "run.sh", cwd=work)
    assert done.returncode == 0, done.stderr
    host = target.host_directory
    assert len(list(host.glob("*.tar"))) == archives
    runs = [p for p in host.iterdir() if re.fullmatch(r"[0-9a-f-]{36}", p.name)]
    assert len(runs) == folders
    assert all((run / "out.txt").is_file() for run in runs)


def test_an_upload_sweeps_the_parts_of_uploads_killed_long_ago(target: Target, work: Path):
    script(work, "run.sh", "true\n")
    assert runaway("--leave=code", target.profile, "run.sh", cwd=work).returncode == 0
    old, recent = (target.host_directory / f"{'0' * 64}.tar.{uuid.uuid4()}.part" for _ in "ab")
    for part in (old, recent):
        part.write_bytes(b"half an archive")
    os.utime(old, (time.time() - 2 * 3600, time.time() - 2 * 3600))
    (work / "changed.txt").write_text("new code: uploaded")
    assert runaway(target.profile, "run.sh", cwd=work).returncode == 0
    assert not old.exists() and recent.exists()  # the recent one may be an upload going on


def test_ctrl_c_stops_the_script_fetches_and_cleans_up(target: Target, work: Path):
    token = f"{time.time() % 1000:.6f}"  # unique, to find the remote sleep
    script(work, "run.sh", f"echo started > started.txt; echo started; sleep 1{token};"
           " echo finished > finished.txt\n")
    # As a terminal does: SIGINT to the whole foreground process group. Without the `git`
    # wrapper, which reports a SIGINT death of its own rather than the exit code.
    process = subprocess.Popen(["git-runaway", target.profile, "run.sh"], cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout is not None and process.stdout.readline() == "started\n"
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == ExitCode.INTERRUPTED
    assert stderr == "runaway: interrupted\n"
    assert (work / "started.txt").read_text() == "started\n"
    assert not (work / "finished.txt").exists()
    assert subprocess.run(["pgrep", "-f", f"sleep 1{token}"]).returncode == 1
    assert list(target.host_directory.iterdir()) == [target.host_directory / ".lock"]


def test_output_streams_live(target: Target, work: Path):
    script(work, "run.sh", "echo first; sleep 2; echo second\n")
    start = time.monotonic()
    process = subprocess.Popen(["git", "runaway", target.profile, "run.sh"], cwd=work,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "first\n"
    first = time.monotonic() - start
    assert process.stdout.readline() == "second\n"
    assert process.wait() == 0
    assert time.monotonic() - start - first > 1.5


def test_after_execution_runs_and_results_come_back_when_the_script_fails(
        ssh_host: str, home: Path, work: Path):
    write_profile(home / ".runaway", "withafter", ssh_config=ssh_host,
                  host_directory="~/runaway-tests/after",
                  before_execution=["export GREETING=hi", "echo before"],
                  execution=["echo $GREETING", "$SCRIPT_NAME $SCRIPT_ARGS"],
                  after_execution=["echo after >&2", "echo after > after.txt"])
    script(work, "run.sh", "echo partial > log.txt; exit 3\n")
    done = runaway("withafter", "run.sh", cwd=work)
    assert (done.returncode, done.stdout, done.stderr) == (3, "before\nhi\n", "after\n")
    assert (work / "log.txt").read_text() == "partial\n"
    assert (work / "after.txt").read_text() == "after\n"


def test_failing_before_execution_skips_the_script(ssh_host: str, home: Path, work: Path):
    write_profile(home / ".runaway", "badbefore", ssh_config=ssh_host,
                  host_directory="~/runaway-tests/badbefore",
                  before_execution=["exit 42"], execution=["$SCRIPT_NAME"],
                  after_execution=["echo after"])
    script(work, "run.sh", "echo ran\n")
    done = runaway("badbefore", "run.sh", cwd=work)
    assert (done.returncode, done.stdout) == (42, "after\n")


def test_concurrent_processes_running_the_same_code(ssh_profile: str, tmp_path: Path):
    """With --leave=nothing each run may delete the shared archive: only the last may."""
    folders = []
    for i in range(6):
        folders.append(tmp_path / f"w{i}")
        script(folders[-1], "run.sh", 'sleep "0.$1"; echo "$1" > out.txt\n')
    processes = [subprocess.Popen(["git", "runaway", ssh_profile, "run.sh", "--", str(i)],
                                  cwd=f, stderr=subprocess.PIPE, text=True)
                 for i, f in enumerate(folders)]
    for process in processes:
        assert process.wait(timeout=60) == 0, process.stderr
    assert [(f / "out.txt").read_text() for f in folders] == [f"{i}\n" for i in range(6)]


@pytest.mark.parametrize(("args", "message"), [
    (["local", "missing.sh"], "runaway: script 'missing.sh' is not a file inside {work}\n"),
    (["local", "../outside.sh"], "runaway: script '../outside.sh' is not a file inside {work}\n"),
    (["--leave=all", "local", "run.sh"],
     "runaway: invalid --leave='all': use nothing, code, everything\n"),
    (["local", "run.sh", "--", "it's"],
     "runaway: cannot split the arguments \"it's\": No closing quotation\n"),
    (["--bogus", "local", "run.sh"], "runaway: invalid command line; usage: git runaway [-v] "
     "[--leave=WHAT] PROFILE SCRIPT [-- ARGS...] (see git runaway -h)\n"),
])
def test_bad_command_lines(work: Path, args: list[str], message: str):
    script(work, "run.sh", "echo ran > ran.txt\n")
    script(work.parent, "outside.sh", "echo ran > ran.txt\n")
    done = runaway(*args, cwd=work)
    assert (done.returncode, done.stdout) == (FAILED, "")
    assert done.stderr == message.format(work=work)
    assert not (work / "ran.txt").exists()


def test_script_excluded_by_sendignore(work: Path):
    script(work, "run.sh", "echo ran\n")
    (work / ".sendignore").write_text("*.sh\n")
    done = runaway("local", "run.sh", cwd=work)
    assert done.returncode == FAILED
    assert done.stderr == (f"runaway: script 'run.sh' is excluded by {work}/.sendignore; "
                           "it must be sent to run\n")


def test_unreachable_host(home: Path, work: Path):
    (home / ".ssh").mkdir()
    (home / ".ssh" / "config").write_text("Host nowhere\n  HostName 127.0.0.1\n  Port 1\n")
    write_profile(home / ".runaway", "nowhere", ssh_config="nowhere", host_directory="/tmp",
                  execution=["$SCRIPT_NAME"])
    script(work, "run.sh", "echo ran\n")
    done = runaway("nowhere", "run.sh", cwd=work)
    assert done.returncode == FAILED
    assert done.stderr.startswith("runaway: cannot connect to 'nowhere': ")
    assert done.stderr.endswith("; check `ssh nowhere`\n") and done.stderr.count("\n") == 1


def test_unknown_host_key_of_the_real_sshd_is_refused(ssh_profile: str, home: Path, work: Path):
    config = (home / ".ssh" / "config").read_text()
    empty = home / ".ssh" / "known_hosts_empty"
    empty.write_text("")
    (home / ".ssh" / "config").write_text(
        re.sub(r"UserKnownHostsFile .*", f"UserKnownHostsFile {empty}", config))
    script(work, "run.sh", "echo ran\n")
    done = runaway(ssh_profile, "run.sh", cwd=work)
    assert done.returncode == FAILED
    assert done.stderr.startswith(f"runaway: host key of 'testhost' is unknown (not in {empty})")
    assert "accept it with `ssh testhost`" in done.stderr


def test_check_reports_each_step(ssh_host: str, home: Path, work: Path):
    write_profile(home / ".runaway", "good", ssh_config=ssh_host, host_directory="~/rt-check",
                  before_execution=["true"], execution=["$SCRIPT_NAME"])
    write_profile(home / ".runaway", "bad", ssh_config=ssh_host, host_directory="~/rt-check",
                  before_execution=["module load nothing"], execution=["$SCRIPT_NAME"])
    good = runaway("--check", "good", cwd=work)
    assert good.returncode == 0, good.stdout
    assert good.stdout.splitlines() == [
        "ok    connect to testhost", f"ok    create host_directory {ssh_user_home()}/rt-check",
        "ok    quiet shell startup", "ok    before_execution", "ok    after_execution"]
    bad = runaway("--check", "bad", cwd=work)
    assert bad.returncode == FAILED
    assert re.search(r"^FAIL  before_execution: exit 127: .*module: .*not found$", bad.stdout,
                     re.M)


def test_help(work: Path):
    assert runaway("-h", cwd=work).stdout.startswith("Run a folder's script on a host")
    # `--help` through git: tests/manpage_test.py


def test_a_vanished_runaway_stops_the_remote_script(target: Target, work: Path):
    token = f"{time.time() % 1000:.6f}"
    script(work, "run.sh", f"echo started; sleep 1{token}; echo finished > finished.txt\n")
    process = subprocess.Popen(["git-runaway", target.profile, "run.sh"], cwd=work,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "started\n"
    process.kill()  # no chance to clean up: the host must notice by itself
    process.wait()
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", f"sleep 1{token}"]).returncode == 0:
        assert time.monotonic() < deadline, "the remote script outlived runaway"
        time.sleep(0.1)


def test_a_profile_without_ssh_config_runs_on_this_machine(home: Path, tmp_path: Path):
    work = tmp_path / "work"
    script(work, "run.sh", 'echo "args: $*"; echo made > made.txt\n')
    runs = tmp_path / "runs"
    write_profile(home / ".runaway", "here", host_directory=str(runs),
                  execution=["echo via-profile", "$SCRIPT_NAME $SCRIPT_ARGS"])
    listed = runaway("--list", cwd=work).stdout.splitlines()
    assert [line.split()[:3] for line in listed if line.startswith("here")] == [
        ["here", "this", "machine"]]
    done = runaway("--leave=everything", "here", "run.sh", "--", "a b", cwd=work)
    assert (done.returncode, done.stdout) == (0, "via-profile\nargs: a b\n")
    assert (work / "made.txt").read_text() == "made\n"
    [run_folder] = [p for p in runs.iterdir() if p.is_dir() and not p.name.endswith(".users")]
    assert (run_folder / "made.txt").is_file()  # --leave=everything, in its host_directory


def test_ctrl_c_reaches_a_script_that_lost_the_first_sigint(target: Target, work: Path):
    # A shell script between two commands when SIGINT lands can lose it (dash does): here,
    # one that lets the first pass on purpose. The stop must still end it.
    script(work, "run.sh", "trap 'trap - INT' INT; echo started\n"
           "while :; do sleep 0.1; done\n")
    process = subprocess.Popen(["git-runaway", target.profile, "run.sh"], cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout is not None and process.stdout.readline() == "started\n"
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert (process.returncode, stderr) == (ExitCode.INTERRUPTED, "runaway: interrupted\n")
    assert list(target.host_directory.iterdir()) == [target.host_directory / ".lock"]


def test_output_that_cannot_come_back_is_named_and_the_rest_comes(target: Target, work: Path):
    script(work, "run.sh", "echo ok > ok.txt; echo secret > secret.txt; chmod 000 secret.txt\n"
           "mkfifo pipe\n")
    done = runaway(target.profile, "run.sh", cwd=work)
    assert done.returncode == 0, done.stderr
    assert (work / "ok.txt").read_text() == "ok\n"
    assert "runaway: warning: 'pipe' was not fetched" in done.stderr
    if target.profile != "local" or os.geteuid() != 0:  # root reads a mode-000 file
        assert "runaway: warning: 'secret.txt' was not fetched" in done.stderr
        assert not (work / "secret.txt").exists()
    assert not (work / "pipe").exists()
