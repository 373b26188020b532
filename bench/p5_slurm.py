#!/usr/bin/env python3
"""Benchmark P5: a 100-execution sweep submitted to Slurm as one job array, against 100
separate submissions (one `sbatch` each) over the same ssh connection, in the same run; then
how long the array's sweep takes to complete on the cluster, every result collected.

Needs the loopback sshd and the single-node Slurm of `.ci/services.sh`
(EXPEGIT_TEST_SSH_CONFIG, alias `testhost`; EXPEGIT_TEST_SLURM). Runs with its own HOME,
holding a copy of that config as ~/.ssh/config, as a user would. Exits 1 with `BENCHMARK
FAILED: ...` if any execution's result is wrong, `GOAL MISSED` below 10x. See bench/README.md.

    python bench/p5_slurm.py [--n 100]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import make_home

from git_runaway.execution import Job
from git_runaway.execution import Runaway
from git_runaway.profiles import Profile
from git_runaway.schedulers.sbatch import Handle
from git_runaway.schedulers.slurm import Sbatch

HOST = os.environ.get("EXPEGIT_TEST_SSH_HOST", "testhost")
PARTITION = os.environ.get("EXPEGIT_TEST_SLURM_PARTITION", "debug")
SCRIPT = "#!/bin/sh\necho $1 > out.txt\n"
GOAL = 10.0


class BenchmarkFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchmarkFailed(message)


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk


def ssh(config: str, command: str) -> str:
    done = subprocess.run(["ssh", "-F", config, HOST, command], capture_output=True, text=True,
                          timeout=120)
    check(done.returncode == 0, f"ssh {command!r}: {done.stderr.strip()}")
    return done.stdout


@dataclasses.dataclass
class Figures:
    n: int
    array_submit: float = 0.0  # one Runaway.submit of n jobs: one sbatch
    separate_submit: float = 0.0  # n Runaway.submit of one job each: n sbatch
    sweep: float = 0.0  # from the array's submit to its last result collected here
    first_end: float = 0.0  # from the array's submit to its first result collected


async def measure(profile: Profile, code: Path, results: Path, n: int) -> Figures:
    figures = Figures(n)
    jobs = [Job(code, "run.sh", str(i), results=results / str(i)) for i in range(n)]
    async with Runaway() as session:
        # Warm-up: connect, create host_directory, upload the code (one job, collected), so
        # that both timed parts run on an open connection to a host that has the code.
        [warm] = await session.submit(profile, [Job(code, "run.sh", "warm",
                                                    results=results / "warm")])
        await collect(session, profile, Job(code, "run.sh", "warm", results=results / "warm"),
                      warm)

        # The baseline first: its jobs are cancelled at once, so that they do not hold the
        # cluster while the array runs.
        start = time.perf_counter()
        separate: list[Handle] = []
        for job in jobs:
            separate += await session.submit(profile, [job])
        figures.separate_submit = time.perf_counter() - start
        await session.cancel_jobs(profile, [h.job for h in separate])

        start = time.perf_counter()
        array = await session.submit(profile, jobs)
        figures.array_submit = time.perf_counter() - start
        check(len({h.job.split("_")[0] for h in array}) == 1, "the array is not one job")

        ends: list[float] = []

        async def one(job: Job, handle: Handle) -> None:
            await collect(session, profile, job, handle)
            ends.append(time.perf_counter() - start)

        await asyncio.gather(*(one(job, handle) for job, handle in zip(jobs, array, strict=True)))
        figures.sweep, figures.first_end = max(ends), min(ends)
        for i in range(n):
            out = results / str(i) / "out.txt"
            check(out.is_file() and out.read_text() == f"{i}\n",
                  f"array task {i}: out.txt is {out.read_text() if out.is_file() else 'missing'}")
        # The cancelled baseline: collect what each left (most never started), which also
        # removes its task files from the host. (A one-task array cancelled before Slurm
        # split it has only its array's record: squeue forgets the task, LOST here.)
        outcomes = await asyncio.gather(*(session.attach(profile, dataclasses.replace(
            job, run_id=handle.run_id, results=results / f"separate-{job.arguments}"),
            Sink(), Sink()) for job, handle in zip(jobs, separate, strict=True)))
        for handle, outcome in zip(separate, outcomes, strict=True):
            check(outcome.where.get("state") in ("CANCELLED", "COMPLETED", "LOST"),
                  f"baseline job {handle.job} ended {outcome.where.get('state')}")
    return figures


async def collect(session: Runaway, profile: Profile, job: Job, handle: Handle) -> None:
    out, err = Sink(), Sink()
    outcome = await session.attach(profile, dataclasses.replace(job, run_id=handle.run_id),
                                   out, err)
    check(outcome.exit_code == 0 and outcome.where.get("state") == "COMPLETED",
          f"{handle.job}: exit {outcome.exit_code}, state {outcome.where.get('state')}, "
          f"stderr {bytes(err.data)[-300:]!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="executions (default 100)")
    parser.add_argument("--poll", type=float, default=1.0,
                        help="RUNAWAY_SLURM_POLL, the longest poll interval (default 1 s)")
    args = parser.parse_args()
    config = os.environ.get("EXPEGIT_TEST_SSH_CONFIG")
    if not config or not os.environ.get("EXPEGIT_TEST_SLURM"):
        print("no sshd or Slurm: run `SVC=/tmp/svc bash .ci/services.sh` and "
              "`source /tmp/svc/env.sh`", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    host_directory = f"~/bench-runaway/p5-{uuid.uuid4().hex[:10]}"
    profile = Profile(name="p5", ssh_config=HOST, host_directory=host_directory,
                      before_execution=(), execution=("$SCRIPT_NAME $SCRIPT_ARGS",),
                      after_execution=(), source="bench/p5_slurm.py",
                      sbatch=Sbatch((("partition", PARTITION), ("time", "5"))))
    with tempfile.TemporaryDirectory(prefix="runaway-p5-") as tmp:
        base = Path(tmp)
        make_home(base, config)
        os.environ["RUNAWAY_SLURM_POLL"] = str(args.poll)
        code = base / "code"
        code.mkdir()
        (code / "run.sh").write_text(SCRIPT)
        (code / "run.sh").chmod(0o755)
        version = ssh(config, "sbatch --version").strip()
        cpus = ssh(config, "sinfo -h -o %C").strip()  # allocated/idle/other/total
        try:
            figures = asyncio.run(measure(profile, code, base / "results", args.n))
        except BenchmarkFailed as e:
            print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
            return 1
        finally:
            ssh(config, f"rm -rf {host_directory}")
    ratio = figures.separate_submit / figures.array_submit
    n = figures.n
    print(f"P5, {n} executions on {HOST} ({version}, node CPUs A/I/O/T {cpus}); nproc "
          f"{os.cpu_count()}, Python {platform.python_version()}, load average at start "
          f"{load:.2f}, RUNAWAY_SLURM_POLL={args.poll:g}")
    print("| submission | sbatch calls | submit s | ms per execution | vs separate |")
    print("|---|---:|---:|---:|---:|")
    print(f"| one job array (`Runaway.submit`, {n} jobs) | 1 | {figures.array_submit:.3f} | "
          f"{1000 * figures.array_submit / n:.1f} | **{ratio:.1f}x** |")
    print(f"| separate: {n} `Runaway.submit` of one job, in turn, one connection | {n} | "
          f"{figures.separate_submit:.3f} | {1000 * figures.separate_submit / n:.1f} | 1.0x |")
    print(f"sweep: the array's {n} tasks completed and collected {figures.sweep:.1f} s after "
          f"its submission began (first result after {figures.first_end:.1f} s)")
    if ratio < GOAL:
        print(f"GOAL MISSED: {ratio:.1f}x < {GOAL:g}x", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
