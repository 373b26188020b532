"""`/`: the campaign and its experiment, counts per state, the last sync, and Synchronize.

The last sync is read from git, not from a record of our own: every sync starts with a
fetch, which rewrites `.git/FETCH_HEAD`, so its time is when this clone last heard from the
remote; and the branch against its remote-tracking branch (moved by that fetch and by the
push) says what is here and not there yet, and the reverse.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path

import pygit2
import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Route

from git_expegit import campaign
from git_expegit import catalog
from git_expegit import sync as syncing
from git_expegit import transaction
from git_expegit.campaign import CONFIG
from git_expegit.campaign import EXPERIMENT
from git_expegit.campaign import Campaign
from git_expegit.errors import ExpegitError
from git_expegit.web.templating import render


@dataclass(frozen=True)
class LastSync:
    when: float | None  # the last fetch from the remote (time.time()), None if never
    ahead: int  # commits of the branch not on the remote yet
    behind: int  # commits on the remote's branch not merged here yet
    tracked: bool  # the remote-tracking branch exists (a fetch or push happened)

    def text(self) -> str:
        if self.when is None:
            return "never synchronized from this clone"
        return f"{ago(self.when)} ({_stamp(self.when)})"

    def step(self) -> str:
        if not self.tracked:
            return "the remote's branch is not known here yet"
        if not (self.ahead or self.behind):
            return "in step with the remote (as of the last sync)"
        parts = ([f"{self.ahead} commit(s) here not pushed yet"] if self.ahead else []) + (
            [f"{self.behind} commit(s) of the remote not merged here yet"] if self.behind
            else [])
        return ", ".join(parts)

    def as_json(self) -> dict[str, object]:
        return {"text": self.text(), "step": self.step(), "when": self.when,
                "ahead": self.ahead, "behind": self.behind}


def ago(when: float) -> str:
    seconds = max(0, int(time.time() - when))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now" if seconds < 10 else f"{seconds} seconds ago"


def _stamp(when: float) -> str:
    return datetime.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")


def last_sync(found: Campaign) -> LastSync:
    try:
        when: float | None = (found.git_dir / "FETCH_HEAD").stat().st_mtime
    except OSError:
        when = None
    repo = found.repo
    try:
        branch = found.branch()
    except ExpegitError:
        return LastSync(when, 0, 0, False)
    theirs = repo.references.get(branch.replace("refs/heads/", f"refs/remotes/{syncing.REMOTE}/",
                                                1))
    ours = repo.references.get(branch)
    if theirs is None or ours is None:
        return LastSync(when, 0, 0, False)
    ahead, behind = repo.ahead_behind(ours.target, theirs.target)
    return LastSync(when, ahead, behind, True)


@dataclass(frozen=True)
class Overview:
    campaign_url: str | None
    experiment_name: str
    experiment_url: str | None
    pinned: str | None  # the experiment commit the campaign pins
    pinned_subject: str | None
    counts: dict[str, int]
    total: int
    sync: LastSync


def overview(found: Campaign) -> Overview:
    repo = found.repo
    campaign_url = repo.remotes[syncing.REMOTE].url if syncing.has_remote(found) else None
    experiment_url = _experiment_url(found)
    counts = catalog.counts(found)
    try:
        head = found.head()
    except ExpegitError:  # a detached HEAD: the page still shows the rest
        head = None
    pinned = str(head.tree[EXPERIMENT].id) if head is not None and EXPERIMENT in head.tree \
        else None
    return Overview(campaign_url, _name(experiment_url) or EXPERIMENT, experiment_url, pinned,
                    _subject(found, pinned), {s: counts.get(s, 0) for s in catalog.STATES},
                    sum(counts.values()), last_sync(found))


def _experiment_url(found: Campaign) -> str | None:
    """The experiment's URL as the campaign settings name it, else its submodule's remote."""
    try:
        settings = yaml.safe_load((found.root / CONFIG).read_text())
        if isinstance(settings, dict) and isinstance(settings.get("experiment"), str):
            return str(settings["experiment"])
    except (OSError, yaml.YAMLError):
        pass
    try:
        remotes = found.experiment().remotes
        return remotes["origin"].url if "origin" in remotes.names() else None
    except ExpegitError:
        return None


def _name(url: str | None) -> str | None:
    if not url:
        return None
    last = url.rstrip("/").replace(":", "/").rsplit("/", 1)[-1]
    return last.removesuffix(".git") or None


def _subject(found: Campaign, commit: str | None) -> str | None:
    if commit is None:
        return None
    try:
        obj = found.experiment().get(commit)
    except ExpegitError:
        return None
    if not isinstance(obj, pygit2.Commit):
        return None
    return obj.message.splitlines()[0] if obj.message else ""


def home(request: Request) -> Response:
    found = campaign.find(request.app.state.root)
    return render(request, "home.html", info=overview(found), root=found.root,
                  has_remote=syncing.has_remote(found))


def synchronize(request: Request) -> Response:
    """POST /sync: `git expegit sync`, from the data layer; a failure is its one line."""
    found = campaign.find(request.app.state.root)
    try:
        report = transaction.retried(lambda: syncing.sync(found))
    except ExpegitError as e:
        return JSONResponse({"ok": False, "error": str(e),
                             "sync": last_sync(found).as_json()}, status_code=409)
    message = (f"synchronized: {report.received} commit(s) received" if report.received
               else "synchronized: nothing new on the remote")
    if report.kept:
        message += f"; kept whole (removed on one side, changed on the other): " \
                   f"{', '.join(report.kept)}"
    return JSONResponse({"ok": True, "message": message,
                         "sync": last_sync(campaign.find(Path(found.root))).as_json()})


routes: list[BaseRoute] = [Route("/", home), Route("/sync", synchronize, methods=["POST"])]
