#!/usr/bin/env python3
"""Benchmark: several clones of one campaign creating, finishing and syncing at the same time.

Each clone (`git expegit clone`), in its own thread, runs N times: `exec new -- --who cloneK
--i I`, writes a file into the new execution's data/ and one into data/lfs/, `finish ID
--exit-code 0`, and `git expegit -v sync` every --sync-every executions. At the end every clone
syncs once more, then a fresh clone of the remote is checked: every execution once, each note
log with one created and one finished line, every result file there with its content (LFS
files fetched, not pointers). Exits 2 with `BENCHMARK FAILED: ...` when a check fails and 1
when a sync failed. See bench/README.md.

    python bench/sync_many.py [--clones 3] [--n 100] [--sync-every 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections import Counter
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

TRIES = re.compile(r"pushed after (\d+) tries")


def data(clone: int, i: int) -> tuple[str, bytes]:
    """What execution i of clone k writes into data/out.txt and data/lfs/out.bin."""
    return f"clone{clone} {i}\n", f"lfs clone{clone} {i}\n".encode() * 8


@dataclass
class Worker:
    index: int
    path: Path
    n: int
    every: int
    new: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)
    syncs: list[float] = field(default_factory=list)
    tries: list[int] = field(default_factory=list)
    failed_syncs: list[str] = field(default_factory=list)
    error: str | None = None

    def sync(self, sh: Shell) -> None:
        start = time.perf_counter()
        done = sh.call(["git", "expegit", "-v", "sync"], self.path)
        self.syncs.append(time.perf_counter() - start)
        if done.returncode != 0:
            self.failed_syncs.append(f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
            return
        found = TRIES.search(done.stderr)
        check(found is not None, f"sync -v said {done.stderr!r}, no 'pushed after N tries'")
        assert found is not None
        self.tries.append(int(found.group(1)))

    def work(self, sh: Shell) -> None:
        try:
            for i in range(self.n):
                start = time.perf_counter()
                out = sh.expegit("exec", "new", "--", "--who", f"clone{self.index}", "--i",
                                 str(i), cwd=self.path).split()
                self.new.append(time.perf_counter() - start)
                check(len(out) == 1, f"clone{self.index}: exec new printed {out}")
                folder = self.path / out[0]
                text, blob = data(self.index, i)
                (folder / "data" / "out.txt").write_text(text)
                (folder / "data" / "lfs" / "out.bin").write_bytes(blob)
                start = time.perf_counter()
                sh.expegit("finish", folder.name, "--exit-code=0", cwd=self.path)
                self.finish.append(time.perf_counter() - start)
                if (i + 1) % self.every == 0 or i == self.n - 1:
                    self.sync(sh)
        except BenchmarkFailed as e:
            self.error = str(e)


def verify(sh: Shell, remote: Path, target: Path, clones: int, n: int) -> dict[str, int]:
    """A fresh clone of the remote holds every execution once, finished, with its log and
    its files."""
    sh.expegit("clone", str(remote), str(target), cwd=target.parent)
    listing = json.loads(sh.expegit("list", "--format=json", cwd=target))
    total = clones * n
    ids = [e["id"] for e in listing]
    check(len(ids) == total, f"the fresh clone lists {len(ids)} executions, expected {total}")
    check(len(set(ids)) == total, f"duplicate execution ids: {len(ids) - len(set(ids))}")
    folders = [p for p in (target / "excs").glob("*/*") if p.is_dir()]
    check(len(folders) == total, f"{len(folders)} execution folders, expected {total}")
    expected = {f"--who clone{k} --i {i}" for k in range(clones) for i in range(n)}
    check({e["parameters"] for e in listing} == expected, "the parameters are not the "
          "expected ones (one execution per clone and number)")
    states = Counter(e["state"] for e in listing)
    check(states == Counter({"finished": total}), f"states {dict(states)}, all should be "
          "finished")
    for e in listing:
        kinds = [line.split(" ")[1] for line in e["log"]]
        check(kinds.count("created") == 1 and kinds.count("finished") == 1,
              f"{e['id']}: its log is {e['log']}, expected one created and one finished line")
        words = e["parameters"].split()
        text, blob = data(int(words[1].removeprefix("clone")), int(words[3]))
        folder = target / "excs" / e["id"][:2] / e["id"] / "data"
        check((folder / "out.txt").read_text() == text, f"{folder}/out.txt is wrong")
        check((folder / "lfs" / "out.bin").read_bytes() == blob,
              f"{folder}/lfs/out.bin is wrong (an LFS pointer?)")
    notes = sh.git("notes", "--ref=expegit", "list", cwd=target).splitlines()
    check(len(notes) == total, f"{len(notes)} notes, expected {total}")
    sh.git("fsck", "--no-progress", "--no-dangling", cwd=remote)
    return {"executions": len(ids), "notes": len(notes), "folders": len(folders)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=int, default=3, help="clones at once (default 3)")
    parser.add_argument("--n", type=int, default=100, help="executions per clone (100)")
    parser.add_argument("--sync-every", type=int, default=1,
                        help="sync after every K executions (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    try:
        with sandbox("expegit-sync-bench-", args.keep) as (sh, base):
            return run(sh, base, args, load)
    except BenchmarkFailed as e:
        return failed(e)


def run(sh: Shell, base: Path, args: argparse.Namespace, load: float) -> int:
    expe = make_experiment(sh, base)
    remote = base / "campaign.git"
    sh.expegit("init", str(expe), str(remote), str(base / "first"), cwd=base)
    workers = []
    for k in range(args.clones):
        path = base / f"clone{k}"
        sh.expegit("clone", str(remote), str(path), cwd=base)
        workers.append(Worker(k, path, args.n, args.sync_every))

    start = time.perf_counter()
    threads = [threading.Thread(target=w.work, args=(sh,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    concurrent = time.perf_counter() - start
    for w in workers:
        check(w.error is None, f"clone{w.index}: {w.error}")
    during = [t for w in workers for t in w.tries]
    failed_during = [f for w in workers for f in w.failed_syncs]
    final_start = time.perf_counter()
    for w in workers:
        w.sync(sh)
    final = time.perf_counter() - final_start
    wall = time.perf_counter() - start
    final_failed = [f for w in workers for f in w.failed_syncs][len(failed_during):]
    check(not final_failed, f"a final sync failed: {final_failed}")
    found = verify(sh, remote, base / "fresh", args.clones, args.n)

    syncs = [t for w in workers for t in w.syncs]
    during_n = len(syncs) - len(workers)
    total = args.clones * args.n
    print(f"\n## Sync: {args.clones} clones x {args.n} executions, sync every "
          f"{args.sync_every} ({time.strftime('%Y-%m-%d')}, nproc {os.cpu_count()}, Python "
          f"{platform.python_version()}, load average at start {load:.2f})\n")
    print("| | value |")
    print("|---|---:|")
    print(f"| wall time, all clones at once, final syncs included | {wall:.1f} s |")
    print(f"| of which the final syncs, one clone after the other | {final:.1f} s |")
    print(f"| executions created and finished per second (all clones) | {total / wall:.2f} |")
    print(f"| syncs while the clones ran / per second | {during_n} / "
          f"{during_n / concurrent:.2f} |")
    print(f"| sync wall time, median / 90th percentile / max | {statistics.median(syncs):.2f}"
          f" / {quantile(syncs, 0.9):.2f} / {max(syncs):.2f} s |")
    print(f"| `exec new` median / `finish` median | "
          f"{statistics.median(t for w in workers for t in w.new):.2f} / "
          f"{statistics.median(t for w in workers for t in w.finish):.2f} s |")
    retries = sum(t - 1 for t in during)
    tally = ", ".join(f"{k} tries: {v}" for k, v in sorted(Counter(during).items()))
    print(f"| push retries while the clones ran (syncs by tries) | {retries} ({tally}) |")
    print(f"| syncs that failed | {len(failed_during)} |")
    print(f"| fresh clone: executions / note logs / folders | {found['executions']} / "
          f"{found['notes']} / {found['folders']}, all finished, ids unique |")
    print("\nStorage at the end (git count-objects -v):\n")
    print("| repository | loose objects | packs | pack KiB |")
    print("|---|---:|---:|---:|")
    for name, path in [*((f"clone{w.index}", w.path) for w in workers), ("remote", remote),
                       ("fresh clone", base / "fresh")]:
        s = storage(sh, path)
        print(f"| {name} | {s['count']} | {s['packs']} | {s['size-pack']} |")
    if failed_during:
        for text in failed_during:
            print(f"GOAL MISSED: a sync failed: {text}", file=sys.stderr)
        return 1
    print("\nChecks: all passed; no sync failed.")
    return 0


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    sys.exit(main())
