"""The Starlette application: every page module's routes behind the guard."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from git_expegit.web import analysis
from git_expegit.web import batches
from git_expegit.web import executions
from git_expegit.web import home
from git_expegit.web import live
from git_expegit.web import security


def create_app(root: Path, token: str, hosts: set[str]) -> Starlette:
    """The interface of the campaign at `root`. Each request opens the campaign afresh
    (campaign.Campaign is cheap, and pygit2 objects must not cross threads)."""
    static = StaticFiles(directory=Path(__file__).parent / "static")
    app = Starlette(
        routes=[*home.routes, *executions.routes, *live.routes, *batches.routes,
                *analysis.routes, Mount("/static", static, name="static")],
        middleware=[Middleware(security.Guard, token=token, hosts=hosts),
                    Middleware(live.Mark)])
    app.state.root = root
    app.state.token = token
    return app
