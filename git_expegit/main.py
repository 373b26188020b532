"""Organise, archive and collaborate on experimental campaigns with git.

Usage:
  git expegit -h | --help

Not built yet: campaigns come in the next release. Use `git runaway` meanwhile.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from docopt import DocoptExit
from docopt import docopt


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # The usage says `git expegit ...`: docopt reads "git" as the program and
        # "expegit" as a command.
        docopt(__doc__, argv=["expegit", *(sys.argv[1:] if argv is None else argv)])
    except DocoptExit:
        pass
    print("expegit: not built yet; see `git expegit -h`", file=sys.stderr)
    return 1
