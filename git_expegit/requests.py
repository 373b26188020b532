"""Batch requests: a commit that asks for a batch of executions, and their expansion,
exactly once.

A request is a commit carrying the trailers `Expegit-Sweep: <expression>` and
`Expegit-Profile: <name>`, optionally `Expegit-Commit` (in the campaign), `Expegit-Repeat`
and `Expegit-Name`. Made in the campaign, it asks for the batch on Expegit-Commit (default:
the pinned commit). Made in the experiment (the campaign's xprp/ clone, or the user's own
clone where `hooks install --experiment` put the hook), it asks for the batch on that very
commit, which the campaign pins first, as update-expe does, from the local objects.

The post-commit hook reads the new commit with one git call and, when it is a request,
spools it under `.git/expegit/requests/` and wakes the agent: the hook stays fast whatever
the batch's size. The agent expands what is spooled (`expand_pending`).

Exactly once: `commit --amend`, `cherry-pick` and `rebase` make a new commit that runs the
hook again. A request's key is what those keep: the author line (name, email, date) and its
`Expegit-*` trailers. The `created` event of every execution it makes records
`request=KEY`, so a request whose key the campaign holds already is never expanded again,
whatever process died where. Requests that arrive by fetch never run a hook here.

This module is on the hook's path: it imports only the standard library and the light
modules; what writes (pygit2 and the rest) is imported by `expand_pending` when it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from git_expegit import campaign as campaigns
from git_expegit.campaign import EXPERIMENT
from git_expegit.campaign import Campaign
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.record import PROFILE_NAME
from git_expegit.record import Trailer

if TYPE_CHECKING:
    from git_expegit.queue import Batch

SPOOL = "requests"
EXPANDED = "requests-expanded"  # the keys this clone expanded, one a line, whatever branch
LOG = "hook.log"
CAMPAIGN_KEY = "expegit.campaign"  # set by hooks install in the user's clone of the experiment
MAX_REPEAT = 100_000
PUSH_REFS = "refs/expegit/push/"  # in xprp/: the branch each pinned commit was made on
_REQUEST_KEYS = {k.lower(): k for k in (Trailer.SWEEP, Trailer.PROFILE, Trailer.COMMIT,
                                        Trailer.REPEAT, Trailer.NAME)}
_STALE = 3600  # seconds after which a spool file cut before its rename is deleted


class RequestError(ValueError):
    """A bad request: one line that says what is wrong. The commit stays; nothing is queued."""


@dataclass(frozen=True)
class Request:
    key: str
    made: str  # the commit that carries it
    sweep: str
    profile: str
    repeat: int = 1
    name: str | None = None
    commit: str | None = None  # the experiment commit (None: the one the campaign pins)
    pin: bool = False  # made in the experiment: pin the campaign to `commit` first
    source: str | None = None  # the user's clone to fetch `commit` from (None: xprp/)
    branch: str | None = None  # the experiment's branch `commit` was made on
    spooled: float = 0.0  # time.time() when spooled: expansion follows commit order


# Reading a commit (the hook) ------------------------------------------------------------------

@dataclass(frozen=True)
class Made:
    """A new commit as the hook sees it, read with one git call."""

    commit: str
    author: str  # "Name <email> 1700000000 +0100", the raw author line
    branch: str | None  # the branch HEAD is on; None when detached
    trailers: list[tuple[str, str]]
    message: str


def read_head(cwd: Path) -> Made:
    fields = "%H%x00%an <%ae> %ad%x00%D%x00%(trailers:only,unfold)%x00%B"
    out = subprocess.run(["git", "log", "-1", "--no-show-signature", "--date=raw",
                          f"--format={fields}", "HEAD"], cwd=cwd, capture_output=True,
                         check=True).stdout.decode(errors="replace")
    commit, author, refs, trailers, message = out.split("\0", 4)
    branch = re.match(r"HEAD -> ([^,\s]+)", refs)
    pairs = []
    for line in trailers.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            pairs.append((key.strip(), value.strip()))
    return Made(commit, author, branch[1] if branch else None, pairs, message)


def is_request(made: Made) -> bool:
    """Whether the commit asks for a batch. A message that names Expegit-Sweep outside its
    trailers is a mistake worth a line."""
    if any(key.lower() == Trailer.SWEEP.lower() for key, _ in made.trailers):
        return True
    if re.search(r"^expegit-sweep\s*:", made.message, re.IGNORECASE | re.MULTILINE):
        raise RequestError("Expegit-Sweep is not a trailer here (trailers are `Key: value` "
                           "lines in the message's last paragraph): nothing was requested")
    return False


def parse(made: Made, in_experiment: bool) -> Request:
    """The request a commit carries; only cheap checks (the grammar is checked when it is
    expanded)."""
    values: dict[str, str] = {}
    for key, value in made.trailers:
        name = _REQUEST_KEYS.get(key.lower())
        if name is None:
            if key.lower().startswith("expegit-"):
                raise RequestError(f"unknown trailer {key} in a batch request: use "
                                   f"{', '.join(_REQUEST_KEYS.values())}")
            continue
        if name in values:
            raise RequestError(f"{name} is given twice: give it once")
        values[name] = value
    sweep, profile = values.get(Trailer.SWEEP, ""), values.get(Trailer.PROFILE)
    if not sweep:
        raise RequestError("Expegit-Sweep is empty: give a parameter expression")
    if profile is None:
        raise RequestError("Expegit-Sweep needs Expegit-Profile: the profile to run on")
    for key in (Trailer.PROFILE, Trailer.NAME):
        if key in values and not PROFILE_NAME.fullmatch(values[key]):
            raise RequestError(f"invalid {key} {values[key][:120]!r}: use up to 100 letters, "
                               "digits, '.', '_' and '-', starting with a letter or digit")
    repeat = values.get(Trailer.REPEAT, "1")
    if not repeat.isdigit() or not 1 <= int(repeat) <= MAX_REPEAT:
        raise RequestError(f"Expegit-Repeat must be a whole number from 1 to {MAX_REPEAT}, "
                           f"not {repeat[:40]!r}")
    commit = values.get(Trailer.COMMIT)
    if in_experiment and commit is not None:
        raise RequestError("Expegit-Commit has no place in an experiment commit: the request "
                           "runs the commit that carries it")
    if commit is not None and (not commit or any(c.isspace() for c in commit)):
        raise RequestError(f"Expegit-Commit must be one commit (a hash or a name), not "
                           f"{commit[:60]!r}")
    return Request(key=request_key(made.author, values), made=made.commit, sweep=sweep,
                   profile=profile, repeat=int(repeat), name=values.get(Trailer.NAME),
                   commit=made.commit if in_experiment else commit, pin=in_experiment,
                   branch=made.branch if in_experiment else None)


def request_key(author: str, trailers: dict[str, str]) -> str:
    """What amend, cherry-pick and rebase keep of a commit: the author line and the
    request's trailers (in a fixed order: their order in the message does not matter)."""
    text = author + "\n" + "".join(f"{k}: {v}\n" for k, v in sorted(trailers.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def where(cwd: Path) -> tuple[Campaign, str | None] | None:
    """The campaign a commit made at `cwd` (a work tree's top) requests from, and the
    experiment clone to fetch from (None for the campaign and its xprp/); None when this is
    neither a campaign nor an experiment clone the hook was installed in."""
    for root in (cwd, cwd.parent if cwd.name == EXPERIMENT else None):
        if root is not None and (root / campaigns.CONFIG).is_file():
            return campaigns.find(root), None
    done = subprocess.run(["git", "config", "--get", CAMPAIGN_KEY], cwd=cwd,
                          capture_output=True, text=True)
    configured = done.stdout.strip()
    if not configured:
        return None
    if not (Path(configured) / campaigns.CONFIG).is_file():
        raise RequestError(f"this clone's campaign {configured} is gone: run git expegit "
                           "hooks install --experiment PATH from the campaign")
    return campaigns.find(Path(configured)), str(cwd.resolve())


def on_commit(cwd: Path) -> tuple[Campaign, Request] | None:
    """The hook's work: when the new commit at `cwd` is a request, spool it; the campaign
    and the request, or None when the commit requests nothing."""
    made = read_head(cwd)
    if not is_request(made):
        return None
    found = where(cwd)
    if found is None:
        raise RequestError("this repository is neither a campaign nor an experiment clone "
                           "with expegit's hook (git expegit hooks install --experiment "
                           "PATH, from the campaign): nothing was requested")
    campaign, source = found
    in_experiment = campaign.root != cwd.absolute()
    request = dataclasses.replace(parse(made, in_experiment), source=source)
    spool(campaign, request)
    return campaign, request


# The spool ------------------------------------------------------------------------------------

def _spool(campaign: Campaign) -> Path:
    path = campaign.state_dir / SPOOL
    path.mkdir(exist_ok=True)
    return path


def spool(campaign: Campaign, request: Request) -> Path:
    """Write the request whole or not at all (a rename); the same key replaces what was
    spooled (an amend before the agent expanded it)."""
    folder = _spool(campaign)
    path = folder / f"{request.key}.json"
    tmp = folder / f".{request.key}.{os.getpid()}.tmp"
    data = dataclasses.asdict(dataclasses.replace(request, spooled=time.time()))
    try:
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())  # the rename must not publish an empty file after a crash
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk: nothing half written stays
    return path


def pending(campaign: Campaign) -> list[tuple[Path, Request | None]]:
    """The spooled requests in the order they were made (None: a file that cannot be
    read); files cut before their rename are ignored, and deleted once old."""
    found: list[tuple[float, Path, Request | None]] = []
    for path in _spool(campaign).iterdir():
        if path.suffix != ".json":
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > _STALE:
                    path.unlink()
            continue
        try:
            request = Request(**json.loads(path.read_text()))
        except FileNotFoundError:
            continue  # expanded meanwhile
        except (OSError, ValueError, TypeError):
            found.append((0.0, path, None))
            continue
        found.append((request.spooled, path, request))
    return [(path, request) for _, path, request in sorted(found, key=lambda t: t[:2])]


@contextlib.contextmanager
def _expanding(campaign: Campaign) -> Iterator[None]:
    """One expansion at a time per clone (the agent, a second agent starting, a test)."""
    fd = os.open(campaign.state_dir / "requests.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def expand_pending(campaign: Campaign) -> list[Batch]:
    """Expand every spooled request into a queued batch, each exactly once: a request whose
    key the campaign records already is dropped. Safe to call from several processes at
    once, and after a process was killed anywhere in it. A bad request (grammar, unknown
    commit) is dropped and logged; one that failed for a passing reason (a ref moved, a
    local change in xprp/) stays for the next call."""
    batches: list[Batch] = []
    with _expanding(campaign):
        items = pending(campaign)
        if not items:
            return batches
        done = expanded(campaign)
        for path, request in items:
            if request is None:
                log(campaign.git_dir, f"{path.name}: unreadable request, dropped")
            elif request.key in done:
                log(campaign.git_dir, f"commit {request.made[:12]}: request {request.key[:8]} "
                                      "was expanded already (an amend, a cherry-pick or a "
                                      "rebase of it): nothing more queued")
            else:
                try:
                    batch = _expand(campaign, request)
                except (ExpegitError, ValueError) as e:
                    bad = not isinstance(e, ExpegitError) or e.code == ExitCode.INPUT
                    log(campaign.git_dir, f"commit {request.made[:12]}: request "
                                          f"{request.key[:8]}: {e}"
                                          + ("; dropped" if bad else "; kept for a retry"))
                    if not bad:
                        continue
                else:
                    batches.append(batch)
                    done.add(request.key)
                    _remember(campaign, request.key)
            path.unlink(missing_ok=True)
    return batches


def _expand(campaign: Campaign, request: Request) -> Batch:
    from git_expegit import executions
    from git_expegit import parameters
    from git_expegit import queue
    from git_expegit import sweep

    if request.pin:
        assert request.commit is not None
        pin(campaign, request)
        commit = request.commit
    else:
        commit = executions.experiment_commit(campaign, request.commit)
    try:
        strings = sweep.expand(request.sweep, request.repeat)
    except sweep.SweepError as e:
        raise ExpegitError(f"Expegit-Sweep {request.sweep!r}: {e}", ExitCode.INPUT) from None
    parameters.check_strings(strings)  # as jobs run does: unbalanced quotes could only fail
    executions.check_profile(request.profile)
    return queue.enqueue(campaign, commit, strings, request.profile, name=request.name,
                         request=request.key)


def _remember(campaign: Campaign, key: str) -> None:
    """The notes hold the key already; this copy outlives a switch to a branch that does
    not have the batch (appended in one write: whole lines)."""
    fd = os.open(campaign.state_dir / EXPANDED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)


def expanded(campaign: Campaign) -> set[str]:
    """The keys of the requests expanded already: those the campaign's executions were
    expanded from (their `created` event's request=, which also says what other clones
    expanded), and those this clone remembers."""
    from git_expegit import catalog
    from git_expegit import record

    try:
        keys = set((campaign.state_dir / EXPANDED).read_text().split())
    except FileNotFoundError:
        keys = set()
    for execution in catalog.executions(campaign):
        for line in execution.log:
            if " created " in line and "request=" in line:
                event = record.Event.parse(line)
                value = None if event is None else event.field("request")
                if value:
                    keys.add(value)
    return keys


def pin(campaign: Campaign, request: Request) -> None:
    """Pin the campaign to the request's experiment commit, from the local objects: fetched
    into xprp/ from the user's clone when it was made there. The branch it was made on is
    recorded in xprp/ (refs/expegit/push/BRANCH), where sync pushes it from."""
    from git_expegit import git
    from git_expegit import repository

    assert request.commit is not None
    xprp = campaign.root / EXPERIMENT
    campaign.experiment()  # xprp/ is there
    has = subprocess.run(["git", "cat-file", "-e", f"{request.commit}^{{commit}}"], cwd=xprp,
                         capture_output=True).returncode == 0
    if not has:
        if request.source is None:
            raise ExpegitError(f"experiment commit {request.commit[:12]} is not in "
                               f"{EXPERIMENT}/ any more", ExitCode.INPUT)
        git.run([*git.FILE_PROTOCOL, "fetch", "--quiet", "--no-tags", request.source,
                 request.commit], xprp, code=ExitCode.INPUT,
                what=f"fetching {request.commit[:12]} from {request.source}")
    if request.branch is not None:
        git.run(["update-ref", PUSH_REFS + request.branch, request.commit], xprp,
                what=f"recording the experiment branch {request.branch}")
    # A request made in xprp/ itself leaves its work tree alone: it is where the user
    # works, and may have moved on already.
    repository.pin(campaign, request.commit, check_out=request.source is not None)


def log(git_dir: Path, line: str) -> None:
    """One line in `.git/expegit/hook.log`, stamped (one write: whole lines even when two
    processes append at once)."""
    folder = git_dir / "expegit"
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    fd = os.open(folder / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{stamp} {line}\n".encode())
    finally:
        os.close(fd)
