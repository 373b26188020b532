"""The web interface attacked as a new user and as an adversary would: each test here failed
before its fix (the guard's redirect, gui's binding, a wildcard bind's Host check, the live
executions table, the changes made between a page and its event stream)."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from git_expegit import campaign as campaigns
from git_expegit import catalog
from tests.conftest import expegit
from tests.conftest import until
from tests.web_support import Gui
from tests.web_support import chromium  # noqa: F401  (a fixture)
from tests.web_support import free_port
from tests.web_support import gui  # noqa: F401  (a fixture)
from tests.web_support import page  # noqa: F401  (a fixture)
from tests.web_support import serve


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPEGIT_AGENT", "off")


_poll = functools.partial(until, timeout=30)


def _listing(root: Path) -> list[catalog.Execution]:
    return catalog.executions(campaigns.find(root))


# The guard -------------------------------------------------------------------------------------

def test_the_token_redirect_keeps_the_address_and_never_leaves_the_server(
        campaign: Path, gui: Gui) -> None:  # noqa: F811
    def location(path: str) -> str:
        answer = httpx.get(gui.url(path))
        assert answer.status_code == 303
        return str(answer.headers["location"])

    # An encoded '&', '#' or '=' in a value stays one value: the filter is what was asked.
    assert location("/executions?q=a%26state%3Dfailed") == "/executions?q=a%26state%3Dfailed"
    assert location("/executions?q=%23x&page=2") == "/executions?q=%23x&page=2"
    # `//host/` is a scheme-relative URL: the browser would leave for another server.
    assert not location("//evil.example/").startswith("//")


@pytest.fixture
def wildcard(campaign: Path) -> Iterator[tuple[int, str]]:
    """The app as `gui --host 0.0.0.0` makes it, served on loopback only (the requests
    below name other hosts in their Host header; they all go to 127.0.0.1)."""
    with serve(campaign, "0.0.0.0") as served:
        yield served.port, served.gui.token


def test_a_wildcard_bind_accepts_the_machines_names_and_addresses_not_other_names(
        wildcard: tuple[int, str]) -> None:
    port, token = wildcard

    def status(host: str) -> int:
        return httpx.get(f"http://127.0.0.1:{port}/?token={token}",
                         headers={"Host": host}).status_code

    # Another machine reaches it by this machine's address or name: that is why it binds
    # 0.0.0.0. A DNS-rebinding page only ever has its own name, never an address.
    for host in (f"192.0.2.7:{port}", f"[fd00::2]:{port}", f"{socket.gethostname()}:{port}",
                 f"127.0.0.1:{port}", f"localhost:{port}"):
        assert status(host) == 303, host
    for host in (f"evil.example:{port}", "192.0.2.7:1", f"192.0.2.7.evil.example:{port}",
                 f"{port}", f"[fd00::2]evil:{port}"):
        assert status(host) == 403, host


# git expegit gui -------------------------------------------------------------------------------

def test_gui_on_a_port_in_use_says_so_in_one_line_and_prints_no_url(campaign: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(["git", "expegit", "gui", f"--port={port}"], cwd=campaign,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "token=" not in done.stdout  # a URL for a server that is not there: no
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("expegit: "), done.stderr
    assert str(port) in done.stderr


def test_gui_serves_once_bound_and_stops_on_ctrl_c(campaign: Path) -> None:
    port = free_port()
    server = subprocess.Popen(["git", "expegit", "gui", f"--port={port}"], cwd=campaign,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[-1]
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        with httpx.Client(timeout=30, follow_redirects=True) as client:
            assert client.get(url).status_code == 200
            with client.stream("GET", f"http://127.0.0.1:{port}/events") as stream:
                assert next(stream.iter_lines()).startswith("retry:")
                started = time.monotonic()
                os.killpg(server.pid, signal.SIGINT)  # Ctrl-C, with a live stream open
                server.wait(10)
                assert time.monotonic() - started < 5
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# Live ----------------------------------------------------------------------------------------

def _row_state(tab: Any, eid: str) -> str:
    return str(tab.inner_text(f'tr[data-id="{eid}"] .pill'))


def test_the_executions_table_and_report_show_state_changes_live(
        campaign: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    expegit("jobs", "run", "local", "", "a;b", cwd=campaign)
    first, second = _listing(campaign)
    page.goto(gui.url("/executions"))
    page.wait_for_selector("html[data-live=on]", timeout=10_000)
    page.evaluate("window.notReloaded = true")
    assert _row_state(page, first.id) == "finished"

    expegit("exec", "reset", first.id[:8], cwd=campaign)
    _poll(lambda: _row_state(page, first.id) == "created", "the row shows the new state")
    assert "out-created" in str(page.get_attribute(f'tr[data-id="{first.id}"]', "class"))
    expegit("exec", "remove", second.id[:8], cwd=campaign)
    _poll(lambda: _row_state(page, second.id) == "removed", "the row shows its removal")
    assert page.evaluate("window.notReloaded === true")

    page.goto(gui.url(f"/executions/{first.id}"))
    page.wait_for_selector("html[data-live=on]", timeout=10_000)
    expegit("exec", "remove", first.id[:8], cwd=campaign)
    _poll(lambda: page.inner_text(".ex-head .pill") == "removed", "the report's state")


def test_a_change_made_while_the_page_opens_its_stream_is_not_lost(
        campaign: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    expegit("jobs", "run", "local", "", "a", cwd=campaign)
    [e] = _listing(campaign)
    held: list[Any] = []
    # The page is served; its event stream waits (as it does while scripts load) and a run
    # changes state meanwhile: the stream must still tell the page.
    page.route("**/events*", lambda route: held.append(route))
    page.goto(gui.url("/executions"))
    deadline = time.monotonic() + 10
    while not held:  # Playwright calls the handler while the page is waited on
        assert time.monotonic() < deadline, "the page never asked for its stream"
        page.wait_for_timeout(50)
    expegit("exec", "reset", e.id[:8], cwd=campaign)
    held[0].continue_()
    page.wait_for_selector("html[data-live=on]", timeout=10_000)
    _poll(lambda: _row_state(page, e.id) == "created", "the change made meanwhile")
