"""Run a folder's script on a host, as if it ran here.

Usage:
  git runaway [-v] [--leave=WHAT] PROFILE SCRIPT [-- ARGS...]
  git runaway --list
  git runaway [-v] --check PROFILE
  git runaway [-v] --clean PROFILE
  git runaway -h | --help

Sends the current folder (minus .sendignore) to the host PROFILE names, runs SCRIPT there
with ARGS, streams its output, fetches back the files it created or changed (minus
.fetchignore) and exits with the script's exit code.

Options:
  -v, --verbose   Say what runaway does, on stderr, prefixed "runaway:".
  --leave=WHAT    What stays on the host: nothing, code (the archive, reused by the
                  next run of the same code) or everything [default: nothing].
  --list          List the profiles, where each one comes from, and its host.
  --check         Connect, create host_directory, run before_execution and
                  after_execution, and report what failed.
  --clean         Remove what runs that are over left on the host: run folders (also
                  those of --leave=everything), archives no running run uses, partial
                  uploads; lists each.
  -h, --help      Show this text.

ARGS are joined with spaces and split like a shell would, then quoted for the host:
quotes group words, and ; $(...) and backticks stay literal text.

Profiles (first found wins): ~/.config/runaway/NAME.yml, then ~/.runaway/NAME.yml,
then the built-in `local`, which runs on this machine without ssh, then .runaway/NAME.yml
at the root of the enclosing git repository (so a cloned repository never replaces your
own profiles or `local`; --list shows the ones it ignores). Keys: host_directory,
execution, and optionally ssh_config (without it the profile runs on this machine),
before_execution and after_execution.

Exit codes: the script's own; for runaway's own failures 255, as ssh (the message on
stderr says what failed); 130 when interrupted.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from docopt import DocoptExit
from docopt import docopt

from git_runaway.commands.check import check
from git_runaway.commands.clean import clean
from git_runaway.commands.list_profiles import list_profiles
from git_runaway.commands.run import run
from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError

LEAVE = ("nothing", "code", "everything")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # The usage says `git runaway ...`: docopt reads "git" as the program and
        # "runaway" as a command.
        args = docopt(__doc__, argv=["runaway", *(sys.argv[1:] if argv is None else argv)])
    except DocoptExit:
        return _fail("invalid command line; usage: git runaway [-v] [--leave=WHAT] PROFILE "
                     "SCRIPT [-- ARGS...] (see git runaway -h)", ExitCode.USAGE)
    # asyncio logs every write to a lost connection; runaway says it once, in one line.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        return _dispatch(args, Path.cwd())
    except RunawayError as e:
        return _fail(str(e), e.code)
    except KeyboardInterrupt:
        return _fail("interrupted", ExitCode.INTERRUPTED)
    except Exception:
        traceback.print_exc()
        return _fail("internal error (a bug): please report the traceback above",
                     ExitCode.INTERNAL)


def _dispatch(args: dict[str, object], cwd: Path) -> int:
    verbose = bool(args["--verbose"])
    if args["--list"]:
        return list_profiles(cwd)
    if args["--check"]:
        return check(str(args["PROFILE"]), cwd, verbose)
    if args["--clean"]:
        return clean(str(args["PROFILE"]), cwd, verbose)
    leave = str(args["--leave"])
    if leave not in LEAVE:
        raise RunawayError(f"invalid --leave={leave!r}: use {', '.join(LEAVE)}", ExitCode.USAGE)
    arguments = args["ARGS"]
    assert isinstance(arguments, list)
    return run(str(args["PROFILE"]), str(args["SCRIPT"]), arguments, leave, verbose, cwd)


def _fail(message: str, code: ExitCode) -> int:
    print(f"runaway: {message}", file=sys.stderr)
    return code.status
