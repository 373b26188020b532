"""Organise, archive and collaborate on experimental campaigns with git.

Usage:
  git expegit [-v] init [-p] EXPERIMENT_URL [PATH]
  git expegit [-v] init [-p] EXPERIMENT_URL CAMPAIGN_URL PATH
  git expegit [-v] clone URL [PATH]
  git expegit [-v] exec new [-p] [COMMIT] [--profile=P] [-- PARAMS...]
  git expegit [-v] exec new [-p] [COMMIT] --sweep=EXPR [-r N] [--profile=P] [--dry-run]
  git expegit exec params [ID]
  git expegit [-v] exec run [ID]
  git expegit [-v] (finish | exec finish) [-p] [--exit-code=N] [ID]
  git expegit [-v] exec reset [-p] ID
  git expegit [-v] exec remove [-p] [--force] ID
  git expegit [-v] update-expe [-p]
  git expegit [-v] sync
  git expegit status
  git expegit list [--state=S] [--profile=P] [--grep=TEXT] [--commit=C] [--format=F]
  git expegit show [ID]
  git expegit [-v] jobs run [-r N] [-w N] [--name=NAME] [--new-only] [--retries=N] [--detach]
                           [--sbatch=KEY=VALUE]... PROFILE [COMMIT] [EXPR]
  git expegit [-v] jobs wait [--name=NAME]
  git expegit [-v] jobs reschedule [-p] [--profile=P] (--failed | --name=NAME | IDS...)
  git expegit [-v] jobs delete [-p] IDS...
  git expegit logs [-f] ID
  git expegit [-v] hooks install [--experiment=PATH]
  git expegit [-v] hooks uninstall [--experiment=PATH]
  git expegit hooks post-commit
  git expegit [-v] agent (start | stop | status | run)
  git expegit results [--format=F]
  git expegit [-v] gui [--port=N] [--host=H] [PATH]
  git expegit -h | --help
  git expegit --version

A campaign is a git repository holding an experiment (the xprp/ submodule) and its
executions, each in excs/<2 hex>/<uuid>/ with its results in data/ (data/lfs/ through Git
LFS). Parameters are trailers of the commit that created an execution; its life is a git
note under refs/notes/expegit. Commands other than init and clone work anywhere inside a
campaign. IDs are execution ids or any unique prefix of at least 4 characters; inside an
execution's folder, exec params, exec run, finish and show default to that execution.

Commands:
  init           Make PATH (default: here) a campaign of the experiment at EXPERIMENT_URL;
                 with CAMPAIGN_URL, also create the campaign's remote there (a local path
                 becomes a bare repository) and push to it.
  clone          Clone a campaign with its experiment, its notes and its LFS files.
  exec new       Create one execution of COMMIT (default: the pinned experiment commit;
                 short hashes and branch names work) with PARAMS, and place the code in
                 its folder; or, with --sweep, a whole batch in one operation. Prints the
                 new folders.
  exec params    Print an execution's parameters, shell-quoted: ./run $(git expegit exec
                 params) passes quotes on as they are; exec run passes the exact words.
  exec run       Start ./run in the execution's folder with its exact parameters (the
                 code is placed first if it is not there) and exit with its exit code;
                 git expegit finish commits the results after.
  finish         Commit an execution's results and logs and drop its code.
  exec reset     Make an execution new again: its results are deleted and its code
                 placed back in its folder.
  exec remove    Delete an execution's folder (its history stays in git).
  update-expe    Fetch the experiment and pin its newest commit.
  sync           Fetch, merge executions and notes, push; retried until it goes through.
  status         Count the executions in each state.
  list           One line per execution (or --format=json), oldest first.
  show           An execution's parameters, commit, life and files.
  jobs run       Create a batch of COMMIT (default, or "": the pinned commit) with the
                 parameter expression EXPR (as --sweep; none: one run without parameters),
                 queue it for this clone and run it on PROFILE, showing progress; each run
                 is finished as it ends and the campaign synced at the end. Exits 0 only if
                 every execution succeeded.
  jobs wait      Wait until this clone's queue (or batch NAME) is done, showing progress.
  jobs reschedule  Queue executions again, here, as a new attempt (their history stays).
  jobs delete    Cancel executions that are queued or running here, and remove them.
  logs           An execution's stdout and stderr; with -f, follow them while it runs.
  hooks install  Install the post-commit hook: a commit with the trailers Expegit-Sweep
                 and Expegit-Profile (Expegit-Commit, Expegit-Repeat, Expegit-Name
                 optional) queues that batch for the agent. --experiment PATH: in your
                 own clone of the experiment too, where such a commit also pins the
                 campaign to it.
  agent          The background process that runs this clone's queue: start, stop,
                 status, or run in the foreground.
  results        One row per execution: its parameters (KEY=VALUE and --key value split
                 into columns) and the numbers of its JSON results (--format table, csv
                 or json).
  gui            The web interface of the campaign at PATH (default: here), on
                 127.0.0.1:8088; prints the URL with its access token.

Options:
  -v, --verbose       Say what expegit does, on stderr, and all that a failed git
                      command said.
  -p, --push          Sync with the remote after the change (checked before it).
  --profile=P         The runaway profile to run the executions with (recorded).
  --sweep=EXPR        A parameter expression (see the README): `--lr=0.1,0.01 --seed=range(3)`,
                      or the original grammar `--lr¤0.1;0.01` (`|` may replace `¤`).
  -r N, --repeat=N    Create each parameter string N times in a row [default: 1].
  --dry-run           Print the parameter strings, one a line, and create nothing.
  --exit-code=N       The run's exit code (0 to 255), recorded at finish.
  --force             Remove an execution even with results that are not committed.
  --state=S           Only executions in state S (created, queued, running, finished,
                      failed).
  --grep=TEXT         Only executions whose parameters contain TEXT.
  --commit=C          Only executions of experiment commits starting with C.
  --format=F          table or json (results: also csv) [default: table].
  -w N, --workers=N   Runs at a time [default: the profile's concurrency, else the
                      number of CPUs for local and 8 for a host].
  --name=NAME         The batch's name (default: generated from the time).
  --new-only          Skip the parameter strings that already finished on this commit.
  --retries=N         Run again up to N times a run that runaway itself lost
                      (connection, upload), never a failing script [default: 2].
  --detach            Queue the batch for this clone's agent and return at once (on an
                      sbatch: profile the agent submits it to Slurm, then the laptop
                      may close: a later agent collects the results).
  --sbatch=KEY=VALUE  For this batch, an sbatch option of the profile replaced (partition,
                      time, cpus_per_task, gpus, mem, signal) or one more (extra=--qos=x).
  --failed            Every failed execution.
  -f, --follow        Keep printing what the run writes until it ends.
  --experiment=PATH   Your own clone of the experiment.
  -h, --help          Show this text.
  --version           Print the version of git expegit.

Exit codes: 1 a command found nothing to do or failed checks, 2 command line, 3 not a
campaign or a broken one, 4 bad input (grammar, unknown id or commit), 5 git-lfs missing,
6 local changes in the way, 7 remote unreachable or push refused, 8 git or the disk failed,
9 internal error, 130 interrupted. Once started, exec run exits with the run's own code.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import traceback
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from docopt import DocoptExit
from docopt import docopt

from git_expegit.commands import reading_cli
from git_expegit.commands.output import fail
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        # The usage says `git expegit ...`: docopt reads "git" as the program and
        # "expegit" as a command.
        values = docopt(__doc__, argv=["expegit", *_before_dashes(raw)])
    except DocoptExit:
        return fail("invalid command line; see git expegit -h", ExitCode.USAGE)
    if values["new"] and "--" in raw:  # docopt drops a literal `--` among the PARAMS
        values["PARAMS"] = raw[raw.index("--") + 1:]
    if values["jobs"] and values["run"]:  # an EXPR that starts with -
        try:
            hidden = _expression(raw)
        except ExpegitError as e:
            return fail(str(e), e.code)
        if hidden is not None:
            if values["EXPR"] is not None:
                return fail("jobs run takes one parameter expression: quote it",
                            ExitCode.USAGE)
            values["EXPR"] = hidden
    args = Args(values, Path.cwd())
    try:
        code = _command(args)(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except ExpegitError as e:
        if args.flag("--verbose") and e.detail:
            sys.stderr.write("".join(f"expegit: | {line}\n" for line in e.detail.splitlines()))
        return fail(str(e), e.code)
    except KeyboardInterrupt:
        return fail("interrupted", ExitCode.INTERRUPTED)
    except OSError as e:
        # A full disk, a read-only folder: what the system said, where, and no traceback.
        # Writes that must be whole are transactions, which say themselves what stayed.
        where = f" ({e.filename})" if e.filename else ""
        hint = "free some space and retry" if e.errno == errno.ENOSPC else "fix that and retry"
        return fail(f"{e.strerror or e}{where}: {hint}", ExitCode.GIT)
    except Exception:
        traceback.print_exc()
        return fail("internal error (a bug): please report the traceback above",
                    ExitCode.INTERNAL)


def _before_dashes(raw: list[str]) -> list[str]:
    """`jobs run PROFILE [COMMIT] [--] EXPR`: docopt would read an EXPR that starts with `-`
    (`--lr=0.1,0.01`) as an option, so it sees only what comes before `--`, and not an
    EXPR that is no option of jobs run."""
    if _jobs_run(raw) is None:
        return raw
    if "--" in raw:
        return raw[:raw.index("--")]
    return [word for word in raw if not _expression_like(word)]


_JOBS_RUN_OPTIONS = ("-w", "--workers", "--name", "--new-only", "--retries", "--detach", "-r",
                     "--repeat", "--sbatch", "-v", "--verbose", "-h", "--help")


def _expression_like(word: str) -> bool:
    return (word.startswith("-") and len(word) > 1
            and not word.split("=")[0].startswith(_JOBS_RUN_OPTIONS))


def _jobs_run(raw: list[str]) -> int | None:
    """Where `jobs run` starts in the command line, after -v if given first."""
    start = 1 if raw[:1] in (["-v"], ["--verbose"]) else 0
    return start if raw[start:start + 2] == ["jobs", "run"] else None


def _expression(raw: list[str]) -> str | None:
    """The EXPR that _before_dashes hid from docopt, if any (several: a usage error)."""
    if "--" in raw:
        after = raw[raw.index("--") + 1:]
    else:
        after = [word for word in raw[(_jobs_run(raw) or 0) + 2:] if _expression_like(word)]
    if not after:
        return None
    if len(after) != 1:
        raise ExpegitError("jobs run takes one parameter expression: quote it",
                           ExitCode.USAGE)
    return after[0]


def _closed_pipe() -> int:
    """The reader of our output went away (`git expegit list | head -1`): stop quietly, as
    git does, with the status of a process killed by SIGPIPE."""
    # What is still buffered for the closed pipe would fail again at exit: point stdout at
    # /dev/null so that Python's final flush has somewhere to go.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


@dataclass(frozen=True)
class Args:
    """docopt's answer, read with the types each command needs."""

    values: dict[str, object]
    cwd: Path

    def flag(self, name: str) -> bool:
        return bool(self.values.get(name))

    def opt(self, name: str) -> str | None:
        value = self.values.get(name)
        return None if value is None else str(value)

    def int(self, name: str, low: int, high: int) -> int | None:
        value = self.values.get(name)
        if value is None:
            return None
        try:
            number = int(str(value))
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise ExpegitError(f"{name} needs a whole number from {low} to {high}, not "
                               f"{value!r}", ExitCode.USAGE)
        return number

    def list(self, name: str) -> list[str]:
        value = self.values.get(name)
        assert isinstance(value, list)
        return [str(item) for item in value]


