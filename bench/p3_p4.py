#!/usr/bin/env python3
"""Benchmarks P3 (throughput and per-execution overhead) and P4 (unchanged code uploads 0 bytes).

Needs the loopback sshd of `.ci/services.sh` (EXPEGIT_TEST_SSH_CONFIG, alias `testhost`).
Runs with its own HOME, holding a copy of that config as ~/.ssh/config, as a user would.
Exits non-zero, loudly, if any execution's result is wrong. See bench/README.md.

    python bench/p3_p4.py [--n 200] [--concurrency 8] [--baseline-n N]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import asyncssh
from harness import make_home

import git_runaway.execution as execution
from git_runaway import archive
from git_runaway import hosts
from git_runaway.execution import Job
from git_runaway.execution import Leave
from git_runaway.execution import Runaway
from git_runaway.hosts.ssh import SshHost
from git_runaway.profiles import Profile

SCRIPT = "#!/bin/sh\necho $1 > out.txt\n"
HOST = os.environ.get("EXPEGIT_TEST_SSH_HOST", "testhost")


class BenchmarkFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchmarkFailed(message)


# --- setup -------------------------------------------------------------------------------

def make_code(base: Path) -> Path:
    code = base / "code"
    code.mkdir()
    (code / "run.sh").write_text(SCRIPT)
    (code / "run.sh").chmod(0o755)
    return code


def copies(code: Path, parent: Path, n: int) -> list[Path]:
    parent.mkdir()
    folders = []
    for i in range(n):
        folder = parent / str(i)
        shutil.copytree(code, folder)
        folders.append(folder)
    return folders


def verify(folder: Path, i: int, what: str) -> None:
    out = folder / "out.txt"
    check(out.is_file(), f"{what} #{i}: out.txt did not come back into {folder}")
    text = out.read_text()
    check(text == f"{i}\n", f"{what} #{i}: out.txt holds {text!r}, expected {f'{i}'!r}")


def ssh_cmd(config: str, command: str) -> list[str]:
    # No connection sharing whatever the config says: a fresh connection per command.
    return ["ssh", "-F", config, "-o", "ControlMaster=no", "-o", "ControlPath=none", HOST, command]


def ssh(config: str, command: str) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(ssh_cmd(config, command), capture_output=True, timeout=120)
    check(done.returncode == 0, f"ssh {command!r} failed ({done.returncode}): "
          f"{done.stderr.decode(errors='replace').strip()}")
    return done


# --- ours ----------------------------------------------------------------------------------

def profile_for(host_directory: str) -> Profile:
    return Profile(name="bench", ssh_config=HOST, host_directory=host_directory,
                   before_execution=(), execution=("$SCRIPT_NAME $SCRIPT_ARGS",),
                   after_execution=(), source="bench/p3_p4.py")


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk


async def ours_throughput(folders: list[Path], host_directory: str, concurrency: int,
                          leave_name: str) -> tuple[float, list[int]]:
    """N executions through `Runaway.run`, `concurrency` at a time, timed from before the
    connection is opened (a fresh Runaway) to the last result fetched."""
    profile = profile_for(host_directory)
    leave = Leave(leave_name)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int, folder: Path):  # type: ignore[no-untyped-def]
        async with semaphore:
            out, err = Sink(), Sink()
            outcome = await runaway.run(profile, Job(folder, "run.sh", str(i), leave), out, err)
            return i, outcome, out, err

    start = time.perf_counter()
    async with Runaway() as runaway:
        results = await asyncio.gather(*(one(i, f) for i, f in enumerate(folders)))
    seconds = time.perf_counter() - start
    uploads = []
    for (i, outcome, _, err), folder in zip(results, folders, strict=True):
        check(outcome.exit_code == 0, f"ours #{i}: exit code {outcome.exit_code}, stderr "
              f"{bytes(err.data)!r}")
        # (the names come back as find(1) prints them: "./out.txt")
        check(tuple(os.path.normpath(f) for f in outcome.fetched) == ("out.txt",),
              f"ours #{i}: fetched {outcome.fetched}")
        check(not err.data, f"ours #{i}: unexpected stderr {bytes(err.data)!r}")
        verify(folder, i, "ours")
        uploads.append(outcome.uploaded)
    return seconds, uploads


# Where an execution's time goes. Every run is one host command (see git_runaway/remote.py):
# its phases are timed by wrapping the client's functions that handle each of them.
OPEN = "run: open the channel (sshd forks the login shell)"
START = "run: send the program, until its start marker"
PREPARE = "run: extract the code on the host"
SCRIPT_STEP = "run: the script (until its exit marker)"
FETCH = "run: stream the results' tar"
CLEANUP = "run: host removes the run folder, channel closes"
TAGS = {"upload": "upload", "root": "resolve host_directory",
        "delete": "delete unused archives"}  # the other host commands, by their tag
LOCAL = {"pack": "pack (local)", "safe_extract": "extract (local)"}
REST = "rest of the client (Python, asyncssh)"
COMMANDS = "host commands (count)"
ORDER = (OPEN, START, PREPARE, SCRIPT_STEP, FETCH, CLEANUP, *TAGS.values(), *LOCAL.values(), REST)


class Timers:
    """Wraps, for the timed executions only, the functions of git_runaway that delimit each
    step, and adds their seconds to `current`; `restore` puts the originals back."""

    def __init__(self, host: hosts.Host) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self._host = host
        self._saved: list[tuple[object, str, object]] = []

    def _patch(self, owner: object, name: str, value: object) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def install(self) -> None:
        current = self.current
        open_ = self._host.open

        @contextlib.asynccontextmanager
        async def timed_open(tag: str):  # type: ignore[no-untyped-def]
            current[COMMANDS] += 1
            t = time.perf_counter()
            async with open_(tag) as process:
                if tag == "run":
                    current[OPEN] += time.perf_counter() - t
                    current["_run_opened"] = time.perf_counter()
                yield process
            now = time.perf_counter()
            if tag == "run":
                current[CLEANUP] += now - current["_fetched"]
            else:
                current[TAGS.get(tag, "other")] += now - t

        def phase(name: str, method, mark: str):  # type: ignore[no-untyped-def]
            async def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
                t = time.perf_counter()
                if name == FETCH:
                    current[SCRIPT_STEP] += t - current["_prepared"]
                else:
                    current[START] += t - current["_run_opened"]
                try:
                    return await method(*args, **kwargs)
                finally:
                    current[mark] = time.perf_counter()
                    current[name] += current[mark] - t
            return wrapper

        def timed(name: str, function):  # type: ignore[no-untyped-def]
            def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
                t = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    current[name] += time.perf_counter() - t
            return wrapper

        self._patch(self._host, "open", timed_open)
        # Between the channel's opening and `_prepare`: hosts.session sends the program and
        # waits for its start marker.
        self._patch(execution._Run, "_prepare",
                    phase(PREPARE, execution._Run._prepare, "_prepared"))
        self._patch(execution._Run, "_fetch", phase(FETCH, execution._Run._fetch, "_fetched"))
        for name, label in LOCAL.items():  # the names execution.py imported from archive
            self._patch(execution, name, timed(label, getattr(archive, name)))

    def restore(self) -> None:
        for owner, name, value in reversed(self._saved):
            setattr(owner, name, value)
        self._saved.clear()

    def steps(self, total: float) -> dict[str, float]:
        """The steps of the execution just timed (the _marks left out)."""
        steps = {k: v for k, v in self.current.items() if not k.startswith("_")}
        # The local extract runs inside `_fetch`: not counted twice.
        steps[FETCH] = steps.get(FETCH, 0.0) - steps.get(LOCAL["safe_extract"], 0.0)
        steps[REST] = total - sum(v for k, v in steps.items() if k != COMMANDS)
        return {**steps, "total": total}


def connection_of(host: hosts.Host) -> asyncssh.SSHClientConnection:
    """The asyncssh connection under runaway's host, for the bare commands: one plain ssh
    exec each (no /bin/sh -s, no markers), what a user types after `ssh host`."""
    check(isinstance(host, SshHost), f"expected an ssh host, got {host!r}")
    return host.connection()


@dataclasses.dataclass
class Sequential:
    library: list[float]  # seconds of each execution through the library
    bare: list[float]  # seconds of the bare script right after it
    empty: list[float]  # seconds of `true`, the floor of any host command
    steps: list[dict[str, float]]  # each execution's seconds per step (COMMANDS: a count)
    close: float  # seconds of the session's close (deletes archives with --leave=nothing)
    uploads: int

    def per_execution(self) -> float:
        """Mean library time, the session's close spread over the executions."""
        return statistics.mean(self.library) + self.close / len(self.library)

    def overhead(self) -> float:
        return self.per_execution() - statistics.mean(self.bare)


