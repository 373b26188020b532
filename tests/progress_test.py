"""The progress display of jobs run and jobs wait: plain lines without a terminal, rich's
live line under a pseudo-terminal (NO_COLOR honoured), a summary that names the failures,
and quiet when its reader goes away; and jobs wait, which follows the notes."""

from __future__ import annotations

import io
import os
import pty
import queue as queue_
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from git_expegit import campaign as campaigns
from git_expegit import catalog
from git_expegit import executions
from git_expegit import queue
from git_expegit.commands.progress import Display
from git_expegit.commands.progress import _shown
from git_expegit.record import ExecutionId
from git_expegit.record import State
from git_expegit.runner import Change
from tests.conftest import expegit
from tests.conftest import snapshot

IDS = [ExecutionId(f"{i:08x}-0000-4000-8000-000000000000") for i in range(1, 5)]
PLAIN = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d [0-9a-f]{8} "
                   r"(running|finished|failed|queued)( \S.*)?")

# Drives a Display as the runner would; run under a pseudo-terminal by the tests.
SCRIPT = """
import pathlib
from git_expegit.commands.progress import Display
from git_expegit.commands.progress import _shown
from git_expegit.record import ExecutionId, State
from git_expegit.runner import Change
ids = [ExecutionId(f"{i:08x}-0000-4000-8000-000000000000") for i in range(1, 5)]
with Display(4) as display:
    for e in ids:
        display.change(Change(e, "--lr 0.1", State.RUNNING, "on here"))
    display.change(Change(ids[0], "--lr 0.1", State.FINISHED, "exit 0"))
    display.change(Change(ids[1], "--lr [red]x", State.FAILED, "exit 3",
                          pathlib.Path.cwd() / "excs" / "00" / ids[1]))
    for e in ids[2:]:
        display.change(Change(e, "--lr 0.1", State.FINISHED, "exit 0"))
"""


def _changes(display: Display, logs: Path) -> None:
    display.change(Change(IDS[0], "--a 1", State.RUNNING, "on here"))
    display.change(Change(IDS[1], "--a 2", State.RUNNING))
    display.change(Change(IDS[0], "--a 1", State.FINISHED, "exit 0"))
    display.change(Change(IDS[1], "--a 2", State.FAILED, "exit 3\x1b[31m", logs))
    display.change(Change(IDS[2], "--a 3", State.QUEUED, "connection lost: attempt 2 of 3"))


def test_without_a_terminal_one_plain_line_per_change_and_a_summary(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with Display(3) as display:  # sys.stderr, a pipe here
        assert not display.live
        _changes(display, tmp_path / "logs")
    err = capsys.readouterr().err
    assert "\x1b" not in err  # no escape code, not even one a detail smuggled in
    lines = err.splitlines()
    assert all(PLAIN.fullmatch(line) for line in lines[:5]), lines
    assert [line.split()[1:3] for line in lines[:5]] == [
        [IDS[0][:8], "running"], [IDS[1][:8], "running"], [IDS[0][:8], "finished"],
        [IDS[1][:8], "failed"], [IDS[2][:8], "queued"]]
    assert lines[3].endswith(r"failed exit 3\x1b[31m")
    assert re.fullmatch(r"3 executions in 0:00:0\d: 1 finished, 1 failed, 1 queued", lines[5])
    assert lines[6] == "failed:"
    assert lines[7].startswith(f"  {IDS[1][:8]}  exit 3")
    assert f"logs in {_shown(tmp_path / 'logs')}" in lines[7]  # relative when shorter
    assert f"git expegit logs {IDS[1][:8]}" in lines[7]
    assert len(lines) == 8


def test_more_executions_than_announced_grow_the_total() -> None:
    out = io.StringIO()
    with Display(1, stream=out) as display:
        for e in IDS[:3]:
            display.change(Change(e, "", State.FINISHED))
        assert display.total == 3 and display.count(State.QUEUED) == 0
    assert "3 executions in" in out.getvalue()


def test_a_closed_pipe_makes_it_quiet_not_crash() -> None:
    read, write = os.pipe()
    os.close(read)
    stream = open(write, "w")
    with Display(2, stream=stream) as display:
        display.change(Change(IDS[0], "", State.RUNNING))
        display.change(Change(IDS[0], "", State.FAILED, "exit 1"))
        assert display.closed
    assert display.count(State.FAILED) == 1  # still counted for the exit code
    with pytest.raises(BrokenPipeError):  # what it could not write is still buffered
        stream.close()


def _under_pty(code: str, **env: str) -> str:
    """Run `code` with stdout and stderr on a pseudo-terminal; everything it wrote."""
    parent, child = pty.openpty()
    environment = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "150", **env}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        if name not in env:
            environment.pop(name, None)
    process = subprocess.Popen([sys.executable, "-c", code], stdin=child, stdout=child,
                               stderr=child, env=environment)
    os.close(child)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([parent], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # EIO: the child side closed
            break
        if not chunk:
            break
        out += chunk
    os.close(parent)
    assert process.wait(timeout=30) == 0, out
    return out.decode()


COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-9]|9[0-7]|38;[0-9;]+)m")


