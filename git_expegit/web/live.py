"""`/events`: server-sent events, one for each execution whose state changed.

Every state change moves a ref: the notes ref (queued, running, finished, failed, reset) or
the branch (an execution created or removed). Each stream reads the two refs from their
files every POLL seconds (refs.read: microseconds, no git process, no pygit2) and, when one
moved, reads the catalog (cached, see catalog.py) and sends what changed since its last look:

    event: execution
    data: {"id": "...", "state": "finished", "exit_code": "0"}     ("removed" when deleted)

    event: counts
    data: {"created": 0, "queued": 2, ..., "total": 7}

The event id is the pair of refs the data was read at: a browser that reconnects (EventSource
does it by itself) sends it back as Last-Event-ID, and when the refs moved in between, it gets
every execution's state once, so that no change is missed. A page's first stream does the
same with `?since=KEY`, the refs its page was read at (`Mark` reads them before the page
reads anything; base.html hands them to live.js): what changed while the page was served
and its scripts loaded is not lost.

uvicorn's graceful shutdown waits for open responses, and tells the application nothing
until they have ended: a stream ends by itself when the server that serves it stops
(`app.state.server.should_exit`: git expegit gui and the tests' server set `app.state.server`)
and after LIFETIME seconds in any case, after which the browser reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.responses import StreamingResponse
from starlette.routing import BaseRoute
from starlette.routing import Route
from starlette.types import ASGIApp
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

from git_expegit import campaign
from git_expegit import catalog
from git_expegit import refs
from git_expegit.errors import ExpegitError

POLL = 0.5  # seconds between two looks at the refs
LIFETIME = 60.0  # seconds a stream lasts at most (then the browser reconnects)
KEEPALIVE = 15.0  # seconds between two comments on a quiet stream (proxies, dead clients)
RETRY_MS = 1000  # how long the browser waits before reconnecting
REMOVED = "removed"

Key = tuple[str | None, str | None]
Snapshot = dict[str, tuple[str, str | None]]  # id -> (state, exit code)


def _key_text(key: Key) -> str:
    return f"{key[0] or '-'}.{key[1] or '-'}"


def _read(root: Path) -> tuple[Snapshot, dict[str, int]]:
    found = campaign.find(root)
    snapshot: Snapshot = {str(e.id): (str(e.state), e.field("exit"))
                          for e in catalog.executions(found)}
    counts = {str(s): 0 for s in catalog.STATES}
    for state, _ in snapshot.values():
        counts[state] += 1
    counts["total"] = len(snapshot)
    return snapshot, counts


def changes(old: Snapshot, new: Snapshot) -> list[dict[str, object]]:
    """What a page must update: executions new, changed, or gone."""
    out: list[dict[str, object]] = [
        {"id": eid, "state": state, "exit_code": code}
        for eid, (state, code) in new.items() if old.get(eid) != (state, code)]
    out += [{"id": eid, "state": REMOVED, "exit_code": None} for eid in old if eid not in new]
    return out


def _message(event: str, data: object, key: Key | None = None) -> str:
    head = f"id: {_key_text(key)}\n" if key is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


class Mark:
    """ASGI middleware: the refs a page is read at, before it reads anything, in
    `request.state.live_key` (templating.render puts it in every page)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "GET"
                and not scope["path"].startswith(("/static/", "/events"))):
            with contextlib.suppress(ExpegitError, OSError):
                root: Path = scope["app"].state.root
                scope.setdefault("state", {})["live_key"] = _key_text(
                    campaign.find(root).tip_and_notes())
        await self.app(scope, receive, send)


def stopping(app: Starlette) -> bool:
    """Whether the server serving `app` is shutting down."""
    server = getattr(app.state, "server", None)
    return bool(getattr(server, "should_exit", False))


async def stream(request: Request) -> AsyncIterator[str]:
    root: Path = request.app.state.root
    here = campaign.find(root)
    key = here.tip_and_notes()
    snapshot, counts = await run_in_threadpool(_read, root)
    yield f"retry: {RETRY_MS}\n" + _message("hello", {"key": _key_text(key)}, key)
    given = request.headers.get("last-event-id") or request.query_params.get("since")
    if given is not None and given != _key_text(key):
        # A reconnection after changes it did not see: every state, once.
        for change in changes({}, snapshot):
            yield _message("execution", change)
        yield _message("counts", counts, key)
    ends = time.monotonic() + LIFETIME
    quiet_since = time.monotonic()
    while time.monotonic() < ends:
        # Short naps, so that a server that stops is heard within one of them.
        for _ in range(5):
            if stopping(request.app):
                return
            await asyncio.sleep(POLL / 5)
        now = here.tip_and_notes()
        if now == key and refs.UNKNOWN not in now:
            if time.monotonic() - quiet_since > KEEPALIVE:
                quiet_since = time.monotonic()
                yield ": keepalive\n\n"
            continue
        quiet_since = time.monotonic()
        try:
            new, counts = await run_in_threadpool(_read, root)
        except ExpegitError:
            continue  # a campaign caught mid-change (a damaged cache is rebuilt): look again
        key = now
        found = changes(snapshot, new)
        snapshot = new
        for change in found:
            yield _message("execution", change)
        if found:
            yield _message("counts", counts, key)
        else:
            yield f"id: {_key_text(key)}\n: nothing changed\n\n"


async def events(request: Request) -> Response:
    return StreamingResponse(stream(request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


routes: list[BaseRoute] = [Route("/events", events)]
