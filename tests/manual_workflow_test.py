"""The original's manual workflow with parameters that need quoting: what exec new stores,
exec params prints and exec run starts, through the installed command."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from git_expegit import parameters
from git_expegit.errors import ExpegitError
from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import snapshot

# Words a shell would regroup, expand or unquote: each must reach the run as it is.
ARGV = ["--title", "two words", "--empty", "", "--glob", "*", "--quote", "it's \"x\"",
        "--", "--dollar", "$HOME", "--tab", "a\tb", "--unicode", "é"]


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
