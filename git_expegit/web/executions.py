"""/executions: the table of executions (paged, sorted and filtered on the server), one
execution's report, its files, and reschedule and delete.

The table is read from the catalog (catalog.executions), which answers from its cache
when the refs have not moved. Turning 10,000 executions into rows (state, batch, host,
exit code... each parsed from the note) costs more than reading them, so rows are kept
here too, keyed like the catalog's cache by the ids of the branch tip and the notes
commit, and per execution by its record: when the notes move, only the executions whose
note changed are parsed again. A page then filters, sorts and slices rows in memory.

Files written by experiment code are served from the execution's folder only (no `..`,
no symlink out of it) and under `Content-Security-Policy: sandbox`: an SVG or HTML result
opened from a link runs no script in the interface's origin.
"""

from __future__ import annotations

import contextlib
import datetime
import mimetypes
import os
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Route

from git_expegit import campaign as campaigns
from git_expegit import catalog
from git_expegit import queue
from git_expegit import record
from git_expegit import refs
from git_expegit import runner
from git_expegit.agent import control
from git_expegit.campaign import Campaign
from git_expegit.catalog import Execution
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.web.templating import render

PER_PAGE = 50
MAX_PER_PAGE = 500
COLUMNS = ("id", "state", "batch", "parameters", "commit", "profile", "host", "date",
           "duration", "exit")
IMAGES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
MAX_FILES = 2000  # listed on a report; a data/ with more is cut, and says so
MAX_LOG = 256 * 1024  # bytes of stdout/stderr shown on a report (the end); the rest: download
# Every file of an execution is served with this: no script, no plugin, no form, an
# opaque origin (sandbox); images and styles of an SVG or HTML result still show.
FILE_POLICY = ("sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
               "media-src 'self'")
# The interface's own pages: only its own scripts and styles, in no frame.
PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")


# Rows -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    id: str
    state: str
    batch: str | None
    parameters: str
    commit: str
    profile: str | None
    host: str | None
    created: str  # its creation's timestamp (UTC, to the microsecond)
    duration: float | None  # seconds of its last run
    exit: str | None

    @property
    def date(self) -> str:
        """When it was created, to the second: "2026-11-30 12:38:28" (UTC)."""
        return self.created[:19].replace("T", " ")

    @property
    def outcome(self) -> str:
        """The colour of its row: its state, with a finished run's exit code deciding."""
        return "failed" if self.state == "finished" and self.exit not in (None, "0") \
            else self.state


def row(execution: Execution) -> Row:
    created = next((e for e in record.events(execution.log) if e.kind == "created"), None)
    return Row(execution.id, str(execution.state), queue.batch_of(execution),
               execution.parameters, execution.commit, queue.profile_of(execution),
               execution.field("host"), created.stamp if created else "",
               _seconds(execution.field("duration")), execution.field("exit"))


def _seconds(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.1f} s"
    return str(datetime.timedelta(seconds=whole))


