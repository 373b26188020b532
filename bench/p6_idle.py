#!/usr/bin/env python3
"""Benchmark P6: what an idle agent costs. Goal: over 60 s, CPU time <= 0.1 s and RSS <= 80 MB.

A campaign with a bare remote (its own HOME, see harness.py); `git expegit agent start`;
the agent's CPU time (utime + stime from /proc/PID/stat) and RSS (VmRSS from
/proc/PID/status) over SECONDS of idleness, twice: just started, and after it ran and
synced a batch of 4 executions on `local` (everything it imports for a run is loaded then).
Exits 1 with `GOAL MISSED: ...` when a goal is missed, 2 with `BENCHMARK FAILED: ...` when
something does not work. See bench/README.md.

    python bench/p6_idle.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness import BenchmarkFailed
from harness import Shell
from harness import check
from harness import failed
from harness import make_experiment
from harness import sandbox

CPU_GOAL = 0.1  # seconds over the measure
RSS_GOAL = 80 * 1024 * 1024


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchmarkFailed(f"no VmRSS for pid {pid}")


def wait_for(check_: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check_():
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"timed out waiting for {what}")
        time.sleep(0.2)


def measure(pid: int, seconds: float, label: str) -> tuple[float, int]:
    before, start = cpu(pid), time.monotonic()
    time.sleep(seconds)
    check(os.path.exists(f"/proc/{pid}"), f"the agent exited during the measure ({label})")
    used, memory = cpu(pid) - before, rss(pid)
    print(f"{label:<28} {seconds:.0f} s idle: CPU {used:.3f} s, RSS {memory / 2**20:.1f} MiB "
          f"(wall {time.monotonic() - start:.1f} s)")
    return used, memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    try:
        with sandbox("p6-", args.keep) as (sh, base):
            return run(sh, base, args.seconds)
    except BenchmarkFailed as e:
        return failed(e)


def run(sh: Shell, base: Path, seconds: float) -> int:
    experiment = make_experiment(sh, base)
    campaign = base / "campaign"
    sh.expegit("init", str(experiment), str(base / "campaign.git"), str(campaign), cwd=base)
    sh.git("config", "expegit.agentIdleSeconds", str(int(3 * seconds + 600)), cwd=campaign)
    sh.expegit("agent", "start", cwd=campaign)
    pid = int((campaign / ".git" / "expegit" / "agent.pid").read_text())
    log = campaign / ".git" / "expegit" / "agent.log"
    wait_for(lambda: "started" in log.read_text(), "the agent's first line")
    print(f"load average at start: {os.getloadavg()[0]:.2f}; agent pid {pid}")
    results = [measure(pid, seconds, "just started")]
    sh.expegit("jobs", "run", "--detach", "local", "", "--", "--x=range(4)", cwd=campaign)
    wait_for(lambda: "synced" in log.read_text(), "the batch to finish and sync")
    counts = sh.expegit("status", cwd=campaign)
    check("finished  4" in counts, f"the batch did not finish: {counts}")
    time.sleep(2)  # let the wakes of its own sync settle before measuring
    results.append(measure(pid, seconds, "after a batch and a sync"))
    sh.expegit("agent", "stop", cwd=campaign)
    scaled = [(used * 60 / seconds, memory) for used, memory in results]
    missed = [f"CPU {used:.3f} s per 60 s > {CPU_GOAL} s" for used, _ in scaled
              if used > CPU_GOAL]
    missed += [f"RSS {memory / 2**20:.1f} MiB > 80 MiB" for _, memory in scaled
               if memory > RSS_GOAL]
    if missed:
        print(f"GOAL MISSED: {'; '.join(missed)}", file=sys.stderr)
        return 1
    print(f"goals met: CPU <= {CPU_GOAL} s per 60 s idle, RSS <= 80 MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
