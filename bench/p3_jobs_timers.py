#!/usr/bin/env python3
"""Where `jobs run`'s time goes: runs `git expegit ARGS` in this process (as
`python bench/p3_jobs_timers.py jobs run ...`, which `p3_jobs.py --timers` does) with
wall-clock timers around the runner's parts and each git command, in the event loop's thread
and in the worker threads alike (cProfile sees the main thread only). Printed on stderr at
exit: per part its count, total, share of the wall time, mean and max; the CPU time of this
process and of its children; each batch the recorder wrote.

P3_THREAD_PROFILE=FILE also profiles (cProfile) each recorder batch and each `queue.mine`
in whatever thread runs it, summed into FILE (pstats). P3_EARLY_RELEASE=1 tries a change
of the runner: a run's slot freed when its run ends, before its finish is committed.
"""

from __future__ import annotations

import asyncio
import atexit
import cProfile
import functools
import os
import pstats
import resource
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from git_expegit import executions
from git_expegit import queue
from git_expegit import runner
from git_expegit import sync as syncing
from git_expegit import transaction
from git_expegit.main import main
from git_runaway import execution as runaway

START = time.perf_counter()
_stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # count, total, max
_batches: list[tuple[float, float, int, int]] = []  # start, duration, events, ends
_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _note(name: str, seconds: float) -> None:
    with _lock:
        entry = _stats[name]
        entry[0] += 1
        entry[1] += seconds
        entry[2] = max(entry[2], seconds)


def _timed(owner: Any, attribute: str, name: str) -> None:
    function = getattr(owner, attribute)
    if asyncio.iscoroutinefunction(function):
        @functools.wraps(function)
        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                _note(name, time.perf_counter() - start)
        setattr(owner, attribute, coroutine)
        return

    @functools.wraps(function)
    def plain(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _note(name, time.perf_counter() - start)
    setattr(owner, attribute, plain)


def _profiled(function: Callable[..., Any]) -> Callable[..., Any]:
    if not os.environ.get("P3_THREAD_PROFILE"):
        return function

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        profile = cProfile.Profile()
        try:
            return profile.runcall(function, *args, **kwargs)
        finally:
            with _lock:
                _profiles.append(profile)
    return wrapper


def _commands() -> None:
    """Each git command timed by its subcommand (`git write-tree`), and every other
    subprocess.run by its program."""
    run = subprocess.run

    def timed(args: Sequence[str], *rest: Any, **kwargs: Any) -> Any:
        words = [str(w) for w in args[1:] if not str(w).startswith("-") and "=" not in str(w)]
        start = time.perf_counter()
        try:
            return run(args, *rest, **kwargs)
        finally:
            _note(f"{os.path.basename(str(args[0]))} {words[0] if words else ''}",
                  time.perf_counter() - start)
    subprocess.run = timed  # type: ignore[assignment]


def _recorder() -> None:
    write = _profiled(runner._Recorder._write)

    def timed(self: Any, events: list[Any], ends: list[Any]) -> Any:
        start = time.perf_counter()
        try:
            return write(self, events, ends)
        finally:
            _batches.append((start - START, time.perf_counter() - start, len(events),
                             len(ends)))
    runner._Recorder._write = timed  # type: ignore[method-assign]


def _early_release() -> None:
    async def one(self: Any, execution: Any) -> None:
        try:
            ending = await self._attempts(execution)
        finally:
            self._ended.add(execution.id)
            self._active.pop(execution.id, None)
            self.poke()
        await self._end(execution, ending)
    runner.Runner._one = one  # type: ignore[method-assign]


def _report() -> None:
    wall = time.perf_counter() - START
    out = sys.stderr
    print(f"\n== wall {wall:.2f} s", file=out)
    for name, (n, total, longest) in sorted(_stats.items(), key=lambda item: -item[1][1]):
        print(f"{name:32} n={int(n):5} total={total:7.2f}s ({100 * total / wall:5.1f}% of wall)"
              f" mean={1000 * total / n:7.1f}ms max={1000 * longest:7.1f}ms", file=out)
    me, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    print(f"CPU s: this process user {me.ru_utime:.2f} sys {me.ru_stime:.2f}; its children "
          f"(git...) user {children.ru_utime:.2f} sys {children.ru_stime:.2f}", file=out)
    print(f"recorder batches: {len(_batches)}", file=out)
    for start, seconds, events, ends in _batches:
        print(f"  at {start:6.2f}s took {seconds * 1000:6.0f}ms events={events} ends={ends}",
              file=out)
    if _profiles:
        summed = pstats.Stats(_profiles[0])
        for profile in _profiles[1:]:
            summed.add(profile)
        summed.dump_stats(os.environ["P3_THREAD_PROFILE"])


def install() -> None:
    _commands()
    _recorder()
    queue.mine = _profiled(queue.mine)
    parts: list[tuple[Any, str, str]] = [
            (queue, "enqueue", ""), (queue, "mine", ""), (queue, "claim", ""),
            (queue, "release", ""), (queue, "record_events", ""), (queue, "cancel_requests", ""),
            (executions, "finish_many", ""), (executions, "_add_results", ""),
            (syncing, "sync", ""), (runner, "_stage_code", ""), (runner, "_skeleton", ""),
            (runaway.Runaway, "run", "Runaway.run"),
            (transaction.Transaction, "publish", "Transaction.publish")]
    for owner, attribute, name in parts:
        _timed(owner, attribute, name or f"{owner.__name__.split('.')[-1]}.{attribute}")
    if os.environ.get("P3_EARLY_RELEASE"):
        _early_release()
    atexit.register(_report)


if __name__ == "__main__":
    install()
    sys.exit(main(sys.argv[1:]))
