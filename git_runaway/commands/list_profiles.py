from __future__ import annotations

from pathlib import Path

from git_runaway import profiles


def list_profiles(cwd: Path) -> int:
    """One line a profile: its name, its host, where it comes from, and what is wrong with it
    (broken, or a repository's file ignored because the user's own or the built-in wins)."""
    rows = [(e.name, _host(e), e.source + (f" ({e.problem})" if e.problem else ""))
            for e in profiles.listing(cwd)]
    width = max(len(r[0]) for r in rows)
    host_width = max(len(r[1]) for r in rows)
    for name, host, source in rows:
        print(f"{name:<{width}}  {host:<{host_width}}  {source}")
    return 0


def _host(entry: profiles.Entry) -> str:
    if entry.profile is None:
        return "-"
    return entry.profile.ssh_config or "this machine"