async def overhead(code: Path, folders: list[Path], host_directory: str, leave_name: str
                   ) -> Sequential:
    """N executions one after the other through the library, on a connection opened and
    warmed up before, each followed by the bare script and an empty command over the same
    connection: interleaved, so that the machine's drift weighs on all three alike."""
    profile = profile_for(host_directory)
    leave = Leave(leave_name)
    runaway = Runaway()
    host = await runaway.host(profile)
    root = await runaway.root(host, profile)
    connection = connection_of(host)
    # Warm up the connection and host_directory, with other code than the timed runs': their
    # first execution pays the upload of theirs, as without a warm-up.
    warm = folders[0].parent / "warm"
    shutil.copytree(code, warm)
    (warm / "warm-up.txt").write_text("not the timed runs' code\n")
    await runaway.run(profile, Job(warm, "run.sh", "0", leave), Sink(), Sink())
    bare_dir = f"{root}/bare-{uuid.uuid4().hex[:8]}"
    done = await connection.run(f"mkdir -p {bare_dir} && cat > {bare_dir}/run.sh",
                                input=SCRIPT.encode(), encoding=None)
    check(done.exit_status == 0, f"cannot set up {bare_dir}: {done.stderr!r}")

    result = Sequential([], [], [], [], 0.0, 0)
    for i, folder in enumerate(folders):
        timers = Timers(host)
        timers.install()
        try:
            t = time.perf_counter()
            outcome = await runaway.run(profile, Job(folder, "run.sh", str(i), leave),
                                        Sink(), Sink())
            result.library.append(time.perf_counter() - t)
        finally:
            timers.restore()
        check(outcome.exit_code == 0, f"sequential #{i}: exit {outcome.exit_code}")
        verify(folder, i, "sequential")
        result.uploads += bool(outcome.uploaded)
        result.steps.append(timers.steps(result.library[-1]))

        t = time.perf_counter()
        done = await connection.run(f"cd {bare_dir} && sh run.sh {i}", encoding=None)
        result.bare.append(time.perf_counter() - t)
        check(done.exit_status == 0, f"bare #{i}: exit {done.exit_status}")
        t = time.perf_counter()
        await connection.run("true")
        result.empty.append(time.perf_counter() - t)

    done = await connection.run(f"cat {bare_dir}/out.txt; rm -rf {bare_dir}", encoding=None)
    check(done.stdout == f"{len(folders) - 1}\n".encode(), f"bare: out.txt {done.stdout!r}")
    t = time.perf_counter()
    await runaway.close()
    result.close = time.perf_counter() - t
    return result


