"""Home, live updates, tasks and the new batch form, on a real server in a real Chromium,
with real executions made by the CLI (the web only enqueues; the CLI and the agent run)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from git_expegit import campaign as campaigns
from git_expegit import catalog
from tests.conftest import expegit
from tests.conftest import git
from tests.jobs_test import _commit_run
from tests.web_support import Gui
from tests.web_support import chromium  # noqa: F401  (a fixture)
from tests.web_support import gui  # noqa: F401  (a fixture)
from tests.web_support import page  # noqa: F401  (a fixture)
from tests.web_support import screenshot
from tests.web_support import serve


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue stays as the test left it unless a test starts the agent itself."""
    monkeypatch.setenv("EXPEGIT_AGENT", "off")


def listing(campaign: Path) -> list[catalog.Execution]:
    return catalog.executions(campaigns.find(campaign))


def marked(tab: Any) -> None:
    """A mark that a reload would wipe out: updates must come without one."""
    tab.evaluate("window.notReloaded = true")


def still_marked(tab: Any) -> bool:
    return bool(tab.evaluate("window.notReloaded === true"))


def live(tab: Any) -> None:
    """Wait until the page's event stream is open (live.js marks <html data-live=on>)."""
    tab.wait_for_selector("html[data-live=on]", timeout=10_000)


def collect_events(tab: Any) -> None:
    tab.evaluate("""window.heard = [];
        document.addEventListener('expegit:execution', e => window.heard.push(e.detail));""")


# Home -----------------------------------------------------------------------------------------

