from __future__ import annotations

from pathlib import Path

from git_runaway import profiles


def list_profiles(cwd: Path) -> int:
    rows = [(p.name, p.ssh_config or "this machine", p.source) for p in profiles.available(cwd)]
    width = max(len(r[0]) for r in rows)
    host_width = max(len(r[1]) for r in rows)
    for name, host, source in rows:
        print(f"{name:<{width}}  {host:<{host_width}}  {source}")
    return 0
