"""What the expegit benchmarks share: a hermetic environment, commands run as a user types
them, an experiment to make campaigns of, and how a repository's storage is read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXPERIMENT_FILES = 50


class BenchmarkFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchmarkFailed(message)


@contextmanager
def sandbox(prefix: str, keep: bool) -> Iterator[tuple[Shell, Path]]:
    """A temporary folder with its own HOME, removed at the end unless `keep`."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield Shell(make_env(base)), base
    finally:
        if keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def failed(error: BenchmarkFailed) -> int:
    print(f"BENCHMARK FAILED: {error}", file=sys.stderr)
    return 2


def make_home(base: Path, config: str) -> Path:
    """A HOME whose ~/.ssh/config is the test sshd's, so asyncssh resolves `testhost`."""
    home = base / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    shutil.copy(config, home / ".ssh" / "config")
    os.environ["HOME"] = str(home)
    for name in [n for n in os.environ if n.startswith("RUNAWAY")]:
        del os.environ[name]
    return home


def make_env(base: Path) -> dict[str, str]:
    """A hermetic environment: own HOME and global git config, no system config, a fixed
    identity; the interpreter's bin folder first on PATH, as in a venv, so that `git
    expegit` finds the installed entry point and not a version manager's shim."""
    home = base / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "RUNAWAY")) and k not in ("XDG_CONFIG_HOME",
                                                                  "XDG_CACHE_HOME")}
    env.update({"HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
                "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "Ada",
                "GIT_AUTHOR_EMAIL": "ada@example.org", "GIT_COMMITTER_NAME": "Ada",
                "GIT_COMMITTER_EMAIL": "ada@example.org",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
    return env


class Shell:
    """Runs commands in the hermetic environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def call(self, args: list[str], cwd: Path, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=cwd, env={**self.env, **(env or {})},
                              capture_output=True, text=True, errors="replace")

    def run(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
        done = self.call(args, cwd, env)
        check(done.returncode == 0, f"`{' '.join(args)}` in {cwd} exited {done.returncode}: "
              f"{done.stderr.strip()[-2000:]}")
        return done.stdout

    def git(self, *args: str, cwd: Path) -> str:
        return self.run(["git", *args], cwd)

    def expegit(self, *args: str, cwd: Path) -> str:
        return self.run(["git", "expegit", *args], cwd)

    def timed(self, args: list[str], cwd: Path, env: dict[str, str] | None = None
              ) -> tuple[float, str]:
        start = time.perf_counter()
        out = self.run(args, cwd, env=env)
        return time.perf_counter() - start, out


def make_experiment(sh: Shell, base: Path, files: int = EXPERIMENT_FILES,
                    run: str = '#!/bin/sh\necho "run $*" > data/out.txt\n') -> Path:
    """An experiment with `files` files and an executable `run`, pushed to a bare
    repository; returns the bare repository."""
    work = base / "expe"
    work.mkdir()
    for i in range(files):
        (work / f"file{i:02}.txt").write_text(f"experiment file {i}\n" * 20)
    (work / "run").write_text(run)
    (work / "run").chmod(0o755)
    sh.git("init", "-q", "-b", "main", cwd=work)
    sh.git("add", "-A", cwd=work)
    sh.git("commit", "-q", "-m", "experiment", cwd=work)
    bare = base / "expe.git"
    sh.git("init", "-q", "--bare", "-b", "main", str(bare), cwd=base)
    sh.git("push", "-q", str(bare), "main", cwd=work)
    return bare


def storage(sh: Shell, repo: Path) -> dict[str, int]:
    """Loose objects, packs and sizes (KiB) as git count-objects -v reports them, and the
    size of .git on disk."""
    counts = {}
    for line in sh.git("count-objects", "-v", cwd=repo).splitlines():
        key, _, value = line.partition(":")
        counts[key.strip()] = int(value)
    git_dir = repo / ".git"
    counts["git-dir-kib"] = sum(p.stat().st_size for p in git_dir.rglob("*")
                                if p.is_file() and not p.is_symlink()) // 1024
    return counts
