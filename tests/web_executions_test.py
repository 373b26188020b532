"""The executions pages on a real server, in a real Chromium, over real campaigns whose
executions really ran: the table (paging, sorting, filtering, selection, reschedule and
delete), an execution's report (figures, logs, files) and its files, served so that what
an experiment wrote cannot run script in the interface's origin."""

from __future__ import annotations

import base64
import functools
import re
import socket
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from git_expegit import campaign as campaigns
from git_expegit import catalog
from git_expegit import queue
from git_expegit.catalog import Execution
from git_expegit.web import security
from git_expegit.web.executions import commit_url
from tests.conftest import expegit
from tests.conftest import git
from tests.conftest import until
from tests.conftest import write_profile
from tests.web_support import Gui
from tests.web_support import chromium  # noqa: F401  (a fixture)
from tests.web_support import gui  # noqa: F401  (a fixture)
from tests.web_support import page  # noqa: F401  (a fixture)
from tests.web_support import screenshot

# Each payload, if it ran, would set window.xss or open a dialog.
PARAMETERS = "--p=<script>window.xss=1</script> --q=<img src=x onerror=window.xss=2>"
SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="160" height="90" viewBox="0 0 160 90">'
       '<rect width="160" height="90" fill="#2458d6"/><circle cx="80" cy="45" r="30" '
       'fill="#fff"/><script>document.documentElement.setAttribute("data-ran", "yes");'
       'alert("svg")</script></svg>')
HTML = ('<!doctype html><title>result</title><p>hello</p><script>'
        'document.title = "ran"; alert("html")</script>')


def _png(width: int = 48, height: int = 32) -> bytes:
    """A real PNG, small: an orange rectangle."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    rows = b"".join(b"\x00" + bytes([230, 120, 40]) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                               0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


RUN = f"""#!/bin/sh
# Figures, a JSON result, an HTML page, a link, and hostile output.
mkdir -p data/figures
echo '{base64.b64encode(_png()).decode()}' | base64 -d > data/figures/plot.png
cat > data/diagram.svg <<'SVG'
{SVG}
SVG
cat > data/page.html <<'HTML'
{HTML}
HTML
echo '{{"loss": 0.25}}' > data/result.json
ln -s figures/plot.png data/same.png
echo "args: $@"
echo '<script>window.xss=3</script><img src=x onerror="alert(4)">'
echo '<script>alert(5)</script>' >&2
test "$1" = bad && exit 3
exit 0
"""


def _commit_run(experiment: Path, tmp_path: Path, body: str) -> None:
    """Replace the experiment's run script and push it (as tests/jobs_test.py does)."""
    work = tmp_path / "expe-work"
    if not work.exists():
        git("clone", "-q", str(experiment), str(work), cwd=tmp_path)
    (work / "run").write_text(body)
    (work / "run").chmod(0o755)
    git("commit", "-qam", "new run", cwd=work)
    git("push", "-q", "origin", "HEAD", cwd=work)


