#!/usr/bin/env python3
"""Benchmarks P1 (creating executions in one operation) and P2 (status and list).

Real git and git-lfs, real bare remotes, and `git expegit` run as a user types it, with its
own HOME and git config. Exits 1 with `GOAL MISSED: ...` when a goal is missed and 2 with
`BENCHMARK FAILED: ...` when a result is wrong. See bench/README.md.

    python bench/p1_p2.py [--n 1000] [--fill-sweeps 10] [--baseline-n 200] [--repeat 5]
                          [--p2-sample 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from harness import BenchmarkFailed
from harness import Shell
from harness import check
from harness import failed
from harness import make_experiment
from harness import sandbox
from harness import storage

from git_expegit.executions import GITIGNORE
from git_expegit.executions import LFS_ATTRIBUTES

TRAILERS = ("Expegit-Execution", "Expegit-Commit", "Expegit-Parameters", "Expegit-Profile",
            "Expegit-Status")


def new_campaign(sh: Shell, expe: Path, parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    sh.expegit("init", str(expe), str(parent / f"{name}.git"), str(parent / name), cwd=parent)
    return parent / name


def sweep(sh: Shell, campaign: Path, n: int) -> tuple[float, float]:
    """`git expegit exec new --sweep 'seed=range(n)'`: its wall time, and the part of it
    spent by `git read-tree -m -u` writing the new folders into the work tree (from git's
    trace2 events); checks its output."""
    settle()
    events = campaign.parent / "trace2.json"
    events.unlink(missing_ok=True)
    seconds, out = sh.timed(["git", "expegit", "exec", "new", f"--sweep=seed=range({n})"],
                            campaign, env={"GIT_TRACE2_EVENT": str(events)})
    folders = out.split()
    check(len(folders) == n == len(set(folders)), f"exec new --sweep printed {len(folders)} "
          f"folders ({len(set(folders))} distinct), expected {n}")
    check(all((campaign / f / ".gitignore").is_file() for f in folders[:: max(1, n // 50)]),
          "a new execution's folder has no .gitignore in the work tree")
    return seconds, work_tree_seconds(events)


def work_tree_seconds(events: Path) -> float:
    """The total time of the `git read-tree` processes in a trace2 event file."""
    argv, total = {}, 0.0
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "start":
            argv[event["sid"]] = event["argv"]
        elif event["event"] == "exit" and argv.get(event["sid"], [""])[1:2] == ["read-tree"]:
            total += event["t_abs"]
    return total


def settle() -> None:
    """Flush what the setup wrote (copies, campaigns) before timing: on this machine's disk
    the writeback of a 10,000-folder copy otherwise slows the next command's mkdirs."""
    os.sync()
    time.sleep(0.5)


def commits(sh: Shell, repo: Path) -> int:
    return int(sh.git("rev-list", "--count", "HEAD", cwd=repo))


# --- P1 ----------------------------------------------------------------------------------

def baseline_p1(sh: Shell, expe: Path, base: Path, n: int, hooks: bool
                ) -> tuple[float, dict[str, int]]:
    """The seed's design in a campaign made like ours (`git expegit init`, so with the same
    LFS hooks; `hooks=False` turns them off with core.hooksPath): per execution a folder
    excs/<uuid>/ with our .gitignore and data/lfs/.gitattributes, then one `git add` and one
    `git commit`. Returns the wall time for n executions."""
    campaign = new_campaign(sh, expe, base / f"seed-{'hooks' if hooks else 'nohooks'}",
                            "campaign")
    pinned = sh.git("rev-parse", "HEAD:xprp", cwd=campaign).strip()
    before = commits(sh, campaign)
    config = [] if hooks else ["-c", "core.hooksPath=/dev/null"]
    settle()
    start = time.perf_counter()
    for i in range(n):
        eid = str(uuid.uuid4())
        folder = campaign / "excs" / eid
        (folder / "data" / "lfs").mkdir(parents=True)
        (folder / ".gitignore").write_bytes(GITIGNORE)
        (folder / "data" / "lfs" / ".gitattributes").write_bytes(LFS_ATTRIBUTES)
        sh.git(*config, "add", "--", f"excs/{eid}", cwd=campaign)
        sh.git(*config, "commit", "-q", "-m", f"Create execution {eid[:8]}\n\n"
               f"Expegit-Execution: {eid}\nExpegit-Commit: {pinned}\n"
               f"Expegit-Parameters: seed={i}\n", cwd=campaign)
    seconds = time.perf_counter() - start
    check(commits(sh, campaign) == before + n, "the baseline did not make one commit each")
    return seconds, storage(sh, campaign)


