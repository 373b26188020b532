#!/usr/bin/env python3
"""Benchmark P8: the post-commit hook's latency for a commit that requests 1,000 executions.

In one campaign (its own HOME, a bare remote), timed as a user feels it, `git commit
--allow-empty` from start to end, N times each, in this order:

  bare      no post-commit hook at all (git-lfs's moved aside): git itself
  lfs       the campaign as init leaves it: git-lfs's post-commit hook
  plain     expegit's hook installed (git-lfs's chained after it), a commit that requests
            nothing: what every commit pays
  request   the same, a commit with `Expegit-Sweep: --seed=range(1000)` and
            `Expegit-Profile: local`: the hook reads it, checks it and spools it

Goal: request - lfs <= 0.3 s (what expegit's hook adds to the commit). Then every request
must be spooled, and one of them is expanded (what the agent does) to check that it gives
1,000 queued executions; that expansion is timed too, for information. The hook does not
start the agent here (EXPEGIT_AGENT=off) unless --agent is given.

    python bench/p8_hook.py [--n 20] [--agent]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import BenchmarkFailed
from harness import Shell
from harness import check
from harness import failed
from harness import make_experiment
from harness import sandbox

GOAL = 0.3
SIZE = 1000


def commits(sh: Shell, campaign: Path, n: int, *trailers: str) -> list[tuple[float, float]]:
    """Each commit's wall time and CPU time (git's, the hooks' and all they started: a
    figure the machine's load does not inflate)."""
    times = []
    for i in range(n):
        args = ["git", "commit", "-q", "--allow-empty", "-m", f"commit {i}"]
        for trailer in trailers:
            args += ["--trailer", trailer.format(i=i)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds, _ = sh.timed(args, campaign)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append((seconds, after.ru_utime - before.ru_utime
                       + after.ru_stime - before.ru_stime))
    return times


def median(times: list[tuple[float, float]], which: int = 0) -> float:
    return statistics.median(t[which] for t in times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--agent", action="store_true", help="let the hook start the agent")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    try:
        with sandbox("p8-", args.keep) as (sh, base):
            if not args.agent:
                sh.env["EXPEGIT_AGENT"] = "off"
            return run(sh, base, args.n)
    except BenchmarkFailed as e:
        return failed(e)


def run(sh: Shell, base: Path, n: int) -> int:
    experiment = make_experiment(sh, base)
    campaign = base / "campaign"
    sh.expegit("init", str(experiment), str(base / "campaign.git"), str(campaign), cwd=base)
    hooks = campaign / ".git" / "hooks"
    lfs_hook = hooks / "post-commit"
    aside = hooks / "post-commit.lfs-aside"
    load = os.getloadavg()[0]

    lfs_hook.rename(aside)
    bare = commits(sh, campaign, n)
    aside.rename(lfs_hook)
    lfs = commits(sh, campaign, n)
    sh.expegit("hooks", "install", cwd=campaign)
    check((hooks / "post-commit.expegit-chained").exists(), "git-lfs's hook is not chained")
    plain = commits(sh, campaign, n)
    request = commits(sh, campaign, n, f"Expegit-Sweep: --seed=range({SIZE})",
                      "Expegit-Profile: local", "Expegit-Name: p8-{i}")

    spool = sorted((campaign / ".git" / "expegit" / "requests").glob("*.json"))
    check(len(spool) == n, f"{len(spool)} requests spooled, not {n}")
    keep = spool[0]
    for path in spool[1:]:
        path.unlink()
    start = time.perf_counter()
    done = sh.call([sys.executable, "-c", "from pathlib import Path; from git_expegit import "
                    "campaign, requests; print(sum(len(b.ids) for b in "
                    "requests.expand_pending(campaign.find(Path.cwd()))))"], campaign)
    expansion = time.perf_counter() - start
    check(done.returncode == 0, f"expand_pending failed: {done.stderr[-2000:]}")
    check(done.stdout.strip() == str(SIZE), f"expanded {done.stdout.strip()}, not {SIZE}")
    listed = json.loads(sh.expegit("list", "--format=json", cwd=campaign))
    check(len(listed) == SIZE and {e["state"] for e in listed} == {"queued"},
          "the expansion did not queue 1,000 executions")
    check(not keep.exists(), "the expanded request is still spooled")

    git_version = subprocess.run(["git", "--version"], capture_output=True,
                                 text=True).stdout.strip()
    print(f"### P8: the hook's latency, {SIZE} executions requested ({time.strftime('%Y-%m-%d')}"
          f", nproc {os.cpu_count()}, Python {platform.python_version()}, {git_version}, "
          f"load average at start {load:.2f})\n")
    print(f"`git commit --allow-empty`, {n} times each, in ms: wall time, and CPU time of git, "
          "the hooks and all they started:\n")
    print("| commit | wall median | wall min | wall max | CPU median |\n"
          "|---|---:|---:|---:|---:|")
    rows = [("bare: no post-commit hook", bare), ("lfs: git-lfs's hook (the campaign as "
            "init leaves it)", lfs), ("plain: expegit's hook, no request", plain),
            (f"request: expegit's hook, {SIZE} executions requested", request)]
    for name, times in rows:
        walls = [t[0] for t in times]
        print(f"| {name} | {median(times) * 1000:.0f} | {min(walls) * 1000:.0f} "
              f"| {max(walls) * 1000:.0f} | {median(times, 1) * 1000:.0f} |")
    added = median(request) - median(lfs)
    print(f"\nWhat expegit's hook adds to a commit requesting {SIZE} executions (request - lfs, "
          f"medians): **{added * 1000:.0f} ms** wall (goal <= {GOAL * 1000:.0f} ms), "
          f"{(median(request, 1) - median(lfs, 1)) * 1000:.0f} ms CPU; to a commit that "
          f"requests nothing (plain - lfs): {(median(plain) - median(lfs)) * 1000:.0f} ms "
          f"wall, {(median(plain, 1) - median(lfs, 1)) * 1000:.0f} ms CPU; the whole request "
          f"commit over a bare one (request - bare): "
          f"{(median(request) - median(bare)) * 1000:.0f} ms wall.")
    print(f"\nThe agent's side, for information: expanding one request into {SIZE} queued "
          f"executions (expand_pending in a new process) took {expansion:.2f} s.")
    check(added <= GOAL, f"the hook adds {added:.3f} s, over the goal of {GOAL} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