async def p4(base: Path, code: Path, host_directory: str) -> tuple[int, int]:
    profile = profile_for(host_directory)
    uploaded = []
    async with Runaway() as runaway:
        for i in (1, 2):
            folder = base / f"p4-{i}"
            shutil.copytree(code, folder)  # a fresh copy of the unchanged code each time
            outcome = await runaway.run(profile, Job(folder, "run.sh", str(i), Leave.CODE),
                                        Sink(), Sink())
            check(outcome.exit_code == 0, f"P4 run {i}: exit {outcome.exit_code}")
            verify(folder, i, "P4")
            uploaded.append(outcome.uploaded)
    check(uploaded[0] > 0, f"P4: the first run uploaded {uploaded[0]} bytes, expected > 0")
    check(uploaded[1] == 0, f"P4: the second run uploaded {uploaded[1]} bytes, expected 0")
    return uploaded[0], uploaded[1]


# --- baseline: the original design, one OpenSSH connection per ssh/scp ---------------------

def baseline_one(config: str, code: Path, folder: Path, remote_parent: str, i: int) -> None:
    """mkdir; scp the code archive; ssh extract + run + tar the results; scp them back;
    extract locally; ssh rm. Five connections, as the original tool's design."""
    run_id = str(uuid.uuid4())
    remote = f"{remote_parent}/{run_id}"
    archive = folder.parent / f"{folder.name}.send.tar"
    results = folder.parent / f"{folder.name}.fetch.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(folder), "."], check=True)
    ssh(config, f"mkdir -p {remote}")
    subprocess.run(["scp", "-q", "-F", config, "-o", "ControlMaster=no", "-o",
                    "ControlPath=none", str(archive), f"{HOST}:{remote}/send.tar"],
                   check=True, timeout=120)
    ssh(config, f"cd {remote} && mkdir run && tar -xf send.tar -C run && cd run && "
        f"./run.sh {i} && tar -cf ../fetch.tar out.txt")
    subprocess.run(["scp", "-q", "-F", config, "-o", "ControlMaster=no", "-o",
                    "ControlPath=none", f"{HOST}:{remote}/fetch.tar", str(results)],
                   check=True, timeout=120)
    subprocess.run(["tar", "-xf", str(results), "-C", str(folder)], check=True)
    ssh(config, f"rm -rf {remote}")
    archive.unlink()
    results.unlink()


