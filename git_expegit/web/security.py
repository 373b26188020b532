"""The guard in front of every route.

- **Token.** Jupyter's model: on a shared login node every user reaches 127.0.0.1, so every
  request needs the token printed with the URL: `?token=...` on any page sets a cookie
  (HttpOnly, SameSite=Strict) that carries it afterwards. Without it: 403.
- **Host.** A DNS-rebinding page reaches 127.0.0.1 under its own name: the Host header must
  be one the server was started for (its bound address, localhost), else 403.
- **CSRF.** A state-changing request (anything but GET and HEAD) must carry the page's CSRF
  token in the `X-CSRF-Token` header, which only a script of this origin can set; pages send
  their forms with fetch() (static/app.js).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import urllib.parse
from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

COOKIE = "expegit_token"
CSRF_HEADER = "x-csrf-token"
_SAFE = ("GET", "HEAD")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(request: Request) -> str:
    """Derived from the access token: the same for every page of one server."""
    token: str = request.app.state.token
    return hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()


WILDCARDS = ("0.0.0.0", "::", "[::]")  # every address of the machine
ANY_ADDRESS = "*"  # in the allowed hosts: any IP address, as a wildcard bind is reached


def allowed_hosts(host: str, port: int) -> set[str]:
    """The Host headers the server answers: `name:port`, and `name` alone on port 80.
    Bound to every address, it is reached from elsewhere by this machine's name or by any
    of its addresses: a DNS-rebinding page only ever has a name of its own, never an
    address, so any address literal is allowed there (`*`)."""
    loopback = {"localhost", "127.0.0.1", "[::1]"}
    if host in WILDCARDS:
        names = loopback | {socket.gethostname(), socket.getfqdn(), ANY_ADDRESS}
    else:
        names = {host} | (loopback if host in ("127.0.0.1", "localhost", "::1") else set())
    names = {name.lower() for name in names}
    return {f"{name}:{port}" for name in names} | (names if port == 80 else set())


def host_allowed(header: str, hosts: set[str]) -> bool:
    if header in hosts:
        return True
    name, colon, port = header.rpartition(":")
    if colon and f"{ANY_ADDRESS}:{port}" in hosts and _address(name):
        return True
    return ANY_ADDRESS in hosts and _address(header)


def _address(text: str) -> bool:
    """An IPv4 address, or an IPv6 one in brackets, as a Host header carries them."""
    bracketed = text.startswith("[") and text.endswith("]")
    try:
        address = ipaddress.ip_address(text[1:-1] if bracketed else text)
    except ValueError:
        return False
    return (address.version == 6) == bracketed


class Guard:
    """ASGI middleware: Host, then token, then CSRF; a refusal is a plain 403."""

    def __init__(self, app: ASGIApp, token: str, hosts: Iterable[str]) -> None:
        self.app = app
        self.token = token
        self.hosts = set(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await PlainTextResponse(refusal, status_code=403)(scope, receive, send)
            return
        given = request.query_params.get("token")
        if given is not None and request.method in _SAFE:
            # The token leaves the address bar (and the history) at once: a cookie keeps it.
            # Re-encoded, so that an escaped '&' or '#' stays inside its value; one leading
            # slash, so that `//host/` cannot name another server.
            query = urllib.parse.urlencode([(k, v) for k, v in request.query_params.multi_items()
                                            if k != "token"])
            path = "/" + request.url.path.lstrip("/")
            response = RedirectResponse(path + (f"?{query}" if query else ""), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, request: Request) -> str | None:
        # Host names are case-insensitive (a user may type LOCALHOST).
        if not host_allowed(request.headers.get("host", "").lower(), self.hosts):
            return "forbidden: unexpected Host header"
        given = request.query_params.get("token") or request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return "forbidden: open the URL that git expegit gui printed (it has the token)"
        if request.method not in _SAFE:
            expected = hmac.new(self.token.encode(), b"csrf", hashlib.sha256).hexdigest()
            if not hmac.compare_digest(request.headers.get(CSRF_HEADER, "").encode(),
                                       expected.encode()):
                return "forbidden: missing or wrong CSRF token"
        return None