def test_home_shows_the_campaign_its_counts_and_a_change_from_the_cli_live(
        campaign: Path, experiment: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    expegit("jobs", "run", "local", "", "a;b", cwd=campaign)
    first, second = listing(campaign)
    page.goto(gui.url("/"))
    assert page.inner_text("h1") == f"Campaign {campaign.name} on experiment expe"
    assert page.inner_text("#experiment-url") == str(experiment)
    assert page.inner_text("#campaign-url") == str(campaign.parent / "campaign.git")
    assert page.inner_text("[data-count=finished]") == "2"
    assert page.inner_text("[data-count=total]") == "2"
    assert "in step with the remote" in page.inner_text("#sync-step")  # jobs run synced
    live(page)
    marked(page)
    collect_events(page)

    expegit("exec", "reset", first.id[:8], cwd=campaign)

    page.wait_for_selector("[data-count=created]:text-is('1')", timeout=10_000)
    assert page.inner_text("[data-count=finished]") == "1"
    assert still_marked(page)
    heard = page.evaluate("window.heard")
    assert {"id": first.id, "state": "created", "exit_code": None} in heard
    assert all(h["id"] != second.id for h in heard)
    screenshot(page, "home")


def test_synchronize_pushes_and_says_so(campaign: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    expegit("exec", "new", "--", "--alone", cwd=campaign)  # committed here, not pushed
    remote = campaign.parent / "campaign.git"
    head = git("rev-parse", "HEAD", cwd=campaign).strip()
    assert git("rev-parse", "main", cwd=remote).strip() != head
    page.goto(gui.url("/"))
    assert "1 commit(s) here not pushed yet" in page.inner_text("#sync-step")
    page.click("#synchronize")
    page.wait_for_selector("#sync-result.ok", timeout=60_000)
    assert page.inner_text("#sync-result").startswith("synchronized")
    assert git("rev-parse", "main", cwd=remote).strip() == head
    assert (git("rev-parse", "refs/notes/expegit", cwd=remote)
            == git("rev-parse", "refs/notes/expegit", cwd=campaign))
    assert "in step with the remote" in page.inner_text("#sync-step")
    assert page.inner_text("#last-sync").startswith("just now")


def test_synchronize_without_a_remote_fails_in_one_line(campaign: Path, gui: Gui) -> None:  # noqa: F811
    git("remote", "remove", "origin", cwd=campaign)
    with httpx.Client() as client:
        client.get(gui.url("/"))
        csrf = client.get(gui.url("/", token=False)).text.split(
            'name="csrf-token" content="')[1].split('"')[0]
        answer = client.post(gui.url("/sync", token=False), headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert "no remote 'origin'" in error and "\n" not in error


# Live ------------------------------------------------------------------------------------------

def test_a_run_started_from_the_cli_shows_running_then_leaves_the_tasks_live(
        campaign: Path, experiment: Path, tmp_path: Path, gui: Gui, page: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = tmp_path / "gate"
    _commit_run(experiment, tmp_path, f"while [ ! -e {gate} ]; do sleep 0.05; done\n")
    expegit("update-expe", cwd=campaign)
    expegit("jobs", "run", "--detach", "local", "", "gated", cwd=campaign)
    [e] = listing(campaign)
    page.goto(gui.url("/tasks"))
    row = f"#queue tr[data-execution='{e.id}']"
    assert page.inner_text(f"{row} [data-field=state]") == "queued"
    live(page)
    marked(page)
    collect_events(page)

    monkeypatch.delenv("EXPEGIT_AGENT")
    expegit("agent", "start", cwd=campaign)
    try:
        page.wait_for_selector(f"#running tr[data-execution='{e.id}'] [data-field=state]"
                               ":text-is('running')", timeout=30_000)
        gate.touch()
        page.wait_for_selector(f"tr[data-execution='{e.id}']", state="detached",
                               timeout=30_000)
    finally:
        gate.touch()
        expegit("agent", "stop", cwd=campaign, check=False)
    assert still_marked(page)
    states = [h["state"] for h in page.evaluate("window.heard") if h["id"] == e.id]
    assert states[0] == "running" and states[-1] == "finished", states
    assert "The queue is empty." in page.inner_text("#queue")


def test_a_live_stream_ends_when_the_server_stops(campaign: Path) -> None:
    with serve(campaign) as served, httpx.Client(timeout=30) as client, client.stream(
            "GET", served.gui.url("/events"), follow_redirects=True) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        started = time.monotonic()
        served.stop()
        assert not served.thread.is_alive() and time.monotonic() - started < 3


def test_the_stream_sends_what_changed_and_a_reconnection_catches_up(
        campaign: Path, gui: Gui) -> None:  # noqa: F811
    expegit("exec", "new", "--", "--one", cwd=campaign)
    [e] = listing(campaign)
    with httpx.Client(timeout=30, follow_redirects=True) as client:
        client.get(gui.url("/"))
        with client.stream("GET", gui.url("/events", token=False)) as stream:
            events = _events(stream.iter_lines())
            hello = next(events)
            assert hello[0] == "hello"
            expegit("exec", "remove", e.id[:8], cwd=campaign)
            kind, data, _ = next(events)
            assert (kind, data) == ("execution", {"id": e.id, "state": "removed",
                                                  "exit_code": None})
            kind, data, key = next(events)
            assert kind == "counts" and data["total"] == 0 and key
        expegit("exec", "new", "--", "--two", cwd=campaign)
        [new] = listing(campaign)
        with client.stream("GET", gui.url("/events", token=False),
                           headers={"Last-Event-ID": key}) as stream:
            events = _events(stream.iter_lines())
            assert next(events)[0] == "hello"
            assert next(events)[:2] == ("execution", {"id": new.id, "state": "created",
                                                      "exit_code": None})


def _events(lines: Any) -> Any:
    """(event, data, id) of each message of a text/event-stream."""
    kind, data, key = "message", "", ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line.startswith("id: "):
            key = line[4:]
        elif line == "" and data:
            yield kind, json.loads(data), key
            kind, data, key = "message", "", ""


# Tasks -----------------------------------------------------------------------------------------

def test_tasks_shows_the_queue_with_profile_and_batch_and_the_agent_status(
        campaign: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    done = expegit("jobs", "run", "--detach", "--name", "sweep-1", "local", "", "--x=1,2",
                   cwd=campaign)
    assert "2 execution(s)" in done.stderr
    queued = listing(campaign)
    page.goto(gui.url("/tasks"))
    rows = page.query_selector_all("#queue tbody tr[data-execution]")
    assert [r.get_attribute("data-execution") for r in rows] == [e.id for e in queued]
    first = rows[0].inner_text()
    assert "queued" in first and "--x=1" in first and "local" in first and "sweep-1" in first
    assert "The agent is not running" in page.inner_text("#agent")
    assert "Nothing runs." in page.inner_text("#running")
    screenshot(page, "tasks")


# The new batch form ----------------------------------------------------------------------------

def test_the_form_creates_exactly_the_previewed_executions_and_enter_creates_nothing(
        campaign: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.goto(gui.url("/batches/new"))
    pinned = git("rev-parse", "HEAD:xprp", cwd=campaign).strip()
    assert page.input_value("#commit") == pinned
    assert page.input_value("#profile") == "local"

    page.fill("#expression", "--lr=0.1,0.01 --seed=range(3)")
    page.fill("#repetitions", "2")
    page.wait_for_selector("#preview-count:text-is('12 executions')")
    previewed = page.eval_on_selector_all("#preview-list li",
                                          "items => items.map(i => i.innerText)")
    assert len(previewed) == 12 and previewed[:2] == ["--lr=0.1 --seed=0"] * 2
    assert page.is_enabled("#create")

    for field in ("#expression", "#repetitions", "#name"):
        page.focus(field)
        page.keyboard.press("Enter")
    page.wait_for_timeout(500)  # time enough for a submission, were there one
    assert posts == [] and listing(campaign) == []
    assert page.input_value("#expression") == "--lr=0.1,0.01 --seed=range(3)"  # no line break
    screenshot(page, "batch_new")

    page.fill("#expression", "--lr=0.1,0.01 --seed=range(")
    page.wait_for_selector("#preview-error:not([hidden])")
    assert "bad parameter expression" in page.inner_text("#preview-error")
    assert page.is_disabled("#create")
    page.fill("#expression", "--lr=0.1,0.01 --seed=range(3)")
    page.wait_for_selector("#preview-count:text-is('12 executions')")
    page.click("#create")
    page.wait_for_selector("#create-result.ok")
    assert "12 execution(s) queued" in page.inner_text("#create-result")

    created = listing(campaign)
    assert [e.parameters for e in created] == previewed
    assert {(str(e.state), e.commit, e.profile) for e in created} == {
        ("queued", pinned, "local")}


def test_the_form_refuses_a_bad_profile_or_commit_in_one_line_and_creates_nothing(
        campaign: Path, gui: Gui) -> None:  # noqa: F811
    with httpx.Client() as client:
        client.get(gui.url("/"))
        csrf = client.get(gui.url("/", token=False)).text.split(
            'name="csrf-token" content="')[1].split('"')[0]
        preview = client.get(gui.url("/batches/preview", token=False),
                             params={"expression": "a;b", "repetitions": "0"})
        assert preview.status_code == 422 and "repetitions" in preview.json()["error"]
        for body, words in (({"profile": "nowhere"}, "unknown profile"),
                            ({"commit": "0badc0de"}, "unknown experiment commit")):
            answer = client.post(gui.url("/batches", token=False),
                                 headers={"X-CSRF-Token": csrf},
                                 json={"commit": "", "profile": "local", "repetitions": 1,
                                       "expression": "a;b", **body})
            assert answer.status_code == 422 and words in answer.json()["error"]
            assert "\n" not in answer.json()["error"]
    assert listing(campaign) == []
