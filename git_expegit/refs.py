"""Reading a ref from the files git keeps, without importing pygit2.

`status` and `list` are answered from a cache keyed by two ref values; reading those two
files costs microseconds, where importing pygit2 costs 100 ms here. Whatever this module is
not sure to read as git would (worktrees, reftable, odd contents) is UNKNOWN, and the caller
then asks pygit2.
"""

from __future__ import annotations

import re
from pathlib import Path

UNKNOWN = "unknown"
_HEX = re.compile(r"[0-9a-f]{40}")


def read(git_dir: Path, name: str) -> str | None:
    """The object id `name` points to, None when the ref is absent, or UNKNOWN."""
    if (git_dir / "commondir").exists() or (git_dir / "reftable").exists():
        return UNKNOWN
    for _ in range(5):  # symbolic refs, such as HEAD, point to other refs
        try:
            text = (git_dir / name).read_text().strip()
        except FileNotFoundError:
            return _packed(git_dir, name)
        except OSError:
            return UNKNOWN
        if not text.startswith("ref: "):
            return text if _HEX.fullmatch(text) else UNKNOWN
        name = text[5:]
    return UNKNOWN


def _packed(git_dir: Path, name: str) -> str | None:
    try:
        lines = (git_dir / "packed-refs").read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        if line.endswith(" " + name) and _HEX.fullmatch(line[:40]):
            return line[:40]
    return None
