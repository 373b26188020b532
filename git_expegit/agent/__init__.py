"""The agent: one background process per clone that runs its queue (see control.py and
loop.py)."""
