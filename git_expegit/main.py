"""Organise, archive and collaborate on experimental campaigns with git.

Usage:
  git expegit [-v] init [-p] EXPERIMENT_URL [CAMPAIGN_URL] [PATH]
  git expegit [-v] clone URL [PATH]
  git expegit [-v] exec new [-p] [COMMIT] [--profile=P] [-- PARAMS...]
  git expegit [-v] exec new [-p] [COMMIT] --sweep=EXPR [-r N] [--profile=P] [--dry-run]
  git expegit exec params [ID]
  git expegit [-v] (finish | exec finish) [-p] [--exit-code=N] [ID]
  git expegit [-v] exec reset [-p] ID
  git expegit [-v] exec remove [-p] ID
  git expegit [-v] update-expe [-p]
  git expegit [-v] sync
  git expegit status
  git expegit list [--state=S] [--profile=P] [--grep=TEXT] [--commit=C] [--format=F]
  git expegit show [ID]
  git expegit -h | --help

A campaign is a git repository holding an experiment (the xprp/ submodule) and its
executions, each in excs/<2 hex>/<uuid>/ with its results in data/ (data/lfs/ through Git
LFS). Parameters are trailers of the commit that created an execution; its life is a git
note under refs/notes/expegit. Commands other than init and clone work anywhere inside a
campaign. IDs are execution ids or any unique prefix of at least 4 characters; inside an
execution's folder, exec params, finish and show default to that execution.

Commands:
  init           Make PATH (default: here, or the CAMPAIGN_URL's name) a campaign of the
                 experiment at EXPERIMENT_URL; with CAMPAIGN_URL, create the campaign's
                 remote there (a local path becomes a bare repository) and push.
  clone          Clone a campaign with its experiment, its notes and its LFS files.
  exec new       Create one execution of COMMIT (default: the pinned experiment commit;
                 short hashes and branch names work) with PARAMS, and place the code in
                 its folder; or, with --sweep, a whole batch in one operation. Prints the
                 new folders.
  exec params    Print an execution's parameters: ./run $(git expegit exec params).
  finish         Commit an execution's results and logs and drop its code.
  exec reset     Make an execution new again: its results are deleted and its code
                 placed back in its folder.
  exec remove    Delete an execution's folder (its history stays in git).
  update-expe    Fetch the experiment and pin its newest commit.
  sync           Fetch, merge executions and notes, push; retried until it goes through.
  status         Count the executions in each state.
  list           One line per execution (or --format=json), oldest first.
  show           An execution's parameters, commit, life and files.

Options:
  -v, --verbose       Say what expegit does, on stderr, and all that a failed git
                      command said.
  -p, --push          Sync with the remote after the change (checked before it).
  --profile=P         The runaway profile to run the executions with (recorded).
  --sweep=EXPR        A parameter expression (see the README): `--lr=0.1,0.01 --seed=range(3)`,
                      or the original grammar `--lr¤0.1;0.01` (`|` may replace `¤`).
  -r N, --repeat=N    Create each parameter string N times in a row [default: 1].
  --dry-run           Print the parameter strings, one a line, and create nothing.
  --exit-code=N       The run's exit code, recorded at finish.
  --state=S           Only executions in state S (created, queued, running, finished,
                      failed).
  --grep=TEXT         Only executions whose parameters contain TEXT.
  --commit=C          Only executions of experiment commits starting with C.
  --format=F          table or json [default: table].
  -h, --help          Show this text.

Exit codes: 1 a command found nothing to do or failed checks, 2 command line, 3 not a
campaign or a broken one, 4 bad input (grammar, unknown id or commit), 5 git-lfs missing,
6 local changes in the way, 7 remote unreachable or push refused, 8 git failed,
9 internal error, 130 interrupted.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from docopt import DocoptExit
from docopt import docopt

from git_expegit.commands import reading_cli
from git_expegit.commands.output import fail
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # The usage says `git expegit ...`: docopt reads "git" as the program and
        # "expegit" as a command.
        args = docopt(__doc__, argv=["expegit", *(sys.argv[1:] if argv is None else argv)])
    except DocoptExit:
        return fail("invalid command line; see git expegit -h", ExitCode.USAGE)
    try:
        code = _dispatch(args, Path.cwd())
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except ExpegitError as e:
        if args["--verbose"] and e.detail:
            sys.stderr.write("".join(f"expegit: | {line}\n" for line in e.detail.splitlines()))
        return fail(str(e), e.code)
    except KeyboardInterrupt:
        return fail("interrupted", ExitCode.INTERRUPTED)
    except Exception:
        traceback.print_exc()
        return fail("internal error (a bug): please report the traceback above",
                    ExitCode.INTERNAL)


def _closed_pipe() -> int:
    """The reader of our output went away (`git expegit list | head -1`): stop quietly, as
    git does, with the status of a process killed by SIGPIPE."""
    # What is still buffered for the closed pipe would fail again at exit: point stdout at
    # /dev/null so that Python's final flush has somewhere to go.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _dispatch(a: dict[str, object], cwd: Path) -> int:
    verbose, push = bool(a["--verbose"]), bool(a["--push"])
    if a["status"]:
        return reading_cli.status(cwd)
    if a["list"]:
        return reading_cli.list_executions(cwd, _opt(a["--state"]), _opt(a["--profile"]),
                                           _opt(a["--grep"]), _opt(a["--commit"]),
                                           str(a["--format"]))
    if a["params"]:
        return reading_cli.params(cwd, _opt(a["ID"]))
    if a["show"]:
        return reading_cli.show(cwd, _opt(a["ID"]))
    # Imported only for the commands that write: they need pygit2, 100 ms to import, which
    # the reading commands above skip when the catalog's cache answers them.
    from git_expegit.commands import executions_cli
    from git_expegit.commands import repository_cli

    if a["init"]:
        return repository_cli.init(str(a["EXPERIMENT_URL"]), _opt(a["CAMPAIGN_URL"]),
                                   _opt(a["PATH"]), push, verbose)
    if a["clone"]:
        return repository_cli.clone(str(a["URL"]), _opt(a["PATH"]), verbose)
    if a["update-expe"]:
        return repository_cli.update_expe(cwd, push, verbose)
    if a["sync"]:
        return repository_cli.sync(cwd, verbose)
    if a["new"]:
        params = a["PARAMS"]
        assert isinstance(params, list)
        # docopt gives a lone `--` to the optional COMMIT before it.
        commit = None if a["COMMIT"] == "--" else _opt(a["COMMIT"])
        return executions_cli.new(cwd, commit, params, _opt(a["--sweep"]),
                                  _int(a["--repeat"], "--repeat"), _opt(a["--profile"]),
                                  bool(a["--dry-run"]), push, verbose)
    if a["finish"]:
        code = None if a["--exit-code"] is None else _int(a["--exit-code"], "--exit-code")
        return executions_cli.finish(cwd, _opt(a["ID"]), code, push, verbose)
    return executions_cli.reset_or_remove(cwd, _opt(a["ID"]), bool(a["remove"]), push,
                                          verbose)


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object, option: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ExpegitError(f"{option} needs a whole number, not {value!r}",
                           ExitCode.USAGE) from None
