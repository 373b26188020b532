"""The original's manual workflow with parameters that need quoting: what exec new stores,
exec params prints and exec run starts, through the installed command."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from git_expegit import parameters
from git_expegit.errors import ExpegitError
from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import script
from tests.conftest import snapshot

# Words a shell would regroup, expand or unquote: each must reach the run as it is.
ARGV = ["--title", "two words", "--empty", "", "--glob", "*", "--quote", "it's \"x\"",
        "--", "--dollar", "$HOME", "--tab", "a\tb", "--unicode", "é"]


# The experiment: each argument NUL-terminated in data/argv, a line on each stream, the
# first line of stdin echoed, and the exit code it is told.
RUN = """mkdir -p data
for a in "$@"; do printf '%s\\0' "$a"; done > data/argv
echo "out from $(basename "$PWD")"
echo "err" >&2
read -r line; echo "stdin: $line"
exit "${EXPE_EXIT:-0}"
"""


@pytest.fixture
def experiment(tmp_path: Path, home: Path) -> Path:
    work = tmp_path / "expe"
    git("init", "-q", "-b", "main", str(work), cwd=tmp_path)
    script(work, "run", RUN)
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "first version", cwd=work)
    git("clone", "-q", "--bare", str(work), str(tmp_path / "expe.git"), cwd=tmp_path)
    return tmp_path / "expe.git"


def _new(campaign: Path, *args: str) -> Path:
    return campaign / expegit("exec", "new", *args, cwd=campaign).stdout.strip()


def _stored(campaign: Path) -> str:
    return git("log", "-1", "--format=%(trailers:key=Expegit-Parameters,valueonly)",
               cwd=campaign).strip("\n")


def test_exec_new_stores_the_argv_that_one_split_gives_back(campaign: Path) -> None:
    folder = _new(campaign, "--", *ARGV)
    assert shlex.split(_stored(campaign)) == ARGV
    shown = expegit("exec", "params", cwd=folder)
    assert shlex.split(shown.stdout) == ARGV
    # A literal `--` right after the separator is a parameter too.
    _new(campaign, "--", "--", "--x")
    assert shlex.split(_stored(campaign)) == ["--", "--x"]
    _new(campaign, "--", "--lr", "0.1")
    assert _stored(campaign) == "--lr 0.1"  # plain words stay as they were typed


@pytest.mark.parametrize("argument", [b"line\nbreak", b"carriage\rreturn", b"latin-1 \xe9"])
def test_arguments_that_cannot_be_stored_are_refused(campaign: Path, argument: bytes) -> None:
    before = snapshot(campaign)
    result = subprocess.run([b"git", b"expegit", b"exec", b"new", b"--", b"--x", argument],
                            cwd=campaign, capture_output=True)
    assert result.returncode == 4, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "argument 2" in lines[0], lines
    assert snapshot(campaign) == before


def test_a_nul_is_refused_where_the_command_line_cannot_carry_one() -> None:
    with pytest.raises(ExpegitError, match="line break or a NUL"):
        parameters.join(["a\0b"])


@pytest.mark.parametrize("expression", ['--title "two', "--path 'a|--b", "--x \\"])
def test_a_sweep_that_shlex_cannot_split_is_refused(campaign: Path, expression: str) -> None:
    before = snapshot(campaign)
    for extra in ([], ["--dry-run"]):
        result = expegit("exec", "new", "--sweep", expression, *extra, cwd=campaign,
                         check=False)
        assert result.returncode == 4, result.stderr
        assert len(result.stderr.splitlines()) == 1 and "split" in result.stderr
        assert result.stdout == ""
    assert snapshot(campaign) == before


def _run(cwd: Path, *args: str, code: str = "0") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "expegit", "exec", "run", *args], cwd=cwd, text=True,
                          input="hello\n", capture_output=True, timeout=60,
                          env={**os.environ, "EXPE_EXIT": code})


def _argv(folder: Path) -> list[str]:
    return (folder / "data" / "argv").read_text().split("\0")[:-1]


def test_exec_run_starts_run_with_the_exact_argv_and_its_exit_code(campaign: Path) -> None:
    folder = _new(campaign, "--", *ARGV)
    done = _run(folder, code="3")
    assert done.returncode == 3, done.stderr
    assert done.stdout == f"out from {folder.name}\nstdin: hello\n" and done.stderr == "err\n"
    assert _argv(folder) == ARGV
    # It does not finish the execution: finish does, after, as in the original.
    assert expegit("list", cwd=campaign).stdout.split()[1] == "created"
    expegit("finish", "--exit-code", "3", cwd=folder)
    assert expegit("list", cwd=campaign).stdout.split()[1] == "failed"


def test_exec_run_places_the_code_of_an_execution_made_by_a_sweep(campaign: Path) -> None:
    folders = [campaign / line for line in expegit(
        "exec", "new", "--sweep", "--name='a b',c --n=range(2)", cwd=campaign).stdout.split()]
    assert len(folders) == 4 and not (folders[0] / "run").exists()
    done = _run(campaign, folders[0].name[:8])
    assert done.returncode == 0, done.stderr
    assert _argv(folders[0]) == ["--name=a b", "--n=0"]
    assert (folders[0] / "run").is_file() and not (folders[1] / "run").exists()
    result = folders[0].relative_to(campaign) / "data" / "argv"  # the code stays ignored
    assert git("status", "--porcelain", "--untracked-files=all", cwd=campaign) == \
        f"?? {result}\n"


def test_exec_run_fails_loudly_and_runs_nothing(tmp_path: Path, campaign: Path) -> None:
    finished = _new(campaign, "--", "--x", "1")
    expegit("finish", "--exit-code", "0", cwd=finished)
    work = tmp_path / "expe"
    git("rm", "-q", "run", cwd=work)
    git("commit", "-q", "-m", "no run handle", cwd=work)
    git("push", "-q", str(tmp_path / "expe.git"), "main", cwd=work)
    expegit("update-expe", cwd=campaign)
    handleless = _new(campaign)
    for cwd, args, code, words in [
            (finished, [], 4, "already finished"),
            (handleless, [], 4, "no executable run handle"),
            (campaign, ["ffff"], 4, "no execution"),
            (campaign, [], 2, "which execution")]:
        before = snapshot(campaign)
        done = _run(cwd, *args)
        assert done.returncode == code, done.stderr
        assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
        assert words in done.stderr
        assert snapshot(campaign) == before
    assert not (finished / "data" / "argv").exists()


def test_exec_params_says_when_a_shell_would_keep_the_quotes(campaign: Path) -> None:
    quoted = _new(campaign, "--", "--title", "two words")
    shown = expegit("exec", "params", cwd=quoted)
    assert shown.stdout == "--title 'two words'\n"
    assert "$(" in shown.stderr and "git expegit exec run" in shown.stderr
    assert len(shown.stderr.splitlines()) == 1
    plain = _new(campaign, "--", "--lr", "0.1")
    shown = expegit("exec", "params", cwd=plain)
    assert (shown.stdout, shown.stderr) == ("--lr 0.1\n", "")
