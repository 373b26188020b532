"""git runaway: run a folder's script on any host, as if it ran here.

The library API is `git_runaway.execution.Runaway`; the CLI is `git_runaway.main`.
"""
