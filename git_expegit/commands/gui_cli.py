"""git expegit gui: serve the web interface of a campaign (see git_expegit/web)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from git_expegit import campaign
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

PORT = 8088
HOST = "127.0.0.1"


def gui(cwd: Path, path: str | None, port: int, host: str, verbose: bool) -> int:
    import uvicorn

    from git_expegit.web import app
    from git_expegit.web import security

    found = campaign.find(cwd if path is None else Path(path))
    listening = _bind(host, port)  # before the URL: a port in use is one line, no URL
    token = security.new_token()
    shown = f"[{host}]" if ":" in host else host
    wildcard = host in security.WILDCARDS
    print(f"git expegit gui: http://{socket.gethostname() if wildcard else shown}:{port}/"
          f"?token={token}", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"expegit: listening on {host}: anyone who reaches it needs the token above",
              file=sys.stderr)
    server = app.create_app(found.root, token, security.allowed_hosts(shown, port))
    # The app knows its server: its live streams end when the server stops (web/live.py).
    server.state.server = uvicorn.Server(uvicorn.Config(
        server, host=host, port=port, log_level="info" if verbose else "warning"))
    try:
        server.state.server.run(sockets=[listening])
    except KeyboardInterrupt:  # uvicorn stopped on Ctrl-C, and raises it again
        pass
    finally:
        listening.close()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that failing to is our one-line error (uvicorn
    would log its own and exit)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listening = socket.socket(family, kind)
    except OSError as e:
        raise ExpegitError(f"cannot listen on {host}:{port}: {e}", ExitCode.FAILED) from None
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
    except OSError as e:
        listening.close()
        raise ExpegitError(f"cannot listen on {host}:{port}: {e.strerror or e}: choose another "
                           "--port", ExitCode.FAILED) from None
    return listening