@pytest.fixture
def results(campaign: Path, experiment: Path, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    """The campaign, with the run above pinned and run once with hostile parameters."""
    monkeypatch.setenv("EXPEGIT_AGENT", "off")
    _commit_run(experiment, tmp_path, RUN)
    expegit("update-expe", cwd=campaign)
    expegit("jobs", "run", "local", "", PARAMETERS, cwd=campaign)
    return campaign


def _executions(root: Path) -> list[Execution]:
    return catalog.executions(campaigns.find(root))


def _client(gui: Gui) -> httpx.Client:  # noqa: F811
    client = httpx.Client(base_url=gui.base)
    client.cookies.set(security.COOKIE, gui.token)  # as the first page with ?token= sets it
    return client


def _watch(page: Any) -> list[str]:  # noqa: F811
    """Every dialog the page opens: recorded, then dismissed."""
    dialogs: list[str] = []

    def seen(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()
    page.on("dialog", seen)
    return dialogs


_until = functools.partial(until, timeout=30, every=0.1)


# The report ----------------------------------------------------------------------------------

def test_the_report_renders_its_figures_logs_and_files_and_no_payload_runs(
        results: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    [e] = _executions(results)
    dialogs = _watch(page)
    page.goto(gui.url(f"/executions/{e.id[:6]}"))  # any unique prefix
    page.wait_for_load_state("load")
    images = page.locator(".ex-figures img")
    assert sorted(images.evaluate_all("all => all.map(i => i.getAttribute('alt'))")) == [
        "data/diagram.svg", "data/figures/plot.png", "data/same.png"]
    for alt in ("data/figures/plot.png", "data/diagram.svg"):
        image = page.locator(f'.ex-figures img[alt="{alt}"]')
        image.scroll_into_view_if_needed()
        page.wait_for_function("i => i.complete", arg=image.element_handle())
        assert image.evaluate("i => i.naturalWidth") > 0, alt
    # The logs are text: what the run printed shows, and nothing of it ran.
    stdout = page.locator("#ex-stdout")
    assert "<script>window.xss=3</script>" in stdout.inner_text()
    assert '<img src=x onerror="alert(4)">' in stdout.inner_text()
    assert "<script>alert(5)</script>" in page.locator("#ex-stderr").inner_text()
    assert stdout.locator("script, img").count() == 0
    assert PARAMETERS in page.locator(".ex-settings").inner_text()
    files = page.locator(".ex-files").inner_text()
    for name in ("stdout", "stderr", "data/result.json", "data/page.html"):
        assert name in files
    assert page.locator('.ex-files a[href$="data/result.json?download=1"]').count() == 1
    # The commit of a local experiment has no web page: it is plain text.
    assert page.locator(".ex-settings a[href*='/tree/']").count() == 0
    assert e.commit in page.locator(".ex-settings").inner_text()
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert page.evaluate("typeof window.xss") == "undefined" and dialogs == []
    screenshot(page, "execution-report")


def test_an_unknown_execution_is_a_404_page(campaign: Path, gui: Gui) -> None:  # noqa: F811
    with _client(gui) as client:
        answer = client.get("/executions/0123abcd")
        assert answer.status_code == 404 and "no execution" in answer.text
        assert client.get("/executions/0123abcd/files/stdout").status_code == 404


def test_the_commit_links_to_the_forge_only_for_web_remotes() -> None:
    sha = "f5f899967699a8675d323d3e7aea2d342c240806"
    assert commit_url("https://github.com/ada/expe.git", sha) == \
        f"https://github.com/ada/expe/tree/{sha}"
    assert commit_url("git@github.com:ada/expe.git", sha) == \
        f"https://github.com/ada/expe/tree/{sha}"
    assert commit_url("ssh://git@gitlab.inria.fr/team/expe", sha) == \
        f"https://gitlab.inria.fr/team/expe/tree/{sha}"
    assert commit_url("https://user:secret@git.example.org/x/y", sha) == \
        f"https://git.example.org/x/y/tree/{sha}"
    for plain in ("/tmp/expe.git", "file:///tmp/expe.git", "host:expe.git",
                  "javascript:alert(1)//github.com", "ssh://cluster/srv/expe.git", None):
        assert commit_url(plain, sha) is None, plain


def test_the_commit_links_to_the_experiment_web_address(
        results: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    config = results / ".expegit.yml"
    config.write_text(config.read_text().replace(
        next(line for line in config.read_text().splitlines()
             if line.startswith("experiment:")), "experiment: git@github.com:ada/expe.git"))
    [e] = _executions(results)
    page.goto(gui.url(f"/executions/{e.id}"))
    link = page.locator(".ex-settings a", has_text=e.commit)
    assert link.get_attribute("href") == f"https://github.com/ada/expe/tree/{e.commit}"


# Files ----------------------------------------------------------------------------------------

def _raw_get(gui: Gui, path: str) -> int:  # noqa: F811
    """The status of a GET whose path is sent byte for byte (no client normalises it)."""
    host = gui.base.removeprefix("http://")
    with socket.create_connection(tuple(host.split(":"))) as s:  # type: ignore[arg-type]
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: expegit_token="
                  f"{gui.token}\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(4096).decode(errors="replace")
    return int(head.split()[1])


def test_files_are_served_sandboxed_and_never_from_outside_the_folder(
        results: Path, gui: Gui) -> None:  # noqa: F811
    [e] = _executions(results)
    files = f"/executions/{e.id}/files"
    # runaway refuses to fetch links out of the folder; a hand or a checkout can make them.
    (results / e.folder / "data" / "passwd").symlink_to("/etc/passwd")
    (results / e.folder / "data" / "campaign").symlink_to("../../../..")
    with _client(gui) as client:
        served = client.get(f"{files}/data/result.json")
        assert served.status_code == 200 and served.json() == {"loss": 0.25}
        for name in ("data/result.json", "data/diagram.svg", "stdout"):
            headers = client.get(f"{files}/{name}").headers
            assert headers["content-security-policy"].startswith("sandbox;"), name
            assert "default-src 'none'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
        assert client.get(f"{files}/data/same.png").content == _png()  # a link inside: served
        download = client.get(f"{files}/data/result.json?download=1")
        assert download.headers["content-disposition"].startswith("attachment")
        # Links out of the folder: refused.
        assert client.get(f"{files}/data/passwd").status_code == 403
        assert client.get(f"{files}/data/campaign/.expegit.yml").status_code == 403
        assert client.get(f"{files}/data/nothing.txt").status_code == 404
        assert client.get(f"{files}/").status_code == 404
    # `..`, encoded or not, and absolute paths, sent as they are.
    for path in (f"{files}/../../../../.expegit.yml", f"{files}/%2e%2e/%2e%2e/x",
                 f"{files}/data/..%2f..%2f..%2f..%2f.expegit.yml", f"{files}//etc/passwd",
                 f"{files}/%2fetc%2fpasswd", f"{files}/data/%2e%2e/stdout"):
        status = _raw_get(gui, path)
        assert status in (403, 404), (path, status)


def test_an_svg_or_html_result_opened_directly_runs_no_script(
        results: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    [e] = _executions(results)
    dialogs = _watch(page)
    page.goto(gui.url("/executions"))  # the cookie, and the origin's own page
    for name in ("data/diagram.svg", "data/page.html"):
        answer = page.goto(f"{gui.base}/executions/{e.id}/files/{name}")
        assert answer is not None and answer.status == 200
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.getAttribute('data-ran')") is None
        assert page.evaluate("document.title") != "ran"
        assert page.evaluate("self.origin") == "null"  # sandboxed: not the interface's origin
    assert dialogs == []


# The table ------------------------------------------------------------------------------------

def _rows(html: str) -> list[tuple[str, str]]:
    """(id, parameters) of each row of a table page."""
    return [(m[0], m[1]) for m in re.findall(
        r'<tr class="ex-row[^"]*" data-id="([0-9a-f-]{36})">.*?<td class="mono ex-params" '
        r'title="[^"]*">([^<]*)</td>', html, re.S)]


def test_paging_sorting_and_filtering_return_the_right_rows(
        campaign: Path, gui: Gui, page: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("EXPEGIT_AGENT", "off")
    expegit("exec", "new", "--sweep=--i=range(12)", cwd=campaign)
    expegit("jobs", "run", "local", "", "--done=a;--done=b", cwd=campaign)
    every = _executions(campaign)
    assert len(every) == 14
    by_parameters = sorted(e.parameters for e in every)
    with _client(gui) as client:
        first = client.get("/executions?per=5&sort=parameters&desc=0")
        assert [p for _, p in _rows(first.text)] == by_parameters[:5]
        second = client.get("/executions?per=5&page=2&sort=parameters&desc=0")
        assert [p for _, p in _rows(second.text)] == by_parameters[5:10]
        assert "6\u201310 of 14" in second.text and "page 2 / 3" in second.text
        last = client.get("/executions?per=5&page=99&sort=parameters&desc=1")
        assert [p for _, p in _rows(last.text)] == by_parameters[::-1][10:]
        assert "page 3 / 3" in last.text
        newest = client.get("/executions?per=50")  # newest first, by default
        assert [i for i, _ in _rows(newest.text)] == [e.id for e in every][::-1]
        text = client.get("/executions?q=--i%3D1")
        assert sorted(p for _, p in _rows(text.text)) == ["--i=1", "--i=10", "--i=11"]
        assert "of 14" in text.text
        done = client.get("/executions?state=finished&sort=parameters&desc=0")
        assert [p for _, p in _rows(done.text)] == ["--done=a", "--done=b"]
        created = client.get("/executions?state=created&q=--i%3D1&per=2")
        assert len(_rows(created.text)) == 2 and "1\u20132 of 3" in created.text
        by_id = client.get(f"/executions?q={every[3].id[:8]}")
        assert [i for i, _ in _rows(by_id.text)] == [every[3].id]
        # Nonsense is the default, never an error.
        assert client.get("/executions?page=-3&per=x&sort=nope&state=nope").status_code == 200
    page.goto(gui.url("/executions?per=5&page=2&sort=parameters&desc=0"))
    assert page.locator("tr.ex-row").count() == 5
    with page.expect_navigation():
        page.click("a[rel=next]")
    assert page.locator("tr.ex-row").count() == 4
    screenshot(page, "executions-table-paged")


def test_reschedule_and_delete_from_the_table(
        campaign: Path, gui: Gui, page: Any, home: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPEGIT_AGENT", "off")
    write_profile(home / ".config" / "runaway", "other", host_directory="~/.cache/other",
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"])
    expegit("jobs", "run", "local", "", "--x=a;--x=b;--x=c", cwd=campaign)
    a, b, c = _executions(campaign)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.goto(gui.url("/executions?sort=parameters&desc=0"))
    assert page.locator("#ex-reschedule").is_disabled()
    page.check(f'input.ex-pick[value="{a.id}"]')
    page.check(f'input.ex-pick[value="{b.id}"]')
    assert page.locator("#ex-selected").inner_text() == "2 selected"
    page.select_option("#ex-profile", "other")
    with page.expect_navigation():
        page.click("#ex-reschedule")
    states = {e.id: e for e in _executions(campaign)}
    assert [states[x.id].state for x in (a, b, c)] == ["queued", "queued", "finished"]
    assert queue.profile_of(states[a.id]) == "other" and queue.attempt_of(states[a.id]) == 2
    assert page.locator(f'tr[data-id="{a.id}"] .pill').inner_text() == "queued"
    screenshot(page, "executions-table")
    # Delete: one queued, one finished.
    page.check(f'input.ex-pick[value="{b.id}"]')
    page.check(f'input.ex-pick[value="{c.id}"]')
    with page.expect_navigation():
        page.click("#ex-delete")
    assert len(dialogs) == 1 and "Delete 2 executions?" in dialogs[0]
    assert [e.id for e in _executions(campaign)] == [a.id]
    assert not (campaign / c.folder).exists()
    assert page.locator("tr.ex-row").count() == 1


def test_a_bad_profile_is_a_message_and_changes_nothing(
        campaign: Path, gui: Gui, page: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("EXPEGIT_AGENT", "off")
    expegit("jobs", "run", "local", "", "--x=a", cwd=campaign)
    [a] = _executions(campaign)
    with _client(gui) as client:
        token = re.search(r'name="csrf-token" content="([^"]+)"',
                          client.get("/executions").text)
        assert token is not None
        answer = client.post("/executions/reschedule", json={"ids": [a.id], "profile": "nope"},
                             headers={"X-CSRF-Token": token[1]})
        assert answer.status_code == 400 and "unknown profile 'nope'" in answer.json()["error"]
        assert client.post("/executions/delete", json={"ids": []},
                           headers={"X-CSRF-Token": token[1]}).status_code == 400
        assert client.post("/executions/delete", json={"ids": [a.id]}).status_code == 403
    assert [e.state for e in _executions(campaign)] == ["finished"]


def test_the_report_buttons_reschedule_and_the_agent_runs_it_then_delete(
        results: Path, gui: Gui, page: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.delenv("EXPEGIT_AGENT")  # the agent runs what the page queues
    [e] = _executions(results)
    page.on("dialog", lambda d: d.accept())
    page.goto(gui.url(f"/executions/{e.id}"))
    try:
        with page.expect_navigation():
            page.click("#ex-reschedule")
        _until(lambda: queue.attempt_of(_executions(results)[0]) == 2
               and _executions(results)[0].state == "finished", "the agent to run it again")
    finally:
        expegit("agent", "stop", cwd=results, check=False)
    page.reload()
    assert page.locator(".ex-head .pill").inner_text() == "finished"
    assert page.locator(".ex-timeline li.ev-reset").count() == 1
    with page.expect_navigation(url=re.compile(r"/executions$")):
        page.click("#ex-delete")
    assert _executions(results) == []
