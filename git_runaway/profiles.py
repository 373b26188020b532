"""Profiles: YAML files that say how to run code on a host.

Search order, first match wins, like git's local-over-global config:
  1. `.runaway/NAME.yml` at the root of the enclosing git repository (shared with collaborators);
  2. `$XDG_CONFIG_HOME/runaway/NAME.yml` (default `~/.config/runaway/`);
  3. `~/.runaway/NAME.yml` (the original tool's place);
  4. the built-in `local` profile, which runs on this machine without ssh.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import yaml

from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError

KEYS = ("ssh_config", "host_directory", "before_execution", "execution", "after_execution")
# Without ssh_config, a profile runs on this machine, like the built-in `local`.
REQUIRED = ("host_directory", "execution")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
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


LOCAL = Profile(
    name="local",
    ssh_config=None,
    host_directory='"${XDG_CACHE_HOME:-$HOME/.cache}/runaway"',
    before_execution=(),
    execution=("$SCRIPT_NAME $SCRIPT_ARGS",),
    after_execution=(),
    source=BUILT_IN,
)


def search_path(cwd: Path) -> list[Path]:
    """The profile folders, highest precedence first."""
    home = Path.home()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    folders = [config / "runaway", home / ".runaway"]
    root = repository_root(cwd)
    if root is not None:
        folders.insert(0, root / ".runaway")
    return folders


def repository_root(cwd: Path) -> Path | None:
    # Walks up instead of spawning `git rev-parse`: this runs before every execution.
    for folder in (cwd, *cwd.parents):
        if (folder / ".git").exists():
            return folder
    return None


def load(name: str, cwd: Path) -> Profile:
    if not NAME.fullmatch(name):
        raise RunawayError(f"invalid profile name {name!r}: use letters, digits, '.', '_', '-'",
                           ExitCode.PROFILE)
    for folder in search_path(cwd):
        path = folder / f"{name}.yml"
        if path.is_file():
            return parse(path)
    if name == LOCAL.name:
        return LOCAL
    known = ", ".join(sorted({p.name for p in available(cwd)}))
    raise RunawayError(f"unknown profile {name!r}; known profiles: {known} "
                       f"(add one as {search_path(cwd)[0]}/{name}.yml)", ExitCode.PROFILE)


def available(cwd: Path) -> list[Profile]:
    """Every profile that `load` can find, in precedence order, shadowed ones excluded."""
    seen: dict[str, Profile] = {}
    for path in _profile_files(cwd):
        if path.stem not in seen:
            seen[path.stem] = parse(path)
    seen.setdefault(LOCAL.name, LOCAL)
    return sorted(seen.values(), key=lambda p: p.name)


def _profile_files(cwd: Path) -> Iterator[Path]:
    for folder in search_path(cwd):
        if folder.is_dir():
            yield from sorted(p for p in folder.glob("*.yml") if NAME.fullmatch(p.stem))


def parse(path: Path) -> Profile:
    def fail(what: str) -> RunawayError:
        return RunawayError(f"profile {path}: {what}", ExitCode.PROFILE)

    try:
        data = yaml.safe_load(path.read_text())
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
    )


def _commands(
    data: dict[str, object], key: str, fail: Callable[[str], RunawayError],
) -> tuple[str, ...]:
    value = data.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise fail(f"key {key!r} must be a list of shell commands")
    return tuple(value)
