"""The progress of a batch as a user watches it, for jobs run, jobs wait and the agent's log.

On a terminal, a live line redrawn in place by rich (done, failed, running, queued, elapsed,
ETA), with each failure printed above it as it happens. Anywhere else (a pipe, a file, a CI
log), one plain line per state change and no escape code:

    2026-11-30T09:03:12 1a2b3c4d failed exit 3

At the end, both give a summary that names the failed executions and where their logs are.
The display never fails the work it shows: once its reader is gone (a closed pipe, a closed
terminal), it goes quiet.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from typing import TextIO

from rich.console import Console
from rich.console import Group
from rich.console import RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from git_expegit.record import ExecutionId
from git_expegit.record import State

if TYPE_CHECKING:
    from git_expegit.runner import Change

REFRESH = 0.25  # seconds between redraws of the live line: the elapsed time ticks


class Display:
    """Shows the state changes of `total` executions (more if more turn up) on `stream`."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream  # read now: tests swap it
        self.total = total
        self.changes: dict[ExecutionId, Change] = {}  # the latest change of each execution
        self.started = time.monotonic()
        self.closed = False  # the reader went away: nothing more is written
        self._lock = threading.RLock()  # change() may come from the runner's threads
        self._console = Console(file=self.stream, highlight=False, soft_wrap=False)
        self._live: Live | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def live(self) -> bool:
        """A live display only where someone watches a terminal that can redraw a line:
        rich's judgement (TERM=dumb, TTY_COMPATIBLE, TTY_INTERACTIVE) and a real tty."""
        return self._console.is_interactive and _isatty(self.stream)

    # The context ------------------------------------------------------------------------------

    def __enter__(self) -> Display:
        if self.live:
            # Redrawn by our own ticker, not rich's thread, so that a terminal that goes
            # away stops the display instead of killing a thread with a traceback.
            # What others write to stderr goes above the live line; stdout is left alone
            # (redirected to a file, it must not land on the terminal).
            live = Live(get_renderable=self._render, console=self._console,
                        auto_refresh=False, transient=False, redirect_stdout=False,
                        redirect_stderr=self.stream is sys.stderr)
            self._live = live
            self._guard(lambda: live.start(refresh=True))
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self._live is not None:
                live, self._live = self._live, None
                self._guard(live.stop)
            self._guard(self._summary)

    def _tick(self) -> None:
        while not self._stop.wait(REFRESH):
            with self._lock:
                if self._live is not None:
                    self._guard(self._live.refresh)

    # Changes ----------------------------------------------------------------------------------

    def change(self, c: Change) -> None:
        """One execution changed state: counted, and shown as a line (plain) or, for a
        failure or a run sent back to the queue, above the live line."""
        with self._lock:
            if c.execution not in self.changes and len(self.changes) >= self.total:
                self.total += 1  # one more than announced (jobs wait: the queue grew)
            self.changes[c.execution] = c
            if self._live is not None:
                if c.state in (State.FAILED, State.QUEUED):  # printing redraws the line
                    self._guard(lambda: self._console.print(_event(c), soft_wrap=True))
                else:
                    self._guard(self._live.refresh)
            else:
                self._write(f"{_now()} {c.execution[:8]} {c.state} {_clean(c.detail)}"
                            .rstrip() + "\n")

    def note(self, message: str) -> None:
        """A line of the display's own (what it follows), above the live line."""
        with self._lock:
            if self._live is not None:
                self._guard(lambda: self._console.print(Text(message), soft_wrap=True))
            else:
                self._write(f"{_now()} {_clean(message)}\n")

    def count(self, state: State) -> int:
        if state == State.QUEUED:  # what has not been heard of yet waits in the queue
            heard = sum(1 for c in self.changes.values() if c.state != State.QUEUED)
            return self.total - heard
        return sum(1 for c in self.changes.values() if c.state == state)

    def failed(self) -> list[Change]:
        return [c for c in self.changes.values() if c.state == State.FAILED]

    # Output -----------------------------------------------------------------------------------

    def _render(self) -> RenderableType:
        done, failed = self.count(State.FINISHED), self.count(State.FAILED)
        ended, elapsed = done + failed, time.monotonic() - self.started
        line = Table.grid(padding=(0, 1))
        line.add_row(
            ProgressBar(total=max(self.total, 1), completed=ended, width=30,
                        complete_style="red" if failed else "green",
                        finished_style="red" if failed else "green"),
            Text.assemble(f"{ended}/{self.total}", "  ",
                          (f"{done} done", "green"), "  ",
                          (f"{failed} failed", "bold red" if failed else ""), "  ",
                          (f"{self.count(State.RUNNING)} running", "cyan"), "  ",
                          f"{self.count(State.QUEUED)} queued", "  ",
                          (f"{_duration(elapsed)} elapsed", "yellow"), "  ",
                          (f"ETA {_eta(elapsed, ended, self.total)}", "yellow")))
        return Group(line)

    def _summary(self) -> None:
        elapsed = _duration(time.monotonic() - self.started)
        parts = [f"{self.count(State.FINISHED)} finished", f"{self.count(State.FAILED)} failed"]
        parts += [f"{self.count(s)} {s}" for s in (State.RUNNING, State.QUEUED) if self.count(s)]
        head = f"{self.total} execution{'s' if self.total != 1 else ''} in {elapsed}: "
        lines = [head + ", ".join(parts)]
        failed = self.failed()
        if failed:
            lines.append("failed:")
        for c in failed:
            where = (f"  logs in {_shown(c.logs)}" if c.logs is not None else "")
            lines.append(f"  {c.execution[:8]}  {_clean(c.detail) or 'failed'}{where}  "
                         f"(git expegit logs {c.execution[:8]})")
        if self.live:
            self._console.print(Text(lines[0], style="bold red" if failed else "bold green"))
            for line in lines[1:]:
                self._console.print(Text(line, style="red"), soft_wrap=True)
        else:
            self._write("".join(f"{line}\n" for line in lines))

    def _write(self, text: str) -> None:
        def write() -> None:
            self.stream.write(text)
            self.stream.flush()  # line by line: a log followed with tail -f sees each

        self._guard(write)

    def _guard(self, action: Callable[[], object]) -> None:
        """Run an output action unless the reader is gone; its going makes us quiet."""
        if self.closed:
            return
        try:
            action()
        except (OSError, ValueError):  # EPIPE, EIO from a closed terminal, a closed file
            self.closed = True
            self._stop.set()
            if self._live is not None:
                live, self._live = self._live, None
                _quietly_stop(live)


def _quietly_stop(live: Live) -> None:
    """Undo what a live display did to sys.stdout and sys.stderr, writing nothing more."""
    live.console.quiet = True
    try:
        live.stop()
    except (OSError, ValueError):
        pass


def _event(c: Change) -> Text:
    said = "failed" if c.state == State.FAILED else "queued again"
    return Text.assemble((f"{c.execution[:8]} {said}", "bold red" if c.state == State.FAILED
                          else "yellow"), f" {_clean(c.detail)}".rstrip(),
                         f"  {_clean(c.parameters)}".rstrip())


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=max(0, int(seconds))))


def _eta(elapsed: float, ended: int, total: int) -> str:
    """The time left at the pace so far (runs in parallel included): known after the
    first end, and steadier than a recent-window estimate when runs are long."""
    if ended == 0 or ended >= total:
        return "-:--:--" if ended == 0 else "0:00:00"
    return _duration(elapsed / ended * (total - ended))


def _clean(text: str) -> str:
    """One line without control characters: a detail must not redraw the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _shown(path: Path) -> str:
    """A path as the user would type it from here."""
    try:
        shown = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if shown.startswith("../..") else shown