def baseline(config: str, code: Path, folders: list[Path], remote_parent: str,
             concurrency: int) -> float:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(baseline_one, config, code, f, remote_parent, i)
                   for i, f in enumerate(folders)]
        for future in futures:
            future.result()
    seconds = time.perf_counter() - start
    for i, folder in enumerate(folders):
        verify(folder, i, "baseline")
    return seconds


# --- main ----------------------------------------------------------------------------------

LEAVES = ("nothing", "code")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="executions (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="at a time (default 8)")
    parser.add_argument("--baseline-n", type=int, default=None,
                        help="executions of the ssh+scp baseline (default: --n)")
    args = parser.parse_args()
    config = os.environ.get("EXPEGIT_TEST_SSH_CONFIG")
    if not config:
        print("EXPEGIT_TEST_SSH_CONFIG is not set: run `SVC=/tmp/svc bash .ci/services.sh` "
              "and `source /tmp/svc/env.sh`", file=sys.stderr)
        return 2
    n, c = args.n, args.concurrency
    bn = args.baseline_n or n
    tag = uuid.uuid4().hex[:10]
    remote_ours = f"~/bench-runaway/{tag}"
    remote_base = f"bench-baseline/{tag}"
    load = os.getloadavg()[0]
    ours: dict[str, tuple[float, float, list[int]]] = {}
    sequential: dict[str, Sequential] = {}
    with tempfile.TemporaryDirectory(prefix="runaway-bench-") as tmp:
        base = Path(tmp)
        make_home(base, config)
        code = make_code(base)
        try:
            ssh(config, f"mkdir -p {remote_base}")
            for leave in LEAVES:
                cpu = time.process_time()
                seconds, uploads = asyncio.run(ours_throughput(
                    copies(code, base / f"ours-{leave}", n), f"{remote_ours}/p3-{leave}", c,
                    leave))
                ours[leave] = (seconds, (time.process_time() - cpu) / n, uploads)
            base_seconds = baseline(config, code, copies(code, base / "baseline", bn),
                                    remote_base, c)
            overhead_load = os.getloadavg()[0]
            for leave in LEAVES:
                sequential[leave] = asyncio.run(overhead(
                    code, copies(code, base / f"sequential-{leave}", n),
                    f"{remote_ours}/overhead-{leave}", leave))
            p4_first, p4_second = asyncio.run(p4(base, code, f"{remote_ours}/p4"))
            # With leave=nothing, nothing but the lock file may stay on the host.
            for folder in ("p3-nothing", "overhead-nothing"):
                left = ssh(config, f"cd {remote_ours}/{folder} && ls -A").stdout.split()
                check(left == [b".lock"], f"leave=nothing left {left} in {folder} on the host")
        except BenchmarkFailed as e:
            print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
            return 1
        finally:
            subprocess.run(ssh_cmd(config, f"rm -rf {remote_ours} {remote_base}"),
                           capture_output=True, timeout=120)

    ratio = print_throughput(ours, n, c, bn, base_seconds, load)
    worst = print_overhead(sequential, n, overhead_load)
    print("\n## P4: a second run of unchanged code (--leave=code)\n")
    print("| run | uploaded bytes |")
    print("|---|---:|")
    print(f"| first, fresh host_directory | {p4_first} |")
    print(f"| second, a fresh copy of the same code | {p4_second} |")
    print(f"\nGoals: P3 throughput >= 10x baseline: {'met' if ratio >= 10 else 'MISSED'} "
          f"(worst {ratio:.1f}x); P3 overhead <= 30 ms: {'met' if worst <= 30 else 'MISSED'} "
          f"(worst {worst:.1f} ms); P4 second upload 0 bytes: met")
    return 0


