from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from git_runaway import profiles
from git_runaway.errors import FAILED
from git_runaway.errors import RunawayError
from tests.conftest import runaway
from tests.conftest import write_profile

PROFILE = {"ssh_config": "somehost", "host_directory": "/tmp/x", "execution": ["$SCRIPT_NAME"]}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def test_precedence_xdg_then_legacy_then_built_in_then_repository(home: Path, repo: Path):
    cwd = repo / "sub"
    folders = [home / ".config" / "runaway", home / ".runaway", repo / ".runaway"]
    files = [write_profile(folder, "p", **{**PROFILE, "host_directory": name})
             for folder, name in zip(folders, ("xdg", "legacy", "repo"), strict=True)]
    for expected, path in zip(("xdg", "legacy", "repo"), files, strict=True):
        assert profiles.load("p", cwd).host_directory == expected
        path.unlink()
    with pytest.raises(RunawayError):
        profiles.load("p", cwd)


def test_xdg_config_home_is_honoured(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    write_profile(tmp_path / "xdg" / "runaway", "p", **PROFILE)
    assert profiles.load("p", tmp_path).source == str(tmp_path / "xdg" / "runaway" / "p.yml")


def test_built_in_local_profile_can_be_overridden(home: Path, tmp_path: Path):
    assert profiles.load("local", tmp_path) is profiles.LOCAL
    write_profile(home / ".runaway", "local", **PROFILE)
    assert profiles.load("local", tmp_path).ssh_config == "somehost"


def test_list_shows_every_profile_with_its_source(home: Path, repo: Path):
    write_profile(repo / ".runaway", "shared", **PROFILE)  # ignored: the user's own wins
    write_profile(repo / ".runaway", "team", **PROFILE)
    write_profile(home / ".runaway", "mine", **PROFILE)
    write_profile(home / ".runaway", "shared", **PROFILE)
    done = runaway("--list", cwd=repo)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["local", "mine", "shared", "shared", "team"]
    assert lines[0].split(None, 1)[1].split() == ["this", "machine", "built-in"]
    assert lines[2].endswith(str(home / ".runaway" / "shared.yml"))
    assert lines[3].endswith(f"{repo}/.runaway/shared.yml (ignored: your own 'shared' comes "
                             "first)")
    assert lines[4].endswith(str(repo / ".runaway" / "team.yml"))


@pytest.mark.parametrize(("text", "message"), [
    ("ssh_config: [unclosed\n",
     "is not valid YAML at line 2: expected ',' or ']', but got '<stream end>'"),
    ("- a list\n", "must be a mapping with the keys ssh_config, host_directory, "
     "before_execution, execution, after_execution, concurrency, timeout, record, sbatch"),
    ("ssh_config: h\nhost_directory: d\nexecution: [x]\nexecute: [y]\n",
     "unknown key 'execute'; allowed keys: ssh_config, host_directory, before_execution, "
     "execution, after_execution, concurrency, timeout, record, sbatch"),
    ("ssh_config: h\nexecution: [x]\n", "missing key 'host_directory'; allowed keys: ssh_config, "
     "host_directory, before_execution, execution, after_execution, concurrency, timeout, "
     "record, sbatch"),
    ("ssh_config: h\nhost_directory: d\nexecution: [1]\n",
     "key 'execution' must be a list of shell commands"),
    ("ssh_config: [h]\nhost_directory: d\nexecution: [x]\n", "key 'ssh_config' must be a string"),
    ("host_directory: d\nexecution: [x]\nconcurrency: 0\n",
     "key 'concurrency' must be a whole number from 1 to 10000, not 0"),
    ("host_directory: d\nexecution: [x]\nconcurrency: '4'\n",
     "key 'concurrency' must be a whole number from 1 to 10000, not '4'"),
    ("host_directory: d\nexecution: [x]\ntimeout: 2 weeks\n",
     "key 'timeout' must be a duration such as 90, 90s, 15m, 2h or 1d, not '2 weeks'"),
    ("host_directory: d\nexecution: [x]\nrecord: pip freeze\nrecord: [1]\n",
     "key 'record' must be a list of shell commands"),
])
def test_bad_profile_files_get_one_line_errors(home: Path, tmp_path: Path, text: str,
                                               message: str):
    path = home / ".runaway" / "bad.yml"
    path.parent.mkdir()
    path.write_text(text)
    done = runaway("bad", "run", cwd=tmp_path)
    assert done.returncode == FAILED
    assert done.stderr == f"runaway: profile {path}: {message}\n"
    assert done.stdout == ""


def test_unknown_profile_lists_the_known_ones(home: Path, tmp_path: Path):
    write_profile(home / ".runaway", "cluster", **PROFILE)
    done = runaway("nope", "run", cwd=tmp_path)
    assert done.returncode == FAILED
    assert done.stderr.startswith("runaway: unknown profile 'nope'; known profiles: cluster, "
                                  "local (add one as ")
    assert done.stderr.count("\n") == 1
