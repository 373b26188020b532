"""git expegit logs ID [-f]: a finished execution's output, from the work tree or from git,
and the output of one that runs, followed until it ends."""

from __future__ import annotations

import os
import pty
import queue as queue_
import subprocess
import threading
from pathlib import Path

from git_expegit import campaign as campaigns
from git_expegit import catalog
from git_expegit import executions
from git_expegit import queue
from tests.conftest import expegit
from tests.conftest import git


def _finished(campaign: Path) -> Path:
    """An execution of the manual workflow: created, run by hand, finished."""
    folder = campaign / expegit("exec", "new", "--", "--x", "1", cwd=campaign).stdout.strip()
    (folder / "stdout").write_bytes(b"out 1\nout 2 \xff\n")
    (folder / "stderr").write_bytes(b"warning: low\n")
    expegit("finish", "--exit-code", "0", cwd=folder)
    return folder


def test_logs_of_a_finished_execution_go_to_stdout_and_stderr_as_they_were(
        campaign: Path) -> None:
    folder = _finished(campaign)
    shown = subprocess.run(["git", "expegit", "logs", folder.name[:6]], cwd=campaign,
                           capture_output=True)
    assert shown.returncode == 0, shown.stderr
    assert (shown.stdout, shown.stderr) == (b"out 1\nout 2 \xff\n", b"warning: low\n")
    # Gone from the work tree (a user cleaned it): read from git, the same.
    (folder / "stdout").unlink()
    (folder / "stderr").unlink()
    again = subprocess.run(["git", "expegit", "logs", folder.name], cwd=campaign,
                           capture_output=True)
    assert (again.stdout, again.stderr) == (shown.stdout, shown.stderr)


def test_on_a_terminal_each_part_is_named(campaign: Path) -> None:
    folder = _finished(campaign)
    parent, child = pty.openpty()
    process = subprocess.Popen(["git", "expegit", "logs", folder.name[:8]], cwd=campaign,
                               stdout=child, stderr=child)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(parent)
    assert process.wait(timeout=60) == 0
    relative = folder.relative_to(campaign).as_posix()
    assert out == (f"==> {relative}/stdout <==\r\nout 1\r\nout 2 ".encode() + b"\xff\r\n"
                   + f"==> {relative}/stderr <==\r\nwarning: low\r\n".encode())


def test_a_bad_id_is_one_line_and_exit_4(campaign: Path) -> None:
    _finished(campaign)
    for bad in ("zzzzzz", "ab"):
        result = expegit("logs", bad, cwd=campaign, check=False)
        assert result.returncode == 4, result.stderr
        assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


def test_an_execution_never_run_says_it_has_no_output(campaign: Path) -> None:
    folder = campaign / expegit("exec", "new", cwd=campaign).stdout.strip()
    result = expegit("logs", "-f", folder.name, cwd=campaign)  # not queued: nothing to follow
    assert result.stdout == "" and "has no output (created)" in result.stderr


class Following:
    """`git expegit logs -f` in a process of its own, its stdout read by a thread."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.process = subprocess.Popen(["git", "expegit", "logs", "-f", prefix], cwd=root,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.chunks: queue_.Queue[bytes] = queue_.Queue()
        self.out = b""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := self.process.stdout.read1(4096):
            self.chunks.put(chunk)
        self.chunks.put(b"")

    def until(self, text: bytes) -> None:
        while text not in self.out:
            chunk = self.chunks.get(timeout=60)
            assert chunk, f"ended before {text!r}: {self.out!r}"
            self.out += chunk

    def end(self) -> tuple[int, bytes, bytes]:
        assert self.process.stderr is not None
        err = self.process.stderr.read()
        code = self.process.wait(timeout=60)
        while chunk := self.chunks.get(timeout=60):
            self.out += chunk
        return code, self.out, err


def test_follow_prints_what_the_run_writes_until_it_finishes(campaign: Path) -> None:
    found = campaigns.find(campaign)
    commit = executions.experiment_commit(found, None)
    batch = queue.enqueue(found, commit, ["--x 1"], "local", "followed")
    execution = catalog.resolve(found, batch.ids[0], campaign)
    folder = campaign / execution.folder
    following = Following(campaign, execution.id[:8])  # queued: it waits for output
    queue.record_events(found, [(execution, "running", {"host": "here"})])
    with (folder / "stdout").open("ab") as out:
        out.write(b"step 1\n")
        out.flush()
        following.until(b"step 1\n")
        out.write(b"step 2\n")
        out.flush()
        following.until(b"step 2\n")
        (folder / "stderr").write_bytes(b"a warning\n")
        out.write(b"last words\n")  # written just before the end is recorded
    assert following.process.poll() is None  # still running: still following
    executions.finish_many(found, [executions.Ending(execution, 0)])
    code, out_, err = following.end()
    assert code == 0, err
    assert out_ == b"step 1\nstep 2\nlast words\n"
    assert err == b"a warning\n"
    assert git("log", "-1", "--format=%s", cwd=campaign).startswith("Finish execution")


def test_a_reader_that_goes_away_ends_it_quietly(campaign: Path) -> None:
    folder = campaign / expegit("exec", "new", cwd=campaign).stdout.strip()
    (folder / "stdout").write_bytes(b"line\n" * 400_000)  # far more than a pipe holds
    expegit("finish", cwd=folder)
    process = subprocess.Popen(["git", "expegit", "logs", folder.name], cwd=campaign,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(5) == b"line\n"
    process.stdout.close()  # as `| head -1` does
    assert process.wait(timeout=60) == 141  # as git does: killed by SIGPIPE
    assert process.stderr.read() == b""
