"""The man pages (what `git runaway --help` opens through git) are the usage texts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import git_expegit.main
import git_runaway.main

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    ROOT / "git_runaway" / "git-runaway.1": ("git-runaway", git_runaway.main.__doc__),
    ROOT / "git_expegit" / "git-expegit.1": ("git-expegit", git_expegit.main.__doc__),
}


def render(name: str, doc: str | None) -> str:
    assert doc
    summary, _, body = doc.partition("\n")
    escaped = body.replace("\\", "\\e").replace("\n.", "\n\\&.").replace("\n'", "\n\\&'")
    return (f'.TH {name.upper()} 1\n.SH NAME\n{name} \\- {summary.rstrip(".")}\n'
            f".SH DESCRIPTION\n.nf\n{escaped.strip()}\n.fi\n")


def test_man_pages_are_the_usage_texts():
    for path, (name, doc) in PAGES.items():
        assert path.read_text() == render(name, doc), "regenerate: python -m tests.manpage_test"


@pytest.mark.parametrize(("tool", "phrase"), [("runaway", "Run a folder's script on a host"),
                                              ("expegit", "Count the executions in each state.")])
def test_help_through_git_opens_the_man_page(tool: str, phrase: str, tmp_path: Path):
    # `git TOOL --help` is `git help TOOL`: the man page that `pip install .` installs.
    if subprocess.run(["man", "-w", f"git-{tool}"], capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"the git-{tool} man page is not installed")
        pytest.skip("man page not installed (editable install)")
    done = subprocess.run(["git", tool, "--help"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "MANPAGER": "cat", "PAGER": "cat"})
    assert phrase in done.stdout


if __name__ == "__main__":
    for path, (name, doc) in PAGES.items():
        path.write_text(render(name, doc))
