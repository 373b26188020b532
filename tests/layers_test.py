"""The import rules that keep the architecture readable (DESIGN.md, "Code layout")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the data layer never imports: the CLI's parser and layer, the ssh client, the web
# and watcher libraries, and runaway (only runner.py bridges to it).
FORBIDDEN_IN_DATA = ("docopt", "asyncssh", "starlette", "watchdog", "git_runaway",
                     "git_expegit.commands", "git_expegit.main")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _violations(folder: str, forbidden: tuple[str, ...], skip: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(skip):
            continue
        for name in _imports(path):
            if name.startswith(forbidden):
                found.append(f"{relative} imports {name}")
    return found


def test_runaway_never_imports_expegit() -> None:
    assert _violations("git_runaway", ("git_expegit",)) == []


SHELLS = ("git_expegit/commands/", "git_expegit/main.py", "git_expegit/__main__.py",
          "git_expegit/agent/", "git_expegit/web/")


def test_the_data_layer_never_imports_the_cli_or_runaway() -> None:
    skip = (*SHELLS, "git_expegit/runner.py")
    assert _violations("git_expegit", FORBIDDEN_IN_DATA, skip) == []


def test_only_the_runner_imports_runaway() -> None:
    forbidden = tuple(f for f in FORBIDDEN_IN_DATA if f != "git_runaway")
    assert [v for v in _violations("git_expegit", ("git_runaway", "asyncssh"))
            if not v.startswith("git_expegit/runner.py")] == []
    assert [v for v in _violations("git_expegit", forbidden)
            if v.startswith("git_expegit/runner.py")] == []


def test_the_web_calls_the_library_never_the_cli_nor_runaway() -> None:
    # The web enqueues through the data layer (and runner.py); it never runs a command.
    assert _violations("git_expegit/web", ("git_expegit.commands", "git_expegit.main",
                                           "git_runaway", "subprocess", "docopt")) == []


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("import docopt\nfrom git_runaway.profiles import load\n")
    assert _imports(module) == {"docopt", "git_runaway.profiles"}
