"""The shell commands runaway sends to a host, one function a step.

Layout of a profile's host_directory (ROOT):
  ROOT/<sha256>.tar          the code, named by its content, shared by every run of it
  ROOT/<sha256>.users/<uuid> one marker per run using that archive
  ROOT/<uuid>/               one run's folder
  ROOT/.lock                 flock(1) lock guarding the archives and their markers

A run marks itself as a user of the archive under the lock, so the run that removes the
last marker (with --leave=nothing) is the only one that may delete the archive.
Every path is quoted; only the profile's own commands reach the shell unquoted.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from git_runaway.archive import MTIME

# `prepare` runs in front of the script, whose exit code can be anything: it reports by
# killing its own shell with a signal instead, which no exit code can be mistaken for.
MISSING = "USR2"  # the archive is not on the host yet
UNPREPARED = "USR1"  # the run folder could not be made (its stderr says why)
CORRUPT = 101  # exit code of `upload` when the uploaded bytes do not match the hash
FETCH_FAILED = 102  # exit codes of `fetch_and_cleanup`
CLEANUP_FAILED = 103

_LOCK = "exec 9>.lock && flock 9"
_STOP_GROUP = 'trap "" HUP INT TERM; kill -TERM 0 2>/dev/null; exit 143'


def resolve_root(host_directory: str) -> str:
    """Create host_directory and print its absolute path (the profile's text is expanded)."""
    return f"mkdir -p {host_directory} && cd {host_directory} && pwd -P"


def prepare(root: str, digest: str, uuid: str) -> str:
    """Mark this run as a user of the archive and extract it, or die of MISSING; meant to
    be followed by `execute` in the same command, to save a round trip."""
    return (f"cd {q(root)} && {_LOCK} && {{ test -f {digest}.tar || kill -{MISSING} $$; }}"
            f" && {_mark(digest, uuid)} && exec 9>&- && {_extract(digest, uuid)}"
            f" || kill -{UNPREPARED} $$; ")


def upload(root: str, digest: str, uuid: str) -> str:
    """Read the archive on stdin, verify it, publish it atomically, then `prepare`."""
    part = f"{digest}.tar.{uuid}.part"
    return (f"cd {q(root)} && cat > {part} && "
            f"{{ echo '{digest}  {part}' | sha256sum -c --status"
            f" || {{ rm -f {part}; exit {CORRUPT}; }}; }}"
            f" && {_LOCK} && mv -f {part} {digest}.tar && {_mark(digest, uuid)}"
            f" && exec 9>&- && {_extract(digest, uuid)}")


def _mark(digest: str, uuid: str) -> str:
    return f"mkdir -p {digest}.users {uuid} && : > {digest}.users/{uuid}"


def _extract(digest: str, uuid: str) -> str:
    return f"tar -xf {digest}.tar -C {uuid}"


def execute(run_folder: str, env: Mapping[str, str], before: list[str], execution: list[str],
            after: list[str]) -> str:
    """Run the profile's commands in the run folder.

    `after` runs whatever happened before it, and the exit code is the first failure of
    `before` or else `execution`'s; `export` and `cd` carry from one section to the next.
    The commands run in a background subshell so that the trap can stop the whole process
    group at once when runaway is interrupted or the connection drops; a
    trap would wait for a foreground command to end.
    """
    exports = "".join(f"export {k}={q(v)}; " for k, v in sorted(env.items()))
    # An EXIT trap, so that `after` also runs when a `before` command calls `exit`.
    body = f"trap {q(_all(after))} EXIT; {_all(before)} && {_all(execution)}"
    # Without a pty sshd sends no HUP when the connection drops, so a watcher waits for
    # the end of stdin, which runaway holds open until the run ends, and raises the HUP.
    watcher = "exec 3<&0; { cat <&3; kill -HUP $$; } >/dev/null 2>&1 & w=$!; "
    return (f"cd {q(run_folder)} || exit 1; {exports}"
            f"trap {q(_STOP_GROUP)} HUP INT TERM; {watcher}"
            f"( {body} ) 3<&- & wait $!; rc=$?; kill $w 2>/dev/null; exit $rc")


def _all(commands: list[str]) -> str:
    return "{ " + " && ".join(commands or [":"]) + "; }"


def try_commands(folder: str, commands: tuple[str, ...]) -> str:
    """For `--check`: run one section of a profile in a scratch folder."""
    return f"mkdir -p {q(folder)} && cd {q(folder)} && {_all(list(commands))}"


def changed_files(run_folder: str) -> str:
    """List, NUL-separated, the files whose mtime is not the archive's: the run's output."""
    return (f"cd {q(run_folder)} && find . \\( -type f -o -type l \\)"
            f" \\( -newermt @{MTIME} -o ! -newermt @{MTIME - 1} \\) -print0")


def fetch_and_cleanup(run_folder: str, cleanup: str, listed: bool) -> str:
    """Write a tar of the run's output to stdout, then `cleanup` if that worked. The paths
    are the `changed_files`, or when `listed` the NUL-separated ones read on stdin."""
    paths = "cat" if listed else changed_files(run_folder)
    return (f"{{ {paths} | {{ cd {q(run_folder)} && tar --null --no-recursion -T - -cf -; }};"
            f" }} || exit {FETCH_FAILED}; {cleanup} || exit {CLEANUP_FAILED}")


def cleanup(root: str, digest: str, uuid: str, leave: str) -> str:
    """Remove the run's marker (and folder, and the archive if it was the last user).

    Only `nothing` may delete the archive, so only it needs the lock: removing a marker
    alone cannot race with anything. Each program started costs ~2 ms on a host.
    """
    folder = "" if leave == "everything" else f" {uuid}"
    done = f"cd {q(root)} && rm -rf{folder} {digest}.users/{uuid}"
    if leave != "nothing":
        return done
    last_user = f"rmdir {digest}.users 2>/dev/null && rm -f {digest}.tar"
    return f"{done} && {_LOCK} && {{ {last_user} || :; }}"


def substitute(command: str, script: str, arguments: list[str]) -> str:
    """The original's text placeholders, with every value quoted for the shell."""
    quoted_args = " ".join(q(a) for a in arguments)
    return command.replace("$SCRIPT_NAME", q(script)).replace("$SCRIPT_ARGS", quoted_args)


def q(text: str) -> str:
    return shlex.quote(text)
