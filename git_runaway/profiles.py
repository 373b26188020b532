"""Profiles: YAML files that say how to run code on a host.

Search order, first match wins:
  1. `$XDG_CONFIG_HOME/runaway/NAME.yml` (default `~/.config/runaway/`);
  2. `~/.runaway/NAME.yml` (the original tool's place);
  3. the built-in `local` profile, which runs on this machine without ssh;
  4. `.runaway/NAME.yml` at the root of the enclosing git repository (shared with
     collaborators).
A repository comes last, unlike git's local-over-global config: a cloned repository must not
redirect where the user's own profiles, or `local`, run their code, nor what runs before it.

Profile files are the user's (or a clone's) and may be anything: a fifo, a symlink to
/dev/zero, a huge or broken file. They are read only when regular, and at most
`MAX_BYTES`; a broken one fails only when it is asked for, never `--list`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import yaml

from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError
from git_runaway.schedulers import slurm
from git_runaway.schedulers.slurm import Sbatch

KEYS = ("ssh_config", "host_directory", "before_execution", "execution", "after_execution",
        "concurrency", "timeout", "record", "sbatch")
# Without ssh_config, a profile runs on this machine, like the built-in `local`.
REQUIRED = ("host_directory", "execution")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 100  # a file name has at most 255 bytes; a profile name is a short word
MAX_BYTES = 1 << 20  # a profile is a few lines: more is a mistake, or /dev/zero
BUILT_IN = "built-in"


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    ssh_config: str | None  # a Host alias of ~/.ssh/config; None runs on this machine
    host_directory: str  # shell text: `~` and `$VARS` are expanded by the host
    before_execution: tuple[str, ...]
    execution: tuple[str, ...]
    after_execution: tuple[str, ...]
    source: str  # the file it was read from, or "built-in"
    concurrency: int | None = None  # runs at a time that git expegit jobs run starts
    timeout: float | None = None  # seconds a run may take before it is stopped
    record: tuple[str, ...] = ()  # commands whose output is kept with the results
    sbatch: Sbatch | None = None  # submit the runs to Slurm with these options


LOCAL = Profile(
    name="local",
    ssh_config=None,
    host_directory='"${XDG_CACHE_HOME:-$HOME/.cache}/runaway"',
    before_execution=(),
    execution=("$SCRIPT_NAME $SCRIPT_ARGS",),
    after_execution=(),
    source=BUILT_IN,
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """A row of `--list`: a profile file found (or the built-in), whether or not it loads."""

    name: str
    source: str  # the file, or "built-in"
    profile: Profile | None  # None when broken or ignored
    problem: str | None = None  # why it is broken, or ignored


def user_folders() -> list[Path]:
    """The user's own profile folders, highest precedence first."""
    home = Path.home()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [config / "runaway", home / ".runaway"]


def repository_root(cwd: Path) -> Path | None:
    # Walks up instead of spawning `git rev-parse`: this runs before every execution.
    for folder in (cwd, *cwd.parents):
        if (folder / ".git").exists():
            return folder
    return None


def load(name: str, cwd: Path) -> Profile:
    check_name(name)
    for path in _user_candidates(name):
        if os.path.lexists(path):  # even broken, it is the profile asked for: say why it fails
            return parse(path)
    if name == LOCAL.name:
        return LOCAL
    root = repository_root(cwd)
    if root is not None and os.path.lexists(root / ".runaway" / f"{name}.yml"):
        return parse(root / ".runaway" / f"{name}.yml")
    known = ", ".join(sorted({e.name for e in listing(cwd)}))
    raise RunawayError(f"unknown profile {name!r}; known profiles: {known} "
                       f"(add one as {user_folders()[0]}/{name}.yml)", ExitCode.PROFILE)


def check_name(name: str) -> None:
    if len(name) > MAX_NAME:
        raise RunawayError(f"invalid profile name {name[:20]!r}... ({len(name)} characters): "
                           f"use at most {MAX_NAME}", ExitCode.PROFILE)
    if not NAME.fullmatch(name):
        raise RunawayError(f"invalid profile name {name!r}: use letters, digits, '.', '_', '-'",
                           ExitCode.PROFILE)


def _user_candidates(name: str) -> list[Path]:
    return [folder / f"{name}.yml" for folder in user_folders()]


def available(cwd: Path) -> list[Profile]:
    """Every profile that `load` finds and reads, by name."""
    return [e.profile for e in listing(cwd) if e.profile is not None]