def undo_sweep(sh: Shell, campaign: Path, refs: dict[str, str], packs: set[Path]) -> None:
    """Bring a campaign back to where it was before a sweep: its refs, its work tree and
    index (as `git checkout` would), and no new pack; only reflogs keep a trace."""
    tree_now = sh.git("rev-parse", "HEAD^{tree}", cwd=campaign).strip()
    for ref, oid in refs.items():
        sh.git("update-ref", ref, oid, cwd=campaign)
    sh.git("read-tree", "-m", "-u", tree_now, f"{refs['refs/heads/main']}^{{tree}}",
           cwd=campaign)
    for pack in pack_files(campaign) - packs:
        for suffix in (".pack", ".idx", ".rev"):
            pack.with_suffix(suffix).unlink(missing_ok=True)
    check(sh.git("status", "--porcelain", cwd=campaign) == "", "the undone sweep left changes")


def pack_files(campaign: Path) -> set[Path]:
    return set((campaign / ".git" / "objects" / "pack").glob("pack-*.pack"))


# --- P2 ----------------------------------------------------------------------------------

def finish_some(sh: Shell, campaign: Path, finished: int, failed: int) -> None:
    """Finish a few executions (a result file in data/ first), so that states differ."""
    listing = json.loads(sh.expegit("list", "--format=json", cwd=campaign))
    for i, e in enumerate(listing[: finished + failed]):
        data = campaign / "excs" / e["id"][:2] / e["id"] / "data"
        (data / "result.txt").write_text(f"{e['parameters']}\n")
        code = "0" if i < finished else "1"
        sh.expegit("finish", e["id"], f"--exit-code={code}", cwd=campaign)


def read_status(out: str) -> dict[str, int]:
    return {state: int(count) for state, count in (line.split() for line in out.splitlines())}


def p2_ours(sh: Shell, campaign: Path, command: list[str], warm: int
            ) -> tuple[float, list[float], str]:
    """The first call without the catalog cache, then `warm` calls with it."""
    cache = campaign / ".git" / "expegit" / "catalog"
    shutil.rmtree(cache, ignore_errors=True)
    settle()
    cold, out = sh.timed(command, campaign)
    check((cache / "index.json").is_file(), f"`{' '.join(command)}` wrote no {cache}")
    times = []
    for _ in range(warm):
        seconds, again = sh.timed(command, campaign)
        check(again == out, f"`{' '.join(command)}` printed something else when warm")
        times.append(seconds)
    return cold, times, out


def p2_baseline(sh: Shell, campaign: Path, sample: int
                ) -> tuple[float, float, int, dict[str, int]]:
    """The seed's way: one `git log` with the trailers of every commit, then one `git notes
    show` per execution (timed on `sample` executions). Returns the log's time, the notes'
    time for the sample, the number of executions and the states the sample read."""
    keys = ",".join(f"key={k}" for k in TRAILERS)
    form = f"--format=%H%x00%(trailers:{keys},separator=%x1f)%x1e"
    seconds_log, out = sh.timed(["git", "log", form], campaign)
    creations = []
    for record in out.split("\x1e"):
        if "\x00" not in record:
            continue
        commit, _, trailers = record.strip().partition("\x00")
        fields = dict(t.split(": ", 1) for t in trailers.split("\x1f") if ": " in t)
        if "Expegit-Execution" in fields and "Expegit-Status" not in fields:
            creations.append(commit)
    states: dict[str, int] = {}
    start = time.perf_counter()
    for commit in creations[:sample]:
        log = sh.git("notes", "--ref=expegit", "show", commit, cwd=campaign).split("\n")
        kinds = [line.split(" ")[1] for line in log if " " in line]
        state = next((k for k in reversed(kinds) if k in ("created", "finished", "failed")),
                     "?")
        states[state] = states.get(state, 0) + 1
    seconds_notes = time.perf_counter() - start
    return seconds_log, seconds_notes, len(creations), states


