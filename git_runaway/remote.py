"""The shell commands runaway sends to a host, one function a step.

Layout of a profile's host_directory (ROOT):
  ROOT/<sha256>.tar               the code, named by its content, shared by every run of it
  ROOT/<sha256>.users/<uuid>      one marker per run using that archive
  ROOT/<sha256>.tar.<uuid>.part   an upload in progress (swept once an hour old)
  ROOT/<uuid>/                    one run's folder
  ROOT/.lock                      flock(1) lock taken to publish or delete an archive

A deleter, holding the lock, removes an archive only after `rmdir <sha256>.users`
succeeded, which it cannot while a marker exists; publishing an archive and marking its
uploader take the lock too. A run of code the host has extracts the archive, then marks
itself, without the lock, which would cost a program per run: if a deleter removes the
archive meanwhile, tar still reads the file it opened, or finds none and the run uploads the
code again. Either way the run has its code; only a later run may have to upload it again.
A run marks itself only once it has the code, so an upload that died leaves no marker that
would keep the archive forever.

Each program started costs 1-2 ms on a host, so the common path (the host has the code)
starts only the shell sshd runs, tar, the script, then find, tar and rm; the rest are shell
builtins. Every path is quoted; only the profile's own commands reach the shell unquoted.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from collections.abc import Mapping

from git_runaway.archive import MTIME

# `prepare` runs in front of the script, whose exit code can be anything: it reports by
# killing its own shell with a signal instead, which no exit code can be mistaken for.
MISSING = "USR2"  # the archive is not on the host yet
UNPREPARED = "USR1"  # the run folder could not be made (its stderr says why)
CORRUPT = 101  # exit code of `upload` when the uploaded bytes do not match the hash
FETCH_FAILED = 102  # exit codes of `fetch_and_cleanup`
CLEANUP_FAILED = 103
STALE_PART_MINUTES = 60  # an upload writes its .part continuously: this old, it was killed

_LOCK = "exec 9>.lock && flock 9"
_STOP_GROUP = 'trap "" HUP INT TERM; kill -TERM 0 2>/dev/null; exit 143'


def resolve_root(host_directory: str) -> str:
    """Create host_directory and print its absolute path (the profile's text is expanded)."""
    return f"mkdir -p {host_directory} && cd {host_directory} && pwd -P"


def prepare(root: str, digest: str, uuid: str) -> str:
    """Extract the archive into the run folder and mark this run as a user of it, or die of
    MISSING; meant to be followed by `execute` in the same command, to save a round trip.

    The first extraction is silent, as the archive may just be missing; if it is there after
    all (a failure, or an upload published it meanwhile), the second one says why it fails.
    """
    extract = _extract(digest, uuid)
    return (f"cd {q(root)} || kill -{UNPREPARED} $$; {extract} 2>/dev/null"
            f" || {{ test -f {digest}.tar || kill -{MISSING} $$; {extract}; }}"
            f" || kill -{UNPREPARED} $$; {_mark_quickly(digest, uuid)}; ")


def upload(root: str, digest: str, uuid: str) -> str:
    """Read the archive on stdin, verify it, publish it atomically, mark this run as its user
    and extract it. Sweeps the .part files of uploads killed long ago first: uploads are
    rare, so the extra program costs little."""
    part = f"{digest}.tar.{uuid}.part"
    sweep = (f"find . -maxdepth 1 -type f -name '*.tar.*.part' -mmin +{STALE_PART_MINUTES}"
             " -delete 2>/dev/null")
    return (f"cd {q(root)} && {{ {sweep}; cat > {part}; }} && "
            f"{{ echo '{digest}  {part}' | sha256sum -c --status"
            f" || {{ rm -f {part}; exit {CORRUPT}; }}; }}"
            f" && {_LOCK} && mv -f {part} {digest}.tar && {_mark(digest, uuid)}"
            f" && exec 9>&- && {_extract(digest, uuid)}")


def _mark(digest: str, uuid: str) -> str:
    return f"mkdir -p {digest}.users && : > {digest}.users/{uuid}"


def _mark_quickly(digest: str, uuid: str) -> str:
    """`_mark` with builtins only while the folder exists (from the archive's upload on).
    Best effort: without a marker another run may delete the archive while this one runs,
    which costs a later run an upload, never a wrong result. `true`, not `:`: a special
    builtin's failed redirection would end the shell."""
    marker = f"{digest}.users/{uuid}"
    return f"{{ true 2>/dev/null >{marker} || {{ mkdir -p {digest}.users && true >{marker}; }}; }}"


def _extract(digest: str, uuid: str) -> str:
    # Into ROOT/<uuid>, which tar creates: no mkdir. S: symlink targets stay as they are.
    return f"tar -xf {digest}.tar --transform='s,^,{uuid}/,S'"


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
    # An EXIT trap, so that `after` also runs when a `before` command calls `exit`. Without
    # `after` and `before`, the usual case, one command alone in the subshell is exec'd by
    # the shell rather than forked once more (a trap or braces would cost that fork).
    trap = f"trap {q(_all(after))} EXIT; " if after else ""
    alone = not before and len(execution) == 1 and bool(execution[0].strip())
    body = trap + (execution[0] if alone else f"{_all(before)} && {_all(execution)}")
    # Without a pty sshd sends no HUP when the connection drops, so a watcher waits for
    # the end of stdin, which runaway holds open until the run ends, and raises the HUP.
    # `read`, a builtin, rather than cat: one program less. Through fd 3, as a background
    # list's stdin is /dev/null.
    watcher = ("exec 3<&0; { while read -r _ <&3; do :; done; kill -HUP $$; } >/dev/null 2>&1"
               " & w=$!; ")
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
    return f"cd {q(run_folder)} && {_find_changed()}"


def _find_changed() -> str:
    return (f"find . \\( -type f -o -type l \\)"
            f" \\( -newermt @{MTIME} -o ! -newermt @{MTIME - 1} \\) -print0")


def fetch_and_cleanup(run_folder: str, cleanup: str, listed: bool) -> str:
    """Write a tar of the run's output to stdout, then `cleanup` if that worked. The paths
    are the `changed_files`, or when `listed` the NUL-separated ones read on stdin."""
    paths = "" if listed else f"{_find_changed()} | "
    return (f"{{ cd {q(run_folder)} && {paths}tar --null --no-recursion -T - -cf -; }}"
            f" || exit {FETCH_FAILED}; {cleanup} || exit {CLEANUP_FAILED}")


def cleanup(root: str, digest: str, uuid: str, keep_folder: bool) -> str:
    """Remove the run's marker, and its folder unless `keep_folder`. Never the archive: with
    --leave=nothing the session deletes it when it closes (`delete_unused`), so that its
    later runs of the same code need not upload it again."""
    folder = "" if keep_folder else f" {q(f'{root}/{uuid}')}"
    return f"rm -rf{folder} {q(f'{root}/{digest}.users/{uuid}')}"


def delete_unused(root: str, digests: Iterable[str]) -> str:
    """Delete each archive that no run uses (see the module's docstring)."""
    each = " ".join(sorted(digests))
    return (f"cd {q(root)} && {_LOCK} && for d in {each}; do"
            f" rmdir $d.users 2>/dev/null && rm -f $d.tar; done; :")


def substitute(command: str, script: str, arguments: list[str]) -> str:
    """The original's text placeholders, with every value quoted for the shell."""
    quoted_args = " ".join(q(a) for a in arguments)
    return command.replace("$SCRIPT_NAME", q(script)).replace("$SCRIPT_ARGS", quoted_args)


def q(text: str) -> str:
    return shlex.quote(text)
