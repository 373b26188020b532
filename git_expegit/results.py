"""The results table: one row per execution, one column per parameter and per numeric result.

This is what `dvc exp show` and MLflow's compare view give, for `git expegit results` and the
web's /results and /plot, from the one function `table(campaign)`.

- **Rows.** Every execution of the current tree, oldest first, with its state: a sweep half
  done shows what is still queued, and a failed run is a result too (a learning rate that
  diverged). Executions without results have empty result cells.
- **Parameter columns.** The parameter string is split as a shell would (`parameters.split`),
  then `KEY=VALUE`, `--key=value` and `--key value` (also `-k value`) give a column `key`; a
  bare `--flag` is a column `flag` whose value is true (false where it is absent). The other
  words stay, in order, in the column `parameters`. `--key word` is read as a value, so a
  flag followed by a positional word takes it as its value: write `--flag=true` then.
- **Result columns.** The numbers of the JSON files that the campaign's setting `results`
  names (glob patterns relative to the execution's folder; default `data/*.json`), flattened
  as `file.key.subkey` where `file` is the path under `data/` without `.json`. Strings,
  booleans, lists and non-finite numbers are not results and are left out. The setting lives
  in `.expegit.yml`, beside the experiment's URL: it is committed, so every clone and every
  collaborator reads the same columns (a git config value would stay in one clone).
- **Values are typed**: a parameter that reads as a number is an int or a float, so that
  sorting is numeric (`sort_key`).

Files are read from the work tree, where `finish` committed them: one `glob` per execution
and only the files that match, no git process, no object walk. A file that is not JSON, or
a symlink that leads out of its execution's folder, is skipped with a warning.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import math
import os
import re
import shlex
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from git_expegit import catalog
from git_expegit import parameters
from git_expegit.campaign import CONFIG
from git_expegit.campaign import Campaign
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.record import ExecutionId

Value = str | int | float | bool | None

SETTING = "results"
DEFAULT_PATTERNS = ("data/*.json",)
ID, STATE, POSITIONAL = "id", "state", "parameters"
FIXED = (ID, STATE)

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_KEY = r"[A-Za-z_][A-Za-z0-9_.:-]*"
_ASSIGNMENT = re.compile(rf"({_KEY})=(.*)", re.DOTALL)
_WORDS = re.compile(r"[^ \t\r\n]+")  # shlex's whitespace
_OPTION = re.compile(rf"--?({_KEY})(?:=(.*))?", re.DOTALL)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "execution" (id, state), "parameter" or "result"
    numeric: bool  # every value it holds is a number (or empty)


@dataclass(frozen=True)
class Row:
    id: ExecutionId
    state: str
    parameters: str  # the whole stored string, for captions
    cells: tuple[Value, ...]  # one per column of the table, in its order


@dataclass(frozen=True)
class Table:
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    warnings: tuple[str, ...] = field(default=())

    def index(self, name: str) -> int:
        for position, column in enumerate(self.columns):
            if column.name == name:
                return position
        raise ExpegitError(f"no column {name!r} in the results: use one of "
                           f"{', '.join(c.name for c in self.columns)}", ExitCode.USAGE)

    def of(self, kind: str) -> list[Column]:
        return [c for c in self.columns if c.kind == kind]

    def records(self) -> list[dict[str, Value]]:
        """One mapping per row, column name to value (json's list of objects)."""
        names = [c.name for c in self.columns]
        return [dict(zip(names, row.cells, strict=True)) for row in self.rows]

    def sorted(self, by: str, descending: bool = False) -> Table:
        """Sorted on one column, numbers in numeric order; empty cells last either way."""
        position = self.index(by)
        filled = [r for r in self.rows if r.cells[position] is not None]
        empty = [r for r in self.rows if r.cells[position] is None]
        filled.sort(key=lambda r: sort_key(r.cells[position]), reverse=descending)
        return Table(self.columns, tuple(filled + empty), self.warnings)


def sort_key(value: Value) -> tuple[int, float, str]:
    """Numbers (and booleans, as 0 and 1) before text, each in its own order."""
    if isinstance(value, bool | int | float):
        return 0, float(value), ""
    return 1, 0.0, "" if value is None else value


def text(value: Value) -> str:
    """A cell as a person reads it (table, csv, html)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# --- the table ---------------------------------------------------------------------------

def table(campaign: Campaign) -> Table:
    """Every execution's parameters and numeric results (see the module's text)."""
    patterns = setting(campaign)
    warnings: list[str] = []
    split: dict[str, dict[str, Value]] = {}  # a sweep repeats its strings: split each once
    rows: list[_Read] = []
    for execution in catalog.executions(campaign):
        stored = execution.parameters
        if stored not in split:
            split[stored] = split_parameters(stored)
        found = read_results(campaign.root / execution.folder, patterns, warnings)
        rows.append(_Read(execution.id, execution.state, stored, split[stored], found))
    return _assemble(rows, warnings)


@dataclass(frozen=True)
class _Read:
    id: ExecutionId
    state: str
    stored: str
    parameters: dict[str, Value]
    results: dict[str, float]


def _assemble(rows: list[_Read], warnings: list[str]) -> Table:
    parameter_names = _ordered(p for row in rows for p in row.parameters)
    result_names = sorted({r for row in rows for r in row.results})
    positional = POSITIONAL in parameter_names
    parameter_names = [n for n in parameter_names if n != POSITIONAL]
    # A parameter named like a fixed column or a result keeps its place under another name.
    taken = set(FIXED) | set(result_names) | {POSITIONAL}
    shown = {n: (f"param:{n}" if n in taken else n) for n in parameter_names}
    flags = {n for n in parameter_names
             if all(isinstance(row.parameters.get(n, False), bool) for row in rows)}
    made = []
    for row in rows:
        cells = (row.id, row.state,
                 *(row.parameters.get(n, False if n in flags else None)
                   for n in parameter_names),
                 *((row.parameters.get(POSITIONAL),) if positional else ()),
                 *(row.results.get(n) for n in result_names))
        made.append(Row(row.id, row.state, row.stored, cells))
    columns = [Column(ID, "execution", False), Column(STATE, "execution", False),
               *(Column(shown[n], "parameter", _numeric(r.cells[2 + i] for r in made))
                 for i, n in enumerate(parameter_names)),
               *((Column(POSITIONAL, "parameter", False),) if positional else ()),
               *(Column(n, "result", True) for n in result_names)]
    return Table(tuple(columns), tuple(made), tuple(warnings))


def _ordered(names: Iterable[str]) -> list[str]:
    """Each name once, in the order first seen: the order the user wrote them."""
    return list(dict.fromkeys(names))


def _numeric(values: Iterable[Value]) -> bool:
    seen = [v for v in values if v is not None]
    return bool(seen) and all(isinstance(v, int | float) and not isinstance(v, bool)
                              for v in seen)


# --- parameters ------------------------------------------------------------------------------

def split_parameters(stored: str) -> dict[str, Value]:
    """`--lr 0.1 --flag n=3 data.csv` -> {lr: 0.1, flag: True, n: 3, parameters: "data.csv"}."""
    if parameters.quoted(stored):
        try:
            words = parameters.split(stored)
        except ExpegitError:
            return {POSITIONAL: stored} if stored.strip() else {}
    else:  # what shlex gives for text without quotes or backslashes, 20 times faster
        words = _WORDS.findall(stored)
    out: dict[str, Value] = {}
    positional: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        option = _OPTION.fullmatch(word)
        assignment = _ASSIGNMENT.fullmatch(word)
        if option and option.group(2) is not None:
            out[option.group(1)] = typed(option.group(2))
        elif option:
            following = words[i + 1] if i + 1 < len(words) else None
            if following is not None and (not following.startswith("-")
                                          or _NUMBER.fullmatch(following)):
                out[option.group(1)] = typed(following)
                i += 1
            else:
                out[option.group(1)] = True
        elif assignment:
            out[assignment.group(1)] = typed(assignment.group(2))
        else:
            positional.append(word)
        i += 1
    if positional:
        out[POSITIONAL] = shlex.join(positional)
    return out


def typed(word: str) -> Value:
    """A word that reads as a number is one (ints stay ints); anything else stays text."""
    if _INTEGER.fullmatch(word):
        return int(word)
    if _NUMBER.fullmatch(word):
        return float(word)
    return word


# --- result files ----------------------------------------------------------------------------

def setting(campaign: Campaign) -> tuple[str, ...]:
    """The glob patterns of the result files, from `.expegit.yml`'s `results` (a pattern or
    a list of them, relative to each execution's folder)."""
    import yaml

    path = campaign.root / CONFIG
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ExpegitError(f"{CONFIG} cannot be read ({str(e).splitlines()[0]}): fix it",
                           ExitCode.CAMPAIGN) from None
    value = config.get(SETTING) if isinstance(config, dict) else None
    if value is None:
        return DEFAULT_PATTERNS
    patterns = [value] if isinstance(value, str) else value
    if not (isinstance(patterns, list) and patterns
            and all(isinstance(p, str) and p.strip() for p in patterns)):
        raise ExpegitError(f"{CONFIG}: {SETTING} must be a glob pattern or a list of them, "
                           "relative to an execution's folder (default: data/*.json)",
                           ExitCode.CAMPAIGN)
    for pattern in patterns:
        if pattern.startswith("/") or ".." in Path(pattern).parts:
            raise ExpegitError(f"{CONFIG}: {SETTING} pattern {pattern!r} leaves the "
                               "execution's folder: give a path inside it, like data/*.json",
                               ExitCode.CAMPAIGN)
    return tuple(patterns)


