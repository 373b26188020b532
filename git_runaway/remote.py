"""The programs runaway runs on a host, one function a command.

Every host command is `exec /bin/sh -s TAG`, words that every login shell (sh, bash, tcsh,
csh, fish...) reads alike; the program itself follows on stdin, so the login shell never
parses it. It is one brace group, which sh parses whole before running any of it, so that
the bytes runaway sends later (an answer, an upload) are never read as program text.

The program starts by printing the marker `NONCE:start` on stdout and on stderr: what came
before is the login shell's startup output (a module banner...), which runaway sets aside.
NONCE is random for each command and travels only inside the program, which no process on
the host can read, so no output can fake a marker. Markers tell runaway what the host is
doing; runaway answers with lines on stdin. Nothing relies on signals or exit codes, which a
script can send or use too.

Layout of a profile's host_directory (ROOT):
  ROOT/<sha256>.tar               the code, named by its content, shared by every run of it
  ROOT/<sha256>.users/<uuid>      one marker per run of that code, flock(1)ed while it runs
  ROOT/<sha256>.tar.<uuid>.part   an upload in progress, flock(1)ed while it goes on
  ROOT/<uuid>/                    one run's folder
  ROOT/<uuid>.exit                the script's exit code, once it ended on its own: a run
                                  whose runaway died can still be collected (`collect`)
  ROOT/<uuid>.lost                the connection was lost while the script ran: it was stopped
  ROOT/.lock                      flock(1) lock taken to publish or delete an archive

A run locks its marker before it extracts the code and holds the lock until it ends: a
marker nobody locks belongs to a run that is over, however it ended (SIGKILL, a lost node),
and never pins an archive. flock, unlike a pid, also works across the login nodes that share
a home folder. A deleter, holding .lock, removes the markers nobody locks, then an archive
only if its .users folder is empty.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from collections.abc import Mapping

from git_runaway.archive import MTIME
from git_runaway.schedulers import slurm

CORRUPT = 101  # exit code of `upload` when the uploaded bytes do not match the hash
STALE_PART_MINUTES = 60  # an upload's .part untouched this long and unlocked: it was killed
CLEAN = "clean"  # runaway's answer once it has the results: remove the run folder
KEEP = "keep"  # ... when it does not have them, or --leave=everything
STOP = "stop"  # stop the script (Ctrl-C, a closed stdout); the results still come back
GO = "go"  # the code the host missed is there now

_LOCK = "exec 9>.lock && flock 9"
# Signals that a script may send its process group (`kill -USR2 0`, `trap 'kill 0' EXIT`),
# which is also the group of the program and its watcher: they catch them (the script, which
# they start, gets the default handlers back) or ignore them. The stop is a SIGINT, as from
# Ctrl-C: the script runs in the foreground, so it does not ignore SIGINT, and no shell
# prints "Terminated" for it. It is sent again a second later, then a SIGTERM: a shell
# script between two commands when the first one lands may lose it (dash does), and then
# start its next command as if nothing happened.
_SIGNALS = "HUP INT QUIT TERM USR1 USR2 ALRM"


def launcher(tag: str) -> str:
    """The command line of every host command: plain words, the same in every shell."""
    return f"exec /bin/sh -s {tag}"


def program(nonce: str, body: str) -> str:
    return (f"{{ printf '%s:start\\n' {nonce}; printf '%s:start\\n' {nonce} >&2;\n"
            f"{body}\n}}\n")


def resolve_root(nonce: str, host_directory: str) -> str:
    """Create host_directory and print its absolute path (the profile's text is expanded)."""
    return program(nonce, f"mkdir -p {host_directory} && cd {host_directory} && pwd -P")


def run(nonce: str, root: str, digest: str, uuid: str, env: Mapping[str, str],
        before: list[str], execution: list[str], after: list[str], listed: bool) -> str:
    """One run, in one host command: get the code, run the script, send back its results
    and clean up once runaway has them.

    Markers on stdout: `missing` (runaway uploads the code, then answers `go`),
    `unprepared` (stderr says why), `started`, then the script's output, `exit CODE`, with
    `listed` first the NUL-separated changed files then `listed` (runaway answers with the
    size and the list of those to send), the tar of the results, `end TAR_STATUS`. stderr
    carries `done` after the script: what follows is this program's own. Runaway answers
    `clean` or `keep`: the run folder stays until runaway has the results whole.
    """
    marker = f"{digest}.users/{uuid}"
    mark = (f"{{ command exec 8>{marker} || {{ mkdir -p {digest}.users"
            f" && command exec 8>{marker}; }}; }} 2>/dev/null && flock -n 8")
    extract = f"tar -xf {digest}.tar --transform='s,^,{uuid}/,S'"
    say = f"printf '%s:%s\\n' {nonce}"
    exports = "".join(f"export {k}={q(v)}; " for k, v in sorted(env.items()))
    return program(nonce, f"""cd {q(root)} || exit 1
while :; do
  {mark} || :
  {extract} 2>/dev/null && break
  if test -f {digest}.tar; then rm -rf {uuid}; {extract} && break
    rm -rf {uuid} {marker}; {say} unprepared; exit 1; fi
  {say} missing; read -r a && test "$a" = {GO} || {{ rm -f {marker}; exit 1; }}
done
cd {uuid} || exit 1
{say} "where {_WHERE}"
{exports}{say} started
trap : {_SIGNALS}; exec 3<&0
{{ trap '' {_SIGNALS}; while read -r l <&3; do test "$l" = {STOP} && break; done
  test "$l" = {STOP} || : >../{uuid}.lost
  kill -INT 0; sleep 1; kill -INT 0; sleep 4; kill -TERM 0
}} >/dev/null 2>&1 8>&- & w=$!
( {_script(before, execution, after)} ) </dev/null 3<&- 8>&-; rc=$?
trap '' PIPE; {say} done >&2; {{ kill -9 $w; wait $w; }} 2>/dev/null
test -e ../{uuid}.lost || echo $rc >../{uuid}.exit
{say} "exit $rc"
{_send_results(nonce, uuid, marker, listed)}""")


def _send_results(nonce: str, uuid: str, marker: str, listed: bool, extra: str = "") -> str:
    """From the run folder: name what cannot be sent, send the results' tar, then remove
    the run folder once runaway says it has them (`clean`), or keep it."""
    say = f"printf '%s:%s\\n' {nonce}"
    paths = "head -c \"$n\" | " if listed else f"{_find_changed()} | "
    results = (f"{_find_changed()}; {say} listed; read -r n; " if listed else "") + (
        f"{paths}tar --null --no-recursion -T - -cf -")
    return f"""{_report_unfetched()}; {results}; t=$?
{say} "end $t"
while read -r a; do test "$a" = {STOP} || break; done
cd .. && if test "$a" = {CLEAN}; then rm -rf {uuid} {marker} {uuid}.exit {uuid}.lost{extra}
else rm -f {marker}; fi"""


# Where a run ran, as `key=value` words: its node, system, CPUs and GPUs (device files, not
# nvidia-smi, which can take seconds).
_WHERE = ("node=$(uname -n) os=$(uname -s)-$(uname -r) cpus=$(nproc 2>/dev/null || echo 0)"
          " gpus=$(ls /dev/nvidia[0-9]* 2>/dev/null | wc -l | tr -d ' ')")


def collect(nonce: str, root: str, uuid: str, listed: bool) -> str:
    """Find a run whose runaway went away: `gone` (no run folder), `busy` (its program
    still holds its marker), `lost` (stopped with the connection, or no exit code: the run
    folder is removed), or `exit CODE` then the results as `run` sends them."""
    say = f"printf '%s:%s\\n' {nonce}"
    return program(nonce, f"""cd {q(root)} || exit 1
test -d {uuid} || {{ {say} gone; exit 0; }}
marker={uuid}.nomarker
for m in *.users/{uuid}; do test -e "$m" || continue
  flock -n "$m" true || {{ {say} busy; exit 0; }}; marker=$m; done
if test -e {uuid}.lost || ! test -s {uuid}.exit; then
  rm -rf {uuid} {uuid}.exit {uuid}.lost "$marker"; {say} lost; exit 0; fi
rc=$(cat {uuid}.exit); cd {uuid} || exit 1
{say} "exit $rc"
{_send_results(nonce, uuid, '"$marker"', listed)}""")


def _script(before: list[str], execution: list[str], after: list[str]) -> str:
    """The profile's commands, for a subshell of the program.

    `after` runs whatever happened before it, and the exit code is the first failure of
    `before` or else `execution`'s; `export` and `cd` carry from one section to the next. An
    EXIT trap, so that `after` also runs when a `before` command calls `exit`. A command
    alone, the usual case, is exec'd by the subshell: its end is the script's end. Otherwise
    the subshell catches the signals the script may send its group, and lives on to run
    `after`.
    """
    if not before and not after and len(execution) == 1 and execution[0].strip():
        return execution[0]
    trap = f"trap {q(_all(after))} EXIT; " if after else ""
    return f"trap : {_SIGNALS}; {trap}{_all(before)} && {_all(execution)}"


def _all(commands: list[str]) -> str:
    return "{ " + " && ".join(commands or [":"]) + "; }"


def _find_changed() -> str:
    """The files whose mtime is not the archive's, NUL-separated: the run's output. Never
    anything under a .git folder: git never writes one from a tree, and a host must not
    plant hooks or an index in the user's repository. Only what tar can read and send:
    see _report_unfetched for the rest."""
    return (f"find . -name .git -prune -o \\( \\( -type f -readable \\) -o -type l \\)"
            f" {_CHANGED} -print0")


def _report_unfetched() -> str:
    """The run's output that cannot come back, each named on this program's stderr:
    unreadable files, fifos, sockets and devices (one of them would stop the whole fetch,
    or have the whole archive refused)."""
    return (f"find . -name .git -prune -o \\( \\( -type f ! -readable \\) -o -type p -o -type s"
            f" -o -type b -o -type c \\) {_CHANGED} -printf '{UNFETCHED}%P\\n' >&2")


# Changed: an mtime that is not the archive's.
_CHANGED = f"\\( -newermt @{MTIME} -o ! -newermt @{MTIME - 1} \\)"
UNFETCHED = "not fetched (unreadable, or not a file): "


def upload(nonce: str, root: str, digest: str, uuid: str) -> str:
    """Say `ready`, read the archive on stdin, verify it and publish it atomically. Sweeps
    the .part files of uploads killed long ago first: uploads are rare, so the extra program
    costs little."""
    part = f"{digest}.tar.{uuid}.part"
    sweep = (f"find . -maxdepth 1 -type f -name '*.tar.*.part' -mmin +{STALE_PART_MINUTES}"
             " -delete 2>/dev/null")
    return program(nonce, (
        f"cd {q(root)} || exit 1; {sweep}; command exec 8>{part} && flock -n 8 || exit 1\n"
        f"printf '%s:ready\\n' {nonce}; cat >&8 || exit 1\n"
        f"echo '{digest}  {part}' | sha256sum -c --status || {{ rm -f {part}; exit {CORRUPT}; }}\n"
        f"{_LOCK} && mv -f {part} {digest}.tar"))


def try_commands(nonce: str, folder: str, commands: tuple[str, ...]) -> str:
    """For `--check`: run one section of a profile in a scratch folder, then remove it."""
    return program(nonce, f"mkdir -p {q(folder)} && cd {q(folder)} && {_all(list(commands))}"
                          f"; rc=$?; cd / && rm -rf {q(folder)}; exit $rc")


def delete_unused(nonce: str, root: str, digests: Iterable[str]) -> str:
    """Delete each archive that no running run uses (see the module's docstring)."""
    each = " ".join(sorted(digests))
    return program(nonce, (
        f"cd {q(root)} && {_LOCK} && for d in {each}; do {_unpin('$d')}"
        f" {{ rmdir $d.users 2>/dev/null || ! test -d $d.users; }} && ! {_pinned('$d')}"
        " && rm -f $d.tar; done; :"))


def _pinned(digest: str) -> str:
    """True when a Slurm run still to collect needs the archive `digest` (a pending job has
    no marker yet: its `.slurm` file pins the code)."""
    return f"cat ./*.slurm 2>/dev/null | grep -q \" {digest}$\""


def _unpin(digest: str) -> str:
    """Remove the markers of `digest` that no run holds: runs that are over."""
    return (f"for m in {digest}.users/*; do test -e \"$m\" && flock -n \"$m\" true"
            f" && rm -f \"$m\"; done;")


def clean(nonce: str, root: str) -> str:
    """Remove, and list one per line, what runs that are over left in host_directory: run
    folders, archives no running run uses, uploads no one is sending, --check's folders."""
    uuid = "[0-9a-f]" + "*-*-*-*-*"
    return program(nonce, f"""cd {q(root)} && {_LOCK} || exit 1
{_unpin('*')}
{_forget_slurm_jobs()}
for u in {uuid}; do test -d "$u" || continue; set -- *.users/"$u"
  test -e "$1" || test -e "$u.slurm" || {{ rm -rf "$u" && echo "run folder $u"; }}; done
for f in *.exit *.lost; do test -e "$f" && ! test -d "${{f%.*}}" && rm -f "$f"; done
for t in *.tar; do test -e "$t" || continue; d=${{t%.tar}}
  rmdir "$d.users" 2>/dev/null; test -d "$d.users" || {_pinned('$d')} \
    || {{ rm -f "$t" && echo "archive $t"; }}; done
for p in *.tar.*.part; do test -e "$p" && flock -n "$p" true && rm -f "$p" && echo "upload $p"
done
for c in check-*; do test -d "$c" && rm -rf "$c" && echo "check folder $c"; done; :""")


def _forget_slurm_jobs() -> str:
    """The Slurm runs whose job squeue no longer knows (over, or never submitted) lose their
    `.slurm` pin and their task files; those of queued or running jobs stay. When squeue
    fails (no Slurm here, or its controller is down) every pin stays."""
    return """if test -n "$(ls ./*.slurm 2>/dev/null)"; then
  if live=$(squeue -h -r -o %i -u "$(id -un)" 2>/dev/null); then
    for s in *.slurm; do test -e "$s" || continue; j=; read -r j d 2>/dev/null <"$s"
      printf '%s\\n' "$live" | grep -qx "$j" && continue
      u=${s%.slurm}; rm -rf "$s" "$u.job" "$u.where" "$u.exit" "$u" slurm-"$j".out slurm-"$j".err
      echo "slurm job ${j:-unsubmitted} $u"; done
  fi; fi"""


def substitute(command: str, script: str, arguments: list[str]) -> str:
    """The original's text placeholders, with every value quoted for the shell."""
    quoted_args = " ".join(q(a) for a in arguments)
    return command.replace("$SCRIPT_NAME", q(script)).replace("$SCRIPT_ARGS", quoted_args)


def q(text: str) -> str:
    return shlex.quote(text)


# Slurm: a profile with `sbatch:` submits its runs as one job array --------------------------
#
# More of the layout of ROOT, for these runs:
#   ROOT/<uuid>.job       the run's task: what `run` does between `started` and `exit`,
#                         run on the node by the array's script (`SUBMISSION.sbatch`)
#   ROOT/<uuid>.slurm     "JOBID DIGEST" ("- DIGEST" while sbatch runs): the job that runs it,
#                         and the archive it needs, kept until the run is collected
#   ROOT/<uuid>.where     where it runs (the `where` words), written at each start
#   ROOT/slurm-<job>.out  the job's stdout and stderr, as Slurm writes them
#   ROOT/slurm-<job>.err


def job_task(root: str, digest: str, uuid: str, env: Mapping[str, str], before: list[str],
             execution: list[str], after: list[str]) -> str:
    """The shell text of one run inside its Slurm job. It prepares the run folder once (a
    requeued job finds it as the script left it: a checkpoint), holds the run's marker
    while it runs, passes on the signals Slurm sends the job's shell (--signal=B:..., the
    SIGTERM of a time limit or scancel), and writes the exit code where `collect_job`
    reads it."""
    marker = f"{digest}.users/{uuid}"
    exports = "".join(f"export {k}={q(v)}; " for k, v in sorted(env.items()))
    forward = "".join(f"trap 'kill -{s} $p 2>/dev/null' {s}; " for s in _FORWARDED)
    return f"""cd {q(root)} || exit 1
{{ command exec 8>>{marker} || {{ mkdir -p {digest}.users && command exec 8>>{marker}; }}; }} \\
  2>/dev/null && flock -n 8 || :
test -d {uuid} || tar -xf {digest}.tar --transform='s,^,{uuid}/,S' || {{
  rm -rf {uuid}; echo "runaway: cannot extract the code {digest}.tar in $PWD" >&2; exit 1; }}
rm -f {uuid}.exit; cd {uuid} || exit 1
printf '%s\\n' "{_WHERE} restarts=${{SLURM_RESTART_COUNT:-0}}" >../{uuid}.where.$$ \\
  && mv -f ../{uuid}.where.$$ ../{uuid}.where
{exports}{forward}
( {_script(before, execution, after)} ) </dev/null 8>&- & p=$!
while :; do wait $p; rc=$?; kill -0 $p 2>/dev/null || break; done
echo $rc >../{uuid}.exit.$$ && mv -f ../{uuid}.exit.$$ ../{uuid}.exit
exit $rc
"""


# Passed on to the script: a time limit's or scancel's TERM, and the warning signals a
# profile may ask for (--signal=B:USR1@120).
_FORWARDED = ("TERM", "USR1", "USR2", "HUP", "INT", "QUIT", "ALRM")


def submit(nonce: str, root: str, digest: str, submission: str, tasks: Mapping[str, str],
           sbatch_lines: list[str]) -> str:
    """Write each run's task and the array's script, then `sbatch` it: says `missing` when
    the host lacks the code (runaway uploads it and answers `go`), then `submitted JOBID`,
    or `refused` (stderr says why). Holds .lock, so that `clean` never takes the code or the
    tasks of a submission under way (released while the code uploads: publishing it takes
    the lock too)."""
    say = f"printf '%s:%s\\n' {nonce}"
    uuids = " ".join(tasks)
    writes = "".join(f"printf '%s' {q(text)} >{uuid}.job && echo '- {digest}' >{uuid}.slurm"
                     f" || exit 1\n" for uuid, text in tasks.items())
    script = "\n".join(["#!/bin/sh", *sbatch_lines, f"set -- {uuids}",
                        'shift "${SLURM_ARRAY_TASK_ID:-0}"', f"exec /bin/sh {q(root)}/$1.job",
                        ""])
    return program(nonce, f"""cd {q(root)} && {_LOCK} || exit 1
while ! test -f {digest}.tar; do
  exec 9>&-; {say} missing; read -r a && test "$a" = {GO} && {_LOCK} || exit 1
done
{writes}printf '%s' {q(script)} >{submission}.sbatch || exit 1
if out=$(sbatch --parsable {_logs(root)} {submission}.sbatch </dev/null); then
  id=${{out%%;*}}; i=0; rm -f {submission}.sbatch
  for u in {uuids}; do echo "${{id}}_$i {digest}" >$u.slurm; i=$((i + 1)); done
  {say} "submitted $id"
else rm -f {submission}.sbatch {_each(tasks, '.job', '.slurm')}; {say} refused; fi""")


def _logs(root: str) -> str:
    """sbatch's --output and --error: in ROOT, by an absolute path, as Slurm expands `%` in
    the whole path (a relative one is joined to the submission folder first): a '%' of ROOT
    is written '%%'."""
    folder = root.replace("%", "%%")
    return f"--output={q(folder + '/slurm-%A_%a.out')} --error={q(folder + '/slurm-%A_%a.err')}"


def _each(uuids: Iterable[str], *suffixes: str) -> str:
    return " ".join(f"{u}{s}" for u in uuids for s in suffixes)


def poll(nonce: str, root: str, uuids: Iterable[str]) -> str:
    """What the scheduler and the runs' own files say of each run: a `task|UUID|JOB|EXIT|
    WHERE` line each, then after `squeue` its lines for their job arrays (by array id: an
    array cancelled before it was split is one line, `ID|CANCELLED`, not one per task), then
    after `sacct` the accounting of those squeue forgot (none without accounting). Exits 3
    when squeue fails otherwise than for forgotten jobs: a poll that knows nothing."""
    say = f"printf '%s:%s\\n' {nonce}"
    # A `.slurm` still "- DIGEST" while no submission holds .lock (checked first) is left by
    # a submit program that died before sbatch answered: no job, as if never submitted.
    # The runs' own files are read after squeue answered: a job it says ended (between two
    # polls) wrote where it ran already.
    each = f"for u in {' '.join(uuids)}; do j=; read -r j d 2>/dev/null <$u.slurm"
    return program(nonce, f"""cd {q(root)} || exit 1
n='
' ids=; q=; free=; flock -n .lock true 2>/dev/null && free=1
{each}; case $j in [0-9]*) ids="$ids $j";; esac; done
arrays=$(for j in $ids; do echo "${{j%%_*}}"; done | sort -u | tr '\\n' , | sed 's/,$//')
test -z "$arrays" || q=$(squeue -h -r -t all -j "$arrays" -o '{slurm.SQUEUE_FORMAT}' 2>&1) \
  || case $q in *"Invalid job id"*) q=;; *) printf '%s\\n' "$q" >&2; exit 3;; esac
{each}; test "$j$free" = -1 && j=
  x= w=; read -r x 2>/dev/null <$u.exit; read -r w 2>/dev/null <$u.where
  printf 'task|%s|%s|%s|%s\\n' $u "$j" "$x" "$w"; done
{say} squeue
test -z "$q" || printf '%s\\n' "$q"
{say} sacct
m=; for j in $ids; do case "$n$q" in *"$n$j|"*|*"$n${{j%%_*}}|"*) ;; *) m="$m,$j";; esac
done
test -z "$m" || ! command -v sacct >/dev/null \
  || sacct -n -P -X -j "${{m#,}}" -o {slurm.SACCT_FIELDS} 2>/dev/null
:""")


def collect_job(nonce: str, root: str, uuid: str, job: str, listed: bool) -> str:
    """Collect a run of a Slurm job that is over: `busy` while its task still ends, else
    `logs`, the job's stdout (its stderr on stderr), then `gone CODE` (the job never
    started, no run folder) or `exit CODE` and the results as `run` sends them. CODE is
    empty when the task could not write one (killed)."""
    say = f"printf '%s:%s\\n' {nonce}"
    files = f" {uuid}.job {uuid}.slurm {uuid}.where slurm-{job}.out slurm-{job}.err"
    return program(nonce, f"""cd {q(root)} || exit 1
marker={uuid}.nomarker
for m in *.users/{uuid}; do test -e "$m" || continue
  flock -n "$m" true || {{ {say} busy; exit 0; }}; marker=$m; done
{say} logs; cat slurm-{job}.out 2>/dev/null; cat slurm-{job}.err >&2 2>/dev/null
printf '%s:done\\n' {nonce} >&2; rc=$(cat {uuid}.exit 2>/dev/null)
test -d {uuid} || {{ rm -f {uuid}.exit "$marker"{files}; {say} "gone $rc"; exit 0; }}
cd {uuid} || exit 1
{say} "exit $rc"
{_send_results(nonce, uuid, '"$marker"', listed, files)}""")


SLURM_COMMANDS = ("sbatch", "squeue", "scancel")  # what runaway runs for an sbatch: profile


def find_commands(nonce: str, names: Iterable[str]) -> str:
    """For `--check`: fail, naming them, when commands are not on the PATH of the host's
    non-interactive shell (where runaway's programs run)."""
    return program(nonce, f"m=; for c in {' '.join(names)}; do command -v $c >/dev/null"
                          " || m=\"$m $c\"; done\n"
                          "test -z \"$m\" || { echo \"not on the PATH:$m\" >&2; exit 1; }")


def cancel(nonce: str, jobs: str) -> str:
    """`scancel` the jobs (a comma-separated list of ids)."""
    return program(nonce, f"scancel {q(jobs)}")
