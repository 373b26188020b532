#!/usr/bin/env python3
"""Benchmark P3 end to end: `git expegit jobs run` of N trivial executions on the loopback
sshd, W at a time, finished and pushed to a bare remote, against the original's design in
the same run (per execution: a `git runaway` process, a `git expegit finish` process and a
`git expegit sync`, W at a time). Exits 2 with `BENCHMARK FAILED: ...` when a result is
wrong, 1 with `GOAL MISSED: ...` when a goal is missed. See bench/README.md.

    source /tmp/svc/env.sh && python bench/p3_jobs.py [--n 200] [--workers 8]
    python bench/p3_jobs.py --skip-baseline --timers    # where ours' time goes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from harness import BenchmarkFailed
from harness import Shell
from harness import check
from harness import failed
from harness import make_experiment
from harness import sandbox

HOST = os.environ.get("EXPEGIT_TEST_SSH_HOST", "testhost")
PROFILE = "bench"
# The experiment: one small result file per execution, nothing else.
RUN = '#!/bin/sh\nmkdir -p data\necho "$*" > data/out.txt\necho "ran $*"\n'


def make_profile(home: Path, config: str) -> None:
    """~/.ssh/config a copy of the test sshd's, and a runaway profile `bench` for its alias,
    on a fresh host_directory."""
    (home / ".ssh").mkdir(mode=0o700)
    shutil.copy(config, home / ".ssh" / "config")
    folder = home / ".config" / "runaway"
    folder.mkdir(parents=True)
    (folder / f"{PROFILE}.yml").write_text(yaml.safe_dump({
        "ssh_config": HOST, "host_directory": f"~/runaway-bench/{uuid.uuid4().hex[:12]}",
        "execution": ["$SCRIPT_NAME $SCRIPT_ARGS"]}))


def campaign(sh: Shell, base: Path, expe: Path, name: str) -> tuple[Path, Path]:
    remote = base / f"{name}.git"
    path = base / name
    sh.expegit("init", str(expe), str(remote), str(path), cwd=base)
    return path, remote


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- ours ----------------------------------------------------------------------------------

def ours(sh: Shell, path: Path, n: int, workers: int, profile_to: Path | None,
         timers: bool = False) -> tuple[float, float]:
    """One `jobs run` (creating, queueing, running, finishing, syncing): wall s, CPU s of
    the command and all its children. With `profile_to`, run under cProfile (slower)."""
    command = ["git", "expegit", "jobs", "run", "-w", str(workers), PROFILE, "",
               f"--i=range({n})"]
    if profile_to is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile_to), "-m",
                   "git_expegit", *command[2:]]
    if timers:
        command = [sys.executable, str(Path(__file__).with_name("p3_jobs_timers.py")),
                   *command[2:]]
    cpu = children_cpu()
    start = time.perf_counter()
    done = sh.call(command, path)
    wall = time.perf_counter() - start
    check(done.returncode == 0, f"ours: exited {done.returncode}: {done.stderr[-2000:]}")
    if timers:
        print(done.stderr[done.stderr.index("\n== wall"):], file=sys.stderr)
    return wall, children_cpu() - cpu


# --- baseline: the original's design -------------------------------------------------------

def baseline(sh: Shell, path: Path, n: int, workers: int) -> tuple[float, dict[str, float]]:
    """One `exec new --sweep`, the code placed in each folder, then per execution, W at a
    time: `git runaway PROFILE run -- PARAMS` in its folder (its output kept in stdout, as
    jobs run keeps it), `git expegit finish --exit-code=N`, `git expegit sync`. Wall s and
    the medians of each step."""
    start = time.perf_counter()
    sh.expegit("exec", "new", f"--sweep=--i=range({n})", cwd=path)
    swept = time.perf_counter() - start
    listing = json.loads(sh.expegit("list", "--format=json", cwd=path))
    check(len(listing) == n, f"baseline: the sweep made {len(listing)} executions, not {n}")
    # A sweep places no code; the original's `exec new` did, one by one. The experiment is
    # one file: placing is copying it (timed, a few ms in all).
    code = (path / "xprp" / "run").read_bytes()
    for e in listing:
        run = path / e["folder"] / "run"
        run.write_bytes(code)
        run.chmod(0o755)
    steps: dict[str, list[float]] = {"runaway": [], "finish": [], "sync": []}

    def one(e: dict[str, str]) -> None:
        folder = path / e["folder"]
        t0 = time.perf_counter()
        done = sh.call(["git", "runaway", PROFILE, "run", "--",
                        *shlex.split(e["parameters"])], folder)
        t1 = time.perf_counter()
        check(done.returncode == 0, f"baseline: runaway in {folder} exited "
              f"{done.returncode}: {done.stderr.strip()[-500:]}")
        (folder / "stdout").write_text(done.stdout)
        sh.expegit("finish", f"--exit-code={done.returncode}", cwd=folder)
        t2 = time.perf_counter()
        sh.expegit("sync", cwd=folder)
        t3 = time.perf_counter()
        steps["runaway"].append(t1 - t0)
        steps["finish"].append(t2 - t1)
        steps["sync"].append(t3 - t2)

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(one, e) for e in listing]:
            future.result()
    wall = time.perf_counter() - start
    medians = {k: statistics.median(v) for k, v in steps.items()}
    medians["sweep (once)"] = swept
    return wall, medians


# --- checks ----------------------------------------------------------------------------------

def verify(sh: Shell, path: Path, remote: Path, n: int, what: str) -> None:
    """All N finished here with their result; the remote has this clone's branch and notes,
    and a fresh clone of it lists the N finished."""
    expected = {f"--i={i}" for i in range(n)}
    listing = json.loads(sh.expegit("list", "--format=json", cwd=path))
    states = Counter(e["state"] for e in listing)
    check(states == Counter({"finished": n}), f"{what}: states {dict(states)}, expected "
          f"{n} finished")
    check({e["parameters"] for e in listing} == expected, f"{what}: wrong parameters")
    for e in listing:
        out = sh.git("show", f"HEAD:{e['folder']}/data/out.txt", cwd=path)
        check(out == f"{e['parameters']}\n", f"{what}: {e['folder']}/data/out.txt holds "
              f"{out!r}")
    for ref in ("main", "refs/notes/expegit"):
        here = sh.git("rev-parse", ref, cwd=path)
        there = sh.git("rev-parse", ref, cwd=remote)
        check(here == there, f"{what}: {ref} is not pushed ({here.strip()} here, "
              f"{there.strip()} on the remote)")
    check(sh.git("status", "--porcelain", "--untracked-files=all", cwd=path) == "",
          f"{what}: the campaign's work tree is not clean")
    fresh = path.parent / f"{path.name}-fresh"
    sh.expegit("clone", str(remote), str(fresh), cwd=path.parent)
    cloned = json.loads(sh.expegit("list", "--format=json", cwd=fresh))
    check(Counter(e["state"] for e in cloned) == Counter({"finished": n}),
          f"{what}: a fresh clone of the remote does not list {n} finished executions")
    check({e["parameters"] for e in cloned} == expected, f"{what}: the remote's parameters")


def script_time(base: Path, repeat: int = 20) -> float:
    """The bare script, median s: `./run --i=K` in a folder, a process of its own."""
    folder = base / "bare"
    folder.mkdir()
    (folder / "run").write_text(RUN)
    (folder / "run").chmod(0o755)
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        subprocess.run(["./run", f"--i={i}"], cwd=folder, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- main ------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="executions (default 200)")
    parser.add_argument("--workers", type=int, default=8, help="at a time (default 8)")
    parser.add_argument("--skip-baseline", action="store_true", help="ours only")
    parser.add_argument("--profile-to", type=Path,
                        help="run ours under cProfile (python -m cProfile), stats to this "
                             "file; its wall time is then not the figure")
    parser.add_argument("--timers", action="store_true",
                        help="run ours through p3_jobs_timers.py: wall-clock timers around "
                             "the runner's parts, printed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    config = os.environ.get("EXPEGIT_TEST_SSH_CONFIG")
    if not config:
        print("EXPEGIT_TEST_SSH_CONFIG is not set: source /tmp/svc/env.sh", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    try:
        with sandbox("expegit-p3-jobs-", args.keep) as (sh, base):
            return run(sh, base, args, config, load)
    except BenchmarkFailed as e:
        return failed(e)


def run(sh: Shell, base: Path, args: argparse.Namespace, config: str, load: float) -> int:
    n, w = args.n, args.workers
    make_profile(Path(sh.env["HOME"]), config)
    expe = make_experiment(sh, base, files=0, run=RUN)  # only `run`
    mine, mine_remote = campaign(sh, base, expe, "ours")
    theirs, theirs_remote = campaign(sh, base, expe, "baseline")
    sh.run(["git", "runaway", "--check", PROFILE], base)  # the host reachable, its folder
    script = script_time(base)

    wall, cpu = ours(sh, mine, n, w, args.profile_to, args.timers)
    verify(sh, mine, mine_remote, n, "ours")
    print(f"ours: {wall:.2f} s for {n}", file=sys.stderr)
    if args.profile_to is not None:
        print(f"cProfile stats in {args.profile_to} (wall under the profiler {wall:.2f} s)")
    if args.profile_to is not None or args.timers:
        return 0
    if args.skip_baseline:
        return 0
    base_wall, steps = baseline(sh, theirs, n, w)
    verify(sh, theirs, theirs_remote, n, "baseline")
    print(f"baseline: {base_wall:.2f} s for {n}", file=sys.stderr)

    ratio = base_wall / wall
    overhead = (wall - n * script / w) / n
    base_overhead = (base_wall - n * script / w) / n
    print(f"\n### P3 end to end: {n} executions, {w} at a time, on the loopback sshd "
          f"({time.strftime('%Y-%m-%d')}, nproc {os.cpu_count()}, Python "
          f"{platform.python_version()}, load average at start {load:.2f})\n")
    print("| | wall s | executions/s | vs baseline | overhead ms/exec, amortised | "
          "CPU ms/exec (all processes here) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| ours: `jobs run -w {w} {PROFILE} \"\" \"--i=range({n})\"` | {wall:.2f} | "
          f"{n / wall:.1f} | **{ratio:.1f}x** | **{overhead * 1000:.1f}** | "
          f"{cpu / n * 1000:.1f} |")
    print(f"| baseline: sweep, then runaway + finish + sync each | {base_wall:.2f} | "
          f"{n / base_wall:.2f} | 1.0x | {base_overhead * 1000:.1f} | |")
    print(f"\nThe bare script (`./run --i=K`, a process of its own): {script * 1000:.1f} ms "
          f"(median of 20). Overhead = (wall - {n} x script / {w}) / {n}.")
    print("Baseline, median s of each step per execution: " + ", ".join(
        f"{k} {v:.2f}" for k, v in steps.items()) + ".")
    missed = []
    if ratio < 10:
        missed.append(f"throughput {ratio:.1f}x the baseline, goal >= 10x")
    if overhead > 0.030:
        missed.append(f"overhead {overhead * 1000:.1f} ms per execution, goal <= 30 ms")
    print(f"\nGoals: throughput >= 10x: {'met' if ratio >= 10 else 'MISSED'} ({ratio:.1f}x); "
          f"overhead <= 30 ms: {'met' if overhead <= 0.030 else 'MISSED'} "
          f"({overhead * 1000:.1f} ms). Checks: all {n} finished in both, pushed, "
          "listed by a fresh clone of each remote.")
    for text in missed:
        print(f"GOAL MISSED: {text}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
