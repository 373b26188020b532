"""Hermetic tests against real parts: git, an OpenSSH sshd on loopback, local processes.

Every test gets its own HOME, so profiles, ~/.ssh/config and git config never leak in or
out. The sshd is started by `.ci/services.sh`, which exports EXPEGIT_TEST_SSH_CONFIG.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

T = TypeVar("T")


def until(check: Callable[[], T], what: str, timeout: float = 90.0, every: float = 0.05) -> T:
    """Poll `check` until it gives something true, and return that (tests never sleep a
    fixed time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "GIT_DIR", "GIT_WORK_TREE"):
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("RUNAWAY")]:
        monkeypatch.delenv(name)
    for key, value in {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.org",
                       "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.org"
                       }.items():
        monkeypatch.setenv(key, value)
    yield home


def needs_slurm() -> None:
    """Skip a test without the Slurm cluster of `.ci/services.sh`; in CI, fail it."""
    if not os.environ.get("EXPEGIT_TEST_SLURM"):
        if os.environ.get("CI"):
            pytest.fail("EXPEGIT_TEST_SLURM is not set: .ci/services.sh must run first")
        pytest.skip("no test Slurm cluster (run .ci/services.sh and source its env.sh)")


@pytest.fixture
def ssh_host(home: Path) -> str:
    """The Host alias of the real sshd, written into this test's ~/.ssh/config."""
    config = os.environ.get("EXPEGIT_TEST_SSH_CONFIG")
    if not config:
        if os.environ.get("CI"):
            pytest.fail("EXPEGIT_TEST_SSH_CONFIG is not set: .ci/services.sh must run first")
        pytest.skip("no test sshd (run .ci/services.sh and source its env.sh)")
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    shutil.copy(config, home / ".ssh" / "config")
    return os.environ.get("EXPEGIT_TEST_SSH_HOST", "testhost")


def write_profile(folder: Path, name: str, **keys: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yml"
    path.write_text(yaml.safe_dump(keys))
    return path


def script(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def runaway(*args: str, cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """The installed command, through git, as a user types it."""
    return subprocess.run(["git", "runaway", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def ssh_profile(ssh_host: str, home: Path) -> str:
    """A profile `ssh` in ~/.config/runaway for the real sshd."""
    write_profile(home / ".config" / "runaway", "ssh", ssh_config=ssh_host,
                  host_directory=f"~/runaway-tests/{uuid.uuid4().hex[:12]}",
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"])
    return "ssh"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where `git runaway` runs in a test: the profile, and its host_directory seen from
    here (the sshd is on this machine)."""

    profile: str
    host_directory: Path


@pytest.fixture(params=["local", "ssh"])
def target(request: pytest.FixtureRequest, home: Path) -> Target:
    """Each runaway test twice: on the built-in `local`, and on the real sshd."""
    if request.param == "local":
        return Target("local", home / ".cache" / "runaway")
    host = request.getfixturevalue("ssh_host")
    name = uuid.uuid4().hex[:12]
    write_profile(home / ".config" / "runaway", "ssh", ssh_config=host,
                  host_directory=f"~/runaway-tests/{name}",
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"])
    return Target("ssh", ssh_user_home() / "runaway-tests" / name)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The folder runaway sends; readable by the sshd's user, as a home folder is."""
    folder = tmp_path / "work"
    folder.mkdir()
    os.chmod(tmp_path, 0o755)
    return folder


def ssh_user_home() -> Path:
    """The home of the test sshd's user, readable from here (the sshd is on this machine)."""
    config = Path(os.environ["EXPEGIT_TEST_SSH_CONFIG"]).read_text()
    user = next(line.split()[1] for line in config.splitlines()
                if line.strip().startswith("User "))
    return Path(pwd.getpwnam(user).pw_dir)


def expegit(*args: str, cwd: Path, check: bool = True,
            **kwargs: object) -> subprocess.CompletedProcess[str]:
    """The installed `git expegit`, through git; `check` asserts it succeeded."""
    result = subprocess.run(["git", "expegit", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=300, **kwargs)  # type: ignore[call-overload]
    if check:
        assert result.returncode == 0, result.stderr
    return result  # type: ignore[no-any-return]


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


RUN = """#!/bin/sh
# The experiment: record the arguments, one plain result and one LFS result.
mkdir -p data/lfs
echo "$@" > data/arguments.txt
printf 'big %s\\n' "$@" > data/lfs/weights.bin
echo "ran with $@"
"""


@pytest.fixture
def experiment(tmp_path: Path, home: Path) -> Path:
    """A bare experiment repository whose `run` writes results, with one commit."""
    work = tmp_path / "expe"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    script(work, "run", RUN.removeprefix("#!/bin/sh\n"))
    (work / "model.py").write_text("print('model')\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "first version", cwd=work)
    bare = tmp_path / "expe.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    return bare


@pytest.fixture
def campaign(tmp_path: Path, experiment: Path) -> Path:
    """A campaign of `experiment`, with a bare remote campaign.git that it pushed to."""
    expegit("init", str(experiment), str(tmp_path / "campaign.git"), str(tmp_path / "campaign"),
            cwd=tmp_path)
    return tmp_path / "campaign"


def snapshot(repo: Path) -> tuple[str, str, str]:
    """Everything an operation that failed must leave as it was: refs, index, work tree."""
    refs = git("for-each-ref", "--format=%(refname) %(objectname)", cwd=repo)
    index = git("ls-files", "--stage", cwd=repo)
    status = git("status", "--porcelain", "--untracked-files=all", "--ignored", cwd=repo)
    return refs, index, status
