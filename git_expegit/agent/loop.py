"""The agent's loop, `git expegit agent run`: runs this clone's queue whenever it has one.

It sleeps in the kernel until inotify (watchdog) reports a change to the queue (the file
queue.WAKE, touched after every change) or to the refs (a commit, a notes update), never
polling. Woken, it expands the batch requests of new commits, then, if this clone owns
queued or running executions, takes the runner lock (waiting for a `jobs run` in the
foreground to end) and runs them through the Runner, as `jobs run` does. Finished runs are
pushed in batches: at most one sync every SYNC_EVERY seconds while busy, and one when the
queue is empty; a sync that fails (the remote unreachable) is retried with a growing delay,
and the results stay committed here meanwhile. It exits after `expegit.agentIdleSeconds`
(default 600) without work, and never while results wait to be pushed.

SIGTERM (`agent stop`) or Ctrl-C: no new run starts; running ones get GRACE seconds to end
and are then cancelled (recorded failed, reason=cancelled; `jobs reschedule --failed` runs
them again); a second signal cancels at once. Why not leave them running: a run still on
its host when the agent is gone cannot be re-attached yet (only collected once it ended),
so it would be run again by the next agent, twice the work; and why not cancel at once:
most runs are short, and a run that ends in the grace period is recorded as it is, not
wasted. Slurm jobs are the exception: they need no ssh session, so the agent leaves them to
the cluster at once (the laptop closes), and the next agent re-attaches to them from their
claims and collects them, nothing submitted twice.

One line per state change goes to stdout, which `agent start` points at agent.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType

from watchdog.events import FileSystemEvent
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from git_expegit import queue
from git_expegit import requests
from git_expegit import sync
from git_expegit.agent import control
from git_expegit.campaign import Campaign
from git_expegit.catalog import Execution
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.record import State
from git_expegit.runner import Change
from git_expegit.runner import Runner
from git_expegit.runner import Summary

IDLE = 600  # seconds without work before the agent exits: expegit.agentIdleSeconds
GRACE = 30.0  # seconds running runs get to end after SIGTERM, before they are cancelled
SYNC_EVERY = 5.0  # while busy, at most one sync per this many seconds
BACKOFF_FIRST, BACKOFF_MAX = 2.0, 300.0  # delays between the tries of a failing sync

Log = Callable[[str], None]


def log_line(message: str) -> None:
    """One line with the time, to stdout (agent.log); a full disk does not stop the agent."""
    with contextlib.suppress(OSError, ValueError):
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def run(campaign: Campaign, log: Log = log_line, verbose: bool = False) -> int:
    """Run the agent until it is stopped or idle; refuse if this clone has one already.
    `verbose`: log what runaway says too, not only the state changes."""
    first = True
    while True:
        with control.holding(campaign) as held:
            if not held:
                if not first:
                    return 0  # another agent started as this one was leaving: it takes over
                raise ExpegitError(f"the agent runs already (pid {control.running(campaign)})",
                                   ExitCode.FAILED)
            ended = Agent(campaign, log, verbose).run()
        if ended != "idle":
            return 0
        # The lock is free now, so a writer that queues (or commits a request) from here on
        # starts a new agent; one that did before saw this agent running and counted on it:
        # look once more.
        expand(campaign, log)
        if not queue.mine(campaign) and not queue.claims(campaign):
            return 0
        first = False
        log("work arrived as the agent was leaving: staying")


def expand(campaign: Campaign, log: Log) -> None:
    """Expand the batch requests the hook spooled, if any."""
    try:
        for batch in requests.expand_pending(campaign):
            log(f"request expanded: batch {batch.name}, {len(batch.ids)} execution(s)")
    except Exception as e:  # a bad request must not end the agent
        log(f"expanding requests failed: {_error(e)}")


def idle_seconds(campaign: Campaign, log: Log) -> float:
    try:
        value = campaign.repo.config.get_int("expegit.agentIdleSeconds")
    except KeyError:
        return IDLE
    except Exception:
        log(f"expegit.agentIdleSeconds is not a whole number: using {IDLE}")
        return IDLE
    return float(max(value, 0))


class Stopped(Exception):
    """SIGTERM or SIGINT while the agent waited (for an event, or for the runner lock)."""


class Watcher(FileSystemEventHandler):
    """Turns inotify events on the queue's wake file and the refs into a wake-up."""

    def __init__(self, campaign: Campaign) -> None:
        self.woken = threading.Event()
        self.on_queue: Callable[[], None] | None = None  # while the runner runs: poke it
        self.wake_file = str(campaign.state_dir / queue.WAKE)
        self.refs = str(campaign.git_dir / "refs") + os.sep
        self.packed_refs = str(campaign.git_dir / "packed-refs")
        self.spool = campaign.state_dir / requests.SPOOL  # the hook's batch requests

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for raw in (event.src_path, event.dest_path):
            path = os.fsdecode(raw)
            if path == self.wake_file:
                self.woken.set()
                poke = self.on_queue
                if poke is not None:
                    poke()
            elif path.endswith(".lock") or not path:
                continue
            elif path.endswith(".json") and os.path.dirname(path) == str(self.spool):
                self.woken.set()  # a request spooled (by the hook, after its commit)
            elif path.startswith(self.refs) or path == self.packed_refs:
                self.woken.set()

    def watch(self, campaign: Campaign) -> Callable[[], None]:
        """Start watching; returns the function that stops it."""
        observer = Observer(timeout=5.0)  # the longest its threads sleep without an event
        observer.schedule(self, str(campaign.state_dir), recursive=False)
        observer.schedule(self, str(campaign.git_dir), recursive=False)  # packed-refs
        self.spool.mkdir(exist_ok=True)
        observer.schedule(self, str(self.spool), recursive=False)
        (campaign.git_dir / "refs").mkdir(exist_ok=True)
        observer.schedule(self, str(campaign.git_dir / "refs"), recursive=True)
        observer.daemon = True
        observer.start()
        return observer.stop


