"""The guard of the web interface, on a real server: token, cookie, Host, CSRF."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.web_support import Gui
from tests.web_support import gui  # noqa: F401  (a fixture)


def test_without_the_token_every_page_is_403_and_with_it_a_cookie_keeps_it(
        campaign: Path, gui: Gui) -> None:  # noqa: F811
    assert httpx.get(gui.url("/", token=False)).status_code == 403
    assert httpx.get(gui.url("/static/style.css", token=False)).status_code == 403
    with httpx.Client(follow_redirects=True) as client:
        first = client.get(gui.url("/"))
        assert first.history and first.history[0].status_code == 303
        assert "token=" not in str(first.url)  # it leaves the address bar at once
        assert client.get(gui.url("/static/style.css", token=False)).status_code == 200
    assert httpx.get(gui.url("/"), headers={"Host": "evil.example:80"}).status_code == 403
    port = gui.base.rsplit(":", 1)[1]
    typed = httpx.get(gui.url("/"), headers={"Host": f"LOCALHOST:{port}"})
    assert typed.status_code == 303  # host names are case-insensitive


def test_a_state_changing_request_needs_the_csrf_token(campaign: Path, gui: Gui) -> None:  # noqa: F811
    with httpx.Client() as client:
        client.get(gui.url("/"))
        refused = client.post(gui.url("/sync", token=False))
        assert refused.status_code == 403 and "CSRF" in refused.text
