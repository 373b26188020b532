"""Run a folder's script on a host, as if it ran here.

Usage:
  git runaway [-v] [--leave=WHAT] [--detach] PROFILE SCRIPT [-- ARGS...]
  git runaway [-v] --attach [JOB...]
  git runaway --detached
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
  --detach        Only with a profile that has sbatch: submit the run to Slurm and
                  return once sbatch accepted it: print its job id (such as 123_0) and
                  record the run here, for --attach.
  --attach        Wait for detached runs (those with the JOB ids given, or else every
                  one started from this folder), stream their output, fetch their
                  results into the folder each was started from, and exit with their
                  exit code (of several, the first that is not 0). Ctrl-C leaves the
                  jobs running, to attach again later.
  --detached      List the detached runs still to collect: job id, profile, submission
                  time, folder, script and arguments.
  --list          List the profiles, where each one comes from, and its host.
  --check         Connect, create host_directory, run before_execution and
                  after_execution, with sbatch: find sbatch, squeue and scancel, and
                  report what failed.
  --clean         Remove what runs that are over left on the host: run folders (also
                  those of --leave=everything), archives no running run uses, partial
                  uploads, the files of Slurm jobs squeue no longer knows (collected
                  or not); lists each. Queued and running jobs keep theirs.
  -h, --help      Show this text.

ARGS are joined with spaces and split like a shell would, then quoted for the host:
quotes group words, and ; $(...) and backticks stay literal text.

Profiles (first found wins): ~/.config/runaway/NAME.yml, then ~/.runaway/NAME.yml,
then the built-in `local`, which runs on this machine without ssh, then .runaway/NAME.yml
at the root of the enclosing git repository (so a cloned repository never replaces your
own profiles or `local`; --list shows the ones it ignores). Keys: host_directory,
execution, and optionally ssh_config (without it the profile runs on this machine),
before_execution, after_execution, concurrency, timeout, record and sbatch.

With sbatch (a mapping of sbatch options: partition, time, cpus_per_task, gpus, mem,
signal and extra, a list of further options), each run is a Slurm job: runaway submits
it, waits for it, then streams its output and fetches its results, unless --detach.
Ctrl-C cancels the job (scancel) and still collects what it left.

Exit codes: the script's own; for runaway's own failures 255, as ssh (the message on
stderr says what failed), also for a Slurm job that ended without an exit code
(cancelled while queued, killed at its time limit: the message names its state); 130
when interrupted.
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
from git_runaway.commands.detach import attach
from git_runaway.commands.detach import detach
from git_runaway.commands.detach import list_detached
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
    if args["--detached"]:
        return list_detached()
    if args["--attach"]:
        jobs = args["JOB"]
        assert isinstance(jobs, list)
        return attach(jobs, verbose, cwd)
    if args["--check"]:
        return check(str(args["PROFILE"]), cwd, verbose)
    if args["--clean"]:
        return clean(str(args["PROFILE"]), cwd, verbose)
    leave = str(args["--leave"])
    if leave not in LEAVE:
        raise RunawayError(f"invalid --leave={leave!r}: use {', '.join(LEAVE)}", ExitCode.USAGE)
    arguments = args["ARGS"]
    assert isinstance(arguments, list)
    command = detach if args["--detach"] else run
    return command(str(args["PROFILE"]), str(args["SCRIPT"]), arguments, leave, verbose, cwd)


def _fail(message: str, code: ExitCode) -> int:
    print(f"runaway: {message}", file=sys.stderr)
    return code.status
