#!/usr/bin/env python3
"""Benchmark P7 at scale: what one command costs in a campaign of 1,000 executions and in
one of 50,000, and what git's settings for large work trees do to plain `git status`.

Real git and git-lfs, `git expegit` run as a user types it, with its own HOME (see
harness.py). Exits 1 with `GOAL MISSED: ...` when a goal is missed, 2 with `BENCHMARK
FAILED: ...` when a result is wrong. See bench/README.md.

    python bench/p7_scale.py [--sizes 1000 50000] [--repeat 5] [--no-settings]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
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

# What git offers for large work trees (git 2.39, Linux), each measured on its own, then
# together: (label, config to set, commands that apply it to the existing index). Between
# two, everything is set back to git's defaults (UNDO).
SETTINGS: list[tuple[str, list[tuple[str, str]], list[list[str]]]] = [
    ("index.version=4", [("index.version", "4")], [["update-index", "--index-version", "4"]]),
    ("core.untrackedCache=true", [("core.untrackedCache", "true")],
     [["update-index", "--untracked-cache"]]),
    ("feature.manyFiles=true (index v4 + untracked cache)", [("feature.manyFiles", "true")],
     [["update-index", "--index-version", "4"], ["update-index", "--untracked-cache"]]),
    ("core.splitIndex=true", [("core.splitIndex", "true")], [["update-index", "--split-index"]]),
    ("manyFiles + splitIndex", [("feature.manyFiles", "true"), ("core.splitIndex", "true")],
     [["update-index", "--index-version", "4"], ["update-index", "--untracked-cache"],
      ["update-index", "--split-index"]]),
    ("manyFiles + fsmonitor (watchman hook)",
     [("feature.manyFiles", "true"), ("core.fsmonitor", ".git/hooks/fsmonitor-watchman")],
     [["update-index", "--index-version", "4"], ["update-index", "--untracked-cache"],
      ["update-index", "--fsmonitor"]]),
    ("status.showUntrackedFiles=no (reference: hides untracked files)",
     [("status.showUntrackedFiles", "no")], []),
]
UNDO = [["update-index", "--no-split-index", "--no-untracked-cache", "--no-fsmonitor",
         "--index-version", "2"]]
GOAL_RATIO = 2.0


def settle() -> None:
    """Flush what the setup wrote before timing (this disk is slow at writeback)."""
    os.sync()
    time.sleep(0.3)


def median_of(repeat: int, run: Callable[[int], float]) -> tuple[float, list[float]]:
    times = [run(i) for i in range(repeat)]
    return statistics.median(times), times


def build(sh: Shell, expe: Path, base: Path, n: int) -> tuple[Path, float, float]:
    """A campaign of `n` executions made by one sweep; returns it, the sweep's time and the
    first (cold) `status` after it."""
    parent = base / f"c{n}"
    parent.mkdir()
    sh.expegit("init", str(expe), str(parent / "campaign.git"), str(parent / "campaign"),
               cwd=parent)
    campaign = parent / "campaign"
    settle()
    sweep, out = sh.timed(["git", "expegit", "exec", "new", f"--sweep=--i=range({n})"],
                          campaign)
    check(len(out.split()) == n, f"the sweep printed {len(out.split())} folders, not {n}")
    settle()
    cold, status = sh.timed(["git", "expegit", "status"], campaign)
    check(status.splitlines()[-1].split() == ["total", str(n)], f"status says {status!r}")
    return campaign, sweep, cold


def measure(sh: Shell, campaign: Path, n: int, repeat: int) -> dict[str, tuple[float, list[float]]]:
    """Median wall times of one exec new, one finish from its folder, warm status and plain
    git status."""
    folders: list[Path] = []
    results: dict[str, tuple[float, list[float]]] = {}

    def new(i: int) -> float:
        settle()
        seconds, out = sh.timed(["git", "expegit", "exec", "new", "--", f"--one={i}"], campaign)
        folders.append(campaign / out.strip())
        check(folders[-1].joinpath("run").exists(), "exec new placed no code")
        return seconds

    def finish(i: int) -> float:
        folder = folders[i]
        (folder / "data" / "result.txt").write_text(f"result {i}\n")
        settle()
        seconds, _ = sh.timed(["git", "expegit", "finish", "--exit-code=0"], folder)
        check(not folder.joinpath("run").exists(), "finish left the code")
        return seconds

    results["exec new (one)"] = median_of(repeat, new)
    results["finish (one, from its folder)"] = median_of(repeat, finish)
    total = n + repeat
    first, out = sh.timed(["git", "expegit", "status"], campaign)
    check(f"finished  {repeat}" in out and out.splitlines()[-1].split() == ["total", str(total)],
          f"status after the finishes says {out!r}")
    results["status after them (first)"] = (first, [first])

    def status(_: int) -> float:
        seconds, again = sh.timed(["git", "expegit", "status"], campaign)
        check(again == out, "warm status printed something else")
        return seconds

    results["status (warm)"] = median_of(repeat, status)
    results["git status (plain)"] = plain_git_status(sh, campaign, repeat)
    sh.expegit("exec", "new", "--sweep=--more=range(1000)", cwd=campaign)
    settle()
    first, out = sh.timed(["git", "expegit", "status"], campaign)
    check(out.splitlines()[-1].split() == ["total", str(total + 1000)], f"status says {out!r}")
    results["status after a sweep of 1000 (first)"] = (first, [first])
    return results


def plain_git_status(sh: Shell, campaign: Path, repeat: int) -> tuple[float, list[float]]:
    for _ in range(2):  # warm the caches the settings add (written by the first)
        sh.git("status", "--porcelain", cwd=campaign)

    def once(_: int) -> float:
        seconds, out = sh.timed(["git", "status", "--porcelain"], campaign)
        check(out == "", f"git status shows changes: {out[:200]!r}")
        return seconds

    return median_of(repeat, once)


def with_settings(sh: Shell, campaign: Path, repeat: int
                  ) -> list[tuple[str, tuple[float, list[float]], tuple[float, list[float]]]]:
    """Plain `git status` and one `exec new` with each setting, applied to the campaign in
    place and taken back after (copies would start with cold caches and stale stat data)."""
    rows = []
    for label, configs, commands in SETTINGS:
        if any(key == "core.fsmonitor" for key, _ in configs) and not _watchman(campaign):
            continue
        for key, value in configs:
            sh.git("config", key, value, cwd=campaign)
        for command in commands:
            sh.git(*command, cwd=campaign)
        settle()
        git_status = plain_git_status(sh, campaign, repeat)

        def new(i: int) -> float:
            settle()
            return sh.timed(["git", "expegit", "exec", "new", "--", f"--s={i}"], campaign)[0]

        rows.append((label, git_status, median_of(repeat, new)))
        for key, _ in configs:
            sh.git("config", "--unset", key, cwd=campaign)
        for command in UNDO:
            sh.git(*command, cwd=campaign)
    return rows


def _watchman(campaign: Path) -> bool:
    """The hook git ships for fsmonitor, installed, when watchman is (it is not part of
    git: a daemon the user would have to run)."""
    hook = campaign / ".git" / "hooks" / "fsmonitor-watchman"
    sample = hook.with_name("fsmonitor-watchman.sample")
    if shutil.which("watchman") is None or not sample.is_file():
        return False
    shutil.copy(sample, hook)
    hook.chmod(0o755)
    return subprocess.run(["watchman", "watch", str(campaign)], capture_output=True
                          ).returncode == 0


def fmt(value: tuple[float, list[float]]) -> str:
    return f"{value[0]:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 50000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-settings", action="store_true",
                        help="skip the measures of git's settings for large work trees")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--settings-in", type=Path, metavar="CAMPAIGN",
                        help="only measure git's settings, in this existing campaign")
    args = parser.parse_args()
    if args.settings_in is not None:
        return settings_only(args.settings_in.absolute(), args.repeat)
    small, large = args.sizes
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
    print(f"P7 at scale ({time.strftime('%Y-%m-%d')}, nproc {os.cpu_count()}, Python "
          f"{platform.python_version()}, {git_version.strip()}, load average at start "
          f"{os.getloadavg()[0]:.2f})\n")
    try:
        with sandbox("p7-", args.keep) as (sh, base):
            expe = make_experiment(sh, base)
            figures, builds, campaigns = {}, {}, {}
            for n in (small, large):
                campaigns[n], sweep, cold = build(sh, expe, base, n)
                builds[n] = (sweep, cold)
                figures[n] = measure(sh, campaigns[n], n, args.repeat)
            report(small, large, figures, builds, args.repeat)
            if not args.no_settings:
                print(f"\n### Plain git status and one exec new at {large} with git's "
                      "settings for large work trees\n")
                print("| setting | git status s (median) | exec new s (median) |")
                print("|---|---:|---:|")
                base_row = figures[large]
                print(f"| none (git's defaults) | {fmt(base_row['git status (plain)'])} | "
                      f"{fmt(base_row['exec new (one)'])} |")
                for label, git_status, new in with_settings(sh, campaigns[large], args.repeat):
                    print(f"| {label} | {fmt(git_status)} | {fmt(new)} |")
            missed = [k for k in ("exec new (one)", "finish (one, from its folder)",
                                  "status (warm)")
                      if figures[large][k][0] > GOAL_RATIO * figures[small][k][0]]
    except BenchmarkFailed as error:
        return failed(error)
    if missed:
        print(f"GOAL MISSED: {', '.join(missed)} at {large} cost more than {GOAL_RATIO}x "
              f"{small}", file=sys.stderr)
        return 1
    return 0


def settings_only(campaign: Path, repeat: int) -> int:
    """git's settings in an existing campaign (its own git config is changed and taken
    back): defaults first and last, to see how much the machine drifted meanwhile."""
    sh = Shell({**os.environ})
    n = len(sh.git("ls-files", cwd=campaign).splitlines())
    print(f"### Plain git status and one exec new in a campaign of {n} files in the index "
          f"(load average at start {os.getloadavg()[0]:.2f})\n")
    print("| setting | git status s (median) | exec new s (median) |")
    print("|---|---:|---:|")
    try:
        for label, git_status, new in [*defaults(sh, campaign, repeat),
                                       *with_settings(sh, campaign, repeat),
                                       *defaults(sh, campaign, repeat)]:
            print(f"| {label} | {fmt(git_status)} | {fmt(new)} |", flush=True)
    except BenchmarkFailed as error:
        return failed(error)
    return 0


def defaults(sh: Shell, campaign: Path, repeat: int
             ) -> list[tuple[str, tuple[float, list[float]], tuple[float, list[float]]]]:
    git_status = plain_git_status(sh, campaign, repeat)
    new = median_of(repeat, lambda i: sh.timed(["git", "expegit", "exec", "new", "--",
                                                f"--d={i}"], campaign)[0])
    return [("none (git's defaults)", git_status, new)]


def report(small: int, large: int, figures: dict[int, dict[str, tuple[float, list[float]]]],
           builds: dict[int, tuple[float, float]], repeat: int) -> None:
    print(f"| command (wall s, median of {repeat}) | {small} | {large} | {large}/{small} | "
          f"runs at {large} |")
    print("|---|---:|---:|---:|---|")
    for key in figures[small]:
        a, b = figures[small][key][0], figures[large][key][0]
        runs = ", ".join(f"{t:.3f}" for t in figures[large][key][1])
        goal = key in ("exec new (one)", "finish (one, from its folder)", "status (warm)")
        ratio = f"**{b / a:.2f}x**" if goal else f"{b / a:.2f}x"
        print(f"| {key} | {a:.3f} | {b:.3f} | {ratio} | {runs} |")
    for i, key in enumerate(("the sweep that made them", "first status after it (cold)")):
        a, b = builds[small][i], builds[large][i]
        print(f"| {key} | {a:.3f} | {b:.3f} | {b / a:.2f}x | |")


if __name__ == "__main__":
    sys.exit(main())
