"""git expegit gui: serve the web interface of a campaign (see git_expegit/web)."""

from __future__ import annotations

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
    token = security.new_token()
    shown = f"[{host}]" if ":" in host else host
    print(f"git expegit gui: http://{shown}:{port}/?token={token}", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"expegit: listening on {host}: anyone who reaches it needs the token above",
              file=sys.stderr)
    server = app.create_app(found.root, token, security.allowed_hosts(shown, port))
    # The app knows its server: its live streams end when the server stops (web/live.py).
    server.state.server = uvicorn.Server(uvicorn.Config(
        server, host=host, port=port, log_level="info" if verbose else "warning"))
    try:
        server.state.server.run()
    except KeyboardInterrupt:  # uvicorn stopped on Ctrl-C, and raises it again
        pass
    except OSError as e:
        raise ExpegitError(f"cannot listen on {host}:{port}: {e}: choose another --port",
                           ExitCode.FAILED) from None
    return 0
