"""The web interface under test: a real uvicorn server on a free port, and a real Chromium
driven by Playwright (Debian's /usr/bin/chromium: Playwright cannot download one here).

    def test_x(campaign, gui, page):
        page.goto(gui.url("/executions"))   # the token is in the first URL, then a cookie
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import until

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-dev-shm-usage"]
ARTIFACTS = Path(os.environ.get("EXPEGIT_TEST_ARTIFACTS", "test-artifacts"))


@dataclasses.dataclass(frozen=True)
class Gui:
    base: str  # http://127.0.0.1:PORT
    token: str

    def url(self, path: str = "/", token: bool = True) -> str:
        joiner = "&" if "?" in path else "?"
        return f"{self.base}{path}{joiner}token={self.token}" if token else self.base + path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Served:
    gui: Gui
    port: int
    server: Any  # uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def serve(campaign: Path, bound: str = "127.0.0.1") -> Iterator[Served]:
    """`git expegit gui`'s app for `campaign`, as `gui --host BOUND` makes it, served by
    uvicorn in a thread on loopback."""
    import uvicorn

    from git_expegit.web import app
    from git_expegit.web import security

    port = free_port()
    token = security.new_token()
    application = app.create_app(campaign, token, security.allowed_hosts(bound, port))
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port,
                                           log_level="warning"))
    application.state.server = server  # live streams end when it stops (web/live.py)
    served = Served(Gui(f"http://127.0.0.1:{port}", token), port, server,
                    threading.Thread(target=server.run, daemon=True))
    served.thread.start()
    try:
        until(lambda: server.started, "the server to start", 10, every=0.02)
        yield served
    finally:
        served.stop()


@pytest.fixture
def gui(campaign: Path) -> Iterator[Gui]:
    with serve(campaign) as served:
        yield served.gui


@pytest.fixture
def chromium() -> Iterator[Any]:
    # One browser per test: Playwright's sync API keeps an event loop running in this thread
    # while it is open, and other tests call asyncio.run() between browser tests.
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/services.sh installs chromium")
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS,
                                             headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()


def screenshot(page: Any, name: str) -> Path:
    """A test artifact: look at it."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
