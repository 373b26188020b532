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


# The `sbatch:` key ---------------------------------------------------------------------------

SBATCH_KEYS = "partition, time, cpus_per_task, gpus, mem, signal, extra"
OWN = ("--array, --output, --error, --parsable, --wrap, --chdir, --job-name, --wait, "
       "--test-only")


def sbatch_profile(folder: Path, sbatch: str) -> Path:
    """A profile whose `sbatch:` mapping is the YAML text `sbatch` (indented as written)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cluster.yml"
    path.write_text("host_directory: /tmp/x\nexecution: $SCRIPT_NAME\nsbatch:\n"
                    + "".join(f"  {line}\n" for line in sbatch.splitlines()))
    return path


@pytest.mark.parametrize(("sbatch", "lines"), [
    ("partition: debug", ["--partition=debug"]),
    ("partition: gpu,debug", ["--partition=gpu,debug"]),
    # Every format of Slurm's --time; YAML 1.1 reads unquoted 30:00 and 2:00:00 as base-60
    # numbers (1800, 7200), which Slurm would read as minutes: 30 hours, 5 days.
    ("time: 30", ["--time=30"]),
    ("time: 30:00", ["--time=30:00"]),
    ("time: '30:00'", ["--time=30:00"]),
    ("time: 2:00:00", ["--time=2:00:00"]),
    ("time: 0:30", ["--time=0:30"]),
    ("time: 1-12", ["--time=1-12"]),
    ("time: 1-12:30", ["--time=1-12:30"]),
    ("time: 1-12:30:00", ["--time=1-12:30:00"]),
    ("time: UNLIMITED", ["--time=UNLIMITED"]),
    ("cpus_per_task: 4", ["--cpus-per-task=4"]),
    ("cpus_per_task: '16'", ["--cpus-per-task=16"]),
    ("gpus: 1", ["--gpus=1"]),
    ("gpus: a100:2", ["--gpus=a100:2"]),
    ("mem: 4G", ["--mem=4G"]),
    ("mem: 500M", ["--mem=500M"]),
    ("mem: 4096", ["--mem=4096"]),
    ("signal: USR1@120", ["--signal=USR1@120"]),
    ("signal: B:USR1@120", ["--signal=B:USR1@120"]),
    ("signal: SIGTERM", ["--signal=SIGTERM"]),
    ("extra: --qos=high", ["--qos=high"]),
    ("extra: '#SBATCH --qos=high'", ["--qos=high"]),
    ("extra: [--qos=high, '#SBATCH --constraint=avx2', -N 1, --exclusive, -w node1,"
     " --wait-all-nodes=1]",
     ["--qos=high", "--constraint=avx2", "-N 1", "--exclusive", "-w node1",
      "--wait-all-nodes=1"]),
    ("{}", []),
    # All at once: options in key order, then extra in its own order.
    ("time: 1-00:00:00\npartition: debug\nmem: 4G\ncpus_per_task: 2\ngpus: a100:2\n"
     "signal: B:USR1@60\nextra: [--qos=high, --requeue]",
     ["--cpus-per-task=2", "--gpus=a100:2", "--mem=4G", "--partition=debug",
      "--signal=B:USR1@60", "--time=1-00:00:00", "--qos=high", "--requeue"]),
])
def test_sbatch_keys_are_accepted_in_their_usual_forms(home: Path, tmp_path: Path, sbatch: str,
                                                       lines: list[str]):
    sbatch_profile(home / ".runaway", sbatch)
    profile = profiles.load("cluster", tmp_path)
    assert profile.sbatch is not None
    assert profile.sbatch.lines() == [f"#SBATCH {line}" for line in lines]
    listed = runaway("--list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert f"cluster  this machine  {home}/.runaway/cluster.yml\n" in listed.stdout


def test_a_profile_without_sbatch_runs_directly(home: Path, tmp_path: Path):
    write_profile(home / ".runaway", "p", **PROFILE)
    assert profiles.load("p", tmp_path).sbatch is None


def _extra_refused(item: str) -> str:
    return (f"key 'sbatch.extra' has {item!r}: each item is one sbatch option such as "
            f"--qos=high, other than {OWN}")


@pytest.mark.parametrize(("sbatch", "message"), [
    ("queue: debug", f"unknown key 'sbatch.queue'; sbatch keys: {SBATCH_KEYS}"),
    ("Partition: debug", f"unknown key 'sbatch.Partition'; sbatch keys: {SBATCH_KEYS}"),
    ("time: 2 hours", "key 'sbatch.time' must be a time limit such as 30, 2:00:00 or 1-12:00, "
     "not '2 hours'"),
    ("time: '1:2:3:4'", "key 'sbatch.time' must be a time limit such as 30, 2:00:00 or "
     "1-12:00, not '1:2:3:4'"),
    ("time: 1.5", "key 'sbatch.time' must be a time limit such as 30, 2:00:00 or 1-12:00, "
     "not 1.5"),
    ("cpus_per_task: 0", "key 'sbatch.cpus_per_task' must be a whole number of CPUs such as "
     "4, not 0"),
    ("cpus_per_task: true", "key 'sbatch.cpus_per_task' must be a whole number of CPUs such "
     "as 4, not True"),
    ("cpus_per_task: [4]", "key 'sbatch.cpus_per_task' must be a whole number of CPUs such "
     "as 4, not [4]"),
    ("gpus: 'a100:'", "key 'sbatch.gpus' must be a number of GPUs such as 1 or a100:2, not "
     "'a100:'"),
    ("mem: 4 GB", "key 'sbatch.mem' must be an amount of memory such as 4G or 500M, not "
     "'4 GB'"),
    ("signal: USR1@soon", "key 'sbatch.signal' must be a signal before the time limit such "
     "as USR1@120, not 'USR1@soon'"),
    ("partition: ''", "key 'sbatch.partition' must be a partition name such as debug, not ''"),
    # What would be a second #SBATCH line or shell text in the array's script.
    ('partition: "debug\\n#SBATCH --array=0-999"', "key 'sbatch.partition' must be a "
     "partition name such as debug, not 'debug\\n#SBATCH --array=0-999'"),
    ("partition: debug; rm -rf ~", "key 'sbatch.partition' must be a partition name such as "
     "debug, not 'debug; rm -rf ~'"),
    ("mem: $(reboot)", "key 'sbatch.mem' must be an amount of memory such as 4G or 500M, not "
     "'$(reboot)'"),
    ('extra: "--qos=high\\n#SBATCH --array=0-9"', _extra_refused("--qos=high\n#SBATCH "
                                                                "--array=0-9")),
    ('extra: ["--qos=high\\rx"]', _extra_refused("--qos=high\rx")),
    ("extra: {qos: high}", "key 'sbatch.extra' must be a list of sbatch options such as "
     "--qos=high"),
    ("extra: [1]", _extra_refused(1)),  # type: ignore[arg-type]
    ("extra: [qos=high]", _extra_refused("qos=high")),
    ("extra: ['echo hi']", _extra_refused("echo hi")),
    ("extra: ['#SBATCH #SBATCH --array=1']", _extra_refused("#SBATCH #SBATCH --array=1")),
    # The options runaway sets itself, in every spelling sbatch takes.
    *((f"extra: ['{item}']", _extra_refused(item)) for item in (
        "--array=0-3", "#SBATCH --array=0-3", "-a 0-3", "-a0-3", "--arr=0-3", "--output=x",
        "--output x", "-o x", "-ox", "-Qox", "--outp=x", "--error=x", "-e x", "--err=x",
        "--job-name=x", "-J x", "--chdir=/", "-D /", "--wrap=x", "--parsable", "--wait",
        "-W", "--test-only", "--test")),
])
def test_bad_sbatch_keys_are_refused_naming_the_file_and_the_key(home: Path, tmp_path: Path,
                                                                 sbatch: str, message: str):
    path = sbatch_profile(home / ".runaway", sbatch)
    assert_refused(path, tmp_path, message)


@pytest.mark.parametrize("value", ["debug", "[debug]", "4", "''", "[{partition: debug}]"])
def test_sbatch_must_be_a_mapping(home: Path, tmp_path: Path, value: str):
    path = home / ".runaway" / "cluster.yml"
    path.parent.mkdir()
    path.write_text(f"host_directory: /tmp/x\nexecution: $SCRIPT_NAME\nsbatch: {value}\n")
    assert_refused(path, tmp_path,
                   f"key 'sbatch' must be a mapping of sbatch options: {SBATCH_KEYS}")


def assert_refused(path: Path, tmp_path: Path, message: str) -> None:
    """Loading the profile `path` fails with `message`, naming the file; so does using it,
    and `--list` shows it broken."""
    with pytest.raises(RunawayError) as refused:
        profiles.load("cluster", tmp_path)
    assert str(refused.value) == f"profile {path}: {message}"
    # Used, it stops the command before anything runs: one line, runaway's own exit status.
    (tmp_path / "run.sh").write_text("touch ran\n")
    done = runaway("cluster", "run.sh", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (FAILED, "")
    assert done.stderr == f"runaway: profile {path}: {message}\n"
    assert not (tmp_path / "ran").exists()
    # Listed, it is shown broken with the same words, and the listing still succeeds.
    listed = runaway("--list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("cluster "))
    assert row.split(None, 2)[1:] == ["-", f"{path} ({message})"]
