"""git expegit results: the results table (git_expegit/results.py), as table, csv or json."""

from __future__ import annotations

from pathlib import Path

from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError


def results(cwd: Path, form: str) -> int:
    raise ExpegitError("git expegit results is not built yet", ExitCode.FAILED)
