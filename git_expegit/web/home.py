"""See git_expegit/web/__init__.py."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