def print_throughput(ours: dict[str, tuple[float, float, list[int]]], n: int, c: int,
                     bn: int, base_seconds: float, load: float) -> float:
    """Print P3's throughput table; returns the worst ratio to the baseline."""
    base_rate = bn / base_seconds
    print(f"\n## P3: throughput, {c} at a time ({date()}, nproc {os.cpu_count()}, "
          f"Python {platform.python_version()}, load average at start {load:.2f})\n")
    print("| | executions | wall s | executions/s | vs baseline | client CPU ms/exec | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for leave in LEAVES:
        seconds, cpu, uploads = ours[leave]
        rate = n / seconds
        print(f"| ours, --leave={leave} | {n} | {seconds:.2f} | {rate:.1f} "
              f"| **{rate / base_rate:.1f}x** | {cpu * 1e3:.1f} "
              f"| {sum(1 for u in uploads if u)} uploads; includes connecting |")
    print(f"| baseline: ssh+scp, no sharing | {bn} | {base_seconds:.2f} | {base_rate:.1f} "
          f"| 1.0x | | 5 OpenSSH connections each |")
    return min(n / ours[leave][0] for leave in LEAVES) / base_rate


def print_overhead(sequential: dict[str, Sequential], n: int, load: float) -> float:
    """Print P3's overhead and step tables; returns the worst overhead in ms."""
    def row(label: str, cell) -> None:  # type: ignore[no-untyped-def]
        print(f"| {label} | " + " | ".join(cell(sequential[leave]) for leave in LEAVES) + " |")

    def ms(seconds: float) -> str:
        return f"{seconds * 1e3:.1f}"

    print(f"\n## P3: overhead per execution, sequential, connection open ({n} executions, "
          f"load average at start {load:.2f})\n")
    print("| ms per execution | " + " | ".join(f"--leave={leave}" for leave in LEAVES) + " |")
    print("|---|" + "---:|" * len(LEAVES))
    row("through the library (mean, with the session's close)",
        lambda s: ms(s.per_execution()))
    row("bare `sh run.sh` on the same connection (mean)", lambda s: ms(statistics.mean(s.bare)))
    row("**overhead** (goal <= 30)", lambda s: f"**{ms(s.overhead())}**")
    row("overhead of the medians", lambda s: ms(statistics.median(s.library)
                                                 - statistics.median(s.bare)))
    row("an empty command (`true`) on the same connection (median)",
        lambda s: ms(statistics.median(s.empty)))
    row("uploads; the session's close, ms once", lambda s: f"{s.uploads}; {ms(s.close)}")
    print("\nWhere it goes (median ms of each step per execution; an execution is one host "
          "command, `run`, timed by phase):\n")
    order = [*ORDER, "other", "total", COMMANDS]
    present = [k for k in order if any(k in steps for s in sequential.values()
                                       for steps in s.steps)]
    print("| step | " + " | ".join(f"--leave={leave}" for leave in LEAVES) + " |")
    print("|---|" + "---:|" * len(LEAVES))
    for name in present:
        row(name, functools.partial(median_step, name))
    return max(s.overhead() for s in sequential.values()) * 1e3


def median_step(name: str, sequential: Sequential) -> str:
    values = [steps.get(name, 0.0) for steps in sequential.steps]
    return f"{statistics.median(values) * (1 if name == COMMANDS else 1e3):.2f}"


def date() -> str:
    return time.strftime("%Y-%m-%d")


if __name__ == "__main__":
    sys.exit(main())