Handler = Callable[[Args], int]


def _command(a: Args) -> Handler:
    """The handler of the command docopt matched: the first of its words found in the
    table (`exec finish` and `finish` are one command)."""
    for word, handler in _COMMANDS.items():
        if a.flag(word):
            return handler
    raise AssertionError(f"no handler for {a.values}")


# The reading commands import only the catalog: pygit2 costs 100 ms to import, which they
# skip when the catalog's cache answers them. The others import what writes when they run.

def _status(a: Args) -> int:
    return reading_cli.status(a.cwd)


def _list(a: Args) -> int:
    return reading_cli.list_executions(a.cwd, a.opt("--state"), a.opt("--profile"),
                                       a.opt("--grep"), a.opt("--commit"),
                                       str(a.opt("--format")))


def _params(a: Args) -> int:
    return reading_cli.params(a.cwd, a.opt("ID"))


def _show(a: Args) -> int:
    return reading_cli.show(a.cwd, a.opt("ID"))


def _run(a: Args) -> int:
    from git_expegit.commands import run_cli

    return run_cli.run(a.cwd, a.opt("ID"))


def _version(a: Args) -> int:
    from git_expegit.commands import repository_cli

    return repository_cli.version()


def _init(a: Args) -> int:
    from git_expegit.commands import repository_cli

    return repository_cli.init(str(a.opt("EXPERIMENT_URL")), a.opt("CAMPAIGN_URL"),
                               a.opt("PATH"), a.flag("--push"), a.flag("--verbose"))