def listing(cwd: Path) -> list[Entry]:
    """What `--list` shows, by name: the profile `load` finds for each name, broken or not,
    and the repository's files that it ignores because the user's own or the built-in comes
    first. A broken file is an entry with its problem: it never fails the listing."""
    found: dict[str, Entry] = {}
    for path in (p for folder in user_folders() for p in _profile_files(folder)):
        found.setdefault(path.stem, _entry(path))  # ~/.config's shadows ~/.runaway's
    found.setdefault(LOCAL.name, Entry(LOCAL.name, BUILT_IN, LOCAL))
    ignored: list[Entry] = []
    for path in _repository_files(cwd):
        first = found.get(path.stem)
        if first is None:
            found[path.stem] = _entry(path)
        else:
            whose = "the built-in" if first.source == BUILT_IN else "your own"
            ignored.append(Entry(path.stem, str(path), None,
                                 f"ignored: {whose} {path.stem!r} comes first"))
    return sorted([*found.values(), *ignored], key=lambda e: (e.name, e.profile is None))


def _repository_files(cwd: Path) -> list[Path]:
    root = repository_root(cwd)
    if root is None or root / ".runaway" in user_folders():  # a home that is a repository
        return []
    return _profile_files(root / ".runaway")


def _entry(path: Path) -> Entry:
    try:
        return Entry(path.stem, str(path), parse(path))
    except RunawayError as e:
        return Entry(path.stem, str(path), None, str(e).removeprefix(f"profile {path}: "))


def _profile_files(folder: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []  # missing (the usual case) or unreadable: no profiles there
    return [folder / name for name in names if name.endswith(".yml")
            and NAME.fullmatch(name[:-4]) and len(name) - 4 <= MAX_NAME]


def read(path: Path) -> str:
    """The text of a profile file, refused unless it is a regular file of at most
    MAX_BYTES: a fifo would block, /dev/zero would fill the memory."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # follows symlinks; opens nothing
        raise OSError("not a regular file")
    # O_NONBLOCK: if it became a fifo since the stat, opening it must not wait for a writer.
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError("not a regular file")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise OSError(f"larger than {MAX_BYTES} bytes")
    return data.decode()


class _Loader(yaml.SafeLoader):
    """YAML without 1.1's base-60 numbers: `time: 30:00` is the text Slurm reads as 30
    minutes, not the number 1800 (which Slurm would read as 30 hours)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if not tag.endswith((":int", ":float"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def parse(path: Path) -> Profile:
    def fail(what: str) -> RunawayError:
        return RunawayError(f"profile {path}: {what}", ExitCode.PROFILE)

    try:
        data = yaml.load(read(path), Loader=_Loader)  # a SafeLoader
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"cannot read it ({e})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise fail(f"is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise fail(f"must be a mapping with the keys {', '.join(KEYS)}")
    allowed = f"allowed keys: {', '.join(KEYS)}"
    for key in data:
        if key not in KEYS:
            raise fail(f"unknown key {key!r}; {allowed}")
    for key in REQUIRED:
        if data.get(key) in (None, "", []):
            raise fail(f"missing key {key!r}; {allowed}")
    for key in ("ssh_config", "host_directory"):
        if not isinstance(data.get(key, ""), str):
            raise fail(f"key {key!r} must be a string")
    return Profile(
        name=path.stem,
        ssh_config=data.get("ssh_config") or None,
        host_directory=data["host_directory"],
        before_execution=_commands(data, "before_execution", fail),
        execution=_commands(data, "execution", fail),
        after_execution=_commands(data, "after_execution", fail),
        source=str(path),
        concurrency=_concurrency(data.get("concurrency"), fail),
        timeout=_duration(data.get("timeout"), fail),
        record=_commands(data, "record", fail),
        # `sbatch:` left empty is a mistake, not a profile that silently runs directly.
        sbatch=slurm.parse(data["sbatch"], fail) if "sbatch" in data else None,
    )


def _concurrency(value: object, fail: Callable[[str], RunawayError]) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= 10_000:
        raise fail(f"key 'concurrency' must be a whole number from 1 to 10000, not {value!r}")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: object, fail: Callable[[str], RunawayError]) -> float | None:
    """Seconds, from 90, "90s", "15m", "2h" or "1d"."""
    if value is None:
        return None
    text = str(value).strip()
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)", text)
    if type(value) is bool or match is None or float(match[1]) <= 0:
        raise fail(f"key 'timeout' must be a duration such as 90, 90s, 15m, 2h or 1d, not "
                   f"{value!r}")
    return float(match[1]) * _UNITS[match[2] or "s"]


def _commands(
    data: dict[str, object], key: str, fail: Callable[[str], RunawayError],
) -> tuple[str, ...]:
    value = data.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise fail(f"key {key!r} must be a list of shell commands")
    if not all(c.strip() for c in value):  # `execution: [""]` would run nothing, and say not why
        raise fail(f"key {key!r} has an empty command")
    return tuple(value)
