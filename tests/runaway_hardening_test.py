"""Issue 8, §2, §4 and §5: runaway's own failures, hostile names and values, broken profile
folders: one line on stderr, exit 255 (as ssh), nothing run and nothing written."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from git_runaway import profiles
from git_runaway.archive import safe_extract
from git_runaway.errors import FAILED
from git_runaway.errors import RunawayError
from tests import hostile_archives as ha
from tests.conftest import runaway
from tests.conftest import script
from tests.conftest import write_profile


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


# -- §2 a repository's profiles never replace the user's own or the built-in -----------------


def test_a_repository_profile_never_replaces_the_users_own_or_local(home: Path, tmp_path: Path):
    repo = tmp_path / "cloned"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    planted = tmp_path / "planted"
    for name in ("local", "mine"):
        write_profile(repo / ".runaway", name, host_directory=str(tmp_path / "elsewhere"),
                      before_execution=[f"touch {planted}"], execution=["$SCRIPT_NAME"])
    write_profile(home / ".runaway", "mine", host_directory=str(tmp_path / "mine"),
                  execution=["$SCRIPT_NAME"])
    script(repo, "run.sh", 'echo "$RUNAWAY_PATH"\n')
    ran = [runaway(name, "run.sh", cwd=repo) for name in ("local", "mine")]
    assert [(r.returncode, r.stdout) for r in ran] == [
        (0, f"{home}/.cache/runaway\n"), (0, f"{tmp_path}/mine\n")], [r.stderr for r in ran]
    assert not planted.exists()
    listed = runaway("--list", cwd=repo).stdout.splitlines()
    assert listed == [
        f"local  this machine  {profiles.BUILT_IN}",
        f"local  -             {repo}/.runaway/local.yml (ignored: the built-in 'local' comes "
        "first)",
        f"mine   this machine  {home}/.runaway/mine.yml",
        f"mine   -             {repo}/.runaway/mine.yml (ignored: your own 'mine' comes first)"]


# -- §5 a profile folder with broken, huge and special files ---------------------------------


def test_broken_and_special_profile_files_fail_alone(home: Path, work: Path):
    folder = home / ".config" / "runaway"
    write_profile(folder, "good", host_directory=str(work.parent / "h"), execution=["$SCRIPT_NAME"])
    (folder / "zero.yml").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo.yml")
    (folder / "broken.yml").write_text("host_directory: [\n")
    (folder / "big.yml").write_text("# " + "x" * (1 << 20) + "\n")
    write_profile(folder, "empty", host_directory="/tmp", execution=[""])
    script(work, "run.sh", "echo ran > ran.txt\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # A fifo made runaway wait for a writer forever: fail the test instead.
        return subprocess.run(["git", "runaway", *args], cwd=work, capture_output=True,
                              text=True, timeout=30)

    listed = run("--list")
    assert (listed.returncode, listed.stderr) == (0, "")
    assert [line.split()[:2] for line in listed.stdout.splitlines()] == [
        ["big", "-"], ["broken", "-"], ["empty", "-"], ["fifo", "-"], ["good", "this"],
        ["local", "this"], ["zero", "-"]]
    assert f"{folder}/zero.yml (cannot read it (not a regular file))" in listed.stdout
    assert f"{folder}/big.yml (cannot read it (larger than 1048576 bytes))" in listed.stdout
    one_line(run("nope", "run.sh"), re.escape(
        "unknown profile 'nope'; known profiles: big, broken, empty, fifo, good, local, zero "
        f"(add one as {folder}/nope.yml)"))
    for name, problem in [("zero", "cannot read it (not a regular file)"),
                          ("fifo", "cannot read it (not a regular file)"),
                          ("big", "cannot read it (larger than 1048576 bytes)"),
                          ("empty", "key 'execution' has an empty command")]:
        one_line(run(name, "run.sh"), re.escape(f"profile {folder}/{name}.yml: {problem}"))
    assert run("good", "run.sh").returncode == 0
    assert (work / "ran.txt").exists()


def test_a_300_character_profile_name_is_one_line(work: Path):
    script(work, "run.sh", "echo ran > ran.txt\n")
    for args in (["p" * 300, "run.sh"], ["--check", "p" * 300]):
        one_line(runaway(*args, cwd=work),
                 re.escape(f"invalid profile name {'p' * 20!r}... (300 characters): use at "
                           "most 100"))
    assert not (work / "ran.txt").exists()


# -- §5 refused archives: nothing written before the refusal ---------------------------------


def _layout(folder: Path) -> list[tuple[str, str]]:
    return sorted((str(p.relative_to(folder)), "link" if p.is_symlink() else "dir"
                   if p.is_dir() else p.read_text()) for p in folder.rglob("*"))


@pytest.mark.parametrize(("on_disk", "entries", "why"), [
    ("dir", [ha.symlink("d", "sub")], "entry 'd' would replace the directory 'd'"),
    ("dir", [ha.file("d")], "entry 'd' would replace the directory 'd'"),
    ("file", [ha.directory("f")], "entry 'f' would replace the file 'f' with a directory"),
    ("file", [ha.file("f/x")], "entry 'f/x' goes through 'f', which is not a directory"),
    ("none", [ha.file("a"), ha.directory("a")],
     "entry 'a' would replace the file 'a' with a directory"),
    ("none", [ha.directory("a"), ha.file("a/x"), ha.file("a")],
     "entry 'a' would replace the directory 'a'"),
])
def test_a_refused_archive_writes_nothing_first(tmp_path: Path, on_disk: str,
                                                entries: list[ha.Entry], why: str):
    local = tmp_path / "local"
    (local / "d").mkdir(parents=True)
    (local / "d" / "kept").write_text("mine")
    (local / "f").write_text("mine")
    before = _layout(local)
    data = ha.tar_bytes([ha.file(ha.BENIGN, b"benign"), *entries])
    with pytest.raises(RunawayError, match=re.escape(why)):
        safe_extract(data, local)
    assert _layout(local) == before  # benign.txt, which comes first, is not there either


def test_a_fifo_is_refused_with_its_name(tmp_path: Path):
    data = ha.tar_bytes([ha.special("pipe", tarfile.FIFOTYPE)])
    with pytest.raises(RunawayError, match="entry 'pipe' is a fifo, which runaway never "):
        safe_extract(data, tmp_path)


# -- §5 an unreadable file in the folder being sent ------------------------------------------


def test_an_unreadable_file_to_send_is_one_line(work: Path):
    script(work, "run.sh", "echo ran > ran.txt\n")
    (work / "locked").write_text("secret")
    (work / "locked").chmod(0)
    # Root reads any file: drop the capabilities that let it, so the mode counts.
    drop = (["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
            if os.geteuid() == 0 else [])
    done = subprocess.run([*drop, "git", "runaway", "local", "run.sh"], cwd=work,
                          capture_output=True, text=True, timeout=60)
    one_line(done, re.escape(f"cannot send {work}/locked: Permission denied; make it readable "
                             "or add it to .sendignore"))
    assert not (work / "ran.txt").exists()
