"""An execution's parameters: the argv the user typed, stored as one shell-quoted line (a
trailer), so that one `shlex.split` gives back exactly that argv; runaway and `exec run`
split it that way."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from git_expegit import sweep
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

# What str.splitlines() breaks a line on (trailers and note lines are lines), and NUL.
_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029\0")
_QUOTING = frozenset("'\"\\")  # what a shell reads as quoting


def join(argv: Sequence[str]) -> str:
    """The stored form of `argv`."""
    for position, argument in enumerate(argv, 1):
        check(argument, f"argument {position}")
    return shlex.join(argv)


def split(text: str) -> list[str]:
    """The argv a stored parameter string stands for."""
    try:
        return shlex.split(text)
    except ValueError as e:  # "No closing quotation", "No escaped character"
        raise ExpegitError(f"the parameters {text!r} cannot be split as a shell would "
                           f"({str(e).lower()}): balance their quotes", ExitCode.INPUT) from None


def check_strings(strings: Sequence[str]) -> None:
    """Parameter strings a sweep gives: one line each, and splittable."""
    for text in strings:
        check(text, "a parameter string")
        if quoted(text):  # only quotes and backslashes can make shlex fail
            split(text)


def quoted(text: str) -> bool:
    """Whether `text` holds quotes or backslashes, which `$(git expegit exec params)` in a
    shell passes on as literal characters."""
    return not _QUOTING.isdisjoint(text)


def expand(expression: str, repeat: int, what: str) -> list[str]:
    """The parameter strings of a sweep expression, each checked; `what` names the
    expression in the errors ("--sweep expression")."""
    check(expression, f"the {what}")
    try:
        strings = sweep.expand(expression, repeat)
    except sweep.SweepError as e:
        raise ExpegitError(f"bad {what} at {e}", ExitCode.INPUT) from None
    check_strings(strings)
    return strings


def check(text: str, what: str) -> None:
    """Text that goes into a trailer: UTF-8, on one line."""
    try:
        text.encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8 come as surrogates in sys.argv
        raise ExpegitError(f"{what} is not UTF-8 text ({text!r}): parameters are stored as "
                           "text; pass them as UTF-8", ExitCode.INPUT) from None
    if not _BREAKS.isdisjoint(text):
        raise ExpegitError(f"{what} holds a line break or a NUL ({text!r}): parameters are "
                           "stored on one line", ExitCode.INPUT)
