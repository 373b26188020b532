"""What may travel to a host as shell text: RUNAWAY* variable names and UTF-8 text.

The names are written unquoted into the host's shell (`export NAME=value`), so a name that is
not a shell identifier could run code there (`RUNAWAY_A;touch x;B=1`): it is refused. Values,
arguments and the script's path are quoted, but ssh carries commands as UTF-8 text, so a
value that is not UTF-8 (an undecodable byte in the environment or on the command line) is
refused here with one line, before anything is packed or sent, rather than deep in the
transport.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from collections.abc import Mapping

from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check(environment: Mapping[str, str], script: str, arguments: Iterable[str]) -> None:
    """Refuse what cannot be sent to a host as it is, before anything is sent."""
    for name, value in environment.items():
        if not NAME.fullmatch(name):
            raise RunawayError(f"invalid variable name {name!r}: a RUNAWAY* variable is sent "
                               "to the host only if its name is letters, digits and '_'; "
                               "unset it", ExitCode.USAGE)
        check_text(value, f"the value of {name}")
    check_text(script, "the script's name")
    for argument in arguments:
        check_text(argument, "the argument")


def check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Undecodable bytes reach Python as lone surrogates (PEP 383); repr shows them.
        raise RunawayError(f"{what} {text!r} is not UTF-8 text, which is all a host can be "
                           "sent; use UTF-8", ExitCode.USAGE) from None
