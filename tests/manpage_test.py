"""The man pages (what `git runaway --help` opens through git) are the usage texts."""

from __future__ import annotations

from pathlib import Path

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


if __name__ == "__main__":
    for path, (name, doc) in PAGES.items():
        path.write_text(render(name, doc))
