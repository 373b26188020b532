"""git expegit agent (start | stop | status | run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from git_expegit import campaign
from git_expegit import queue
from git_expegit.agent import control
from git_expegit.commands.output import relative

if TYPE_CHECKING:
    from git_expegit.main import Args


def dispatch(a: Args) -> int:
    found = campaign.find(a.cwd)
    if a.flag("start"):
        pid = control.start(found, a.flag("--verbose"))
        print(f"agent started (pid {pid}); its log: "
              f"{relative(control.log_path(found), a.cwd)}")
        return 0
    if a.flag("stop"):
        from git_expegit.agent import loop

        print(f"agent stopped (pid {control.stop(found, loop.GRACE)})")
        return 0
    if a.flag("status"):
        return _status(found)
    from git_expegit.agent import loop

    return loop.run(found, verbose=a.flag("--verbose"))


def _status(found: campaign.Campaign) -> int:
    now = control.status(found)
    print(f"agent    {'not running' if now.pid is None else f'running (pid {now.pid})'}")
    print(f"queued   {now.queued}")
    print(f"running  {len(now.running)}")
    for e in now.running:
        where = e.field("host") or "-"
        print(f"  {e.id[:8]}  {queue.profile_of(e) or '-'}  {where}  {e.parameters}".rstrip())
    return 0
