"""Starting, stopping and asking after this clone's agent. (Stub: the agent lands next.)"""

from __future__ import annotations

from git_expegit.campaign import Campaign


def ensure_running(campaign: Campaign) -> None:
    """Start this clone's agent unless it runs; returns at once, never fails the caller."""