def read_results(folder: Path, patterns: Iterable[str], warnings: list[str]) -> dict[str, float]:
    """The numbers of the execution's result files, flattened; problems go to `warnings`."""
    out: dict[str, float] = {}
    root = str(folder)
    real_root: str | None = None
    for relative, link in _matches(root, patterns):
        path = os.path.join(root, relative)
        if link:
            real_root = real_root or os.path.realpath(root)
            if not os.path.realpath(path).startswith(real_root + os.sep):
                warnings.append(f"{_shown(folder, relative)}: a symlink out of the execution's "
                                "folder, skipped")
                continue
        try:
            with open(path, "rb") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as e:
            warnings.append(f"{_shown(folder, relative)}: {_problem(e)}, skipped")
            continue
        out.update(flatten(_name(relative), data))
    return out


def _matches(root: str, patterns: Iterable[str]) -> list[tuple[str, bool]]:
    """The files under `root` that match, each with whether a symlink leads to it."""
    found: dict[str, bool] = {}
    for pattern in patterns:
        directory, name = os.path.split(pattern)
        if glob.has_magic(directory) or "**" in name:
            for relative in sorted(glob.glob(pattern, root_dir=root, recursive=True)):
                path = os.path.join(root, relative)
                if os.path.isfile(path):
                    found[relative] = (os.path.islink(path)
                                       or os.path.realpath(os.path.dirname(path))
                                       != os.path.abspath(os.path.dirname(path)))
            continue
        # The common case (data/*.json): one directory listing, no stat per file.
        try:
            with os.scandir(os.path.join(root, directory)) as entries:
                names = [(e.name, e.is_symlink()) for e in entries
                         if e.is_file() and fnmatch.fnmatchcase(e.name, name)
                         and (name.startswith(".") or not e.name.startswith("."))]
        except (FileNotFoundError, NotADirectoryError):
            continue
        linked = bool(names) and os.path.islink(os.path.join(root, directory))
        for entry, link in sorted(names):
            found[os.path.join(directory, entry)] = link or linked
    return list(found.items())


def _problem(error: OSError | ValueError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"not JSON (line {error.lineno} column {error.colno}: {error.msg})"
    if isinstance(error, UnicodeDecodeError):
        return "not JSON (not UTF-8 text)"
    if isinstance(error, OSError):
        return f"not readable ({error.strerror or type(error).__name__})"
    return f"not JSON ({error})"


def _shown(folder: Path, relative: str) -> str:
    return f"{folder.parent.parent.name}/{folder.parent.name}/{folder.name}/{relative}"


def _name(relative: str) -> str:
    """`data/metrics.json` -> `metrics`; `data/eval/top.json` -> `eval/top`."""
    name = relative.removeprefix("data/")
    return name[:-5] if name.lower().endswith(".json") else name


def flatten(prefix: str, data: object) -> Iterator[tuple[str, float]]:
    """Every finite number in `data`, named `prefix.key.subkey`."""
    if isinstance(data, bool):
        return
    if isinstance(data, int | float):
        if math.isfinite(data):
            yield prefix, data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from flatten(f"{prefix}.{key}", value)