class _Rows:
    """The rows of one campaign, as of the refs they were read at."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key: tuple[str | None, str | None] | None = None
        self.rows: list[Row] = []
        self.by_execution: dict[str, tuple[Execution, Row]] = {}
        self.sorted: dict[tuple[str, bool], list[Row]] = {}

    def current(self, found: Campaign) -> list[Row]:
        key = found.tip_and_notes()
        cacheable = refs.UNKNOWN not in key
        with self.lock:
            if cacheable and key == self.key:
                return self.rows
            every = catalog.executions(found)
            before, self.by_execution = self.by_execution, {}
            for execution in every:
                known = before.get(execution.id)
                made = known[1] if known is not None and known[0] == execution \
                    else row(execution)
                self.by_execution[execution.id] = (execution, made)
            self.rows = [self.by_execution[e.id][1] for e in every]
            self.key = key if cacheable else None
            self.sorted = {}
            return self.rows

    def ordered(self, found: Campaign, column: str, descending: bool) -> list[Row]:
        rows = self.current(found)
        with self.lock:
            if rows is self.rows and (column, descending) in self.sorted:
                return self.sorted[(column, descending)]
        done = _sort(rows, column, descending)
        with self.lock:
            if rows is self.rows:
                self.sorted[(column, descending)] = done
        return done


_CACHES: dict[Path, _Rows] = {}
_CACHES_LOCK = threading.Lock()


def _cache(root: Path) -> _Rows:
    with _CACHES_LOCK:
        return _CACHES.setdefault(root, _Rows())


def _sort(rows: list[Row], column: str, descending: bool) -> list[Row]:
    """Equal keys in creation order, ascending; newest first, descending. Empty values go
    last either way."""
    key = _SORT_KEYS[column]
    present = sorted((r for r in rows if key(r) is not None), key=key)
    missing = [r for r in rows if key(r) is None]
    return (present[::-1] if descending else present) + missing


def _exit_key(r: Row) -> tuple[int, str] | None:
    if r.exit is None:
        return None
    return (int(r.exit), "") if r.exit.lstrip("-").isdigit() else (1 << 30, r.exit)


_SORT_KEYS: dict[str, Callable[[Row], Any]] = {
    "id": lambda r: r.id, "state": lambda r: r.state, "batch": lambda r: r.batch,
    "parameters": lambda r: r.parameters, "commit": lambda r: r.commit,
    "profile": lambda r: r.profile, "host": lambda r: r.host, "date": lambda r: r.created or None,
    "duration": lambda r: r.duration, "exit": _exit_key}


@dataclass(frozen=True)
class Query:
    page: int = 1
    per: int = PER_PAGE
    sort: str = "date"
    desc: bool = True
    state: str = ""
    text: str = ""

    @classmethod
    def of(cls, request: Request) -> Query:
        """What the address asks for; a value that makes no sense is its default."""
        given = request.query_params
        sort = given.get("sort", "date")
        sort = sort if sort in COLUMNS else "date"
        state = given.get("state", "")
        return cls(page=_int(given.get("page"), 1, 1, 10**9),
                   per=_int(given.get("per"), PER_PAGE, 1, MAX_PER_PAGE), sort=sort,
                   desc=given.get("desc", "1" if sort == "date" else "0") == "1",
                   state=state if state in catalog.STATES else "",
                   text=given.get("q", "").strip()[:200])

    def link(self, **changes: object) -> str:
        """The address of this view with `changes` (page=, sort=...)."""
        values = {"page": self.page, "per": self.per, "sort": self.sort,
                  "desc": int(self.desc), "state": self.state, "q": self.text}
        values.update(changes)
        if "desc" in changes:
            values["desc"] = int(bool(changes["desc"]))
        kept = {k: v for k, v in values.items()
                if v not in ("", None) and not (k == "per" and v == PER_PAGE)}
        return "/executions?" + urllib.parse.urlencode(kept)

    def matches(self, r: Row) -> bool:
        if self.state and r.state != self.state:
            return False
        if not self.text:
            return True
        text = self.text.lower()
        return (text in r.parameters.lower() or r.id.startswith(text)
                or (r.batch is not None and text in r.batch.lower()))


def _int(text: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(text or default), low), high)
    except ValueError:
        return default


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    matching: int  # rows that pass the filters
    total: int  # every execution
    page: int
    pages: int
    first: int  # 1-based number of the first row shown


def page_of(found: Campaign, query: Query) -> tuple[Page, dict[str, int]]:
    """One page of the table, and the count of executions per state."""
    cache = _cache(found.root)
    ordered = cache.ordered(found, query.sort, query.desc)
    chosen = ordered if not (query.state or query.text) else \
        [r for r in ordered if query.matches(r)]
    pages = max(1, -(-len(chosen) // query.per))
    number = min(query.page, pages)
    start = (number - 1) * query.per
    counts: dict[str, int] = {}
    for r in ordered:
        counts[r.state] = counts.get(r.state, 0) + 1
    return Page(chosen[start:start + query.per], len(chosen), len(ordered), number, pages,
                start + 1), counts


# Pages ----------------------------------------------------------------------------------------

def _campaign(request: Request) -> Campaign:
    return campaigns.find(request.app.state.root)


def table(request: Request) -> Response:
    found = _campaign(request)
    query = Query.of(request)
    shown, counts = page_of(found, query)
    response = render(request, "executions.html", query=query, page=shown, counts=counts,
                      states=catalog.STATES, columns=_HEADERS, duration=duration,
                      profiles=runner.profile_names(found),
                      per_choices=sorted({25, 50, 100, 250, query.per}))
    return _guarded(response)


_HEADERS = (("id", "Id"), ("state", "State"), ("batch", "Batch"),
            ("parameters", "Parameters"), ("commit", "Commit"), ("profile", "Profile"),
            ("host", "Host"), ("date", "Date (UTC)"), ("duration", "Duration"),
            ("exit", "Exit"))


def _guarded(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _resolve(found: Campaign, prefix: str) -> Execution:
    try:
        return catalog.resolve(found, prefix, found.root)
    except ExpegitError as e:
        raise HTTPException(404, str(e)) from None


@dataclass(frozen=True)
class Listed:
    path: str  # relative to the execution's folder
    size: int

    @property
    def quoted(self) -> str:
        return urllib.parse.quote(self.path)


def report(request: Request) -> Response:
    found = _campaign(request)
    try:
        execution = catalog.resolve(found, request.path_params["prefix"], found.root)
    except ExpegitError as e:
        return _guarded(render(request, "execution_missing.html", status=404,
                               message=str(e)))
    base = found.root / execution.folder
    listed, cut = _listing(base)
    images = [f for f in listed if f.path.startswith("data/")
              and f.path.lower().endswith(IMAGES)]
    others = [f for f in listed if f not in images]
    logs = {name: _log(base / name) for name in ("stdout", "stderr")}
    response = render(request, "execution.html", e=execution, r=row(execution),
                      events=record.events(execution.log), images=images, files=others,
                      cut=cut, logs=logs, duration=duration,
                      commit_url=commit_url(experiment_url(found), execution.commit),
                      profiles=runner.profile_names(found))
    return _guarded(response)


def _listing(base: Path) -> tuple[list[Listed], bool]:
    """The files of an execution's folder that are results: data/ (symlinks listed as
    they are: serving them checks where they lead) and the logs; at most MAX_FILES."""
    found: list[Listed] = []
    for name in ("stdout", "stderr", "environment.txt"):
        with contextlib.suppress(OSError):  # gone meanwhile
            found.append(Listed(name, (base / name).stat().st_size))
    if (base / "data").is_symlink():
        return found, False  # its names are not the execution's: nothing is served there
    for here, folders, files in os.walk(base / "data"):
        folders.sort()
        for name in sorted(files):
            path = Path(here) / name
            relative = path.relative_to(base).as_posix()
            if relative == "data/lfs/.gitattributes":
                continue  # expegit's own
            with contextlib.suppress(OSError):  # gone meanwhile
                found.append(Listed(relative, path.lstat().st_size))
            if len(found) > MAX_FILES:
                return found[:MAX_FILES], True
    return found, False


@dataclass(frozen=True)
class Log:
    text: str
    size: int
    cut: int  # bytes not shown (the start)


def _log(path: Path) -> Log | None:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - MAX_LOG))
            data = f.read(MAX_LOG)
    except OSError:
        return None
    return Log(data.decode(errors="replace"), size, max(0, size - MAX_LOG))


def experiment_url(found: Campaign) -> str | None:
    """The experiment's remote as the campaign's settings name it."""
    import yaml

    try:
        settings = yaml.safe_load((found.root / campaigns.CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    value = settings.get("experiment") if isinstance(settings, dict) else None
    return value if isinstance(value, str) else None


_FORGES = re.compile(r"(^|\.)(github|gitlab|bitbucket|codeberg|gitea|sourcehut|sr\.ht)\b")
_SCP = re.compile(r"^(?:[\w.-]+@)?(?P<host>[\w.-]+):(?P<path>(?!/)[\w./~-]+)$")


def commit_url(remote: str | None, commit: str) -> str | None:
    """The page of `commit` on the experiment's forge: https remotes, and ssh remotes of
    GitHub/GitLab-like hosts; None for a local path or anything else."""
    if not remote or not re.fullmatch(r"[0-9a-f]{4,64}", commit):
        return None
    remote = remote.strip()
    parsed = urllib.parse.urlsplit(remote)
    if parsed.scheme in ("https", "http") and parsed.hostname:
        host, path = parsed.hostname + (f":{parsed.port}" if parsed.port else ""), parsed.path
        scheme = parsed.scheme
    elif parsed.scheme in ("ssh", "git", "git+ssh") and parsed.hostname \
            and _FORGES.search(parsed.hostname):
        host, path, scheme = parsed.hostname, parsed.path, "https"
    elif (scp := _SCP.match(remote)) and _FORGES.search(scp["host"]):
        host, path, scheme = scp["host"], "/" + scp["path"], "https"
    else:
        return None
    path = path.rstrip("/").removesuffix(".git").rstrip("/")
    if not path.strip("/"):
        return None
    return f"{scheme}://{host}{urllib.parse.quote(path)}/tree/{commit}"


# Files ----------------------------------------------------------------------------------------

def base_of(found: Campaign, execution: Execution) -> Path:
    return (found.root / execution.folder).resolve()


def served(found: Campaign, execution: Execution, relative: str) -> Path:
    """The file `relative` of the execution's folder, real path; 404 for a path that does
    not name one, 403 for one that leads out of the folder (`..`, a symlink out)."""
    parts = relative.split("/")
    if (not relative or relative.startswith("/") or "\x00" in relative
            or any(part in ("", ".", "..") for part in parts)):
        raise HTTPException(404, "no such file")
    excs = (found.root / campaigns.EXECUTIONS).resolve()
    base = base_of(found, execution)
    if not base.is_relative_to(excs):
        raise HTTPException(403, "the execution's folder leads out of the campaign")
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise HTTPException(403, "this path leads out of the execution's folder")
    if not target.is_file():
        raise HTTPException(404, "no such file")
    return target


def file(request: Request) -> Response:
    found = _campaign(request)
    execution = _resolve(found, request.path_params["prefix"])
    path = served(found, execution, request.path_params["path"])
    kind = ("text/plain" if path.name in ("stdout", "stderr") and path.parent == base_of(
        found, execution) else mimetypes.guess_type(path.name)[0] or "application/octet-stream")
    if kind.startswith("text/"):
        kind += "; charset=utf-8"
    download = request.query_params.get("download") == "1"
    return FileResponse(path, media_type=kind, filename=path.name,
                        content_disposition_type="attachment" if download else "inline",
                        headers={"Content-Security-Policy": FILE_POLICY,
                                 "X-Content-Type-Options": "nosniff",
                                 "Cross-Origin-Resource-Policy": "same-origin",
                                 "Referrer-Policy": "no-referrer"})


# Actions --------------------------------------------------------------------------------------

def _chosen(found: Campaign, body: object) -> list[Execution]:
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ExpegitError("select at least one execution", ExitCode.INPUT)
    every = catalog.executions(found)
    chosen: dict[str, Execution] = {}
    for prefix in ids:
        execution = catalog.resolve_in(every, prefix)
        chosen.setdefault(execution.id, execution)
    return list(chosen.values())


async def _body(request: Request) -> object:
    try:
        return await request.json()
    except ValueError:
        return None


async def reschedule(request: Request) -> Response:
    body = await _body(request)
    return await _in_thread(request, lambda found: _reschedule(found, body))


def _reschedule(found: Campaign, body: object) -> dict[str, object]:
    """As jobs reschedule: the profile checked first, then one transaction; then the
    agent (which runs the queue) is started if it is not running."""
    chosen = _chosen(found, body)
    profile = body.get("profile") if isinstance(body, dict) else None
    profile = profile if isinstance(profile, str) and profile.strip() else None
    if profile is not None:
        runner.check_profile(found, profile)
    done = queue.reschedule(found, chosen, profile)
    control.ensure_running(found)
    return {"rescheduled": len(done), "ids": done}


async def delete(request: Request) -> Response:
    body = await _body(request)
    return await _in_thread(request, lambda found: _delete(found, body))


def _delete(found: Campaign, body: object) -> dict[str, object]:
    """As jobs delete: runs under way are stopped, then the folders removed."""
    chosen = _chosen(found, body)
    runner.delete(found, chosen)
    return {"deleted": len(chosen), "ids": [e.id for e in chosen]}


async def _in_thread(request: Request,
                     work: Callable[[Campaign], dict[str, object]]) -> Response:
    """A data-layer write, off the event loop; an ExpegitError is the page's message."""
    from starlette.concurrency import run_in_threadpool

    def run() -> Response:
        try:
            return JSONResponse(work(_campaign(request)))
        except ExpegitError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    return await run_in_threadpool(run)


routes: list[BaseRoute] = [
    Route("/executions", table, methods=["GET"]),
    Route("/executions/reschedule", reschedule, methods=["POST"]),
    Route("/executions/delete", delete, methods=["POST"]),
    Route("/executions/{prefix}", report, methods=["GET"]),
    Route("/executions/{prefix}/files/{path:path}", file, methods=["GET"]),
]