def _clone(a: Args) -> int:
    from git_expegit.commands import repository_cli

    return repository_cli.clone(str(a.opt("URL")), a.opt("PATH"), a.flag("--verbose"))


def _update_expe(a: Args) -> int:
    from git_expegit.commands import repository_cli

    return repository_cli.update_expe(a.cwd, a.flag("--push"), a.flag("--verbose"))


def _sync(a: Args) -> int:
    from git_expegit.commands import repository_cli

    return repository_cli.sync(a.cwd, a.flag("--verbose"))


def _new(a: Args) -> int:
    from git_expegit.commands import executions_cli

    # docopt gives a lone `--` to the optional COMMIT before it.
    commit = None if a.opt("COMMIT") == "--" else a.opt("COMMIT")
    return executions_cli.new(a.cwd, commit, a.list("PARAMS"), a.opt("--sweep"),
                              a.int("--repeat", 1, 100_000) or 1, a.opt("--profile"),
                              a.flag("--dry-run"), a.flag("--push"), a.flag("--verbose"))


def _finish(a: Args) -> int:
    from git_expegit.commands import executions_cli

    return executions_cli.finish(a.cwd, a.opt("ID"), a.int("--exit-code", 0, 255),
                                 a.flag("--push"), a.flag("--verbose"))