# --- main ----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000,
                        help="executions per sweep (default 1000)")
    parser.add_argument("--fill-sweeps", type=int, default=10,
                        help="sweeps of --n that fill the full campaign (default 10)")
    parser.add_argument("--baseline-n", type=int, default=200,
                        help="executions of the add+commit baseline, scaled to --n (200)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed sweeps in each campaign; the median is kept (default 5)")
    parser.add_argument("--warm", type=int, default=5, help="warm P2 calls (default 5)")
    parser.add_argument("--p2-sample", type=int, default=500,
                        help="executions the P2 baseline reads notes of, scaled (500)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    n, bn = args.n, min(args.baseline_n, args.n)
    load = os.getloadavg()[0]
    try:
        with sandbox("expegit-bench-", args.keep) as (sh, base):
            results = run(sh, base, args, n, bn)
    except BenchmarkFailed as e:
        return failed(e)
    return report(results, args, n, bn, load)


Storage = dict[str, int]
Sweeps = list[tuple[float, float]]  # (wall s, work tree s) of each timed sweep


@dataclass
class Results:
    startup: float = 0.0
    fill: list[float] = field(default_factory=list)
    total: int = 0
    status: tuple[float, list[float]] = (0.0, [])  # cold s, warm s
    listing: tuple[float, list[float]] = (0.0, [])
    # git log s, git notes show s for `sample` executions, sample, executions
    p2_baseline: tuple[float, float, int, int] = (0.0, 0.0, 1, 0)
    empty: Sweeps = field(default_factory=list)
    full: Sweeps = field(default_factory=list)
    baseline: float = 0.0  # seconds for --baseline-n executions
    baseline_nohooks: float = 0.0
    storage: dict[str, Storage] = field(default_factory=dict)


def run(sh: Shell, base: Path, args: argparse.Namespace, n: int, bn: int) -> Results:
    expe = make_experiment(sh, base)
    r = Results()
    # The fixed cost of every command: git, Python and its imports.
    r.startup = statistics.median(sh.timed(["git", "expegit", "-h"], base)[0]
                                  for _ in range(5))

    # The full campaign: --fill-sweeps sweeps of --n, each timed.
    full = new_campaign(sh, expe, base / "full", "campaign")
    r.fill = [sweep(sh, full, n)[0] for _ in range(args.fill_sweeps)]
    total = r.total = n * args.fill_sweeps

    # P2 on it, after a few finishes.
    finished, failed = 5, 2
    finish_some(sh, full, finished, failed)
    cold, warm, out = p2_ours(sh, full, ["git", "expegit", "status"], args.warm)
    states = read_status(out)
    check(states["total"] == total and states["finished"] == finished
          and states["failed"] == failed and states["created"] == total - finished - failed,
          f"status says {states}, expected {total} with {finished} finished, {failed} failed")
    r.status = (cold, warm)
    cold, warm, out = p2_ours(sh, full, ["git", "expegit", "list"], args.warm)
    lines = out.splitlines()
    check(len(lines) == total, f"list printed {len(lines)} lines, expected {total}")
    check(sum(" finished " in line for line in lines) == finished, "list: finished count")
    r.listing = (cold, warm)
    log_s, notes_s, creations, sample_states = p2_baseline(sh, full, args.p2_sample)
    check(creations == total, f"the baseline's git log found {creations} creations")
    sample = min(args.p2_sample, creations)
    check(sum(sample_states.values()) == sample and "?" not in sample_states,
          f"the baseline read states {sample_states} from {sample} notes")
    r.p2_baseline = (log_s, notes_s, sample, creations)

    # P1: a sweep in a fresh campaign, then one in the full campaign, undone so that the
    # next starts from `total` executions again; in turn, so that both see the machine alike.
    before = commits(sh, full)
    r.storage["full before"] = storage(sh, full)
    refs = {ref: sh.git("rev-parse", ref, cwd=full).strip()
            for ref in ("refs/heads/main", "refs/notes/expegit")}
    packs = pack_files(full)
    for i in range(args.repeat):
        campaign = new_campaign(sh, expe, base / f"empty-{i}", "campaign")
        r.empty.append(sweep(sh, campaign, n))
        check(commits(sh, campaign) == n + 1, "exec new --sweep did not make one commit each")
        if i == 0:
            r.storage["empty"] = storage(sh, campaign)
        r.full.append(sweep(sh, full, n))
        check(commits(sh, full) == before + n, "exec new --sweep did not make one commit each")
        if i == 0:
            r.storage["full"] = storage(sh, full)
        undo_sweep(sh, full, refs, packs)

    r.baseline, r.storage["baseline"] = baseline_p1(sh, expe, base, bn, hooks=True)
    r.baseline_nohooks, _ = baseline_p1(sh, expe, base, bn, hooks=False)
    return r


def report(r: Results, args: argparse.Namespace, n: int, bn: int, load: float) -> int:
    empty, empty_tree = (statistics.median(x[k] for x in r.empty) for k in (0, 1))
    full, full_tree = (statistics.median(x[k] for x in r.full) for k in (0, 1))
    total = r.total
    baselines = {  # name -> seconds for bn executions
        "baseline: git add + git commit each, LFS hooks (as init sets them)": r.baseline,
        "baseline: the same without hooks (core.hooksPath=/dev/null)": r.baseline_nohooks}
    # The goal's baseline is the seed's design in a campaign like ours, LFS hooks included;
    # the one without hooks is a stricter check, shown but not a goal.
    speedup, strict = (seconds / bn * n / empty for seconds in baselines.values())
    growth = full / empty
    print(f"\n## P1: {n} executions in one `exec new --sweep` ({time.strftime('%Y-%m-%d')}, "
          f"nproc {os.cpu_count()}, Python {platform.python_version()}, "
          f"{git_version()}, load average at start {load:.2f})\n")
    print(f"Every command starts with {r.startup:.3f} s of git, Python and imports "
          f"(`git expegit -h`, median of 5).\n")
    print("| | executions | wall s (median) | ms per execution | of which the work tree, s "
          "| vs LFS-hooks baseline | vs no-hooks baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, seconds, tree in (("ours, empty campaign", empty, empty_tree),
                                 (f"ours, campaign with {total}", full, full_tree)):
        ratios = " | ".join(f"{b / bn * n / seconds:.0f}x faster" for b in baselines.values())
        print(f"| {label} | {n} | {seconds:.2f} | {seconds / n * 1e3:.2f} | {tree:.2f} "
              f"| {ratios} |")
    scaled = f"{bn} measured, scaled x{n / bn:.3g}" if bn != n else "measured"
    for name, seconds in baselines.items():
        print(f"| {name} | {n} ({scaled}) | {seconds / bn * n:.2f} "
              f"| {seconds / bn * 1e3:.2f} | | | |")
    print(f"\nPer new execution, campaign with {total} / empty campaign: **{growth:.2f}x** "
          f"(without the work tree, `git read-tree -m -u` writing the new folders: "
          f"{(full - full_tree) / (empty - empty_tree):.2f}x).")
    print(f"\nRuns (wall s, work tree s): empty {fmt2(r.empty)}; with {total}: "
          f"{fmt2(r.full)}; filling sweeps {fmt(r.fill)} s.")
    print("\nStorage after (git count-objects -v; KiB):\n")
    print("| repository | loose objects | loose KiB | packs | in packs | pack KiB | .git KiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, key in ((f"ours, empty + {n}", "empty"),
                       (f"ours, {total} (before the timed sweep)", "full before"),
                       (f"ours, {total} + {n}", "full"),
                       (f"baseline, {bn} commits", "baseline")):
        s = r.storage[key]
        print(f"| {label} | {s['count']} | {s['size']} | {s['packs']} | {s['in-pack']} "
              f"| {s['size-pack']} | {s['git-dir-kib']} |")

    log_s, notes_s, sample, creations = r.p2_baseline
    base_p2 = log_s + notes_s / sample * creations
    print(f"\n## P2: status and list over {total} executions (5 finished, 2 failed)\n")
    print("| command | cold s (no catalog cache) | warm s (median of "
          f"{args.warm}) | warm runs | cold vs baseline | warm vs baseline |")
    print("|---|---:|---:|---|---:|---:|")
    worst_warm, worst_ratio = 0.0, float("inf")
    for name, (cold, warm) in (("status", r.status), ("list", r.listing)):
        median = statistics.median(warm)
        worst_warm, worst_ratio = max(worst_warm, median), min(worst_ratio, base_p2 / median)
        print(f"| `git expegit {name}` | {cold:.3f} | **{median:.3f}** | {fmt(warm, 3)} "
              f"| {base_p2 / cold:.0f}x | **{base_p2 / median:.0f}x** |")
    print(f"| baseline: git log trailers + git notes show each | {base_p2:.2f} "
          f"| | git log {log_s:.3f} s + notes {notes_s:.2f} s for {sample}, "
          f"scaled x{creations / sample:.3g} | 1x | 1x |")

    goals = [
        (f"P1: ours <= 1/20 of the baseline ({speedup:.1f}x faster; without its LFS hooks "
         f"{strict:.1f}x)", speedup >= 20),
        (f"P1: per execution with {total} <= 2x empty ({growth:.2f}x)", growth <= 2),
        (f"P2: warm status and list <= 0.3 s (worst {worst_warm:.3f} s)", worst_warm <= 0.3),
        (f"P2: warm >= 50x faster than the baseline (worst {worst_ratio:.0f}x)",
         worst_ratio >= 50),
    ]
    print("\nGoals: " + "; ".join(f"{text}: {'met' if ok else 'MISSED'}" for text, ok in goals))
    missed = [text for text, ok in goals if not ok]
    for text in missed:
        print(f"GOAL MISSED: {text}", file=sys.stderr)
    return 1 if missed else 0


def fmt(values: list[float], digits: int = 2) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def fmt2(values: list[tuple[float, float]]) -> str:
    return ", ".join(f"{a:.2f} ({b:.2f})" for a, b in values)


def git_version() -> str:
    return subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