class Agent:
    def __init__(self, campaign: Campaign, log: Log, verbose: bool = False) -> None:
        self.campaign = campaign
        self.log = log
        self.verbose = verbose
        self.idle = idle_seconds(campaign, log)
        self.watcher = Watcher(campaign)
        self.stopping = False
        self.cancelling = False
        self.interruptible = False  # a signal raises Stopped (the agent is waiting)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runner: Runner | None = None
        self.changes = 0  # runs ended here (finished or failed), counted
        self.synced = 0  # ... of which a sync has pushed
        self.sync_at = 0.0  # time.monotonic() before which no sync is tried
        self.backoff = 0.0  # the last delay after a failed sync; 0 when the last one worked
        self.remote = sync.has_remote(campaign)

    # The cycle --------------------------------------------------------------------------------

    def run(self) -> str:
        """Run until stopped ("stopped") or idle ("idle")."""
        stop_watching = self.watcher.watch(self.campaign)
        previous = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.log(f"started (pid {os.getpid()}; exits after {self.idle:.0f} s without work)")
        ended = "stopped"
        try:
            ended = self._cycle()
        except Stopped:
            pass
        finally:
            stop_watching()
            if self.changes > self.synced:
                self._sync()  # once, before leaving: one try
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.log("idle: exiting" if ended == "idle" else "stopped")
        return ended

    def _cycle(self) -> str:
        busy_until = time.monotonic()
        check = True  # look at the queue: at the start, on each wake, after a run
        while not self.stopping:
            if check:
                self.watcher.woken.clear()  # before looking: a later change wakes us again
                expand(self.campaign, self.log)
                if self._work():
                    summary = self._run_queue()
                    busy_until = time.monotonic()
                    # A runner that got nothing done waits for an event before trying
                    # again, so that an execution it cannot take is no busy loop.
                    check = bool(summary is not None and (summary.finished or summary.failed))
                    continue
            check = True
            if self.changes > self.synced and time.monotonic() >= self.sync_at:
                self._sync()
                continue
            now = time.monotonic()
            timeout = busy_until + self.idle - now
            if self.changes > self.synced:  # results to push: no exit, retry the sync
                timeout = max(self.sync_at - now, 0.0)
            elif timeout <= 0:
                return "idle"
            self._wait(timeout)
        return "stopped"

    def _wait(self, timeout: float) -> None:
        self.interruptible = True
        try:
            if self.stopping:
                raise Stopped
            self.watcher.woken.wait(timeout)
        finally:
            self.interruptible = False

    def _work(self) -> bool:
        owned = queue.mine(self.campaign, states=(State.QUEUED, State.RUNNING))
        return bool(owned) or bool(queue.claims(self.campaign))

    # Running the queue ------------------------------------------------------------------------

    def _run_queue(self) -> Summary | None:
        with queue.runner_lock(self.campaign) as free:
            if free:
                return self._run_locked()
        self.log(f"waiting for this clone's runner to end (pid {self._runner_pid()})")
        self.interruptible = True
        try:
            if self.stopping:
                raise Stopped
            with queue.runner_lock(self.campaign, wait=True):
                self.interruptible = False
                self.log("taking over the queue")
                return self._run_locked()
        finally:
            self.interruptible = False

    def _runner_pid(self) -> str:
        try:
            return (self.campaign.state_dir / "runner.lock").read_text().split()[0]
        except (OSError, IndexError):
            return "?"

    def _run_locked(self) -> Summary | None:
        try:
            summary = asyncio.run(self._run_async())
        except Exception as e:  # a bug in a run must not end the agent: logged, retried later
            self.log(f"the runner failed: {_error(e)}")
            for line in traceback.format_exc().splitlines():
                self.log(f"| {line}")
            return None
        self.log(f"queue done: {len(summary.finished)} finished, {len(summary.failed)} "
                 f"failed, {len(summary.queued)} left queued")
        return summary

    async def _run_async(self) -> Summary:
        loop = asyncio.get_running_loop()
        runner = Runner(self.campaign, listen=self._change,
                        log=self.log if self.verbose else None)
        self.runner = runner
        self.loop = loop  # from now on a signal reaches the runner through the loop
        self.watcher.on_queue = lambda: _soon(loop, runner.poke)
        if self.stopping:
            self._stop_runs()
        pushing = asyncio.create_task(self._sync_while_busy())
        try:
            return await runner.run(self._owned)
        finally:
            self.watcher.on_queue = None
            self.loop = None
            self.runner = None
            pushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pushing

    def _owned(self) -> list[Execution]:
        """The queue, read under the campaign's lock: a transaction moves the refs (which
        wakes the agent) before it writes the work tree, and a run must not start in a
        folder that is still being written."""
        with self.campaign.locked():
            return queue.mine(self.campaign)

    def _change(self, change: Change) -> None:
        detail = f" ({change.detail})" if change.detail else ""
        self.log(f"{change.execution[:8]} {change.state}{detail} {change.parameters}".rstrip())
        if change.state in (State.FINISHED, State.FAILED):
            self.changes += 1

    async def _sync_while_busy(self) -> None:
        """Push finished runs at most every SYNC_EVERY seconds while the runner runs."""
        while True:
            await asyncio.sleep(max(SYNC_EVERY, self.sync_at - time.monotonic()))
            if self.changes > self.synced and time.monotonic() >= self.sync_at:
                # In a thread, on its own repository object: pygit2 objects are not shared
                # between threads, and the runner goes on meanwhile.
                fresh = Campaign(self.campaign.root, self.campaign.git_dir)
                await asyncio.to_thread(self._sync, fresh)

    # Signals ----------------------------------------------------------------------------------

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes: no printing here (a print cut in
        # the middle would raise), only flags, the loop's thread-safe call, or Stopped.
        first = not self.stopping
        self.stopping = True
        loop = self.loop
        if loop is not None:
            _soon(loop, self._stop_runs if first else self._cancel_runs)
        elif self.interruptible:
            raise Stopped

    def _stop_runs(self) -> None:
        runner, loop = self.runner, self.loop
        if runner is None or loop is None:
            return
        self.log(f"stopping: no new run starts; running ones are cancelled in {GRACE:.0f} s; "
                 "Slurm jobs go on, and the next agent collects them")
        runner.stop_launching()
        runner.detach()
        loop.call_later(GRACE, self._cancel_runs)

    def _cancel_runs(self) -> None:
        if self.runner is not None and not self.cancelling:
            self.cancelling = True
            self.log("cancelling the running runs")
            self.runner.cancel()

    # Sync -------------------------------------------------------------------------------------

    def _sync(self, campaign: Campaign | None = None) -> None:
        """Push what ended here; on failure, try again later, less and less often."""
        if not self.remote:
            self.synced = self.changes  # nowhere to push: say it once
            self.log("no remote origin: results stay here")
            return
        seen = self.changes
        try:
            sync.sync(campaign or self.campaign)
        except Exception as e:  # the remote down, or anything else: retried, never fatal
            first = self.backoff == 0
            self.backoff = min(max(2 * self.backoff, BACKOFF_FIRST), BACKOFF_MAX)
            self.sync_at = time.monotonic() + self.backoff
            if first:
                self.log(f"sync failed, results kept here, retrying: {_error(e)}")
            return
        if self.backoff:
            self.log("remote reachable again")
        self.synced = max(self.synced, seen)
        self.backoff = 0.0
        self.sync_at = time.monotonic() + SYNC_EVERY
        self.log(f"synced ({seen} runs ended so far)")


def _soon(loop: asyncio.AbstractEventLoop, call: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to tell
        loop.call_soon_threadsafe(call)


def _error(e: BaseException) -> str:
    return str(e) if isinstance(e, ExpegitError) else f"{type(e).__name__}: {e}"
