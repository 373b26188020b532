"""Issue 8, §2, §4 and §5: runaway's own failures, hostile names and values, broken profile
folders: one line on stderr, exit 255 (as ssh), nothing run and nothing written."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from git_runaway.errors import FAILED
from tests.conftest import runaway
from tests.conftest import script


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    os.chmod(tmp_path, 0o755)
    return folder


def one_line(done: subprocess.CompletedProcess[str], pattern: str) -> None:
    """runaway failed as itself: exit 255, nothing on stdout, one line matching `pattern`."""
    assert (done.returncode, done.stdout) == (FAILED, ""), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.fullmatch(f"runaway: {pattern}\n", done.stderr), done.stderr


# -- §4 exit codes -----------------------------------------------------------------------


def test_a_run_that_never_started_is_not_the_scripts_usage_error(work: Path):
    # A script's own argparse error exits 2: runaway's "no such script" must not look alike.
    script(work, "run.sh", "echo 'usage: run.sh' >&2; exit 2\n")
    assert runaway("local", "run.sh", cwd=work).returncode == 2
    one_line(runaway("local", "missing.sh", cwd=work),
             re.escape(f"script 'missing.sh' is not a file inside {work}"))
    one_line(runaway("nope", "run.sh", cwd=work), "unknown profile 'nope'; .*")
    one_line(runaway("--bogus", cwd=work), "invalid command line; .*")


def test_check_exits_like_a_run_on_a_host_key_failure(ssh_profile: str, home: Path, work: Path):
    config = home / ".ssh" / "config"
    empty = home / ".ssh" / "known_hosts_empty"
    empty.write_text("")
    config.write_text(re.sub(r"UserKnownHostsFile .*", f"UserKnownHostsFile {empty}",
                             config.read_text()))
    script(work, "run.sh", "echo ran\n")
    ran = runaway(ssh_profile, "run.sh", cwd=work)
    checked = runaway("--check", ssh_profile, cwd=work)
    assert ran.returncode == checked.returncode == FAILED, (ran.stderr, checked.stdout)
    assert "host key of 'testhost' is unknown" in checked.stdout


# -- §2 RUNAWAY* variables -----------------------------------------------------------------


@pytest.fixture(params=["local", "ssh"])
def profile(request: pytest.FixtureRequest) -> str:
    return "local" if request.param == "local" else str(request.getfixturevalue("ssh_profile"))


def test_a_variable_name_that_is_not_an_identifier_is_refused(profile: str, work: Path,
                                                              tmp_path: Path):
    planted = tmp_path / "planted"
    os.chmod(tmp_path, 0o777)  # so that the ssh user could plant it too
    script(work, "run.sh", "echo ran > ran.txt\n")
    name = f"RUNAWAY_A;touch {planted};B"
    done = runaway(profile, "run.sh", cwd=work, env={**os.environ, name: "1"})
    one_line(done, re.escape(f"invalid variable name {name!r}: a RUNAWAY* variable is sent to "
                             "the host only if its name is letters, digits and '_'; unset it"))
    assert not planted.exists() and not (work / "ran.txt").exists()


def test_variable_values_reach_the_script_literally(profile: str, work: Path, tmp_path: Path):
    planted = tmp_path / "planted"
    os.chmod(tmp_path, 0o777)
    script(work, "run.sh", 'printf "%s\\n" "$RUNAWAY_VALUE"\n')
    value = f"a'b\"; touch {planted}; $(touch {planted}) `touch {planted}` $HOME\nline 2"
    done = runaway(profile, "run.sh", cwd=work, env={**os.environ, "RUNAWAY_VALUE": value})
    assert (done.returncode, done.stdout) == (0, value + "\n"), done.stderr
    assert not planted.exists()


@pytest.mark.parametrize("where", ["argument", "value"])
def test_non_utf8_text_is_refused_in_one_line(profile: str, work: Path, where: str):
    script(work, "run.sh", "echo ran > ran.txt\n")
    env = {**os.environb}
    args = [b"git", b"runaway", profile.encode(), b"run.sh"]
    if where == "argument":
        args += [b"--", b"caf\xe9"]
        message = r"the argument 'caf\\udce9' is not UTF-8 text, .*"
    else:
        env[b"RUNAWAY_X"] = b"caf\xe9"
        message = r"the value of RUNAWAY_X 'caf\\udce9' is not UTF-8 text, .*"
    done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=60)
    one_line(done, message)
    assert not (work / "ran.txt").exists()
