"""Jinja2 for every page: autoescape on (a run's output is never markup), and the values the
base template needs (the campaign's name, the CSRF token for scripts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment
from jinja2 import FileSystemLoader
from jinja2 import select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from git_expegit.web import security

_ENVIRONMENT = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                           autoescape=select_autoescape(default=True, default_for_string=True))


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    page = _ENVIRONMENT.get_template(name)
    html = page.render(request=request, csrf=security.csrf_token(request),
                       campaign_name=request.app.state.root.name,
                       live_since=getattr(request.state, "live_key", ""), **context)
    return HTMLResponse(html, status_code=status)