def test_on_a_terminal_a_live_line_redrawn_in_place_with_failures_above_it() -> None:
    out = _under_pty(SCRIPT)
    assert out.count("\x1b[2K") >= 5  # rich erases and redraws the line at each change
    assert "4 queued" in out and "4 running" in out and "ETA" in out and "elapsed" in out
    assert re.search(r"00000002 failed.*exit 3  --lr \[red\]x", out)  # markup stays text
    assert "4 executions in 0:00:0" in out and "3 finished, 1 failed" in out
    assert "git expegit logs 00000002" in out
    assert COLOUR.search(out)


def test_no_color_removes_the_colours_and_keeps_the_live_line() -> None:
    out = _under_pty(SCRIPT, NO_COLOR="1")
    assert out.count("\x1b[2K") >= 5
    assert "3 finished, 1 failed" in out
    assert not COLOUR.search(out), out


# jobs wait ------------------------------------------------------------------------------------

WAIT = ("import sys; from pathlib import Path; from git_expegit.commands import wait_cli; "
        "sys.exit(wait_cli.wait(Path.cwd(), sys.argv[1] or None))")


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ends are written by the tests themselves: no agent may run the queue."""
    monkeypatch.setenv("EXPEGIT_AGENT", "off")


def _queue(root: Path, count: int, name: str) -> list[catalog.Execution]:
    found = campaigns.find(root)
    commit = executions.experiment_commit(found, None)
    batch = queue.enqueue(found, commit, [f"--a {i}" for i in range(count)], "local", name)
    by_id = {e.id: e for e in catalog.executions(found)}
    return [by_id[eid] for eid in batch.ids]


def test_wait_on_an_empty_queue_returns_at_once(campaign: Path) -> None:
    started = time.monotonic()
    result = expegit("jobs", "wait", cwd=campaign)
    assert time.monotonic() - started < 10
    assert "nothing queued or running" in result.stderr


def test_wait_for_an_unknown_batch_is_bad_input(campaign: Path) -> None:
    _queue(campaign, 1, "known")
    before = snapshot(campaign)
    result = expegit("jobs", "wait", "--name", "other", cwd=campaign, check=False)
    assert result.returncode == 4
    assert result.stderr == "expegit: no batch named 'other' in this campaign: see git " \
        "expegit list\n"
    assert snapshot(campaign) == before
    # A batch that this clone does not run (here: queued for no clone).
    found = campaigns.find(campaign)
    executions.create(found, executions.experiment_commit(found, None), ["--b 1"], None,
                      batch="elsewhere")
    result = expegit("jobs", "wait", "--name", "elsewhere", cwd=campaign, check=False)
    assert result.returncode == 4 and "no execution queued in this clone" in result.stderr


class Waiting:
    """`jobs wait` in a process of its own, its stderr read line by line by a thread."""

    def __init__(self, root: Path, name: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", WAIT, name], cwd=root,
                                        text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.lines: queue_.Queue[str] = queue_.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")  # the end

    def line_with(self, text: str) -> str:
        """Wait for a line that holds `text`."""
        while True:
            try:
                line = self.lines.get(timeout=60)
            except queue_.Empty:
                raise AssertionError(f"no {text!r} in {self.seen}") from None
            assert line, f"ended before {text!r}: {self.seen}"
            self.seen.append(line)
            if text in line:
                return line

    def end(self) -> tuple[int, list[str]]:
        """Its exit code, and every line it wrote."""
        code = self.process.wait(timeout=60)
        while (line := self.lines.get(timeout=60)) != "":
            self.seen.append(line)
        return code, self.seen


def test_wait_follows_the_notes_another_process_writes_and_names_the_failure(
        campaign: Path) -> None:
    chosen = _queue(campaign, 3, "sweep")
    waiting = Waiting(campaign, "sweep")
    waiting.line_with("waiting for batch sweep: 3 execution(s)")
    found = campaigns.find(campaign)
    queue.record_events(found, [(chosen[0], "running", {"host": "there"})])
    waiting.line_with(f"{chosen[0].id[:8]} running on there")
    executions.finish_many(found, [executions.Ending(chosen[0], 0),
                                   executions.Ending(chosen[1], 3)])
    waiting.line_with(f"{chosen[1].id[:8]} failed exit 3")
    assert waiting.process.poll() is None  # one is still queued: it keeps waiting
    executions.finish_many(found, [executions.Ending(chosen[2], 0)])
    code, lines = waiting.end()
    assert code == 1, lines
    assert all(PLAIN.fullmatch(line) for line in lines[1:5]), lines
    assert any(re.fullmatch(rf"\S+ {chosen[0].id[:8]} finished exit 0", line) for line in lines)
    assert any(re.fullmatch(rf"\S+ {chosen[2].id[:8]} finished exit 0", line) for line in lines)
    assert any(re.fullmatch(r"3 executions in \S+: 2 finished, 1 failed", line)
               for line in lines)
    failed = next(line for line in lines if line.startswith(f"  {chosen[1].id[:8]}"))
    assert chosen[1].folder in failed, failed
    assert waiting.process.stdout is not None and waiting.process.stdout.read() == ""


def test_wait_for_the_whole_queue_ends_at_zero_when_all_succeed(campaign: Path) -> None:
    chosen = _queue(campaign, 2, "first")
    waiting = Waiting(campaign, "")
    waiting.line_with("waiting for this clone's queue: 2 execution(s)")
    found = campaigns.find(campaign)
    later = _queue(campaign, 1, "second")  # queued meanwhile: waited for too
    waiting.line_with(f"{later[0].id[:8]} queued")
    executions.finish_many(found, [executions.Ending(e, 0) for e in chosen])
    waiting.line_with(f"{chosen[1].id[:8]} finished")
    assert waiting.process.poll() is None
    executions.finish_many(found, [executions.Ending(later[0], 0)])
    code, lines = waiting.end()
    assert code == 0, lines
    assert any(re.fullmatch(r"3 executions in \S+: 3 finished, 0 failed", line)
               for line in lines), lines


def test_wait_for_a_batch_that_already_ended_answers_for_the_batch(campaign: Path) -> None:
    chosen = _queue(campaign, 2, "done")
    found = campaigns.find(campaign)
    executions.finish_many(found, [executions.Ending(chosen[0], 0),
                                   executions.Ending(chosen[1], 2)])
    code, lines = Waiting(campaign, "done").end()
    assert code == 1, lines
    assert any(line.endswith(f"{chosen[1].id[:8]} failed exit 2") for line in lines), lines


def test_an_execution_removed_while_followed_counts_as_not_succeeded(campaign: Path) -> None:
    chosen = _queue(campaign, 1, "gone")
    waiting = Waiting(campaign, "gone")
    waiting.line_with("waiting for batch gone")
    executions.remove(campaigns.find(campaign), chosen[0], force=True)
    code, lines = waiting.end()
    assert code == 1, lines
    assert any(line.endswith(f"{chosen[0].id[:8]} failed removed") for line in lines), lines