def _reset(a: Args) -> int:
    from git_expegit.commands import executions_cli

    return executions_cli.reset(a.cwd, a.opt("ID"), a.flag("--push"), a.flag("--verbose"))


def _remove(a: Args) -> int:
    from git_expegit.commands import executions_cli

    return executions_cli.remove(a.cwd, a.opt("ID"), a.flag("--force"), a.flag("--push"),
                                 a.flag("--verbose"))


def _jobs(a: Args) -> int:
    from git_expegit.commands import jobs_cli

    return jobs_cli.dispatch(a)


def _logs(a: Args) -> int:
    from git_expegit.commands import logs_cli

    return logs_cli.logs(a.cwd, str(a.opt("ID")), a.flag("--follow"))


def _hooks(a: Args) -> int:
    from git_expegit.commands import hooks_cli

    return hooks_cli.dispatch(a)


def _agent(a: Args) -> int:
    from git_expegit.commands import agent_cli

    return agent_cli.dispatch(a)


def _results(a: Args) -> int:
    from git_expegit.commands import results_cli

    return results_cli.results(a.cwd, str(a.opt("--format")))


def _gui(a: Args) -> int:
    from git_expegit.commands import gui_cli

    return gui_cli.gui(a.cwd, a.opt("PATH"), a.int("--port", 1, 65535) or gui_cli.PORT,
                       a.opt("--host") or gui_cli.HOST, a.flag("--verbose"))


_COMMANDS: dict[str, Handler] = {
    "jobs": _jobs, "logs": _logs, "hooks": _hooks, "agent": _agent,
    "init": _init, "clone": _clone, "new": _new, "params": _params, "run": _run,
    "finish": _finish, "reset": _reset, "remove": _remove, "update-expe": _update_expe,
    "sync": _sync, "status": _status, "list": _list, "show": _show, "--version": _version,
    "results": _results, "gui": _gui,
}
